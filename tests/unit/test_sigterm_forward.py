"""ForwardSigterm: SIGTERM to this process reaches the children it started, and no child starts after it."""

from __future__ import annotations

import os
import signal

from lt_ssl.pipeline.sigterm import ForwardSigterm


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
    with ForwardSigterm() as fwd:
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
    fwd = ForwardSigterm()
    with fwd:
        os.kill(os.getpid(), signal.SIGTERM)
    with fwd:
        assert not fwd.stopping and fwd.start(_Child) is not None
