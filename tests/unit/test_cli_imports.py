"""The trainer image installs lt-ssl without the `argo` extra: what it runs must not import hera,
kubernetes or jsonschema."""

from __future__ import annotations

import subprocess
import sys

BLOCKED = '''
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("hera", "kubernetes", "jsonschema"):
            raise ImportError(f"{name} is in the argo extra")
sys.meta_path.insert(0, Block())
'''


def test_stage_run_and_compare_need_no_argo_extra():
    code = BLOCKED + '''
from lt_ssl import cli
import lt_ssl.pipeline.stages, lt_ssl.pipeline.local, lt_ssl.compare, lt_ssl.runs
cli.parse_args(["stage", "cluster", "--run", "file:///tmp/x", "--clusters-out", "/tmp/c.json"])
cli.parse_args(["run", "--config", "configs/quickstart.yaml"])
'''
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_submit_without_the_extra_says_how_to_install_it(tmp_path):
    code = BLOCKED + '''
from lt_ssl.pipeline.submit import custom_objects_api
from lt_ssl.errors import LtSslError
try:
    custom_objects_api()
except LtSslError as e:
    print(e)
'''
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'lt-ssl[argo]'" in done.stdout, done.stderr[-2000:]
