"""Losses against written-out reference formulas, their gradients and shape errors; SSL methods learn on tiny data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lt_ssl.losses import (
    distill_loss,
    embedding_std_tensor,
    negative_cosine,
    nt_xent_loss,
    simsiam_loss,
)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _neg_cos_ref(p: np.ndarray, z: np.ndarray) -> float:
    return -sum(_cos(p[i], z[i]) for i in range(len(p))) / len(p)


def test_negative_cosine_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert negative_cosine(p, z).item() == pytest.approx(_neg_cos_ref(p.numpy(), z.numpy()), abs=1e-6)
    assert negative_cosine(p, p).item() == pytest.approx(-1.0, abs=1e-6)


def test_simsiam_loss_matches_reference_and_is_symmetric():
    g = torch.Generator().manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(4, 8, generator=g) for _ in range(4))
    ref = 0.5 * _neg_cos_ref(p1.numpy(), z2.numpy()) + 0.5 * _neg_cos_ref(p2.numpy(), z1.numpy())
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(ref, abs=1e-6)
    # Swapping the two views (p1<->p2 together with z1<->z2) must not change the loss.
    assert simsiam_loss(p2, p1, z2, z1).item() == pytest.approx(ref, abs=1e-6)


def test_stop_gradient_blocks_z():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    negative_cosine(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None

    p1, p2, z1, z2 = (torch.randn(4, 8, requires_grad=True) for _ in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None


def _nt_xent_ref(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        pos = (i + b) % n
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(n) if k != i)
        total += -math.log(math.exp(z[i] @ z[pos] / t) / denom)
    return total / n


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_cross_entropy_reference(temperature):
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    got = nt_xent_loss(z1, z2, temperature).item()
    assert got == pytest.approx(_nt_xent_ref(z1.numpy(), z2.numpy(), temperature), rel=1e-9)


def test_nt_xent_is_low_for_matching_views_and_symmetric():
    z = torch.eye(4) * 10
    assert nt_xent_loss(z, z, 0.1).item() < 1e-3
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert nt_xent_loss(z1, z2, 0.5).item() == pytest.approx(nt_xent_loss(z2, z1, 0.5).item(), abs=1e-6)


def test_distill_loss_matches_reference_and_detaches_targets():
    g = torch.Generator().manual_seed(4)
    pb, tb, pe, te = (torch.randn(3, 4, generator=g) for _ in range(4))
    ref = 0.5 * np.mean((pb.numpy() - tb.numpy()) ** 2) + 0.5 * np.mean((pe.numpy() - te.numpy()) ** 2)
    assert distill_loss(pb, tb, pe, te).item() == pytest.approx(float(ref), abs=1e-6)

    pb.requires_grad_(), tb.requires_grad_(), pe.requires_grad_(), te.requires_grad_()
    distill_loss(pb, tb, pe, te).backward()
    assert pb.grad is not None and pe.grad is not None
    assert tb.grad is None and te.grad is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: negative_cosine(torch.zeros(4, 8), torch.zeros(4, 7)),
        lambda: negative_cosine(torch.zeros(8), torch.zeros(8)),
        lambda: simsiam_loss(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(3, 8), torch.zeros(4, 8)),
        lambda: nt_xent_loss(torch.zeros(4, 8), torch.zeros(5, 8), 0.5),
        lambda: nt_xent_loss(torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), 0.5),
        lambda: distill_loss(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(4, 9)),
        lambda: embedding_std_tensor(torch.zeros(8)),
    ],
)
def test_shape_errors_name_the_shapes(call):
    with pytest.raises(ValueError, match=r"\(\d"):
        call()


def test_embedding_std_healthy_and_collapsed():
    d = 64
    z = torch.randn(4096, d, generator=torch.Generator().manual_seed(5))
    assert embedding_std_tensor(z).item() == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert embedding_std_tensor(torch.ones(32, d) * 3.0).item() == pytest.approx(0.0, abs=1e-6)
