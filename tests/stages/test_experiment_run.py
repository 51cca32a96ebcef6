"""`lt-ssl experiment` end to end on experiments/tiny_digits.yaml: three tiny cells, resumption, the report."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import pytest

from lt_ssl.experiment import cell_uri, load_experiment, report
from lt_ssl.store import open_store
from tests.conftest import REPO

TINY = os.path.join(REPO, "experiments", "tiny_digits.yaml")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"LT_SSL_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lt_ssl", "experiment", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


PROBE_CELL = "simsiam-c-d--protocol-balanced-subset--split-0"  # split 0's models, probed another way


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("exp").as_uri()
    # The two splits side by side; then the cell that differs from split 0 only in its probe, which takes split 0's
    # trained stages instead of training them again.
    out = _cli("run", TINY, "--prefix", prefix, "--parallel", "2", "--cells", "simsiam-c-d--split-*")
    assert out.returncode == 0, out.stderr[-3000:]
    probe = _cli("run", TINY, "--prefix", prefix)
    assert probe.returncode == 0, probe.stderr[-3000:]
    exp = load_experiment(TINY)
    for cell in exp.cells:  # each cell's own output is shown as it comes, tagged with the cell's id
        if not cell.pending:
            log = probe.stderr if cell.id == PROBE_CELL else out.stderr
            assert f"[{cell.id}] run: {cell_uri(prefix, cell)}" in log and f"[{cell.id}] done" in log
            trained = f"[{cell.id}] $ lt-ssl stage pretrain" in log
            assert trained == (cell.id != PROBE_CELL), cell.id
    assert f"[{PROBE_CELL}] reused prepare, pretrain, baseline, cluster, expert/" in probe.stderr
    return prefix, exp


def test_a_cell_that_differs_only_in_its_probe_takes_the_trained_stages_and_evaluates_its_own_way(finished):
    prefix, exp = finished
    by_id = {c.id: c for c in exp.cells}
    donor, taker = (open_store(cell_uri(prefix, by_id[i])) for i in ("simsiam-c-d--split-0", PROBE_CELL))
    records = {k.rsplit("/", 1)[0]: taker.read_json(k) for k in taker.list() if k.endswith("/_SUCCESS.json")}
    own_hash = records["evaluate"]["config_hash"]
    assert own_hash != donor.read_json("evaluate/_SUCCESS.json")["config_hash"]  # another config: its own run
    for task, record in records.items():
        assert record["config_hash"] == own_hash, task  # every stage counts as done for this run's config
        if task == "evaluate":
            assert "reused_from" not in record
        else:  # the work, its time and provenance are the donor's
            assert record["reused_from"] == {"run": donor.uri, "config_hash": donor.read_json(
                f"{task}/_SUCCESS.json")["config_hash"]}, task
            assert record["seconds"] == donor.read_json(f"{task}/_SUCCESS.json")["seconds"]
    assert {"prepare", "pretrain", "cluster", "distill"} <= set(records)
    for key in ("pretrain/model.pt", "distill/model.pt", "prepare/subset.npy"):
        assert taker.read_bytes(key) == donor.read_bytes(key)
    assert not [k for k in taker.list() if "/ckpt/" in k]  # a finished stage's checkpoints stay behind
    # Its own probe: the balanced subset, on the same student
    assert taker.read_json("evaluate/metrics.json")["protocol"] == "balanced_subset"
    assert donor.read_json("evaluate/metrics.json")["protocol"] == "full_balanced"


def test_every_runnable_cell_finished_with_both_floors(finished):
    prefix, exp = finished
    for cell in exp.cells:
        store = open_store(cell_uri(prefix, cell))
        assert store.exists("evaluate/_SUCCESS.json") != cell.pending, cell.id
        if not cell.pending:
            models = store.read_json("evaluate/metrics.json")["models"]
            assert {"random", "pixels", "base", "student"} <= set(models)


def test_balanced_subset_protocol_probes_on_as_many_images_as_pretraining(finished):
    prefix, exp = finished
    by_id = {c.id: c for c in exp.cells}
    lt = open_store(cell_uri(prefix, by_id["simsiam-c-d--protocol-balanced-subset--split-0"]))
    full = open_store(cell_uri(prefix, by_id["simsiam-c-d--split-0"]))
    size = lt.read_json("prepare/info.json")["subset_size"]
    assert lt.read_json("evaluate/metrics.json")["probe_train_size"] == size
    assert full.read_json("evaluate/metrics.json")["probe_train_size"] == full.read_json("prepare/info.json")["num_images"]
    # groups come from the long-tailed pre-training counts, whichever probe set is used
    assert lt.read_json("evaluate/metrics.json")["groups"] == full.read_json("evaluate/metrics.json")["groups"]


def test_rerun_skips_finished_cells_and_rewrites_nothing(finished):
    prefix, exp = finished
    runnable = [c for c in exp.cells if not c.pending]
    key = "evaluate/_SUCCESS.json"
    before = {c.id: open_store(cell_uri(prefix, c)).read_bytes(key) for c in runnable}
    out = _cli("run", TINY, "--prefix", prefix)
    assert out.returncode == 0, out.stderr[-2000:]
    for c in runnable:
        assert f"[{c.id}] finished; skipping" in out.stderr
        assert open_store(cell_uri(prefix, c)).read_bytes(key) == before[c.id]


def test_a_changed_config_is_refused_and_leaves_the_cell_alone(finished, tmp_path):
    prefix, exp = finished
    changed = tmp_path / "changed.yaml"
    changed.write_text(open(TINY).read().replace("pretrain.epochs=1", "pretrain.epochs=2"))
    cell = exp.cells[0]
    config_before = open_store(cell_uri(prefix, cell)).read_bytes("config.yaml")
    out = _cli("run", str(changed), "--prefix", prefix)
    assert out.returncode != 0
    assert open_store(cell_uri(prefix, cell)).read_bytes("config.yaml") == config_before


def test_report_equals_mean_and_std_by_hand(finished, tmp_path):
    prefix, exp = finished
    rows = report(exp, prefix, tmp_path)
    cells = [c for c in exp.cells if c.variant == "SimSiam+C+D" and dict(c.values).get("evaluate.protocol") is None]
    metrics = [open_store(cell_uri(prefix, c)).read_json("evaluate/metrics.json")["models"] for c in cells]
    row = next(r for r in rows if r["row"] == "SimSiam+C+D" and r["evaluate.protocol"] == "")
    for model, label in (("student", "SimSiam+C+D"), ("pixels", "raw pixels (floor)")):
        row = next(r for r in rows if r["row"] == label and r["evaluate.protocol"] == "")
        for e in ("knn", "linear"):
            for g in ("top1", "many", "few"):
                values = [m[model][e][g] for m in metrics]
                assert row[f"{e}_{g}"] == pytest.approx((statistics.mean(values), statistics.stdev(values))), (label, e, g)
    assert row["finished"] == 2

    def stage_seconds(cell, stages):  # from each stage's _SUCCESS.json, the three experts' summed
        store = open_store(cell_uri(prefix, cell))
        return sum(store.read_json(k)["seconds"] for k in store.list() if k.endswith("/_SUCCESS.json")
                   and k.split("/")[0] in stages)

    base = next(r for r in rows if r["row"] == "SimSiam" and r["evaluate.protocol"] == "")  # the cells' base model
    assert base["train_minutes"] == pytest.approx(
        statistics.mean(stage_seconds(c, {"prepare", "pretrain"}) for c in cells) / 60)
    student = next(r for r in rows if r["row"] == "SimSiam+C+D" and r["evaluate.protocol"] == "")
    assert student["train_minutes"] == pytest.approx(statistics.mean(
        stage_seconds(c, {"prepare", "pretrain", "cluster", "expert", "distill"}) for c in cells) / 60)
    msn = next(r for r in rows if r["row"] == "MSN")
    assert msn["status"].startswith("pending") and msn["knn_top1"] is None
    for ext in ("md", "csv", "png"):
        assert (tmp_path / f"tiny_digits.{ext}").stat().st_size > 0
    md = (tmp_path / "tiny_digits.md").read_text()
    assert "| MSN |" in md and "raw pixels (floor)" in md and "random encoder (floor)" in md


def test_cells_runs_only_the_matching_cells(finished):
    import fnmatch
    import re

    prefix, exp = finished
    out = _cli("run", TINY, "--prefix", prefix, "--cells", "*--split-0")
    assert out.returncode == 0, out.stderr[-2000:]
    touched = re.findall(r"^\[(\S+)\] (?:finished|running|pending)", out.stderr, re.M)
    assert touched == [c.id for c in exp.cells if fnmatch.fnmatchcase(c.id, "*--split-0")]
    assert touched and len(touched) < len(exp.cells)
    bad = _cli("run", TINY, "--prefix", prefix, "--cells", "nope*")
    assert bad.returncode == 2 and "--cells nope* matches no cell" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
