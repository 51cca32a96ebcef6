"""G-SimCLR: the round-robin batches by hand, the DAE loss against its formula, the pseudolabel stage, a digits run."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lt_ssl.config import load_config
from lt_ssl.data.samplers import round_robin_order
from lt_ssl.errors import ConfigError, StageError
from lt_ssl.losses import nt_xent_loss
from lt_ssl.methods import METHODS
from lt_ssl.methods.gsimclr import GSimCLR
from lt_ssl.models import build_backbone
from lt_ssl.pipeline.contract import plan_of
from lt_ssl.pipeline.plan import OPTIONAL
from lt_ssl.pipeline.stages import run_stage
from lt_ssl.pseudolabel import DenoisingAutoencoder, PseudoLabelConfig, dae_loss, latent_codes, settings, tsne_2d
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART
from tests.unit.methods.test_registry import tiny_batch


def _batches(labels: list[int], order: torch.Tensor, size: int) -> list[Counter]:
    """Label counts of each full batch, cut in order as the training loop cuts them."""
    seq = [labels[i] for i in order.tolist()]
    return [Counter(seq[i:i + size]) for i in range(0, len(seq) - size + 1, size)]


def test_round_robin_batches_by_hand():
    labels = [0, 0, 0, 0, 1, 1, 2]  # rounds: {0, 1, 2}, {0, 1}, {0}, {0}
    for seed in range(5):
        order = round_robin_order(torch.tensor(labels), torch.Generator().manual_seed(seed))
        assert sorted(order.tolist()) == list(range(7))  # every image once
        seq = [labels[i] for i in order.tolist()]
        assert sorted(seq[:3]) == [0, 1, 2] and sorted(seq[3:5]) == [0, 1] and seq[5:] == [0, 0]
        # batches of 3 (the ragged last one dropped): one of each label, then the big label's surplus
        assert _batches(labels, order, 3) == [Counter({0: 1, 1: 1, 2: 1}), Counter({0: 2, 1: 1})]


def test_round_robin_batch_size_k_gives_one_image_per_label_while_every_label_lasts():
    # K = 4 labels of sizes 3, 3, 2, 4 (values need not be 0..K-1), batches of K = 4: the paper's setting.
    labels = [7] * 3 + [2] * 3 + [5] * 2 + [9] * 4
    order = round_robin_order(torch.tensor(labels), torch.Generator().manual_seed(0))
    batches = _batches(labels, order, 4)
    # min size 2: two batches with each label once; round 3 has {7, 2, 9}, round 4 {9}.
    assert batches[:2] == [Counter({7: 1, 2: 1, 5: 1, 9: 1})] * 2
    assert batches[2] == Counter({7: 1, 2: 1, 9: 2})


def test_round_robin_reshuffles_members_between_epochs():
    labels = torch.tensor([0] * 10 + [1] * 10)
    a = round_robin_order(labels, torch.Generator().manual_seed(0))
    b = round_robin_order(labels, torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    for order in (a, b):  # still alternating: each pair of positions holds one image of each label
        assert all(sorted(labels[order[i:i + 2]].tolist()) == [0, 1] for i in range(0, 20, 2))


def test_dae_loss_is_the_mse_of_the_corrupted_reconstruction():
    torch.manual_seed(0)
    model = DenoisingAutoencoder(3).eval()
    x = torch.rand(4, 3, 16, 16)
    std = 0.01
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))  # the draw the loss will make
    expected = ((model(x + std * eps) - x) ** 2).sum() / x.numel()  # mean over B, C, H, W
    got = dae_loss(model, x, std, torch.Generator().manual_seed(3))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert dae_loss(model, x, 0.0, torch.Generator()).item() == pytest.approx(F.mse_loss(model(x), x).item(), rel=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 3, 28, 28), (2, 1, 20, 12)])
def test_dae_is_fully_convolutional_for_any_size_and_channels(shape):
    model = DenoisingAutoencoder(shape[1]).eval()
    x = torch.rand(shape)
    rec = model(x)
    assert rec.shape == x.shape and bool(((rec > 0) & (rec < 1)).all())  # the sigmoid's range
    codes = latent_codes(model, (x * 255).to(torch.uint8))
    assert codes.shape == (2, 128)
    assert torch.allclose(model.code(x), model.encode(x)[0].mean(dim=(2, 3)))


def test_tsne_draws_a_seeded_sample():
    codes = np.random.default_rng(0).normal(size=(40, 8))
    keep, xy = tsne_2d(codes, 20, seed=0)
    assert keep.shape == (20,) and xy.shape == (20, 2) and len(set(keep.tolist())) == 20
    assert np.array_equal(keep, tsne_2d(codes, 20, seed=0)[0])


def test_loss_is_simclr_nt_xent():
    torch.manual_seed(0)
    model = GSimCLR(build_backbone("small_cnn"), GSimCLR.Config(proj_dim=16, proj_hidden=32))
    batch = tiny_batch(model)
    z1, z2 = model.projector(model.backbone(torch.cat(batch.views))).chunk(2)
    assert model.loss(batch)["loss"].item() == pytest.approx(nt_xent_loss(z1, z2, 0.1).item(), rel=1e-5)


def test_epoch_order_needs_one_pseudolabel_per_image():
    model = GSimCLR(build_backbone("small_cnn"), GSimCLR.Config())
    with pytest.raises(StageError, match="pseudolabel stage"):
        model.epoch_order(4, torch.Generator())
    model.set_pseudolabels(torch.tensor([0, 1, 0]))
    with pytest.raises(StageError, match="3 pseudo-labels for 4"):
        model.epoch_order(4, torch.Generator())
    assert sorted(model.epoch_order(3, torch.Generator()).tolist()) == [0, 1, 2]


def test_methods_name_only_optional_stages_and_pseudolabel_users_carry_its_settings():
    optional = {s.name for s in OPTIONAL}
    for cls in METHODS.values():
        assert set(cls.needs_stages) <= optional, cls
        assert ("pseudolabel" in cls.needs_stages) == issubclass(cls.Config, PseudoLabelConfig), cls


def test_the_plan_has_the_pseudolabel_stage_only_when_a_method_needs_it():
    def names(*overrides):
        return plan_of(load_config(QUICKSTART, list(overrides))).names

    assert "pseudolabel" not in names() and "pseudolabel" not in names("plan=plain")
    assert names("method.name=gsimclr", "plan=plain") == ("prepare", "pseudolabel", "pretrain", "evaluate")
    assert "pseudolabel" in names("method.name=gsimclr")
    assert "pseudolabel" in names("baseline.method.name=gsimclr")  # the quickstart's baseline is enabled
    assert "pseudolabel" not in names("baseline.method.name=gsimclr", "baseline.enabled=false")
    plan = plan_of(load_config(QUICKSTART, []))
    assert plan.stage("pretrain").needs == ("prepare",) and plan.stage("expert").needs == ("cluster",)


def test_method_and_baseline_must_agree_on_the_pseudolabels():
    cfg = load_config(QUICKSTART, ["method.name=gsimclr", "baseline.method.name=gsimclr", "baseline.method.pseudo_k=8"])
    with pytest.raises(ConfigError, match="pseudo_k"):
        settings([cfg.method, cfg.baseline.method])
    assert settings([cfg.method]).pseudo_k == 64


TINY = ["method.name=gsimclr", "method.proj_dim=16", "method.proj_hidden=32", "method.pseudo_k=8",
        "method.dae_epochs=1", "method.tsne_points=100", "pretrain.epochs=1", "pretrain.batch_size=64"]


def test_pseudolabel_stage_outputs_and_resume(tmp_path):
    store = open_store(tmp_path.as_uri())
    cfg = load_config(QUICKSTART, [*TINY, "plan=plain"])
    run_stage("prepare", store, cfg)
    assert store.read_json("prepare/stages.json") == {"pseudolabel": True}
    with pytest.raises(StageError, match="pretrain needs stage 'pseudolabel'"):
        run_stage("pretrain", store, None, device="cpu")
    assert run_stage("pseudolabel", store, None, device="cpu") == "done"
    n = len(store.read_numpy("prepare/subset.npy"))
    labels = store.read_numpy("pseudolabel/labels.npy")
    assert labels.shape == (n,) and labels.dtype == np.int64 and 0 <= labels.min() and labels.max() < 8
    assert store.read_numpy("pseudolabel/codes.npy").shape == (n, 128)
    sizes = store.read_json("pseudolabel/sizes.json")
    assert sum(sizes["sizes"]) == n and len(sizes["dae_mse_per_epoch"]) == 1
    assert store.read_bytes("pseudolabel/tsne.png").startswith(b"\x89PNG")
    assert {"pseudolabel/labels.npy", "pseudolabel/tsne.png"} <= set(store.read_json("pseudolabel/_SUCCESS.json")["outputs"])
    assert run_stage("pseudolabel", store, None, device="cpu") == "skipped"  # resume: done for this config

    other = open_store((tmp_path / "simsiam").as_uri())
    run_stage("prepare", other, load_config(QUICKSTART, ["plan=plain"]))
    assert other.read_json("prepare/stages.json") == {"pseudolabel": False}
    with pytest.raises(StageError, match="not in this run's plan"):
        run_stage("pseudolabel", other, None, device="cpu")


def test_one_epoch_on_the_quickstart_digits_with_experts_on_their_pseudolabels(tmp_path, monkeypatch):
    store = open_store(tmp_path.as_uri())
    cfg = load_config(QUICKSTART, [*TINY, "cluster.k=2", "expert.train.epochs=1", "expert.train.batch_size=64",
                                   "baseline.enabled=false"])
    given = []
    monkeypatch.setattr(GSimCLR, "set_pseudolabels",
                        lambda self, labels: given.append(labels.clone()) or setattr(self, "pseudolabels", labels))
    for stage in ("prepare", "pseudolabel", "pretrain", "cluster"):
        assert run_stage(stage, store, cfg if stage == "prepare" else None, device="cpu") == "done"
    summary = store.read_json("pretrain/_SUCCESS.json")["summary"]["train"]
    assert summary["epochs"] == 1 and math.isfinite(summary["final_loss"])
    labels = store.read_numpy("pseudolabel/labels.npy")
    assert np.array_equal(given[0].numpy(), labels)  # the base model: the whole subset
    k = store.read_json("cluster/clusters.json")[0]
    assert run_stage("expert", store, None, cluster=k, device="cpu") == "done"
    in_cluster = store.read_numpy("cluster/assignments.npy") == k
    assert np.array_equal(given[1].numpy(), labels[in_cluster])  # an expert: its members' labels, by position
