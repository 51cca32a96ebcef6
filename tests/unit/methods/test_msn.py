"""MSN / PMSN: the objective by hand for both priors, the EMA step by hand, the masking count, the PMSN paper's
Fig. 1 toy (uniform prior cuts the big blob, power-law prior keeps the true split), a digits epoch of each."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lt_ssl.config import load_config
from lt_ssl.errors import ConfigError
from lt_ssl.methods.msn import (MSN, PMSN, msn_objective, power_law_prior, prototype_probs, random_keep, sharpen,
                                sinkhorn)
from lt_ssl.models import build_backbone
from lt_ssl.pipeline.stages import run_stage
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART
from tests.unit.methods.test_registry import tiny_batch


def _by_hand(probs, targets, prior, lam):
    """mean_i sum_k -t_ik log p_ik + lam * sum_k pbar_k log(pbar_k / prior_k), as plain loops."""
    b, k = len(probs), len(probs[0])
    ce = sum(-targets[i][j] * math.log(probs[i][j]) for i in range(b) for j in range(k)) / b
    pbar = [sum(probs[i][j] for i in range(b)) / b for j in range(k)]
    kl = sum(pbar[j] * math.log(pbar[j] / prior[j]) for j in range(k))
    return ce + lam * kl


def test_objective_by_hand_for_the_uniform_and_the_power_law_prior():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    raw = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    targets = sharpen(raw, 0.25)
    # sharpen by hand: q^4 renormalised
    row = [0.5 ** 4, 0.3 ** 4, 0.2 ** 4]
    assert targets[0].tolist() == pytest.approx([v / sum(row) for v in row], rel=1e-6)
    power = power_law_prior(3, 0.25)
    w = [1.0, 2 ** -0.25, 3 ** -0.25]
    assert power.tolist() == pytest.approx([v / sum(w) for v in w], rel=1e-6)
    for prior in (torch.full((3,), 1 / 3), power):
        loss, _, _ = msn_objective(probs, targets, prior, 0.7)
        assert loss.item() == pytest.approx(_by_hand(probs.tolist(), targets.tolist(), prior.tolist(), 0.7), rel=1e-6)
    # With the uniform prior the KL term is MSN's ME-MAX: sum pbar log pbar + log K.
    _, _, kl = msn_objective(probs, targets, torch.full((3,), 1 / 3), 1.0)
    pbar = probs.mean(0)
    assert kl.item() == pytest.approx(float((pbar * pbar.log()).sum()) + math.log(3), abs=1e-6)


def test_prototype_probs_and_sinkhorn_marginals():
    z, protos = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # cosines 0.6 and 0.8, temperature 0.1: softmax([6, 8])
    e = [math.exp(6), math.exp(8)]
    assert prototype_probs(z, protos, 0.1)[0].tolist() == pytest.approx([e[0] / sum(e), e[1] / sum(e)], rel=1e-6)
    q = torch.softmax(torch.randn(64, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    prior = power_law_prior(5, 1.0)
    balanced = sinkhorn(q, prior, 50)
    assert balanced.sum(1).tolist() == pytest.approx([1.0] * 64, rel=1e-5)
    assert (balanced.mean(0)).tolist() == pytest.approx(prior.tolist(), rel=1e-3)
    assert torch.equal(sinkhorn(q, prior, 0), q / q.sum() * 64)


def _model(cls=MSN, **kw) -> MSN:
    torch.manual_seed(0)
    cfg = cls.Config(proj_hidden=32, proj_dim=16, num_prototypes=10, **kw)
    return cls(build_backbone("vit_tiny"), cfg)


def test_masking_keeps_floor_n_times_one_minus_ratio_distinct_patches():
    for n, ratio, kept in [(16, 0.15, 13), (49, 0.15, 41), (64, 0.5, 32), (4, 0.9, 1)]:
        keep = random_keep(n, ratio)
        assert len(keep) == kept == len(set(keep.tolist())) and 0 <= int(keep.min()) and int(keep.max()) < n
    vit = build_backbone("vit_tiny")
    assert vit.num_patches(16, 16) == 16 and vit.num_patches(28, 28) == 49 and vit.num_patches(32, 32) == 64
    x = torch.randn(2, 3, 28, 28)
    assert vit(x).shape == vit(x, keep=random_keep(49, 0.15)).shape == (2, vit.out_dim)
    with pytest.raises(ValueError, match="augment.size"):
        vit(torch.randn(1, 3, 18, 18))
    with pytest.raises(ConfigError, match="backbone=vit_tiny"):
        MSN(build_backbone("small_cnn"), MSN.Config())


def test_loss_matches_the_formula_with_a_given_mask_and_targets_from_the_ema_copy():
    model = _model(PMSN)
    batch = tiny_batch(model)
    torch.manual_seed(1)
    keep = random_keep(16, model.cfg.mask_ratio)
    torch.manual_seed(1)  # the same mask inside loss()
    got = model.loss(batch)["loss"]
    ref = copy.deepcopy(model)  # BN statistics as they were are irrelevant in train mode; recompute by hand
    p = prototype_probs(ref.projector(ref.backbone(batch.views[0], keep=keep)), ref.prototypes, 0.1)
    with torch.no_grad():
        t = sinkhorn(sharpen(prototype_probs(ref.target_projector(ref.target_backbone(batch.views[1])),
                                             ref.prototypes, 0.1), 0.25), power_law_prior(10, 0.25), 3)
    assert got.item() == pytest.approx(_by_hand(p.tolist(), t.tolist(), power_law_prior(10, 0.25).tolist(), 1.0),
                                       rel=1e-5)
    got.backward()
    assert model.prototypes.grad is not None
    assert all(q.grad is None for q in model.target_backbone.parameters())
    assert {id(q) for g in model.param_groups(0.1) for q in g["params"]}.isdisjoint(
        id(q) for q in model.target_backbone.parameters())


def test_ema_update_by_hand_with_the_linear_momentum_schedule():
    model = _model()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)  # online and target now differ
    online = [p.clone() for p in model.backbone.parameters()]
    target = [p.clone() for p in model.target_backbone.parameters()]
    batch = tiny_batch(model)  # step 0 of 10 -> progress 1/10
    model.loss(batch)
    m = 0.996 + (1 - 0.996) * 0.1
    assert model.momentum() == pytest.approx(m)
    model.after_step()
    for o, t, new in zip(online, target, model.target_backbone.parameters()):
        assert torch.allclose(new, m * t + (1 - m) * o, atol=1e-6)
        # the foreach update rounds as the per-tensor t.mul_(m).add_(p, alpha=1 - m) it replaced, bit for bit
        assert torch.equal(new, t.clone().mul_(m).add_(o, alpha=1.0 - m))


def _toy_assignment(prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fig. 1 of the PMSN paper: two prototypes fitted to a 300/100 two-blob 2-D set by the MSN objective.

    Targets are the sharpened predictions themselves (no second view: the regulariser is what is under test),
    no Sinkhorn (it would impose the prior by itself). The objective is not convex in the prototypes, so it is
    optimised from 4 random starts and the lowest final objective is kept, the same for both priors.
    Returns (hard assignment of each point, true blob of each point).
    """
    g = torch.Generator().manual_seed(0)
    big = torch.randn(300, 2, generator=g) * 0.6 + torch.tensor([3.0, 0.0])
    small = torch.randn(100, 2, generator=g) * 0.3 + torch.tensor([0.0, 3.0])
    x, blob = torch.cat([big, small]), torch.cat([torch.zeros(300), torch.ones(100)]).long()

    def objective(protos):
        p = prototype_probs(x, protos, 0.1)
        return msn_objective(p, sharpen(p.detach(), 0.25), prior, 1.0)[0]

    best = None
    for _ in range(4):
        protos = torch.nn.Parameter(torch.randn(2, 2, generator=g))
        opt = torch.optim.Adam([protos], lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            objective(protos).backward()
            opt.step()
        final = objective(protos).item()
        if best is None or final < best[0]:
            best = (final, protos.detach())
    return prototype_probs(x, best[1], 0.1).argmax(1), blob


def test_fig1_toy_uniform_prior_cuts_the_big_blob_power_law_prior_keeps_the_true_split():
    # With K = 2 the paper's tau = 0.25 gives (0.54, 0.46), hardly different from uniform; tau = 1.5 gives
    # (0.74, 0.26): a long-tailed prior near, not equal to, the blobs' 0.75 / 0.25.
    uniform, blob = _toy_assignment(torch.full((2,), 0.5))
    power, _ = _toy_assignment(power_law_prior(2, 1.5))
    for assign in (uniform, power):  # the small blob is never split: it sits under one prototype
        assert assign[blob == 1].unique().numel() == 1
    big_uniform = uniform[blob == 0]
    majority = big_uniform.mode().values
    # The uniform prior hands a large piece of the big blob to the small blob's prototype.
    assert (big_uniform != majority).float().mean().item() > 0.15
    assert (uniform[blob == 1] != majority).all()
    big_power = power[blob == 0]
    assert big_power.unique().numel() == 1  # the power-law prior keeps the big blob whole ...
    assert (power[blob == 1] != big_power[0]).all()  # ... and apart from the small one: the true split


@pytest.mark.parametrize("name", ["msn", "pmsn"])
def test_one_epoch_on_the_quickstart_digits(tmp_path, name):
    store = open_store(tmp_path.as_uri())
    cfg = load_config(QUICKSTART, [f"method.name={name}", "backbone=vit_tiny", "method.proj_hidden=64",
                                   "method.proj_dim=32", "method.num_prototypes=64", "pretrain.epochs=1",
                                   "pretrain.batch_size=64"])
    assert run_stage("prepare", store, cfg) == "done"
    assert run_stage("pretrain", store, None, device="cpu") == "done"
    summary = store.read_json("pretrain/_SUCCESS.json")["summary"]["train"]
    assert summary["epochs"] == 1 and math.isfinite(summary["final_loss"])
