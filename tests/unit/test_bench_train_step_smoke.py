"""benchmarks/train_step.py --quick runs both pipelines and writes its JSON fields (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_benchmark


def test_quick_mode_writes_every_field(tmp_path: Path) -> None:
    bench = load_benchmark("train_step")
    out = tmp_path / "train_step.json"
    report = bench.main(["--quick", "--steps", "2", "--repeats", "1", "--contiguous", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["quick"] is True and report["command"].startswith("benchmarks/train_step.py --quick")
    (row,) = report["results"]
    assert (row["setting"], row["threads"], row["steps_per_round"]) == ("small_cnn@16", 1, 2)
    sides = ["ours", "theirs_workers0", "theirs_workers1", "ours_float32_contiguous"] + (
        ["ours_float32"] if row["bf16_autocast"] else [])
    for side in sides:
        assert row[f"{side}_images_per_s"] > 0
        assert len(row[f"{side}_images_per_s_all"]) == 1
        if side != "ours":
            assert row[f"ratio_vs_{side}"] > 0
    assert row["channels_last_gain"] > 0
    assert 0 < row["augment_share"] < 1
    assert len(row["load_average_1min"]) == 1
