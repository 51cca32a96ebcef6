"""G-SimCLR's evaluation: the head_layers probes (P1, P2, ...) and the fine-tune with a fraction of the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lt_ssl.config import config_hash, load_config
from lt_ssl.data.longtail import stratified_indices
from lt_ssl.errors import ConfigError, DataError
from lt_ssl.evaluate import (assert_unchanged, extract_features, finetune, fit_linear, head_features, linear_probe,
                             state_snapshot)
from lt_ssl.methods import METHODS, Method
from lt_ssl.models import build_backbone
from lt_ssl.models.heads import mlp_layers, simclr_projector, simsiam_projector


class _Backbone(nn.Module):
    """A small BN encoder: (B, 3, H, W) -> (B, 6)."""

    out_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _trained_bn(head: nn.Sequential, dim: int) -> None:
    """Give the head's BatchNorms non-trivial running statistics, so eval mode differs from a fresh BN."""
    head.train()
    with torch.no_grad():
        for _ in range(3):
            head(torch.randn(16, dim) * 3 + 1)


def test_mlp_layers_cut_a_head_at_each_linear() -> None:
    proj = simsiam_projector(4, 5, 3, num_layers=3)
    layers = mlp_layers(proj)
    assert [[type(m).__name__ for m in layer] for layer in layers] == [
        ["Linear", "BatchNorm1d", "ReLU"], ["Linear", "BatchNorm1d", "ReLU"], ["Linear", "BatchNorm1d"]]
    assert layers[0][0] is proj[0]  # views of the trained head, not copies
    assert [[type(m).__name__ for m in layer] for layer in mlp_layers(simclr_projector(4, 5, 3))] == [
        ["Linear", "BatchNorm1d", "ReLU"], ["Linear"]]


def test_head_features_match_the_head_layers_run_by_hand() -> None:
    torch.manual_seed(0)
    proj = simsiam_projector(4, 5, 3, num_layers=3)
    _trained_bn(proj, 4)
    proj.train()  # head_features must switch to eval (running statistics) and switch back
    feats = torch.randn(7, 4)
    h1, h2, h3 = head_features(mlp_layers(proj), feats, batch_size=3)

    def bn(x: torch.Tensor, m: nn.BatchNorm1d) -> torch.Tensor:  # eval-mode BatchNorm written out
        y = (x - m.running_mean) / torch.sqrt(m.running_var + m.eps)
        return y * m.weight + m.bias if m.affine else y

    lin1, bn1, _, lin2, bn2, _, lin3, bn3 = proj
    by_hand1 = torch.relu(bn(feats @ lin1.weight.T, bn1))
    by_hand2 = torch.relu(bn(by_hand1 @ lin2.weight.T, bn2))
    by_hand3 = bn(by_hand2 @ lin3.weight.T, bn3)
    for got, want in ((h1, by_hand1), (h2, by_hand2), (h3, by_hand3)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(m.training for m in proj.modules())
    assert head_features([], feats) == []


def test_methods_expose_their_projection_head_and_the_student_has_none() -> None:
    for name, cls in METHODS.items():
        backbone = build_backbone("vit_tiny") if cls.masks_patches else _Backbone()  # MSN/PMSN need patches
        model = cls(backbone, cls.Config())
        layers = model.projection_layers()
        assert layers, f"{name} has a projection head but exposes no layers"
        x = torch.randn(4, backbone.out_dim)
        model.eval()
        with torch.no_grad():  # the layers in order are the whole projector
            assert torch.allclose(nn.Sequential(*layers)(x), model.projector(x))
    assert Method.projection_layers(Method(_Backbone(), METHODS["simsiam"].Config())) == []  # the default: none


def test_stratified_indices_keep_a_fraction_of_each_class() -> None:
    labels = np.array([0] * 40 + [1] * 23 + [2] * 7 + [3] * 2)
    keep = stratified_indices(labels, 0.1, seed=0)
    # By hand: round(4.0) = 4, round(2.3) = 2, round(0.7) = 1, round(0.2) = 0 -> at least 1.
    assert np.bincount(labels[keep], minlength=4).tolist() == [4, 2, 1, 1]
    assert len(set(keep.tolist())) == len(keep) and np.all(np.diff(keep) > 0)
    assert np.array_equal(keep, stratified_indices(labels, 0.1, seed=0))
    assert not np.array_equal(keep, stratified_indices(labels, 0.1, seed=1))
    assert np.bincount(labels[stratified_indices(labels, 0.5, seed=0)]).tolist() == [20, 12, 4, 1]  # 11.5 -> 12, 3.5 -> 4
    assert len(stratified_indices(labels, 1.0, seed=0)) == len(labels)
    with pytest.raises(DataError, match="fraction"):
        stratified_indices(labels, 0.0, seed=0)


def test_fit_linear_folds_the_standardisation_into_the_layer() -> None:
    torch.manual_seed(0)
    x = torch.randn(60, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 4
    y = (x[:, 0] + x[:, 1] / 10 > 4).long()
    test = torch.randn(30, 5) * 3 + 4
    layer = fit_linear(x, y, 2, epochs=30, seed=2)
    assert torch.equal(layer(test).argmax(dim=1), linear_probe(x, y, test, 2, epochs=30, seed=2))


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 8x8 images: class 1 has a bright left half."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 120, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)
    images[labels == 1, :, :, :4] += 120
    return images, labels


def test_finetune_trains_a_copy_and_leaves_the_frozen_encoder_alone() -> None:
    torch.manual_seed(0)
    backbone = _Backbone()
    images, labels = _images(32, seed=0)
    mean, std = [0.3] * 3, [0.2] * 3
    before = state_snapshot(backbone)
    feats_before = extract_features(backbone, images, mean, std, size=None)

    tuned = finetune(backbone, images, labels, 2, mean, std, None, epochs=3, lr=1e-2, batch_size=8, linear_epochs=20)
    assert_unchanged(backbone, before)  # the frozen probes' encoder: untouched, BN statistics included
    torch.testing.assert_close(extract_features(backbone, images, mean, std, size=None), feats_before)
    encoder = tuned[0]
    moved = [n for n, p in encoder.named_parameters() if not torch.equal(p, dict(backbone.named_parameters())[n])]
    assert moved, "fine-tuning changed no encoder weight"
    bn = encoder.body[1]  # eval mode throughout: running statistics are the pre-trained ones
    assert torch.equal(bn.running_mean, backbone.body[1].running_mean)
    assert not any(p.requires_grad for p in tuned.parameters())

    logits = extract_features(tuned, images, mean, std, size=None)
    assert logits.shape == (32, 2)
    again = finetune(backbone, images, labels, 2, mean, std, None, epochs=3, lr=1e-2, batch_size=8, linear_epochs=20)
    assert torch.equal(extract_features(again, images, mean, std, size=None), logits)  # seeded: reproducible


def test_finetune_lowers_the_training_loss() -> None:
    torch.manual_seed(1)
    backbone = _Backbone()
    images, labels = _images(48, seed=1)
    mean, std = [0.3] * 3, [0.2] * 3

    def loss(model: nn.Module) -> float:
        return float(F.cross_entropy(extract_features(model, images, mean, std, size=None), labels))

    warm = finetune(backbone, images, labels, 2, mean, std, None, epochs=1, lr=1e-12, batch_size=16, linear_epochs=5)
    tuned = finetune(backbone, images, labels, 2, mean, std, None, epochs=20, lr=3e-3, batch_size=16, linear_epochs=5)
    assert loss(tuned) < loss(warm)


def test_finetune_refuses_an_encoder_without_weights() -> None:
    images, labels = _images(4, seed=0)
    with pytest.raises(ConfigError, match="weights"):
        finetune(nn.Flatten(), images, labels, 2, [0.5] * 3, [0.5] * 3, None)


def test_extra_probes_config_and_identity() -> None:
    default = load_config(None)
    assert default.evaluate.extra_probes == [] and default.evaluate.finetune.fraction == 0.1
    # The keys at their defaults leave every existing run's identity alone (configs/regression_baseline.json's hash).
    assert config_hash(load_config(Path(__file__).parents[2] / "configs" / "regression.yaml")) == "69d0f4079ac15c16"
    assert config_hash(load_config(None, ["evaluate.extra_probes=[]"])) == config_hash(default)
    probes = load_config(None, ["evaluate.extra_probes=[head_layers,finetune]"])
    assert probes.evaluate.extra_probes == ["head_layers", "finetune"]
    assert config_hash(probes) != config_hash(default)
    assert config_hash(load_config(None, ["evaluate.finetune.lr=1e-4"])) != config_hash(default)
    with pytest.raises(ConfigError, match="evaluate.extra_probes.0"):
        load_config(None, ["evaluate.extra_probes=[knn]"])
    with pytest.raises(ConfigError, match="twice"):
        load_config(None, ["evaluate.extra_probes=[finetune,finetune]"])
    with pytest.raises(ConfigError, match="fraction"):
        load_config(None, ["evaluate.finetune.fraction=1.5"])
