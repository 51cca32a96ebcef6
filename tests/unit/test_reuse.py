"""pipeline/reuse.py: which finished stages a run takes from a donor run, and what it leaves alone."""

from __future__ import annotations

import pytest

from lt_ssl.config import EVALUATE_ONLY, config_hash, load_config, training_hash
from lt_ssl.pipeline.contract import write_config_once
from lt_ssl.pipeline.reuse import REUSED, reuse_stages, stages_before_evaluate
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART

PLAIN = ["plan=plain", "pretrain.epochs=3"]


def _donor(tmp_path, overrides=PLAIN, finished=("prepare", "pretrain")):
    """A run with the plain plan whose `finished` stages have outputs, a checkpoint and a _SUCCESS.json."""
    store = open_store((tmp_path / "donor").as_uri())
    cfg = load_config(QUICKSTART, list(overrides))
    write_config_once(store, cfg)
    for stage in ("prepare", "pretrain"):
        store.write_bytes(f"{stage}/out.bin", stage.encode())
        store.write_bytes(f"{stage}/ckpt/step-1.pt", b"weights mid-training")
        if stage in finished:
            store.write_json(f"{stage}/_SUCCESS.json", {"config_hash": config_hash(cfg), "seconds": 60.0,
                                                        "provenance": {"git_commit": "abc"}})
    return store


def test_evaluate_only_keys_leave_the_training_identity_alone():
    base = load_config(QUICKSTART, PLAIN)
    probed = load_config(QUICKSTART, [*PLAIN, "evaluate.knn_k=20", "evaluate.protocol=balanced_subset",
                                      "evaluate.extra_probes=[head_layers,finetune]"])
    assert config_hash(base) != config_hash(probed) and training_hash(base) == training_hash(probed)
    # the cluster stage extracts its features in batches of evaluate.batch_size: not an evaluate-only key
    assert "evaluate.batch_size" not in EVALUATE_ONLY
    assert training_hash(load_config(QUICKSTART, [*PLAIN, "evaluate.batch_size=64"])) != training_hash(base)
    assert training_hash(load_config(QUICKSTART, ["plan=plain", "pretrain.epochs=4"])) != training_hash(base)
    assert stages_before_evaluate(base) == ["prepare", "pretrain"]
    assert stages_before_evaluate(load_config(QUICKSTART, [])) == ["prepare", "pretrain", "baseline", "cluster",
                                                                   "expert", "distill"]


def test_a_run_that_differs_only_in_its_probe_takes_the_finished_stages_without_checkpoints(tmp_path):
    donor = _donor(tmp_path)
    store = open_store((tmp_path / "taker").as_uri())
    cfg = load_config(QUICKSTART, [*PLAIN, "evaluate.knn_k=20"])
    assert reuse_stages(store, cfg, [store.uri, donor.uri]) == (donor.uri, ["prepare", "pretrain"])  # not itself
    for stage in ("prepare", "pretrain"):
        assert store.read_bytes(f"{stage}/out.bin") == stage.encode()
        record = store.read_json(f"{stage}/_SUCCESS.json")
        assert record["config_hash"] == config_hash(cfg) and record["seconds"] == 60.0
        assert record[REUSED] == {"run": donor.uri, "config_hash": config_hash(load_config(QUICKSTART, PLAIN))}
    assert not [k for k in store.list() if "/ckpt/" in k]
    assert store.exists("config.yaml")
    assert reuse_stages(store, cfg, [donor.uri]) == (None, [])  # nothing left to take


@pytest.mark.parametrize("overrides", [["plan=plain", "pretrain.epochs=4"], ["plan=plain", "pretrain.epochs=3",
                                                                             "evaluate.batch_size=64"]])
def test_a_run_that_trains_anything_differently_takes_nothing(tmp_path, overrides):
    donor = _donor(tmp_path)
    store = open_store((tmp_path / "taker").as_uri())
    assert reuse_stages(store, load_config(QUICKSTART, overrides), [donor.uri, (tmp_path / "none").as_uri()]).tasks == []
    assert store.list() == []


def test_reuse_stops_at_a_stage_the_donor_has_not_finished_or_the_run_has_begun(tmp_path):
    cfg = load_config(QUICKSTART, [*PLAIN, "evaluate.knn_k=20"])
    unfinished = _donor(tmp_path, finished=("prepare",))
    taker = open_store((tmp_path / "taker").as_uri())
    assert reuse_stages(taker, cfg, [unfinished.uri]).tasks == ["prepare"]
    assert not taker.list("pretrain")
    begun = open_store((tmp_path / "begun").as_uri())
    begun.write_bytes("pretrain/ckpt/step-9.pt", b"this run's own progress")
    assert reuse_stages(begun, cfg, [_donor(tmp_path / "full").uri]).tasks == ["prepare"]
    assert begun.list("pretrain") == ["pretrain/ckpt/step-9.pt"]  # left alone: the run resumes it itself
    assert begun.read_bytes("pretrain/ckpt/step-9.pt") == b"this run's own progress"


def test_a_run_with_its_own_first_stage_takes_nothing_and_a_rerun_copies_nothing_twice(tmp_path):
    cfg = load_config(QUICKSTART, [*PLAIN, "evaluate.knn_k=20"])
    donor = _donor(tmp_path)
    own = open_store((tmp_path / "own").as_uri())
    write_config_once(own, cfg)
    own.write_bytes("prepare/out.bin", b"its own subset")
    own.write_json("prepare/_SUCCESS.json", {"config_hash": config_hash(cfg), "seconds": 1.0})
    assert reuse_stages(own, cfg, [donor.uri]).tasks == []  # its pretrain must read its own prepare
    assert own.read_bytes("prepare/out.bin") == b"its own subset" and not own.list("pretrain")
    taker = open_store((tmp_path / "taker").as_uri())
    assert reuse_stages(taker, cfg, [donor.uri]).tasks == ["prepare", "pretrain"]
    other = _donor(tmp_path / "twin")  # trains the same models: a rerun must not mix the two donors
    assert reuse_stages(taker, cfg, [other.uri, donor.uri]) == (None, [])
