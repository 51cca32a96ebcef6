"""StopRequest and ForwardStop: SIGTERM or Ctrl-C asks to stop; a runner passes it on to the children it started,
and no child starts after it."""

from __future__ import annotations

import os
import signal

import pytest

from lt_ssl.pipeline.forward_stop import ForwardStop
from lt_ssl.signals import StopRequest


class _Child:
    def __init__(self, gone: bool = False):
        self.terminated = 0
        self.gone = gone

    def terminate(self) -> None:
        if self.gone:
            raise ProcessLookupError  # exited between the signal and the forward
        self.terminated += 1


def test_sigterm_reaches_running_children_only_and_stops_new_starts():
    before = signal.getsignal(signal.SIGTERM)
    with ForwardStop() as fwd:
        running, ended = fwd.start(_Child), fwd.start(_Child)
        fwd.start(lambda: _Child(gone=True))  # exits before the forward reaches it
        fwd.release(ended)
        assert not fwd.stopping
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this (main) thread before kill returns
        assert fwd.stopping
        assert (running.terminated, ended.terminated) == (1, 0)
        assert fwd.start(_Child) is None
    assert signal.getsignal(signal.SIGTERM) is before  # restored on exit


def test_a_forwarder_entered_again_starts_afresh():
    fwd = ForwardStop()
    with fwd:
        os.kill(os.getpid(), signal.SIGTERM)
    with fwd:
        assert not fwd.stopping and fwd.start(_Child) is not None


def test_a_first_ctrl_c_is_a_stop_request_and_a_second_interrupts():
    before = signal.getsignal(signal.SIGINT)
    calls = []
    with StopRequest(on_stop=lambda: calls.append(1)) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT" and calls == [1]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # still a request; the first signal's name stays
        assert stop.name == "SIGINT" and calls == [1, 1]
    assert signal.getsignal(signal.SIGINT) is before


def test_an_ignored_sigint_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job a non-interactive shell backgrounds
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
