"""SimSiam: the loss falls on tiny data; the collapse rule is a fraction of 1/sqrt(D)."""

from __future__ import annotations

import math

import numpy as np
import torch

from lt_ssl.methods import Batch
from lt_ssl.methods.simsiam import SimSiam
from lt_ssl.models import build_backbone


def _views(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # Cheap augmentations: random horizontal flip plus gaussian noise.
    flip = torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5
    x = torch.where(flip, x.flip(-1), x)
    return x + 0.1 * torch.randn(x.shape, generator=g)


def loss_falls(model, lr: float = 0.05, steps: int = 15) -> list[float]:
    """Train `model` a few SGD steps on 32 random images under cheap augmentations; return the losses."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 3, 16, 16, generator=g)
    opt = torch.optim.SGD(model.param_groups(lr), lr=lr, momentum=0.9)
    losses = []
    for step in range(steps):
        views = [_views(images, g) for _ in range(model.num_views)]
        out = model.loss(Batch(views, torch.arange(32), epoch=0, step=step, total_steps=steps))
        assert out["loss"].dim() == 0 and not out["z_std"].requires_grad
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.after_step()
        losses.append(out["loss"].item())
    return losses


def test_simsiam_loss_falls_on_tiny_data():
    torch.manual_seed(0)
    model = SimSiam(build_backbone("small_cnn"), SimSiam.Config(proj_dim=64, proj_hidden=64, pred_hidden=16, proj_layers=2))
    losses = loss_falls(model)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses


def test_simsiam_collapse_rule_and_fixed_predictor_lr():
    model = SimSiam(build_backbone("small_cnn"), SimSiam.Config(proj_dim=64, proj_hidden=64, pred_hidden=16))
    assert model.collapse_std() == 0.02 / math.sqrt(64)
    groups = model.param_groups(0.1)
    assert [g["fix_lr"] for g in groups] == [False, True]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.predictor.parameters()}
