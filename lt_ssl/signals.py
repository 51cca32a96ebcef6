"""SIGTERM and SIGINT as one request: stop at the next safe point, keeping the work done so far.

SIGTERM is Kubernetes' eviction notice and what `kill` sends; SIGINT is Ctrl-C. Either asks the training loop
to write a checkpoint at its next step and exit 75 (EXIT_PREEMPTED), and asks a runner to pass the request on to
its stages or cells and start nothing new (pipeline/forward_stop.py). A second Ctrl-C is not a request but an
interrupt: it raises KeyboardInterrupt at once, as someone pressing it twice means. A SIGINT the process was
started ignoring (a job sent to the background by a non-interactive shell) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """While entered in the main thread (signal handlers live there; elsewhere nothing is installed): SIGTERM or a
    first SIGINT sets `name` ("SIGTERM" or "SIGINT"; the first one wins) and calls on_stop(). Handlers are
    restored on exit; entering again starts with no request."""

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.name: str | None = None
        self._on_stop = on_stop
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.name is not None

    def __enter__(self) -> StopRequest:
        self.name = None
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C interrupts at once
        if self.name is None:
            self.name = signal.Signals(signum).name
        if self._on_stop is not None:
            self._on_stop()

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
