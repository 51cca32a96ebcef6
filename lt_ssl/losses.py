"""Self-supervised and distillation losses as pure functions of (B, D) tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pair(a: Tensor, b: Tensor, names: str) -> None:
    # Broadcasting would silently turn a (B, D) vs (D,) mix-up into a wrong loss, so refuse it.
    if a.dim() != 2 or b.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{names} must be 2-D tensors of the same shape (B, D), got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """Mean negative cosine similarity with stop-gradient on the target.

    p, z: (B, D) -> scalar in [-1, 1]. No gradient flows into z (SimSiam's stop-grad).
    """
    _check_pair(p, z, "p and z")
    # float32 even under bf16 autocast: late in training cosines near 1 differ below bf16's ~3 digits.
    return -(F.normalize(p.float(), dim=-1) * F.normalize(z.detach().float(), dim=-1)).sum(-1).mean()


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Symmetrised SimSiam loss 0.5*D(p1, z2) + 0.5*D(p2, z1).

    p1, p2: predictor outputs (B, D); z1, z2: projector outputs (B, D) -> scalar; minimum -1.
    """
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent: each of the 2B views classifies its positive among the other 2B-1 views.

    z1, z2: (B, D) projections of two views of the same B images -> scalar.
    temperature: softmax temperature (> 0), dimensionless; SimCLR uses 0.5 for CIFAR.
    """
    _check_pair(z1, z2, "z1 and z2")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    # A view is not its own negative: mask the diagonal out of the softmax.
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)


def nt_xent_per_view(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent's term for each of the 2B views (rows 0..B-1: first views, B..2B-1: second); their mean is nt_xent_loss.

    z1, z2: (B, D) -> (2B,), computed in float32. Methods that weight or track samples (LoTaR, BCL) start here.
    """
    _check_pair(z1, z2, "z1 and z2")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)  # (2B, D)
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets, reduction="none")


def distill_loss(pred_base: Tensor, target_base: Tensor, pred_expert: Tensor, target_expert: Tensor) -> Tensor:
    """Student distillation loss 0.5*MSE(base) + 0.5*MSE(expert) (seed paper Eq. 2).

    pred_base, target_base: (B, T) student head 0 vs frozen base model features;
    pred_expert, target_expert: (B, T) each image's own expert head vs that expert's features.
    Targets come from frozen teachers and are detached.
    """
    _check_pair(pred_base, target_base, "pred_base and target_base")
    _check_pair(pred_expert, target_expert, "pred_expert and target_expert")
    return 0.5 * F.mse_loss(pred_base, target_base.detach()) + 0.5 * F.mse_loss(pred_expert, target_expert.detach())


@torch.no_grad()
def embedding_std_tensor(z: Tensor) -> Tensor:
    """Std over the batch of L2-normalised outputs, averaged over dimensions (SimSiam's collapse monitor).

    z: (B, D) -> detached 0-d float32 tensor; about 1/sqrt(D) for healthy (spread-out) outputs,
    0 when collapsed to a point. Kept as a tensor so training steps need not sync with the device.
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"z must be 2-D (B, D) with B >= 2, got {tuple(z.shape)}")
    return F.normalize(z.float(), dim=-1).std(dim=0).mean()

