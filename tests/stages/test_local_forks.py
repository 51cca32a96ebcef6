"""The local runner's stage processes: forks of one preloaded server that behave like fresh `lt-ssl` processes."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from lt_ssl.pipeline import local


def test_a_stage_writes_to_the_runners_stdio_of_the_moment(capfd):
    """The server keeps the stdio it started with; each stage must get the runner's current one instead."""
    assert local._execute(["lt-ssl", "methods"], threads=1, device=None, debug=False) == 0  # starts the server
    first = capfd.readouterr()
    assert "simsiam" in first.out and "$ lt-ssl methods" in first.err
    assert local._execute(["lt-ssl", "methods"], threads=1, device=None, debug=False) == 0  # reuses it
    assert "simsiam" in capfd.readouterr().out  # a new capture: output that went to the server's stdio is lost


def test_a_stage_returns_the_clis_exit_code(capfd):
    assert local._execute(["lt-ssl", "stage", "no-such-stage"], threads=1, device=None, debug=False) == 2
    assert "invalid choice: 'no-such-stage'" in capfd.readouterr().err


# That a SIGKILLed runner takes its running stages along (their parent is the fork server, not the runner) is
# tests/stages/test_kill_resume.py: it kills `lt-ssl run` mid-expert and checks that nothing writes on.


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
def test_a_stage_dies_when_its_runner_does(pidfd):
    """With a pidfd (Linux) or by polling (macOS, old kernels): the stage is SIGKILLed once the runner is gone."""
    runner = subprocess.Popen(["sleep", "60"])  # stands in for the runner
    stage = subprocess.Popen([sys.executable, "-c", f"""
import os, time
from lt_ssl.pipeline import local
if not {pidfd}:
    del os.pidfd_open
local._die_with_runner({runner.pid})
print("watching", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert stage.stdout.readline() == "watching\n"
        assert stage.poll() is None
        runner.kill()
        runner.wait()
        assert stage.wait(timeout=10) == -signal.SIGKILL
    finally:
        for proc in (runner, stage):
            if proc.poll() is None:
                proc.kill()
