"""A progress line for people at a terminal: one self-overwriting line with the position, rate and ETA.

Written here rather than taken from tqdm/rich: neither is in the environment, and a line is all we need.
When stderr is not a terminal (pods, CI, tests) it prints nothing; callers keep their one line per epoch.
"""

from __future__ import annotations

import os
import sys
import time

PROGRESS_ENV = "LT_SSL_PROGRESS"  # "0": no progress line (the local runner sets it for stages that run side by side)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """`with Progress(total, "pretrain", start=done) as bar: bar.update(n, "epoch 3/10 loss 0.41")`."""

    width = 24  # characters of the bar itself
    interval = 0.1  # seconds between redraws: a fast loop must not spend its time writing to the terminal

    def __init__(self, total: int, desc: str, unit: str = "img", start: int = 0, enabled: bool | None = None):
        self.total, self.desc, self.unit = max(total, 1), desc, unit
        self.done = self.start = start
        self.enabled = sys.stderr.isatty() and os.environ.get(PROGRESS_ENV) != "0" if enabled is None else enabled
        self.t0 = self.last = time.perf_counter()
        self.note = ""

    def __enter__(self) -> Progress:
        return self

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        self.note = note or self.note
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.interval or self.done >= self.total):
            self.last = now
            self._draw(now)

    def line(self, now: float) -> str:
        frac = min(self.done / self.total, 1.0)
        rate = (self.done - self.start) / max(now - self.t0, 1e-9)  # this process's own speed, not a resumed run's
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(frac * self.width)
        return (f"{self.desc} [{bar:<{self.width}}] {frac:4.0%} {self.note} "
                f"{rate:.0f} {self.unit}/s ETA {_clock(eta)} elapsed {_clock(now - self.t0)}")

    def _draw(self, now: float) -> None:
        sys.stderr.write("\r" + self.line(now) + "\x1b[K")  # \x1b[K clears what a longer previous line left
        sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            sys.stderr.write("\n")
            sys.stderr.flush()
