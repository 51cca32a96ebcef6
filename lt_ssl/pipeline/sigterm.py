"""SIGTERM to a runner reaches its children, as Kubernetes' eviction notice reaches every container of a pod.

`lt-ssl run` starts each stage as a process and `lt-ssl experiment run` each cell as an `lt-ssl run`. Without
this, SIGTERM ended the runner alone: its stages were then SIGKILLed (local._die_with_runner) and lost up to
`checkpoint_every` epochs, and an experiment's cells ran on unwatched. With it, a runner that gets SIGTERM
passes it to every child it has started, starts no new one, waits for them (a training stage writes its
checkpoint at the next step and exits 75), and exits 75 (EXIT_PREEMPTED) itself; the same command resumes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar


class _Child(Protocol):
    def terminate(self) -> None: ...  # sends SIGTERM: multiprocessing.Process and subprocess.Popen alike


C = TypeVar("C", bound=_Child)


class ForwardSigterm:
    """While entered (in the main thread), SIGTERM to this process sets `stopping` and is sent on to every child
    started through `start` that has not been released; `start` starts nothing once `stopping` is set."""

    def __init__(self) -> None:
        self.stopping = False
        self._children: set[_Child] = set()
        # Re-entrant: the handler runs in the main thread, between any two of its bytecodes.
        self._lock = threading.RLock()
        self._old = None

    def __enter__(self) -> ForwardSigterm:
        self.stopping = False  # one instance may serve runs one after another (the local runner's, in tests)
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None

    def _handle(self, signum, frame) -> None:
        with self._lock:
            self.stopping = True
            children = list(self._children)
        for child in children:
            try:
                child.terminate()
            except OSError:  # it has just exited
                pass

    def start(self, make: Callable[[], C]) -> C | None:
        """make() (which starts a child) unless a SIGTERM came first; then None. Call release() when it ends."""
        with self._lock:
            if self.stopping:
                return None
            child = make()
            self._children.add(child)
            return child

    def release(self, child: _Child) -> None:
        with self._lock:
            self._children.discard(child)
