"""Mean ± std over splits as the experiment reports compute and print it (one place for its conventions)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

MeanStd = tuple[float, float]


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean and sample standard deviation (n - 1); the std of a single value is NaN (unknown), not 0."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def fmt_points(ms: MeanStd | None, signed: bool = False) -> str:
    """An accuracy in [0, 1] as percentage points, "81.3 ± 0.9"; "–" for None; no std where it is unknown.
    signed: a difference, "+0.4 ± 1.0", with no sign on a value that rounds to 0.0."""
    if ms is None:
        return "–"
    mean, std = ms
    points = round(100 * mean, 1) + 0.0  # + 0.0: a -0.0 prints as 0.0
    text = f"{points:+.1f}" if signed and points else f"{points:.1f}"
    return text if math.isnan(std) else f"{text} ± {100 * std:.1f}"


def csv_mean_std(ms: MeanStd | None) -> list[str]:
    """[mean, std] as CSV fields in [0, 1]; empty where unknown."""
    if ms is None:
        return ["", ""]
    return [f"{ms[0]:.6f}", "" if math.isnan(ms[1]) else f"{ms[1]:.6f}"]
