"""LoTaR: the weighted NT-Xent against the formula written out by hand; a one-epoch run on the quickstart digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lt_ssl.config import load_config
from lt_ssl.losses import nt_xent_loss
from lt_ssl.methods import Batch
from lt_ssl.methods.lotar import LoTaR, lotar_weights
from lt_ssl.models import build_backbone
from lt_ssl.pipeline.stages import run_stage
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART


def _reference(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """d_i = ||z1_i - z2_i||^2, w_i = 1 + (d_i - mean d)/(max d - min d); mean over the 2B views of w * l_v."""
    b = len(z1)
    d = [float(np.sum((z1[i] - z2[i]) ** 2)) for i in range(b)]
    spread = max(d) - min(d)
    w = [1 + (di - sum(d) / b) / spread if spread > 0 else 1.0 for di in d]
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for v in range(2 * b):
        positive = (v + b) % (2 * b)
        denom = sum(math.exp(z[v] @ z[k] / t) for k in range(2 * b) if k != v)
        total += w[v % b] * -math.log(math.exp(z[v] @ z[positive] / t) / denom)
    return total / (2 * b)


def _model_with_projections(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> LoTaR:
    model = LoTaR(build_backbone("small_cnn"), LoTaR.Config(proj_dim=z1.shape[1], proj_hidden=8, temperature=temperature))
    model.project = lambda batch: (z1, z2)  # the loss's input, fixed: this test is about the formula
    return model


def _batch(b: int) -> Batch:
    return Batch([torch.zeros(b, 3, 8, 8)] * 2, torch.arange(b), epoch=0, step=0, total_steps=1)


def test_loss_matches_the_formula_written_out():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    model = _model_with_projections(z1, z2, temperature=0.3)
    out = model.loss(_batch(5))
    assert out["loss"].item() == pytest.approx(_reference(z1.numpy(), z2.numpy(), 0.3), rel=1e-5)
    assert out["weights"].mean().item() == pytest.approx(1.0, abs=1e-6)  # mean(w) = 1 by construction


def test_weights_by_hand_and_equal_distances_give_ones():
    d = torch.tensor([1.0, 3.0, 5.0, 7.0])  # mean 4, max - min 6
    assert torch.allclose(lotar_weights(d), torch.tensor([0.5, 5 / 6, 7 / 6, 1.5]))
    assert torch.equal(lotar_weights(torch.full((4,), 2.5)), torch.ones(4))
    # Equal distances: LoTaR is SimCLR.
    z1 = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    z2 = z1 + torch.tensor([1.0, 0, 0, 0])  # every pair 1 apart
    model = _model_with_projections(z1, z2, temperature=0.5)
    assert model.loss(_batch(6))["loss"].item() == pytest.approx(nt_xent_loss(z1, z2, 0.5).item(), rel=1e-6)


def test_no_gradient_flows_through_the_weights():
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(4, 3, generator=g).requires_grad_()
    z2 = torch.randn(4, 3, generator=g).requires_grad_()
    _model_with_projections(z1, z2, 0.3).loss(_batch(4))["loss"].backward()
    got = z1.grad.clone(), z2.grad.clone()
    # The same loss with the weights pasted in as numbers.
    a, b = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    w = lotar_weights((a - b).pow(2).sum(1)).tolist()
    zn = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    logits = (zn @ zn.T / 0.3).masked_fill(torch.eye(8, dtype=torch.bool), float("-inf"))
    terms = -torch.log_softmax(logits, dim=1)[torch.arange(8), (torch.arange(8) + 4) % 8]
    (terms * torch.tensor(w + w)).mean().backward()
    assert torch.allclose(got[0], a.grad, atol=1e-6) and torch.allclose(got[1], b.grad, atol=1e-6)


def test_one_epoch_on_the_quickstart_digits(tmp_path):
    store = open_store(tmp_path.as_uri())
    cfg = load_config(QUICKSTART, ["method.name=lotar", "method.proj_dim=32", "method.proj_hidden=32",
                                   "pretrain.epochs=1", "pretrain.batch_size=64"])
    assert cfg.method.name == "lotar" and cfg.method.temperature == 0.3
    assert run_stage("prepare", store, cfg) == "done"
    assert run_stage("pretrain", store, None, device="cpu") == "done"
    summary = store.read_json("pretrain/_SUCCESS.json")["summary"]["train"]
    assert summary["epochs"] == 1 and math.isfinite(summary["final_loss"])
