"""LocalStore.lock: one holder at a time, the holder named in the refusal, released however the holder ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from lt_ssl.errors import EXIT_BAD_INPUT, RunBusyError
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART, REPO

KEY = ".runner.lock"


def test_a_second_holder_is_refused_with_the_first_named_until_it_releases(tmp_path):
    store = open_store(tmp_path.as_uri())
    with store.lock(KEY, "holder A (pid 1)"):
        with pytest.raises(RunBusyError) as e:
            with open_store(tmp_path.as_uri()).lock(KEY, "holder B"):
                pass
        assert str(e.value) == (f"{tmp_path.as_uri()} is in use by holder A (pid 1); wait for it to end (or stop it), "
                                "then rerun to resume")
        assert e.value.exit_code == EXIT_BAD_INPUT
    with store.lock(KEY, "holder B"):  # released on exit
        assert (tmp_path / KEY).read_text() == "holder B\n"
    assert store.list() == []  # hidden from the run's listing; empty between holders
    assert (tmp_path / KEY).read_text() == ""


def test_a_holder_killed_outright_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from lt_ssl.store import open_store\n"
            f"with open_store({tmp_path.as_uri()!r}).lock({KEY!r}, 'doomed'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError, match="in use by doomed"):
            with open_store(tmp_path.as_uri()).lock(KEY, "me"):
                pass
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        with open_store(tmp_path.as_uri()).lock(KEY, "me"):  # the kernel dropped the dead holder's flock
            pass
    finally:
        child.kill()
        child.stdout.close()


def test_lt_ssl_run_on_a_run_another_runner_holds_stops_before_writing_anything(tmp_path):
    run = tmp_path / "run"
    with open_store(run.as_uri()).lock(KEY, "lt-ssl run (pid 4242 on elsewhere, since then)"):
        out = subprocess.run([sys.executable, "-m", "lt_ssl", "run", "--config", QUICKSTART, "--run", run.as_uri()],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == EXIT_BAD_INPUT, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"lt-ssl: error: {run.as_uri()} is in use by lt-ssl run (pid 4242 on elsewhere, since then); wait for it to "
        "end (or stop it), then rerun to resume")
    assert [p.name for p in run.iterdir()] == [KEY]  # no config.yaml, no stage folder
