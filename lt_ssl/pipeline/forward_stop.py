"""A stop request to a runner reaches its children, as Kubernetes' eviction notice reaches every container of a pod.

`lt-ssl run` starts each stage as a process and `lt-ssl experiment run` each cell as an `lt-ssl run`. Before,
SIGTERM ended the runner alone: its stages were then SIGKILLed (local._die_with_runner) and lost up to
`checkpoint_every` epochs, and an experiment's cells ran on unwatched. Now a runner that gets SIGTERM or Ctrl-C
(lt_ssl/signals.py) sends SIGTERM to every child it has started, starts no new one, waits for them (a training
stage writes its checkpoint at the next step and exits 75), and exits 75 (EXIT_PREEMPTED) itself; the same
command resumes. (Ctrl-C on a terminal also reaches the children directly: the request is the same.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from ..signals import StopRequest


class _Child(Protocol):
    def terminate(self) -> None: ...  # sends SIGTERM: multiprocessing.Process and subprocess.Popen alike


C = TypeVar("C", bound=_Child)


class ForwardStop:
    """While entered (in the main thread), a stop request sets `stopping` and sends SIGTERM to every child started
    through `start` and not yet released; `start` starts nothing once `stopping` is set."""

    def __init__(self) -> None:
        self._request = StopRequest(on_stop=self._forward)
        self._children: set[_Child] = set()
        # Re-entrant: the handler runs in the main thread, between any two of its bytecodes.
        self._lock = threading.RLock()

    @property
    def stopping(self) -> bool:
        return self._request.requested

    @property
    def signal_name(self) -> str | None:
        """The signal that asked to stop ("SIGTERM", "SIGINT"), None while none has."""
        return self._request.name

    def __enter__(self) -> ForwardStop:
        self._request.__enter__()  # one instance may serve runs one after another (the local runner's, in tests)
        return self

    def __exit__(self, *exc) -> None:
        self._request.__exit__(*exc)

    def _forward(self) -> None:
        with self._lock:
            children = list(self._children)
        for child in children:
            try:
                child.terminate()
            except OSError:  # it has just exited
                pass

    def start(self, make: Callable[[], C]) -> C | None:
        """make() (which starts a child) unless a stop came first; then None. Call release() when it ends."""
        with self._lock:
            if self.stopping:
                return None
            child = make()
            self._children.add(child)
            return child

    def release(self, child: _Child) -> None:
        with self._lock:
            self._children.discard(child)
