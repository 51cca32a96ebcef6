"""Paired differences between an experiment's report rows: does a method (or a data setting) help, split by split?

An experiment's question is a difference (balanced − long-tailed; +C+D − SimSiam; PMSN − MSN), and the rows'
mean ± std hide whether it holds on every split: two rows 0.5 apart with stds of 1.0 may differ by +0.5 on
every split, or by +2 and −1. Cells of the same split share their data (the subset, its class order, the probe
sets) and seed, so the difference is taken per split and then averaged, as a paired test does:

    d_s = acc(row, s) − acc(reference row, s)   for each split (and seed) s where both rows have finished
    reported: mean_s d_s ± sample std_s d_s, and in how many of those s the row is ahead (d_s > 0)

A pair whose two cells ran on different devices (CUDA in bf16, CPU in float32) is still taken, and counted as
such: the device moves accuracies by as much as methods differ, so such a d_s holds the device's shift too.

An experiment file asks for them under `differences:` (a list); `by` is `variant` or an axis key, and the
reference row is the one with `by` = `reference` and every other axis value the same:

    differences:
      - {by: variant, reference: SimSiam}                  # every other variant minus SimSiam
      - {by: data.subset, reference: longtail}             # balanced (and full) minus long-tailed
      - {by: variant, reference: MSN, rows: [PMSN]}        # only these values of `by`
      - {by: cluster.k, reference: ""}                     # "": the cells that leave the axis at the base config's

A row with no reference row (a K-sweep cell whose group trains no baseline) gets no difference.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, Sequence

from .config import _resolve_key
from .errors import ConfigError
from .stats import csv_mean_std, fmt_points, mean_std

# The accuracies a difference is taken of: overall and on the rare classes, where long-tail methods claim to help.
DIFF_GROUPS = ("top1", "few")


@dataclass(frozen=True)
class Difference:
    by: str  # "variant" or a full axis key
    reference: Any  # the value of `by` of the reference row
    rows: tuple[Any, ...] | None = None  # the values of `by` to report; None: every other value


def parse(raw: Any, variants: Sequence[str]) -> tuple[Difference, ...]:
    """The experiment file's `differences:` list; an axis key resolves as an override's does (its one-line error)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("experiment `differences` must be a list of {by, reference[, rows]} mappings")
    out = []
    for item in raw:
        if not isinstance(item, dict) or set(item) - {"by", "reference", "rows"} or not {"by", "reference"} <= set(item):
            raise ConfigError(f"each of `differences` must be a mapping with `by`, `reference` and optional `rows`, "
                              f"got {item!r}")
        by = item["by"] if item["by"] == "variant" else _resolve_key(str(item["by"]))
        rows = item.get("rows")
        if rows is not None and not isinstance(rows, list):
            raise ConfigError(f"`differences` rows must be a list of values of {by}, got {rows!r}")
        if by == "variant" and any(v not in variants for v in [item["reference"], *(rows or [])]):
            raise ConfigError(f"`differences` by variant: reference and rows must be variant names among: "
                              f"{', '.join(variants)}")
        out.append(Difference(by, item["reference"], None if rows is None else tuple(rows)))
    return tuple(out)


def _label(d: Difference) -> str:
    if d.by == "variant":
        return str(d.reference)
    return f"{d.by}={d.reference}" if d.reference != "" else f"{d.by} of the base config"


def _value(row: dict, by: str) -> Any:
    return row["variant"] if by == "variant" else row.get(by)


def paired(diffs: Sequence[Difference], rows: list[dict], row_axes: Sequence[str], evals: Sequence[str]) -> list[dict]:
    """One dict per (difference, row with a reference row): {"row", axis values..., "reference", "pairs",
    "cross_device" (how many of the pairs ran on two known devices; without "repeat_devices", none), and per
    eval and DIFF_GROUPS group "<eval>_<group>": (mean, std) of d_s and "<eval>_<group>_ahead": the count of
    d_s > 0}. Rows come from experiment.aggregate and carry "repeats": {repeat key: {"<eval>_<group>": acc}}."""
    out = []
    models = [r for r in rows if r["variant"] != "floor"]
    for d in diffs:
        others = [a for a in row_axes if a != d.by]
        for r in models:
            value = _value(r, d.by)
            if value == d.reference or (d.rows is not None and value not in d.rows):
                continue
            ref = next((q for q in models if _value(q, d.by) == d.reference
                        and all(q.get(a) == r.get(a) for a in others)
                        and (d.by == "variant" or q["variant"] == r["variant"])), None)  # by an axis: same variant
            if ref is None:
                continue
            shared = [k for k in r["repeats"] if k in ref["repeats"]]
            devices = r.get("repeat_devices", {}), ref.get("repeat_devices", {})
            entry: dict[str, Any] = {"row": r["row"], **{a: r.get(a) for a in row_axes},
                                     "reference": _label(d),
                                     "pairs": len(shared),
                                     "cross_device": sum(bool(a and b and a != b) for a, b in
                                                         ((devices[0].get(k), devices[1].get(k)) for k in shared))}
            for e in evals:
                for g in DIFF_GROUPS:
                    key = f"{e}_{g}"
                    ds = [r["repeats"][k][key] - ref["repeats"][k][key] for k in shared
                          if r["repeats"][k].get(key) is not None and ref["repeats"][k].get(key) is not None]
                    entry[key] = mean_std(ds) if ds else None
                    entry[f"{key}_ahead"] = sum(x > 0 for x in ds)
                    entry[f"{key}_n"] = len(ds)
            if entry["pairs"]:
                out.append(entry)
    return out


def markdown(entries: list[dict], row_axes: Sequence[str], evals: Sequence[str]) -> str:
    """The differences as a markdown section; "" when there are none."""
    if not entries:
        return ""
    cols = [f"{e} {'all' if g == 'top1' else g}" for e in evals for g in DIFF_GROUPS]
    head = ["row", *row_axes, "minus", "splits paired", *cols, *[f"{e} all ahead" for e in evals]]
    lines = ["## Paired differences", "",
             "Row minus reference, in accuracy points, taken split by split (same data, same seed) and then averaged: "
             "mean ± sample std of the per-split differences. \"ahead\": in how many of the paired splits the row "
             "is above its reference (each evaluation, overall). With one split there is no std, and no evidence "
             "either way beyond that split.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in entries:
        ahead = [f"{x[f'{e}_top1_ahead']}/{x[f'{e}_top1_n']}" for e in evals]
        vals = [fmt_points(x[f"{e}_{g}"], signed=True) for e in evals for g in DIFF_GROUPS]
        pairs = str(x["pairs"]) + (f" ({x['cross_device']} across devices)" if x.get("cross_device") else "")
        lines.append("| " + " | ".join([x["row"], *[str(x[a]) for a in row_axes], x["reference"], pairs,
                                        *vals, *ahead]) + " |")
    return "\n".join(lines) + "\n"


def csv_text(entries: list[dict], row_axes: Sequence[str], evals: Sequence[str]) -> str:
    """The differences as CSV: one line per entry, mean and std of d_s per eval and group, and the ahead counts."""
    cols = ["row", *row_axes, "reference", "pairs", "cross_device"]
    stats = [f"{e}_{g}_{x}" for e in evals for g in DIFF_GROUPS for x in ("mean", "std", "ahead", "n")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols + stats)
    for x in entries:
        vals = [v for e in evals for g in DIFF_GROUPS
                for v in (*csv_mean_std(x[f"{e}_{g}"]), x[f"{e}_{g}_ahead"], x[f"{e}_{g}_n"])]
        w.writerow([x[c] for c in cols] + vals)
    return buf.getvalue()
