"""Backbones: output shapes and out_dim, the CIFAR stem, channels_last, unknown names; head shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lt_ssl.errors import ConfigError
from lt_ssl.models import (
    BACKBONES,
    build_backbone,
    regression_head,
    simclr_projector,
    simsiam_predictor,
    simsiam_projector,
)
from lt_ssl.models.backbones import sincos_position_embedding

EXPECTED_DIMS = {"resnet18_cifar": 512, "resnet18": 512, "small_cnn": 256, "vit_tiny": 192, "vit_tiny_p7": 192}


def test_every_backbone_has_an_expected_dim():
    assert set(BACKBONES) == set(EXPECTED_DIMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
def test_output_shape_and_out_dim(name):
    net = build_backbone(name).eval()
    assert net.out_dim == EXPECTED_DIMS[name]
    sides = [s for s in (16, 28, 32) if s % getattr(net, "patch_size", 1) == 0]  # a ViT: sides its patch divides
    assert len(sides) >= 1
    with torch.no_grad():
        for side in sides:
            assert net(torch.randn(2, 3, side, side)).shape == (2, net.out_dim)


def test_sincos_position_embedding_by_hand():
    # dim 4: one frequency (10000^0 = 1); each patch is [sin(row), cos(row), sin(col), cos(col)], row-major.
    emb = sincos_position_embedding(2, 2, 4)
    expected = [[math.sin(r), math.cos(r), math.sin(c), math.cos(c)] for r in (0, 1) for c in (0, 1)]
    assert torch.allclose(emb, torch.tensor(expected), atol=1e-6)


def test_vit_takes_any_side_divisible_by_its_patch_and_only_the_kept_patches():
    vit = build_backbone("vit_tiny").eval()
    with torch.no_grad():
        assert vit(torch.randn(2, 3, 28, 28)).shape == (2, 192)
        x = torch.randn(1, 3, 16, 16)
        x_changed = x.clone()
        x_changed[..., :4, :4] += 5.0  # patch 0 only
        keep = torch.arange(1, 16)  # patch 0 dropped: its pixels cannot matter
        assert torch.allclose(vit(x, keep=keep), vit(x_changed, keep=keep))
        assert not torch.allclose(vit(x), vit(x_changed))


def test_cifar_stem():
    net = build_backbone("resnet18_cifar")
    conv1 = net.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert not any(isinstance(m, nn.Linear) for m in net.modules())  # no fc: features end at the pool


def test_imagenet_stem_keeps_maxpool():
    net = build_backbone("resnet18")
    assert net.conv1.kernel_size == (7, 7) and isinstance(net.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18_cifar"])
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_channels_last_backward():
    net = build_backbone("small_cnn").to(memory_format=torch.channels_last)
    net(torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ConfigError, match="resnet18, resnet18_cifar, small_cnn, vit_tiny, vit_tiny_p7"):
        build_backbone("vit_huge")


def test_head_shapes():
    x = torch.randn(4, 32)
    proj3 = simsiam_projector(32, 64, 48)
    proj2 = simsiam_projector(32, 64, 48, num_layers=2)
    assert proj3(x).shape == (4, 48) and proj2(x).shape == (4, 48)
    assert sum(isinstance(m, nn.Linear) for m in proj3) == 3 and sum(isinstance(m, nn.Linear) for m in proj2) == 2
    assert isinstance(proj3[-1], nn.BatchNorm1d) and not proj3[-1].affine
    assert simsiam_predictor(48, 12)(torch.randn(4, 48)).shape == (4, 48)
    assert simclr_projector(32, 64, 16)(x).shape == (4, 16)
    assert regression_head(32, 64, 20)(x).shape == (4, 20)
    with pytest.raises(ConfigError, match="num_layers"):
        simsiam_projector(32, 64, 48, num_layers=1)
