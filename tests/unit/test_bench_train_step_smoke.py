"""benchmarks/train_step.py --quick runs both pipelines and writes its JSON fields (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load_train_step():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_quick_mode_writes_every_field(tmp_path: Path) -> None:
    bench = _load_train_step()
    out = tmp_path / "train_step.json"
    report = bench.main(["--quick", "--steps", "2", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["quick"] is True and report["command"].startswith("benchmarks/train_step.py --quick")
    (row,) = report["results"]
    assert (row["setting"], row["threads"], row["steps_per_round"]) == ("small_cnn@16", 1, 2)
    sides = ["ours", "theirs_workers0", "theirs_workers1"] + (["ours_float32"] if row["bf16_autocast"] else [])
    for side in sides:
        assert row[f"{side}_images_per_s"] > 0
        assert len(row[f"{side}_images_per_s_all"]) == 1
        if side != "ours":
            assert row[f"ratio_vs_{side}"] > 0
    assert 0 < row["augment_share"] < 1
    assert len(row["load_average_1min"]) == 1
