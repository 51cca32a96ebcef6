"""Learning-rate rules and the LARS optimizer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lt_ssl.errors import ConfigError
from lt_ssl.optim import LARS, build_optimizer, cosine_lr, scaled_lr


def test_cosine_endpoints_and_warmup():
    kw = dict(total_steps=100, warmup_steps=10, base_lr=1.0, final_lr=0.1)
    assert cosine_lr(0, **kw) == pytest.approx(0.1)  # (0 + 1) / 10 of base
    assert cosine_lr(4, **kw) == pytest.approx(0.5)
    assert cosine_lr(9, **kw) == pytest.approx(1.0)
    assert cosine_lr(10, **kw) == pytest.approx(1.0)  # cosine starts at base_lr
    assert cosine_lr(55, **kw) == pytest.approx(0.55)  # halfway: the mean of base and final
    assert cosine_lr(100, **kw) == pytest.approx(0.1)
    assert cosine_lr(150, **kw) == pytest.approx(0.1)  # clamped after the end
    lrs = [cosine_lr(s, **kw) for s in range(101)]
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))


def test_cosine_without_warmup():
    assert cosine_lr(0, 10, 0, 0.5) == pytest.approx(0.5)
    assert cosine_lr(5, 10, 0, 0.5) == pytest.approx(0.25)
    assert cosine_lr(10, 10, 0, 0.5) == pytest.approx(0.0)
    assert cosine_lr(3, 10, 0, 0.5) == pytest.approx(0.25 * (1 + math.cos(math.pi * 0.3)))


def test_cosine_rejects_bad_lengths():
    with pytest.raises(ConfigError, match="warmup_steps"):
        cosine_lr(0, 10, 20, 1.0)
    with pytest.raises(ConfigError, match="total_steps"):
        cosine_lr(0, 0, 0, 1.0)


def test_scaled_lr():
    assert scaled_lr(0.05, 256) == pytest.approx(0.05)
    assert scaled_lr(0.03, 512) == pytest.approx(0.06)
    assert scaled_lr(0.3, 4096) == pytest.approx(4.8)


def test_lars_decreases_a_quadratic():
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    target = torch.randn(4, 8)

    def loss_fn():
        return ((model.weight - target) ** 2).sum() + (model.bias**2).sum()

    opt = LARS(model.parameters(), lr=1.0, momentum=0.9, weight_decay=0.0, eta=0.02)
    start = loss_fn().item()
    for _ in range(50):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert loss_fn().item() < 0.5 * start


def test_lars_trust_ratio_and_exclusions():
    w = nn.Parameter(torch.full((2, 2), 3.0))  # ||w|| = 6
    b = nn.Parameter(torch.ones(2))
    opt = LARS([w, b], lr=0.5, momentum=0.0, weight_decay=0.1, eta=0.001)
    w.grad = torch.full((2, 2), 1.0)  # ||g|| = 2
    b.grad = torch.full((2,), 1.0)
    opt.step()
    trust = 0.001 * 6 / (2 + 0.1 * 6 + 1e-8)
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 3.0 - 0.5 * trust * (1.0 + 0.1 * 3.0)))
    # The bias is 1-D: a plain SGD step with no trust scaling and no weight decay.
    torch.testing.assert_close(b.detach(), torch.full((2,), 0.5))


def test_lars_zero_weight_falls_back_to_plain_step():
    w = nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.1, momentum=0.0)
    w.grad = torch.ones(2, 2)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.1))


def test_build_optimizer_keeps_group_keys():
    model = nn.Linear(3, 3)
    groups = [{"params": [model.weight], "lr": 0.2, "fix_lr": True}, {"params": [model.bias]}]
    sgd = build_optimizer("sgd", groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["lr"] == 0.2 and sgd.param_groups[0]["fix_lr"] is True
    assert sgd.param_groups[1]["lr"] == 0.1
    assert isinstance(build_optimizer("lars", [{"params": model.parameters()}], 0.1, 0.9, 1e-6), LARS)
    adamw = build_optimizer("adamw", [{"params": model.parameters()}], 0.1, 0.8, 0.05)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.999)
    assert adamw.defaults["weight_decay"] == 0.05
    with pytest.raises(ConfigError, match="sgd, lars, adamw"):
        build_optimizer("adam", [{"params": model.parameters()}], 0.1, 0.9, 0.0)
