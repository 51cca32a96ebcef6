"""Optimizers (SGD, LARS, AdamW) and learning-rate rules (linear scaling, warm-up + cosine)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim import Optimizer

from lt_ssl.errors import ConfigError


class LARS(Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al., 2017), as SimCLR and solo-learn use it.

    Each weight's step is scaled by eta * ||w|| / (||g|| + weight_decay * ||w||), so every layer moves by a
    similar fraction of its norm whatever the batch size. 1-D parameters (biases, BN weights) get neither the
    scaling nor weight decay, as SimCLR excludes them.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,  # trust coefficient: the fraction of ||w|| a unit-lr step may move
        eps: float = 1e-8,  # keeps the ratio finite when ||g|| and weight_decay are 0
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(
                f"LARS needs lr, momentum, weight_decay >= 0 and eta > 0, got {lr}, {momentum}, {weight_decay}, {eta}"
            )
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, eta, eps = group["weight_decay"], group["eta"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if p.ndim > 1:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d_p)
                    trust = eta * p_norm / (g_norm + wd * p_norm + eps)
                    # A zero weight or gradient has no meaningful ratio: fall back to a plain step.
                    # torch.where keeps this on the device (no host sync per parameter).
                    trust = torch.where((p_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    d_p = (d_p + wd * p) * trust
                if group["momentum"] != 0:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = d_p.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-group["lr"])
        return loss


OPTIMIZERS = ("sgd", "lars", "adamw")


def build_optimizer(name: str, param_groups: list[dict], lr: float, momentum: float, weight_decay: float) -> Optimizer:
    """An optimizer over param_groups; lr is the default for groups without their own "lr".

    adamw (decoupled weight decay, Loshchilov & Hutter 2019) is what the ViT methods' reference code trains with
    (MSN: facebookresearch/msn); `momentum` is its beta1, beta2 stays torch's 0.999.
    """
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}")


def cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, final_lr: float = 0.0) -> float:
    """Learning rate at 0-based step: linear warm-up to base_lr over warmup_steps, then cosine to final_lr.

    Warm-up gives base_lr * (step + 1) / warmup_steps, so the first step already moves and step
    warmup_steps - 1 reaches base_lr; the cosine then runs from base_lr at warmup_steps to final_lr at
    total_steps, and stays at final_lr after it.
    """
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ConfigError(
            f"need total_steps > 0 and 0 <= warmup_steps <= total_steps, got total_steps="
            f"{total_steps}, warmup_steps={warmup_steps}; shorten the warm-up or train longer"
        )
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def scaled_lr(base_lr_per_256: float, batch_size: int) -> float:
    """Linear scaling rule (Goyal et al., 2017): lr = base_lr_per_256 * batch_size / 256."""
    return base_lr_per_256 * batch_size / 256
