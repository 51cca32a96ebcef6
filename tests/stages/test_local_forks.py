"""The local runner's stage processes: forks of one preloaded server that behave like fresh `lt-ssl` processes."""

from __future__ import annotations

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
