"""Acceptance: kill `lt-ssl run` during the expert stage; the same command finishes the run."""

import os
import signal
import subprocess
import sys
import time

from lt_ssl.store import open_store
from tests.conftest import QUICKSTART, TINY


def _run_cmd(run_uri):
    # Long enough experts, checkpointed every epoch, so the kill lands mid-expert.
    return [sys.executable, "-m", "lt_ssl", "run", "--config", QUICKSTART, "--run", run_uri, *TINY,
            "expert.train.epochs=15", "expert.train.checkpoint_every=1"]


def test_killed_during_experts_then_rerun_finishes_without_redoing(tmp_path):
    run_uri = (tmp_path / "run").as_uri()
    store = open_store(run_uri)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_run_cmd(run_uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 240
    while not any(k.endswith(".pt") for k in store.list("expert")):  # an expert has checkpointed
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "expert stage never started"
        time.sleep(0.2)
    done_before = {p: store.read_json(f"{p}/_SUCCESS.json") for p in ("prepare", "pretrain", "baseline", "cluster")}
    assert not store.exists("distill/_SUCCESS.json")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    # The stage subprocesses die with the runner: nothing keeps writing into the run.
    listing = store.list()
    time.sleep(1.5)
    assert store.list() == listing

    rerun = subprocess.run(_run_cmd(run_uri), capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for prefix, success in done_before.items():  # completed stages were skipped, not redone
        assert store.read_json(f"{prefix}/_SUCCESS.json") == success
        assert f"[{prefix}] already done" in rerun.stderr
    assert "resuming from epoch" in rerun.stderr  # the interrupted expert continued from its checkpoint
    assert store.exists("evaluate/_SUCCESS.json")
    assert "| student | knn |" in rerun.stdout
