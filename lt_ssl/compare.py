"""`lt-ssl compare --run URI --baseline FILE`: did a run's accuracy drop below a recorded baseline?

The baseline is JSON (configs/regression_baseline.json):

    {"config": "configs/regression.yaml",
     "config_hash": "<optional: evaluate/metrics.json's config_hash the numbers came from>",
     "tolerance": 0.03,                         # largest allowed drop, absolute (accuracy is 0..1)
     "metrics": {"student.knn.top1": 0.8123,    # path under metrics.json's "models"
                 "student.linear.few": {"value": 0.61, "tolerance": 0.08}}}

A metric regressed when `baseline - current > tolerance`; improvements never fail. Exit 0 when
nothing regressed, EXIT_REGRESSED (4) when something did, 2 for a bad baseline or a run without
metrics. With --outputs-dir, writes `worst_drop` (largest baseline - current; negative when all
improved) and `regressed` (how many metrics regressed) for Argo output parameters.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EXIT_REGRESSED, ConfigError, StageError

METRICS_KEY = "evaluate/metrics.json"


@dataclass(frozen=True)
class Row:
    metric: str
    baseline: float
    current: float
    tolerance: float

    @property
    def drop(self) -> float:
        return self.baseline - self.current if not math.isnan(self.current) else math.inf

    @property
    def regressed(self) -> bool:
        return self.drop > self.tolerance


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help="compare a run's metrics with a baseline; exit 4 if any regressed")
    p.add_argument("--run", required=True, help="run URI whose evaluate/metrics.json is compared")
    p.add_argument("--baseline", required=True, help="baseline JSON, e.g. configs/regression_baseline.json")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest allowed drop (absolute, 0..1) for metrics without their own; default: the file's")
    p.add_argument("--outputs-dir", default=None, help="write worst_drop and regressed here, one file each (Argo)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    p.set_defaults(func=main)
    return p


def load_baseline(path: str | Path) -> dict:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"baseline file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"baseline file {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("metrics"), dict):
        raise ConfigError(f"baseline file {path} must be a JSON object with a \"metrics\" object")
    if not raw["metrics"]:
        raise ConfigError(f"baseline file {path} holds no metrics yet; fill it from a measured run")
    tol = raw.get("tolerance")
    if not _is_number(tol) or tol < 0:
        raise ConfigError(f"baseline file {path}: \"tolerance\" must be a number >= 0, got {tol!r}")
    return raw


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def lookup(models: dict, path: str) -> float:
    """`student.knn.top1` -> models["student"]["knn"]["top1"]."""
    node: Any = models
    for part in path.removeprefix("models.").split("."):
        if not isinstance(node, dict) or part not in node:
            raise StageError(f"the run's {METRICS_KEY} has no metric {path!r}; it has models {sorted(models)} "
                             f"(paths look like student.knn.top1 or base.linear.few)")
        node = node[part]
    if not isinstance(node, (int, float)) or isinstance(node, bool):
        raise StageError(f"metric {path!r} in {METRICS_KEY} is not a number: {node!r}")
    return float(node)


def compare(metrics: dict, baseline: dict, tolerance: float | None = None) -> list[Row]:
    """One Row per baseline metric; `tolerance` replaces the file's default, not a metric's own."""
    if baseline.get("config_hash") and metrics.get("config_hash") != baseline["config_hash"]:
        raise ConfigError(f"the baseline was measured with config hash {baseline['config_hash']}, the run has "
                          f"{metrics.get('config_hash')}: the numbers are not comparable; re-measure the baseline")
    default = baseline["tolerance"] if tolerance is None else tolerance
    rows = []
    for path, spec in baseline["metrics"].items():
        value, tol = (spec.get("value"), spec.get("tolerance", default)) if isinstance(spec, dict) else (spec, default)
        if not _is_number(value) or not _is_number(tol) or tol < 0:
            raise ConfigError(f"baseline metric {path!r} needs a finite value and tolerance >= 0, got {spec!r}")
        rows.append(Row(path, float(value), lookup(metrics.get("models", {}), path), float(tol)))
    return rows


def table(rows: list[Row]) -> str:
    width = max([len("metric")] + [len(r.metric) for r in rows])
    lines = [f"{'metric':<{width}}  baseline  current   change  tolerance  status"]
    for r in rows:
        status = "REGRESSED" if r.regressed else "ok"
        lines.append(f"{r.metric:<{width}}  {r.baseline:8.4f}  {r.current:7.4f}  {-r.drop:+7.4f}  {r.tolerance:9.4f}  {status}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from .store import open_store

    baseline = load_baseline(args.baseline)
    if args.tolerance is not None and (not math.isfinite(args.tolerance) or args.tolerance < 0):
        raise ConfigError(f"--tolerance must be >= 0, got {args.tolerance}")
    store = open_store(args.run)
    if not store.exists(METRICS_KEY):
        raise StageError(f"{store.uri} has no {METRICS_KEY}: the evaluate stage has not finished there")
    rows = compare(store.read_json(METRICS_KEY), baseline, args.tolerance)
    worst = max(rows, key=lambda r: r.drop)
    regressed = [r for r in rows if r.regressed]
    if args.outputs_dir:
        os.makedirs(args.outputs_dir, exist_ok=True)
        with open(os.path.join(args.outputs_dir, "worst_drop"), "w") as f:
            f.write(f"{worst.drop:.6f}" if math.isfinite(worst.drop) else "1")  # NaN current counts as a full drop
        with open(os.path.join(args.outputs_dir, "regressed"), "w") as f:
            f.write(str(len(regressed)))
    if args.json:
        print(json.dumps({"run": store.uri, "regressed": [r.metric for r in regressed],
                          "rows": [{"metric": r.metric, "baseline": r.baseline, "current": r.current,
                                    "drop": r.drop if math.isfinite(r.drop) else None, "tolerance": r.tolerance, "regressed": r.regressed}
                                   for r in rows]}, indent=2))
    else:
        print(table(rows))
        print(f"\nworst drop {worst.drop:+.4f} ({worst.metric}); {len(regressed)} of {len(rows)} metrics "
              f"regressed beyond tolerance")
    if regressed:
        print(f"lt-ssl: regression: {', '.join(r.metric for r in regressed)} dropped beyond tolerance "
              f"against {args.baseline}", file=sys.stderr)
        return EXIT_REGRESSED
    return 0
