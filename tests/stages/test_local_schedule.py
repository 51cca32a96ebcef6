"""The local runner schedules the plan as Argo schedules its DAG: a stage starts when its needs are done,
independent stages side by side up to --workers, the cores shared, and after a failure no new stage starts."""

from __future__ import annotations

import threading
import time

import pytest

from lt_ssl.config import load_config
from lt_ssl.pipeline import local
from lt_ssl.pipeline.contract import plan_of, write_output
from lt_ssl.pipeline.plan import OPTIONAL
from lt_ssl.pipeline.report import GROUPS
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART

CLUSTERS = [0, 1, 2]


def fake_run(monkeypatch, tmp_path, workers: int, fail: dict[str, int] | None = None, cpus: int = 2):
    """Run the quickstart's recipe with every stage process replaced by a stand-in that takes a few ms
    and hands on what the real stage would (cluster ids, metrics). -> (exit code, events)."""
    monkeypatch.setenv("LT_SSL_THREADS", str(cpus))
    run_uri = (tmp_path / "run").as_uri()
    store = open_store(run_uri)
    plan = plan_of(load_config(QUICKSTART))
    lock = threading.Lock()
    events: list[dict] = []

    def stand_in(argv, threads, device, debug, progress=True) -> int:
        name = argv[2] + (f"/{argv[argv.index('--cluster') + 1]}" if "--cluster" in argv else "")
        t0 = time.monotonic()
        time.sleep(0.15 if argv[2] == "baseline" else 0.03)  # the baseline is the long branch, as in real runs
        stage = plan.stage(argv[2])
        if stage.output:
            fake = CLUSTERS if stage.output.is_file else {"models": {
                m: {e: {g: 0.5 for g in GROUPS} for e in ("knn", "linear")} for m in ("base", "student")}}
            if stage.takes_config:  # as prepare writes it: which optional stages the run wants
                fake = {s.name: s.name in plan.names for s in OPTIONAL}
            store.write_json(stage.output.source, fake)
            write_output(stage.output, store, argv[argv.index(stage.output.flag) + 1])
        with lock:
            events.append({"task": name, "start": t0, "end": time.monotonic(), "threads": threads,
                           "progress": progress})
        return (fail or {}).get(name, 0)

    monkeypatch.setattr(local, "_execute", stand_in)
    code = local.run(QUICKSTART, [], run_uri, workers=workers, device=None, debug=False)
    return code, {e["task"]: e for e in events}


def overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_one_worker_runs_the_plan_in_order_with_every_core(monkeypatch, tmp_path):
    code, ev = fake_run(monkeypatch, tmp_path, workers=1)
    assert code == 0
    order = sorted(ev, key=lambda t: ev[t]["start"])
    assert order == ["prepare", "pretrain", "baseline", "cluster", "expert/0", "expert/1", "expert/2", "distill",
                     "evaluate"]
    assert all(e["threads"] == 2 and e["progress"] for e in ev.values())
    assert not any(overlap(ev[a], ev[b]) for a in ev for b in ev if a < b)


def test_independent_stages_run_side_by_side_and_needs_still_hold(monkeypatch, tmp_path):
    code, ev = fake_run(monkeypatch, tmp_path, workers=2)
    assert code == 0
    # the baseline needs only the prepared data: it trains beside the base model and the recipe's later stages
    assert overlap(ev["baseline"], ev["pretrain"]) and overlap(ev["baseline"], ev["cluster"])
    plan = plan_of(load_config(QUICKSTART))
    for stage in plan.stages:  # every task starts after every task of every stage it needs has ended
        for task in [t for t in ev if t.split("/")[0] == stage.name]:
            for need in stage.needs:
                assert all(ev[t]["end"] <= ev[task]["start"] for t in ev if t.split("/")[0] == need), (task, need)
    assert ev["prepare"]["threads"] == 2 and ev["prepare"]["progress"]  # alone: every core, its progress line
    assert ev["baseline"]["threads"] == ev["pretrain"]["threads"] == 1  # side by side: one core each
    assert not ev["baseline"]["progress"]  # two progress lines on one terminal would overwrite each other


def test_after_a_failure_no_new_stage_starts_but_running_ones_finish(monkeypatch, tmp_path, capsys):
    code, ev = fake_run(monkeypatch, tmp_path, workers=2, fail={"pretrain": 5})
    assert code == 5
    assert ev["baseline"]["end"] > ev["pretrain"]["end"]  # running beside it, the baseline finishes and is kept
    assert not any(t.startswith(("cluster", "expert", "distill", "evaluate")) for t in ev)
    assert "stage pretrain failed (exit 5)" in capsys.readouterr().err


def test_a_stage_waits_for_a_free_worker(monkeypatch, tmp_path):
    code, ev = fake_run(monkeypatch, tmp_path, workers=2)
    starts = sorted(e["start"] for e in ev.values())
    assert code == 0
    assert all(sum(e["start"] <= t < e["end"] for e in ev.values()) <= 2 for t in starts)


def test_cluster_failure_starts_no_expert(monkeypatch, tmp_path, capsys):
    code, ev = fake_run(monkeypatch, tmp_path, workers=2, fail={"cluster": 5})
    assert code == 5
    assert not any(t.startswith(("expert", "distill", "evaluate")) for t in ev)
    assert "stage cluster failed (exit 5)" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_expert_still_lets_its_siblings_run(monkeypatch, tmp_path, workers):
    code, ev = fake_run(monkeypatch, tmp_path, workers=workers, fail={"expert/0": 4})
    assert code == 4
    assert {"expert/0", "expert/1", "expert/2"} <= set(ev)  # as Argo runs every withParam item
    assert "distill" not in ev and "evaluate" not in ev
