"""A smoke run of every stage on tiny data, and the stage contract around them."""

import json

import numpy as np
import pytest

from lt_ssl.config import load_config
from lt_ssl.errors import CheckpointError, StageError
from lt_ssl.pipeline.stages import run_stage
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """One complete tiny run shared by the read-only checks below."""
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("run")
    store = open_store(root.as_uri())
    cfg = load_config(QUICKSTART, TINY)
    clusters_out = root.parent / "clusters.json"
    outputs = root.parent / "outputs"
    for name in ("prepare", "pretrain", "baseline"):
        assert run_stage(name, store, cfg if name == "prepare" else None) == "done"
    assert run_stage("cluster", store, None, output_path=str(clusters_out)) == "done"
    ids = json.loads(clusters_out.read_text())
    for k in ids:
        assert run_stage("expert", store, None, cluster=k) == "done"
    assert run_stage("distill", store, None) == "done"
    assert run_stage("evaluate", store, None, output_path=str(outputs)) == "done"
    return store, cfg, ids, outputs


def test_every_stage_writes_success_last_with_its_outputs(done_run):
    store, cfg, ids, _ = done_run
    prefixes = ["prepare", "pretrain", "baseline", "cluster", *[f"expert/{k}" for k in ids], "distill", "evaluate"]
    for prefix in prefixes:
        success = store.read_json(f"{prefix}/_SUCCESS.json")
        assert success["outputs"], prefix
        for key in success["outputs"]:
            assert store.exists(key), key
        assert success["provenance"]["versions"]["torch"]
        # the device as the report groups cells by it: its type, and the hardware's name (the CPU model here)
        assert success["device"] == "cpu" and success["device_name"].startswith("cpu"), prefix
    assert store.exists("config.yaml")


def test_cluster_outputs_are_consistent(done_run):
    store, cfg, ids, _ = done_run
    assignments = store.read_numpy("cluster/assignments.npy")
    sizes = store.read_json("cluster/sizes.json")["sizes"]
    subset = store.read_numpy("prepare/subset.npy")
    assert len(assignments) == len(subset) == sum(sizes)
    assert ids == [k for k, n in enumerate(sizes) if n > 0]
    assert store.read_bytes("cluster/scatter.png").startswith(b"\x89PNG")


def test_evaluate_writes_metrics_report_and_argo_outputs(done_run):
    store, cfg, ids, outputs = done_run
    metrics = store.read_json("evaluate/metrics.json")
    assert set(metrics["models"]) == {"pixels", "random", "base", "student", "baseline"}  # two floors first
    for by_eval in metrics["models"].values():
        for rep in by_eval.values():
            assert 0.0 <= rep["top1"] <= 1.0 and {"many", "medium", "few"} <= set(rep)
    assert "| student | knn |" in store.read_text("evaluate/report.md")
    value = float((outputs / "knn_top1_student").read_text())
    assert value == pytest.approx(metrics["models"]["student"]["knn"]["top1"], abs=1e-6)
    assert b"lt_ssl_eval_accuracy_ratio" in store.read_bytes("evaluate/metrics.prom")


def test_done_stages_are_skipped(done_run):
    store, cfg, ids, _ = done_run
    before = store.read_json("pretrain/_SUCCESS.json")
    assert run_stage("pretrain", store, None) == "skipped"
    assert store.read_json("pretrain/_SUCCESS.json") == before


def test_prepare_with_another_config_is_refused_and_changes_nothing(done_run):
    store, cfg, ids, _ = done_run
    before = store.read_text("config.yaml")
    other = load_config(QUICKSTART, ["cluster.k=2"])
    with pytest.raises(StageError, match="different config"):
        run_stage("prepare", store, other)
    assert store.read_text("config.yaml") == before


def test_unknown_expert_id(done_run):
    store, cfg, ids, _ = done_run
    with pytest.raises(StageError, match="does not exist"):
        run_stage("expert", store, None, cluster=max(ids) + 5)


def test_stage_needs_its_inputs(tmp_path):
    store = open_store(tmp_path.as_uri())
    with pytest.raises(StageError, match="no config.yaml"):
        run_stage("pretrain", store, None)
    run_stage("prepare", store, load_config(QUICKSTART))
    with pytest.raises(StageError, match="needs stage 'pretrain'"):
        run_stage("cluster", store, None)


def test_k_larger_than_images_is_a_clear_error(tmp_path, tiny_overrides):
    store = open_store(tmp_path.as_uri())
    run_stage("prepare", store, load_config(QUICKSTART, tiny_overrides + ["cluster.k=5000"]))
    run_stage("pretrain", store, None)
    with pytest.raises(StageError, match="larger than the number of training images"):
        run_stage("cluster", store, None)
    assert not store.exists("cluster/_SUCCESS.json")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny_overrides):
    store = open_store(tmp_path.as_uri())
    run_stage("prepare", store, load_config(QUICKSTART, tiny_overrides + ["pretrain.epochs=2"]))
    store.write_bytes("pretrain/ckpt/step-000000001.pt", b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        run_stage("pretrain", store, None)


def test_longtail_subset_recorded_with_groups(done_run):
    store, *_ = done_run
    info = store.read_json("prepare/info.json")
    counts = np.array(info["class_counts"])
    assert counts.sum() == info["subset_size"] == len(store.read_numpy("prepare/subset.npy"))
    assert counts.max() / counts.min() == pytest.approx(10, rel=0.1)  # imbalance 10 in the quickstart
    groups = info["groups"]
    assert sorted(groups["many"] + groups["medium"] + groups["few"]) == list(range(10))
    assert min(counts[groups["many"]]) >= max(counts[groups["few"]])


def test_resume_with_other_metrics_url_and_device_skips_every_stage(done_run, monkeypatch, capsys):
    """A run's identity is what changes results: a new Pushgateway URL or device resumes, and finds nothing to do."""
    from lt_ssl.pipeline import local
    from lt_ssl.pipeline.contract import read_config
    from tests.conftest import TINY

    store, cfg, ids, _ = done_run

    def no_stage_may_start(argv, *args):
        raise AssertionError(f"a finished stage was started again: {argv}")

    monkeypatch.setattr(local, "_execute", no_stage_may_start)
    overrides = [*TINY, "metrics.pushgateway_url=http://127.0.0.1:9/unreachable"]
    assert local.run(QUICKSTART, overrides, store.uri, workers=1, device="cpu", debug=False) == 0
    err = capsys.readouterr().err
    prefixes = ["prepare", "pretrain", "baseline", "cluster", *[f"expert/{k}" for k in ids], "distill", "evaluate"]
    for prefix in prefixes:
        assert f"[{prefix}] already done for config" in err, prefix
    # The stages still to run in this run would push to the new URL.
    assert read_config(store).metrics.pushgateway_url == "http://127.0.0.1:9/unreachable"
    new = load_config(QUICKSTART, overrides)
    for prefix in prefixes:  # and the stage contract, called directly on the new device, skips too
        stage, _, k = prefix.partition("/")
        assert run_stage(stage, store, new if stage == "prepare" else None, cluster=int(k) if k else None,
                         device="cpu") == "skipped"


def test_plain_plan_runs_and_evaluates_only_its_models(tmp_path, tiny_overrides):
    """The plain baseline is its own graph: prepare -> pretrain -> evaluate, nothing of the recipe."""
    store = open_store((tmp_path / "run").as_uri())
    run_stage("prepare", store, load_config(QUICKSTART, tiny_overrides + ["plan=plain"]))
    with pytest.raises(StageError, match="not in this run's plan 'plain'"):
        run_stage("cluster", store, None)
    with pytest.raises(StageError, match="needs stage 'pretrain'"):
        run_stage("evaluate", store, None)
    run_stage("pretrain", store, None)
    assert run_stage("evaluate", store, None, output_path=str(tmp_path / "outputs")) == "done"
    assert set(store.read_json("evaluate/metrics.json")["models"]) == {"pixels", "random", "base"}  # floors + its one model
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["knn_top1_base", "linear_top1_base"]
    report = store.read_text("evaluate/report.md")  # says what ran: no k-means line, no cluster figures
    assert "Plan `plain`: simsiam (small_cnn) pre-trained" in report
    assert "k-means" not in report and "../cluster/" not in report


def test_distill_needs_every_expert(tmp_path):
    """The needs check reads the fan-out: distill refuses to start while one expert is missing."""
    from lt_ssl.config import config_hash

    store = open_store(tmp_path.as_uri())
    cfg = load_config(QUICKSTART)
    run_stage_input = {"config_hash": config_hash(cfg)}
    from lt_ssl.pipeline.contract import write_config_once

    write_config_once(store, cfg)
    for prefix in ("prepare", "pretrain", "baseline", "cluster", "expert/0"):
        store.write_json(f"{prefix}/_SUCCESS.json", run_stage_input)
    store.write_json("cluster/clusters.json", [0, 2])
    with pytest.raises(StageError, match=r"stage distill needs every expert; experts \[2\] are not done"):
        run_stage("distill", store, None)


def test_prepare_that_failed_on_bad_data_reruns_with_fixed_config_under_the_same_run(tmp_path):
    from lt_ssl.errors import DataError

    store = open_store(tmp_path.as_uri())
    bad = load_config(QUICKSTART, ["data.dataset=cifar10", f"data.root={tmp_path / 'missing'}"])
    with pytest.raises(DataError):
        run_stage("prepare", store, bad)
    fixed = load_config(QUICKSTART)
    assert run_stage("prepare", store, fixed) == "done"
    assert load_config(QUICKSTART).data.dataset == "digits"
    from lt_ssl.pipeline.contract import read_config

    assert read_config(store) == fixed


def test_evaluate_with_gsimclr_probes_writes_them(tmp_path, tiny_overrides):
    """evaluate.extra_probes: linear probes along each model's projection head (P1, P2, ...) and the fine-tune,
    n/a (null with a reason) where a model has no projection head or no encoder weights."""
    store = open_store((tmp_path / "run").as_uri())
    probes = ["evaluate.extra_probes=[head_layers,finetune]", "evaluate.finetune.epochs=2",
              "baseline.method.proj_layers=3"]  # base: a 2-layer projector (quickstart), baseline: 3 layers
    cfg = load_config(QUICKSTART, tiny_overrides + probes)
    clusters_out = tmp_path / "clusters.json"
    for name in ("prepare", "pretrain", "baseline"):
        run_stage(name, store, cfg if name == "prepare" else None)
    run_stage("cluster", store, None, output_path=str(clusters_out))
    for k in json.loads(clusters_out.read_text()):
        run_stage("expert", store, None, cluster=k)
    run_stage("distill", store, None)
    assert run_stage("evaluate", store, None, output_path=str(tmp_path / "outputs")) == "done"

    metrics = store.read_json("evaluate/metrics.json")
    models = metrics["models"]
    evals = {"knn", "linear", "linear_p1", "linear_p2", "linear_p3", "finetune"}
    for name in ("pixels", "random", "base", "student", "baseline"):
        assert set(models[name]) == evals, name
    assert models["baseline"]["linear_p3"] == models["baseline"]["linear"]  # P3 of a 3-layer head: the backbone
    assert models["base"]["linear_p2"] == models["base"]["linear"] and models["base"]["linear_p3"] is None
    for name in ("base", "baseline"):
        for e in ("linear_p1", "finetune"):
            assert 0.0 <= models[name][e]["top1"] <= 1.0 and {"many", "medium", "few"} <= set(models[name][e])
    na = metrics["not_applicable"]
    assert na["base"] == {"linear_p3": "its projection head has 2 layers"}
    for name in ("pixels", "random", "student"):
        assert all(models[name][p] is None for p in ("linear_p1", "linear_p2", "linear_p3"))
        assert na[name]["linear_p1"] == "no projection head"
    assert models["pixels"]["finetune"] is None and na["pixels"]["finetune"] == "no encoder weights to fine-tune"
    assert models["random"]["finetune"] is not None and models["student"]["finetune"] is not None
    from lt_ssl.data.datasets import load_arrays

    per_class = np.bincount(load_arrays(cfg.data, train=True).labels)  # the probe set: the full training set
    assert metrics["finetune_train_size"] == sum(round(0.1 * n) for n in per_class)
    report = store.read_text("evaluate/report.md")
    assert "| baseline | linear_p1 |" in report and "| pixels | linear_p1 | n/a | n/a | n/a | n/a |" in report
    assert "| student | finetune |" in report and "G-SimCLR" in report
