"""SDCLR: magnitude masks by hand, the loss against a pruned copy built by hand, re-pruning each epoch, a digits epoch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lt_ssl.config import load_config
from lt_ssl.losses import nt_xent_loss
from lt_ssl.methods.sdclr import SDCLR, magnitude_masks
from lt_ssl.models import build_backbone
from lt_ssl.pipeline.stages import run_stage
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART
from tests.unit.methods.test_registry import tiny_batch


def test_global_magnitude_threshold_by_hand():
    w = [torch.tensor([-3.0, 1.0]), torch.tensor([[0.5, 2.0, -4.0]])]
    # N = 5 weights, fraction 0.4: ceil(2.0) = 2 -> threshold = sorted |w| [0.5, 1, 2, 3, 4][2] = 2.
    masks = magnitude_masks(w, 0.4)
    assert masks[0].tolist() == [1.0, 0.0] and masks[1].tolist() == [[0.0, 1.0, 1.0]]
    assert [m.tolist() for m in magnitude_masks(w, 0.0)] == [[1.0, 1.0], [[1.0, 1.0, 1.0]]]


def _model(fraction: float = 0.7) -> SDCLR:
    torch.manual_seed(0)
    return SDCLR(build_backbone("small_cnn"), SDCLR.Config(proj_dim=16, proj_hidden=32, prune_fraction=fraction))


def test_density_is_one_minus_the_fraction():
    model = _model(0.7)
    kept = sum(m.sum().item() for m in model.masks())
    total = sum(m.numel() for m in model.masks())
    assert kept / total == pytest.approx(0.3, abs=0.01)


def test_loss_is_nt_xent_between_dense_and_a_pruned_copy_built_by_hand():
    model = _model()
    batch = tiny_batch(model)
    pruned = copy.deepcopy(model.backbone)  # the pruned branch written out: W * mask, the second BN set
    with torch.no_grad():
        convs = [m for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for conv, mask in zip(convs, model.masks()):
            conv.weight.mul_(mask)
    bns = [m for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn, own in zip(bns, model.pruned_bn):
        bn.load_state_dict(own.state_dict())
    projector = copy.deepcopy(model.projector)
    z1 = projector(copy.deepcopy(model.backbone)(batch.views[0]))
    z2 = projector(pruned(batch.views[1]))
    expected = nt_xent_loss(z1, z2, 0.2)
    assert model.loss(batch)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # The pruned branch updated its own BN statistics, not the dense branch's.
    assert torch.allclose(model.pruned_bn[0].running_mean, bns[0].running_mean)


def test_gradient_reaches_the_dense_weights_through_both_branches_and_masks_follow_each_epoch():
    model = _model()
    model.loss(tiny_batch(model))["loss"].backward()
    first = model.backbone.features[0][0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(bn.weight.grad is not None for bn in model.pruned_bn)
    with torch.no_grad():
        first.mul_(-10.0)  # the first layer's weights now dominate the magnitudes
    before = model.masks()[0].clone()
    model.on_epoch_end(0)
    assert not torch.equal(before, model.masks()[0])
    expected = magnitude_masks([w for w in model._masked_weights()], 0.7)
    assert all(torch.equal(m, e) for m, e in zip(model.masks(), expected))


def test_one_epoch_on_the_quickstart_digits(tmp_path):
    store = open_store(tmp_path.as_uri())
    cfg = load_config(QUICKSTART, ["method.name=sdclr", "method.proj_dim=32", "method.proj_hidden=32",
                                   "pretrain.epochs=1", "pretrain.batch_size=64"])
    assert run_stage("prepare", store, cfg) == "done"
    assert run_stage("pretrain", store, None, device="cpu") == "done"
    summary = store.read_json("pretrain/_SUCCESS.json")["summary"]["train"]
    assert summary["epochs"] == 1 and math.isfinite(summary["final_loss"])
