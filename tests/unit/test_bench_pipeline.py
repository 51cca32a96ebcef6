"""benchmarks/pipeline.py's accounting of a run whose stages ran side by side (numbers made up, not measured)."""

from __future__ import annotations

import datetime as dt

import pytest

from lt_ssl.config import load_config
from lt_ssl.pipeline.contract import write_config_once
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART, load_benchmark

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_a_stage_starts_when_its_needs_are_done_and_a_worker_is_free(tmp_path):
    store = open_store(tmp_path.as_uri())
    write_config_once(store, load_config(QUICKSTART, ["cluster.k=2"]))
    # (stage, started, finished, train seconds, step seconds): two workers, the baseline beside the recipe
    stages = [("prepare", 1.0, 2.0, None, None), ("pretrain", 2.5, 10.0, 7.0, 6.5), ("baseline", 2.6, 30.0, 27.0, 26.0),
              ("cluster", 10.2, 11.0, None, None), ("expert/0", 11.1, 15.0, 3.5, 3.0),
              ("expert/1", 15.3, 20.0, 4.0, 3.9),  # queued behind expert/0: the baseline held the other worker
              ("distill", 20.4, 25.0, 4.0, 4.0), ("evaluate", 30.1, 33.0, None, None)]
    for name, started, finished, train, steps in stages:
        summary = {"train": {"seconds": train, "step_seconds": steps}} if train else {}
        store.write_json(f"{name}/_SUCCESS.json", {
            "started": (T0 + dt.timedelta(seconds=started)).isoformat(),
            "finished": (T0 + dt.timedelta(seconds=finished)).isoformat(),
            "seconds": finished - started, "summary": summary})
    table = load_benchmark("pipeline").stage_table(tmp_path.as_uri(), launched=T0.timestamp(), exited=T0.timestamp() + 34.0)
    rows = {r["stage"]: r for r in table["stages"]}
    starts = {name: rows[name]["start_s"] for name, *_ in stages}
    assert starts == pytest.approx({"prepare": 1.0, "pretrain": 0.5, "baseline": 0.6, "cluster": 0.2, "expert/0": 0.1,
                                    "expert/1": 0.3, "distill": 0.4, "evaluate": 0.1})  # evaluate waits for the baseline
    assert rows["pretrain"]["non_compute_s"] == pytest.approx(0.5 + 7.5 - 6.5)  # start + body outside the steps
    assert table["after_last_stage_s"] == pytest.approx(1.0)
    walls = sum(r["wall_s"] for r in rows.values()) + 1.0
    assert table["total_non_compute_share"] == pytest.approx(table["total_non_compute_s"] / walls, abs=1e-3)
