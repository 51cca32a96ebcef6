"""Every registered method honours the interface the training loop and the stages use."""

from __future__ import annotations

import pytest
import torch

from lt_ssl.config import load_config
from lt_ssl.methods import METHODS, Batch, Method, build
from lt_ssl.models import build_backbone
from tests.conftest import QUICKSTART


def tiny_batch(method: Method, b: int = 8, size: int = 16, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(b, 3, size, size, generator=g) for _ in range(method.num_views)]
    return Batch(views, torch.arange(b), epoch=0, step=0, total_steps=10)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_builds_trains_one_step_and_owns_its_config(name):
    cls = METHODS[name]
    cfg = cls.Config()
    assert cfg.name == name and cls.paper.title and cls.paper.url.startswith("https://")
    torch.manual_seed(0)
    model = build(build_backbone("vit_tiny" if cls.masks_patches else "small_cnn"), cfg)
    assert isinstance(model, cls) and model.num_views >= 1
    groups = model.param_groups(0.1)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(set(map(id, grouped))) == len([p for p in model.parameters() if p.requires_grad])
    batch = tiny_batch(model)
    model.on_train_start(batch.idx.numel())  # the hooks in the training loop's order
    out = model.loss(batch)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert model.collapse_std() >= 0
    model.after_step()
    model.on_epoch_end(0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_quickstart_accepts_every_method_by_name(name):
    vit = ["backbone=vit_tiny"] if METHODS[name].masks_patches else []  # the quickstart's small CNN has no patches
    assert isinstance(load_config(QUICKSTART, [f"method.name={name}", *vit]).method, METHODS[name].Config)
