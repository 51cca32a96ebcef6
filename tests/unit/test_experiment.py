"""Experiment files: parsing, one-line errors, cell ids, and the report's aggregation over splits."""

from __future__ import annotations

import math
import os
import statistics

import pytest

from lt_ssl import differences
from lt_ssl.config import load_config, training_hash
from lt_ssl.errors import ConfigError
from lt_ssl.experiment import (aggregate, cell_devices, code_line, compute_line, device_line, evals_in, load_experiment,
                               report_csv, report_markdown, stage_seconds)
from tests.conftest import REPO

BASE = "name: t\nconfig: configs/quickstart.yaml\n"


def _exp(tmp_path, body: str):
    path = tmp_path / "e.yaml"
    path.write_text(BASE + body)
    return load_experiment(path)


def test_cells_are_the_product_with_readable_deterministic_ids(tmp_path):
    body = ("variants:\n  SimSiam+D: {overrides: [cluster.k=1], model: student}\n  B: {}\n"
            "axes:\n  data.imbalance: [10, 100.0]\n  split: [0, 1]\n")
    exp = _exp(tmp_path, body)
    ids = [c.id for c in exp.cells]
    assert ids[:2] == ["simsiam-d--imbalance-10--split-0", "simsiam-d--imbalance-10--split-1"]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert exp.axes == ("data.imbalance", "data.split")  # a bare leaf name resolves like an override
    assert exp.cells[0].overrides == ("cluster.k=1", "data.imbalance=10", "data.split=0")  # axis values last: they win
    assert [c.id for c in _exp(tmp_path, body).cells] == ids


def test_grid_list_is_a_union_and_variants_limit_a_grid(tmp_path):
    exp = _exp(tmp_path, "variants:\n  A: {}\n  B: {}\naxes:\n  - split: [0, 1]\n"
                         "  - {variants: [A], cluster.k: [5]}\n")
    assert [c.id for c in exp.cells] == ["a--split-0", "a--split-1", "a--k-5", "b--split-0", "b--split-1"]


@pytest.mark.parametrize("body, message", [
    ("axes:\n  data.nope: [1]\n", "unknown config key 'data.nope'"),
    ("axes:\n  data.split: []\n", "axis 'data.split' must be a non-empty list"),
    ("variants:\n  a b: {}\n  a-b: {}\naxes:\n  split: [0]\n", "duplicate cell id 'a-b--split-0'"),
    ("axis:\n  split: [0]\n", "unknown experiment key 'axis'"),
    ("variants:\n  A: {model: teacher}\n", "model must be one of"),
    ("variants:\n  A: {from: B}\n", "`from: B` must name a variant"),
    ("pending: [Z]\n", "`pending` must list variant names"),
    ("overrides: [cluster.kk=1]\n", "unknown config key 'cluster.kk'"),
])
def test_bad_experiment_files_fail_in_one_line(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        _exp(tmp_path, body)
    assert "\n" not in str(e.value)


def _metrics(values: dict[str, float]) -> dict:
    """A metrics.json whose every model/eval/group accuracy is values[model]."""
    rep = lambda v: {g: v for g in ("top1", "many", "medium", "few")}  # noqa: E731
    return {"models": {m: {"knn": rep(v), "linear": rep(v / 2)} for m, v in values.items()}}


def test_report_is_mean_and_sample_std_over_splits_with_floors_and_unfinished_rows(tmp_path):
    exp = _exp(tmp_path, "variants:\n  CD: {model: student}\n  S: {from: CD, model: base}\n  M: {}\n"
                         "pending: [M]\naxes:\n  imbalance: [10, 100]\n  split: [0, 1, 2]\n")
    acc = {"cd--imbalance-10--split-0": 0.70, "cd--imbalance-10--split-1": 0.74, "cd--imbalance-10--split-2": 0.75}
    metrics = {c.id: None for c in exp.cells}
    for cid, a in acc.items():
        metrics[cid] = _metrics({"student": a, "base": a - 0.1, "random": 0.3, "pixels": 0.5})
    metrics["cd--imbalance-100--split-0"] = _metrics({"student": 0.6, "base": 0.5, "random": 0.3, "pixels": 0.4})
    rows = aggregate(exp, metrics)
    by = {(r["row"], r["data.imbalance"]): r for r in rows}
    cd10 = by[("CD", 10)]
    values = list(acc.values())
    assert cd10["knn_top1"] == pytest.approx((statistics.mean(values), statistics.stdev(values)))
    assert cd10["linear_few"][0] == pytest.approx(sum(v / 2 for v in values) / 3)
    assert (cd10["finished"], cd10["total"], cd10["status"]) == (3, 3, "done")
    assert by[("S", 10)]["knn_top1"][0] == pytest.approx(statistics.mean(v - 0.1 for v in values))
    cd100 = by[("CD", 100)]
    assert (cd100["finished"], cd100["total"], cd100["status"]) == (1, 3, "partial")
    assert cd100["knn_top1"][0] == 0.6 and math.isnan(cd100["knn_top1"][1])  # one split: no std
    assert by[("M", 10)]["status"].startswith("pending") and by[("M", 10)]["knn_top1"] is None
    assert by[("random encoder (floor)", 10)]["knn_top1"][0] == pytest.approx(0.3)
    assert by[("raw pixels (floor)", 100)]["linear_top1"][0] == pytest.approx(0.2)
    md = report_markdown(exp, rows)
    assert "| CD | 10 | 3/3 | – | 73.0 ± 2.6 |" in md  # train min: no stage times given
    assert "| M | 100 | 0/3 (pending: method not registered yet) | – | – |" in md
    assert "| CD | 100 | 1/3 | – | 60.0 |" in md
    assert len(report_csv(exp, rows).splitlines()) == 1 + len(rows) == 1 + 2 * (3 + 2)


def test_floors_come_from_the_most_finished_variant_and_one_random_encoder_per_backbone(tmp_path):
    exp = _exp(tmp_path, "variants:\n  A: {}\n  B: {}\n  V: {overrides: [method.name=msn, backbone=vit_tiny]}\n"
                         "axes:\n  split: [0, 1]\n")
    metrics = {c.id: None for c in exp.cells}
    metrics["a--split-0"] = _metrics({"base": 0.6, "random": 0.1, "pixels": 0.4})
    for split, r in ((0, 0.2), (1, 0.3)):  # B has more finished cells than A: its floors are the ones shown
        metrics[f"b--split-{split}"] = _metrics({"base": 0.6, "random": r, "pixels": 0.5})
    metrics["v--split-1"] = _metrics({"base": 0.6, "random": 0.05, "pixels": 0.5})
    by = {r["row"]: r for r in aggregate(exp, metrics)}
    cnn, vit = by["random encoder, small_cnn (floor)"], by["random encoder, vit_tiny (floor)"]
    assert (cnn["finished"], cnn["knn_top1"][0]) == (2, pytest.approx(0.25))
    assert (vit["finished"], vit["knn_top1"][0]) == (1, pytest.approx(0.05))
    assert by["raw pixels (floor)"]["knn_top1"][0] == pytest.approx(0.5) and "random encoder (floor)" not in by


def test_report_carries_the_extra_probes_and_their_not_applicable_rows(tmp_path):
    """evaluate.extra_probes' columns appear when a finished cell has them; a null (n/a) probe averages nothing."""
    exp = _exp(tmp_path, "variants:\n  S: {}\naxes:\n  split: [0, 1]\n")
    rep = lambda v: {g: v for g in ("top1", "many", "medium", "few")}  # noqa: E731
    metrics = {c.id: _metrics({"base": 0.8, "random": 0.3, "pixels": 0.5}) for c in exp.cells}
    for m, p1 in zip(metrics.values(), (0.6, 0.7)):
        m["models"]["base"] |= {"linear_p1": rep(p1), "finetune": rep(0.9)}
        m["models"]["pixels"] |= {"linear_p1": None, "finetune": None}
    evals = evals_in(metrics)
    assert evals == ("knn", "linear", "linear_p1", "finetune")
    assert evals_in({c.id: _metrics({"base": 0.8}) for c in exp.cells}) == ("knn", "linear")
    rows = aggregate(exp, metrics, evals)
    by = {r["row"]: r for r in rows}
    assert by["S"]["linear_p1_top1"][0] == pytest.approx(0.65) and by["S"]["finetune_few"][0] == pytest.approx(0.9)
    assert by["raw pixels (floor)"]["linear_p1_top1"] is None and by["random encoder (floor)"]["finetune_top1"] is None
    md = report_markdown(exp, rows, evals)
    assert "linear_p1 all" in md and "finetune few" in md
    assert md.splitlines()[4].count("|") - 1 == 3 + 4 * 4  # row, cells done, train min (split averaged), 4 evals x 4 groups
    assert "| raw pixels (floor) | 2/2 | – | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 25.0 ± 0.0 |" in md
    pixels = next(line for line in md.splitlines() if line.startswith("| raw pixels"))
    assert pixels.endswith(" – |" * 8)  # its linear_p1 and finetune: not applicable
    assert "finetune_top1_mean" in report_csv(exp, rows, evals).splitlines()[0]


def test_paired_differences_cover_the_extra_probes_the_cells_report(tmp_path):
    exp = _exp(tmp_path, "variants:\n  S: {}\n  G: {}\naxes:\n  split: [0, 1]\n"
                         "differences:\n  - {by: variant, reference: S}\n")
    rep = lambda v: {g: v for g in ("top1", "many", "medium", "few")}  # noqa: E731
    metrics = {}
    for c in exp.cells:  # G's P1 is 3 points below S's on both splits, its kNN level
        metrics[c.id] = _metrics({"base": 0.8, "random": 0.3, "pixels": 0.5})
        metrics[c.id]["models"]["base"]["linear_p1"] = rep(0.85 if c.variant == "S" else 0.82)
    evals = evals_in(metrics)
    md = report_markdown(exp, aggregate(exp, metrics, evals), evals)
    diff = md.split("## Paired differences")[1]
    assert "linear_p1 all" in diff and "linear_p1 all ahead" in diff
    assert "| G | S | 2 | 0.0 ± 0.0 | 0.0 ± 0.0 | 0.0 ± 0.0 | 0.0 ± 0.0 | -3.0 ± 0.0 | -3.0 ± 0.0 | 0/2 | 0/2 | 0/2 |" in diff


def test_a_grid_s_overrides_apply_to_its_cells_and_a_from_variant_skips_cells_without_its_model(tmp_path):
    # Experiment II's K sweep: the same-budget baseline (the `from` variant S) is trained only in the K=3 grid.
    exp = _exp(tmp_path, "overrides: [baseline.enabled=true]\n"
                         "variants:\n  CD: {overrides: [cluster.k=3], model: student}\n  S: {from: CD, model: baseline}\n"
                         "axes:\n  - split: [0]\n"
                         "  - {overrides: [baseline.enabled=false], cluster.k: [2], split: [0]}\n")
    assert [(c.id, c.overrides) for c in exp.cells] == [
        ("cd--split-0", ("baseline.enabled=true", "cluster.k=3", "data.split=0")),
        ("cd--k-2--split-0", ("baseline.enabled=true", "cluster.k=3", "baseline.enabled=false", "cluster.k=2",
                              "data.split=0"))]  # grid overrides after the variant's, before the axis values
    metrics = {"cd--split-0": _metrics({"student": 0.7, "base": 0.6, "baseline": 0.65, "random": 0.3, "pixels": 0.5}),
               "cd--k-2--split-0": _metrics({"student": 0.72, "base": 0.6, "random": 0.3, "pixels": 0.5})}
    rows = [(r["row"], r["cluster.k"], r["status"]) for r in aggregate(exp, metrics) if r["variant"] != "floor"]
    assert rows == [("CD", "", "done"), ("S", "", "done"), ("CD", 2, "done")]  # no S row where no baseline trains
    with pytest.raises(ConfigError, match=r"an axes grid's `overrides` must be a list of key=value strings"):
        _exp(tmp_path, "axes:\n  - {overrides: cluster.k=2, split: [0]}\n")


def test_train_minutes_sum_the_stages_that_trained_the_row_s_model(tmp_path):
    # The recipe with a baseline: the student's stages exclude the baseline, the baseline's exclude the recipe's.
    exp = _exp(tmp_path, "overrides: [baseline.enabled=true]\n"
                         "variants:\n  CD: {model: student}\n  S: {from: CD, model: baseline}\naxes:\n  split: [0, 1]\n")
    metrics = {c.id: _metrics({"student": 0.7, "base": 0.6, "baseline": 0.65, "random": 0.3, "pixels": 0.5})
               for c in exp.cells}
    stage_s = {"prepare": 6, "pretrain": 600, "baseline": 1500, "cluster": 30, "expert": 300, "distill": 600,
               "evaluate": 240}
    seconds = {"cd--split-0": stage_s, "cd--split-1": {k: 2 * v for k, v in stage_s.items()}}
    by = {r["row"]: r for r in aggregate(exp, metrics, seconds=seconds)}
    student = (6 + 600 + 30 + 300 + 600) / 60  # prepare, pretrain, cluster, expert, distill; not baseline or evaluate
    assert by["CD"]["train_minutes"] == pytest.approx(1.5 * student)  # the mean of 1x and 2x
    assert by["S"]["train_minutes"] == pytest.approx(1.5 * (6 + 1500) / 60)
    assert by["raw pixels (floor)"]["train_minutes"] is None
    assert "| CD | 2/2 | 38 |" in report_markdown(exp, list(by.values()))


def test_compute_and_code_lines_read_the_cells_success_records():
    ok = lambda seconds, commit: {"seconds": seconds, "provenance": {"git_commit": commit}}  # noqa: E731
    successes = {"a": {"pretrain": ok(600, "838aa9ef05"), "expert/0": ok(100, "838aa9ef05"), "expert/1": ok(50, "838aa9ef05")},
                 "b": {"pretrain": ok(1200, "838aa9ef05"), "evaluate": ok(60, "5ba811e0aa")},  # resumed after an update
                 "c": {"pretrain": ok(900, "838aa9ef05")}}
    assert stage_seconds(successes)["a"] == {"pretrain": 600, "expert": 150}  # an expert stage's tasks summed
    hours = (600 + 150 + 1260 + 900) / 3600
    assert compute_line(successes).startswith(f"Compute so far: 3 finished cells, {hours:.1f} h")
    successes["c"]["pretrain"]["reused_from"] = {"run": "file:///elsewhere/c", "config_hash": "0123"}
    assert compute_line(successes).startswith(f"Compute so far: 3 finished cells, {hours - 900 / 3600:.1f} h")
    assert "1 stage tasks reused from other runs are not counted" in compute_line(successes)
    assert stage_seconds(successes)["c"] == {"pretrain": 900}  # the row's train minutes: the model's own training
    assert code_line(successes) == "Code: git commit 838aa9e (2 cells), 5ba811e+838aa9e (1 cell)."
    assert code_line({}) == "Code: no finished cell yet."


def test_devices_are_counted_per_cell_and_shown_per_row_only_where_a_table_mixes_them(tmp_path):
    on = lambda device, name=None: {"device": device, **({"device_name": name} if name else {})}  # noqa: E731
    successes = {"a--split-0": {"pretrain": on("cuda:0", "NVIDIA H200"), "evaluate": on("cuda", "NVIDIA H200")},
                 "a--split-1": {"pretrain": on("cpu")},  # a record older than device_name: the type alone
                 "b--split-0": {"pretrain": on("cpu", "cpu: AMD EPYC")},
                 "b--split-1": {"pretrain": on("cpu"), "evaluate": on("cuda")}}  # resumed elsewhere
    assert cell_devices(successes) == {"a--split-0": "cuda", "a--split-1": "cpu", "b--split-0": "cpu",
                                       "b--split-1": "cpu+cuda"}
    assert device_line(successes) == ("Device: cuda (NVIDIA H200) (1 cell), cpu (1 cell), cpu (AMD EPYC) (1 cell), "
                                      "cpu+cuda (1 cell).")
    assert device_line({}) == "Device: no finished cell yet."
    # a cell whose older records (reused from another run) lack the name: the named one of the same type
    mixed = {"c": {"pretrain": on("cpu"), "evaluate": on("cpu", "cpu: AMD EPYC")}}
    assert cell_devices(mixed, named=True) == {"c": "cpu (AMD EPYC)"}

    exp = _exp(tmp_path, "variants:\n  A: {}\n  B: {}\naxes:\n  split: [0, 1]\n")
    metrics = {c.id: _metrics({"base": 0.7, "random": 0.3, "pixels": 0.5}) for c in exp.cells}
    by = {r["row"]: r for r in aggregate(exp, metrics, devices=cell_devices(successes))}
    assert by["A"]["device"] == "cpu+cuda" and by["B"]["device"] == "cpu+cuda"
    text = report_markdown(exp, list(by.values()))
    assert "| row | cells done | train min |" in text  # one device label in all rows: no column
    one = {c: "cpu" for c in successes}
    one["a--split-0"] = "cuda"
    text = report_markdown(exp, aggregate(exp, metrics, devices=one))
    assert "| row | cells done | device | train min |" in text
    assert "| A | 2/2 | cpu+cuda | – |" in text and "| B | 2/2 | cpu | – |" in text
    assert ",device," in report_csv(exp, aggregate(exp, metrics)).splitlines()[0]  # the CSV always has it

    # A paired difference whose two cells ran on different devices is taken, and says so.
    exp = _exp(tmp_path, "variants:\n  A: {}\n  B: {}\naxes:\n  split: [0, 1]\n"
                         "differences:\n  - {by: variant, reference: A}\n")
    rows = aggregate(exp, metrics, devices=one)
    [entry] = differences.paired(exp.differences, rows, [], ("knn",))
    assert entry["pairs"] == 2 and entry["cross_device"] == 1  # split 0: B on cpu minus A on cuda
    assert "| B | A | 2 (1 across devices) |" in differences.markdown([entry], [], ("knn",))
    [same] = differences.paired(exp.differences, aggregate(exp, metrics), [], ("knn",))  # devices unknown
    assert same["cross_device"] == 0 and "| B | A | 2 |" in differences.markdown([same], [], ("knn",))


def test_paired_differences_are_taken_split_by_split_by_variant_and_by_axis(tmp_path):
    exp = _exp(tmp_path, "variants:\n  A: {}\n  B: {}\n"
                         "axes:\n  data.subset: [longtail, balanced]\n  split: [0, 1, 2]\n"
                         "differences:\n  - {by: variant, reference: A}\n  - {by: data.subset, reference: longtail}\n")
    knn = {("a", "longtail"): [0.70, 0.71, 0.72], ("b", "longtail"): [0.72, 0.74, 0.71],
           ("a", "balanced"): [0.73, 0.70, 0.75], ("b", "balanced"): [0.70, 0.75, None]}  # None: not finished
    metrics = {}
    for (v, subset), accs in knn.items():
        for s, acc in enumerate(accs):
            metrics[f"{v}--subset-{subset}--split-{s}"] = None if acc is None else _metrics(
                {"base": acc, "random": 0.3, "pixels": 0.5})
    rows = aggregate(exp, metrics)
    from lt_ssl.differences import paired

    got = {(x["row"], x["data.subset"], x["reference"]): x
           for x in paired(exp.differences, rows, ["data.subset"], ["knn", "linear"])}
    assert set(got) == {("B", "longtail", "A"), ("B", "balanced", "A"),
                        ("A", "balanced", "data.subset=longtail"), ("B", "balanced", "data.subset=longtail")}
    b_lt = got[("B", "longtail", "A")]  # 0.72-0.70, 0.74-0.71, 0.71-0.72
    assert b_lt["pairs"] == 3 and b_lt["knn_top1_ahead"] == 2 and b_lt["knn_top1_n"] == 3
    assert b_lt["knn_top1"][0] == pytest.approx((0.02 + 0.03 - 0.01) / 3)
    assert b_lt["knn_top1"][1] == pytest.approx(statistics.stdev([0.02, 0.03, -0.01]))
    assert b_lt["linear_top1"][0] == pytest.approx((0.02 + 0.03 - 0.01) / 6)  # _metrics: linear = knn / 2
    b_bal = got[("B", "balanced", "A")]  # split 2 of B balanced is unfinished: two pairs
    assert b_bal["pairs"] == 2 and b_bal["knn_few"][0] == pytest.approx((-0.03 + 0.05) / 2)
    a_axis = got[("A", "balanced", "data.subset=longtail")]  # balanced minus long-tailed, same variant
    assert a_axis["knn_top1"][0] == pytest.approx((0.03 - 0.01 + 0.03) / 3) and a_axis["knn_top1_ahead"] == 2
    md = report_markdown(exp, rows)
    assert "## Paired differences" in md
    assert "| B | longtail | A | 3 | +1.3 ± 2.1 |" in md


@pytest.mark.parametrize("body, message", [
    ("differences: {by: variant}\n", "`differences` must be a list"),
    ("differences:\n  - {by: variant}\n", "must be a mapping with `by`, `reference`"),
    ("variants:\n  A: {}\ndifferences:\n  - {by: variant, reference: Z}\n", "reference and rows must be variant names"),
    ("axes:\n  split: [0]\ndifferences:\n  - {by: cluster.k, reference: 3}\n", "not an axis of this experiment"),
])
def test_bad_differences_fail_in_one_line(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _exp(tmp_path, body)


def test_a_sweep_is_paired_with_the_cells_that_keep_the_base_config_value(tmp_path):
    exp = _exp(tmp_path, "variants:\n  CD: {model: student}\naxes:\n  - split: [0, 1]\n  - {cluster.k: [2], split: [0]}\n"
                         "differences:\n  - {by: cluster.k, reference: \"\"}\n")
    metrics = {"cd--split-0": _metrics({"student": 0.70, "random": 0.3, "pixels": 0.5}),
               "cd--split-1": _metrics({"student": 0.60, "random": 0.3, "pixels": 0.5}),
               "cd--k-2--split-0": _metrics({"student": 0.73, "random": 0.3, "pixels": 0.5})}
    md = report_markdown(exp, aggregate(exp, metrics))
    assert "| CD | 2 | cluster.k of the base config | 1 | +3.0 | +3.0 | +1.5 | +1.5 | 1/1 | 1/1 |" in md  # split 0 only


def test_the_probes_grid_trains_the_methods_grids_models_so_its_cells_reuse_their_training():
    # experiments/probes_p100.yaml repeats its variants' overrides from methods_p100.yaml: this keeps them one fact.
    methods, probes = (load_experiment(os.path.join(REPO, "experiments", f"{n}.yaml")) for n in ("methods_p100", "probes_p100"))
    by_id = {c.id: c for c in methods.cells}
    for cell in probes.cells:
        cfg = load_config(probes.config, list(cell.overrides))
        assert cfg.evaluate.extra_probes == ["head_layers", "finetune"]
        twin = load_config(methods.config, list(by_id[cell.id].overrides))
        assert training_hash(cfg) == training_hash(twin), cell.id
