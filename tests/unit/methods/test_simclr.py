"""SimCLR: the loss falls on tiny data and equals NT-Xent of its two views' projections."""

from __future__ import annotations

import numpy as np
import torch

from lt_ssl.losses import nt_xent_loss
from lt_ssl.methods.simclr import SimCLR
from lt_ssl.models import build_backbone
from tests.unit.methods.test_registry import tiny_batch
from tests.unit.methods.test_simsiam import loss_falls


def test_simclr_loss_falls_on_tiny_data():
    torch.manual_seed(0)
    model = SimCLR(build_backbone("small_cnn"), SimCLR.Config(proj_dim=32, proj_hidden=64, temperature=0.5))
    losses = loss_falls(model)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses


def test_simclr_loss_is_nt_xent_of_the_projections_and_has_no_collapse_rule():
    torch.manual_seed(0)
    model = SimCLR(build_backbone("small_cnn"), SimCLR.Config(proj_dim=16, proj_hidden=32, temperature=0.2)).eval()
    batch = tiny_batch(model)
    z1, z2 = model.project(batch)
    assert torch.allclose(model.loss(batch)["loss"], nt_xent_loss(z1, z2, 0.2))
    assert model.collapse_std() == 0.0
