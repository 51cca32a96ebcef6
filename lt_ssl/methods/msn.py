"""MSN (Assran et al., 2022, "Masked Siamese Networks") and PMSN (Assran et al., 2023, "The Hidden Uniform
Cluster Prior in Self-Supervised Learning"): match a masked view's prototype assignment to an unmasked view's.

    keep    = a random floor(N * (1 - mask_ratio)) of the anchor view's N patches (the rest are dropped)
    z       = g(f(x1 restricted to keep))              anchor: online ViT + projector    (B, D)
    z+      = g'(f'(x2))                               target: EMA copies, no gradient    (B, D)
    p(z)    = softmax(cos(z, prototypes_k) / temperature)_k                               (B, K)
    t       = Sinkhorn_prior(sharpen(p(z+), T)),  sharpen(q, T)_k = q_k^(1/T) / sum_j q_j^(1/T)
    loss    = mean_i sum_k -t_ik log p_ik  +  reg_weight * KL(pbar || prior),   pbar = mean_i p(z)_i
    prior   = uniform 1/K (MSN: KL(pbar || 1/K) = sum_k pbar_k log pbar_k + log K, the mean-entropy
              maximisation "ME-MAX" term) or the power law prior_k = k^(-tau) / sum_j j^(-tau) (PMSN)
    after each step: theta' <- m * theta' + (1 - m) * theta, m rising linearly from `momentum` to 1

The regulariser is the only difference: a uniform prior makes every prototype take an equal share of each
batch, which on a long-tailed set cuts the head classes into pieces; the power-law prior lets prototypes take
unequal shares (PMSN's argument, and the Fig. 1 toy in tests/unit/methods/test_msn.py).

Where each choice comes from:
- temperature 0.1, sharpening T 0.25, reg_weight 1 (memax_weight), 1024 prototypes, a 3-layer projector
  (hidden 2048, BN + GELU, output 256), prototypes initialised U(-1/sqrt(D), 1/sqrt(D)), 3 Sinkhorn
  iterations on the targets, one random patch subset shared by the whole batch, kept count
  floor(N * (1 - mask_ratio)), the [CLS] token as the feature, one target view and a masked anchor view:
  facebookresearch/msn (configs/pretrain/msn_vits16.yaml, src/losses.py, src/deit.py, src/msn_train.py);
- mask_ratio 0.15: that config's patch_drop for ViT-S/16, the nearest to our small ViT;
- momentum 0.996 -> 1 linearly over training: the paper (Sec. 4) and msn_train.py's momentum_scheduler;
- power-law tau 0.25: the PMSN paper's ImageNet setting (also lightly's PMSNLoss default);
- KL(pbar || prior) for PMSN, which for the uniform prior is exactly MSN's ME-MAX term, so MSN is PMSN with a
  uniform prior; the prior is laid on the prototypes by index (prototype k gets rank k), the prototypes are
  learned so they sort themselves (as lightly's PMSNLoss does; the paper gives no ordering step);
- Sinkhorn with the prior as the prototype marginal (our choice): the reference balances targets to the
  uniform marginal, which is MSN's prior; balancing PMSN's targets to uniform would undo its power-law prior,
  so both balance to their own prior (lightly's PMSN keeps the uniform Sinkhorn);
- left out: the reference's 10 extra low-resolution "focal" anchor views (our augmentation has one size),
  its cosine weight-decay/learning-rate schedules (the project's optimizer is used) and the optional
  per-sample entropy term (ent_weight 0 in the reference config).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from lt_ssl.errors import ConfigError
from lt_ssl.methods.base import Batch, Method, Paper
from lt_ssl.models.backbones import PATCH_BACKBONES
from lt_ssl.models.heads import mlp_layers
from lt_ssl.schema import Float, Section


class MSNConfig(Section):
    name: Literal["msn"] = "msn"
    proj_hidden: int = Field(2048, ge=1)  # reference hidden_dim
    proj_dim: int = Field(256, ge=1)  # reference output_dim
    num_prototypes: int = Field(1024, ge=2)  # reference num_proto
    temperature: Float = Field(0.1, gt=0)  # cosine-softmax temperature of anchors and targets
    sharpen: Float = Field(0.25, gt=0)  # target sharpening T (reference start/final_sharpen)
    mask_ratio: Float = Field(0.15, ge=0, lt=1)  # share of anchor patches dropped (reference patch_drop, ViT-S)
    reg_weight: Float = Field(1.0, ge=0)  # lambda on KL(mean prediction || prior) (reference memax_weight)
    sinkhorn_iterations: int = Field(3, ge=0)  # 0 = targets are the sharpened predictions as they are
    momentum: Float = Field(0.996, ge=0, le=1)  # EMA momentum at step 0, rising linearly to 1


class PMSNConfig(MSNConfig):
    name: Literal["pmsn"] = "pmsn"
    power_law_tau: Float = Field(0.25, gt=0)  # prior_k ∝ k^(-tau), k = 1..K (PMSN paper)


def prototype_probs(z: Tensor, prototypes: Tensor, temperature: float) -> Tensor:
    """softmax over prototypes of cosine similarity / temperature. z (B, D), prototypes (K, D) -> (B, K)."""
    return F.softmax(F.normalize(z, dim=1) @ F.normalize(prototypes, dim=1).T / temperature, dim=1)


def sharpen(p: Tensor, t: float) -> Tensor:
    """p^(1/t) renormalised per row. (B, K) -> (B, K)."""
    s = p ** (1.0 / t)
    return s / s.sum(dim=1, keepdim=True)


@torch.no_grad()
def sinkhorn(q: Tensor, prior: Tensor, iterations: int) -> Tensor:
    """Rebalance assignments q (B, K) so prototype k gets a `prior[k]` share of the batch; rows sum to 1."""
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=0, keepdim=True) * prior  # column k sums to prior_k
        q = q / q.sum(dim=1, keepdim=True) / q.shape[0]  # row i sums to 1/B
    return q * q.shape[0]


def power_law_prior(k: int, tau: float) -> Tensor:
    """prior_j = j^(-tau) / sum_i i^(-tau), j = 1..k. -> (k,)."""
    p = torch.arange(1, k + 1, dtype=torch.float64) ** (-tau)
    return (p / p.sum()).float()


def msn_objective(probs: Tensor, targets: Tensor, prior: Tensor, reg_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, cross-entropy, KL): mean_i H(t_i, p_i) + reg_weight * KL(mean_i p_i || prior). probs, targets (B, K)."""
    ce = -(targets * torch.log(probs)).sum(dim=1).mean()
    mean = probs.mean(dim=0)
    kl = (mean * (torch.log(mean) - torch.log(prior))).sum()
    return ce + reg_weight * kl, ce, kl


def random_keep(num_patches: int, mask_ratio: float, device: torch.device | None = None) -> Tensor:
    """floor(N * (1 - mask_ratio)) distinct patch indices (at least one), in random order. -> (n,) long."""
    n = max(1, math.floor(num_patches * (1.0 - mask_ratio)))
    return torch.randperm(num_patches, device=device)[:n]


def msn_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """The reference's head: Linear-BN-GELU-Linear-BN-GELU-Linear. (B, in_dim) -> (B, out_dim)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(),
        nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(),
        nn.Linear(hidden_dim, out_dim),
    )


class MSN(Method):
    """Masked anchor vs EMA target over learned prototypes, with a uniform prior (formula in the module docstring)."""

    Config = MSNConfig
    paper = Paper("Masked Siamese Networks for Label-Efficient Learning",
                  "Mahmoud Assran, Mathilde Caron, Ishan Misra, Piotr Bojanowski, Florian Bordes, Pascal Vincent, "
                  "Armand Joulin, Michael Rabbat, Nicolas Ballas", 2022, "https://arxiv.org/abs/2204.07141")
    masks_patches = True

    def __init__(self, backbone: nn.Module, cfg: MSNConfig):
        super().__init__(backbone, cfg)
        if not hasattr(backbone, "patch_size"):
            raise ConfigError(f"method {cfg.name} drops image patches and needs a ViT backbone; "
                              f"set backbone={min(PATCH_BACKBONES)}")
        self.projector = msn_projector(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        bound = cfg.proj_dim ** -0.5
        self.prototypes = nn.Parameter(torch.empty(cfg.num_prototypes, cfg.proj_dim).uniform_(-bound, bound))
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("prior", self.make_prior(cfg))
        self._progress = 0.0  # share of training done after the last loss() call; sets the EMA momentum

    @staticmethod
    def make_prior(cfg: MSNConfig) -> Tensor:
        return torch.full((cfg.num_prototypes,), 1.0 / cfg.num_prototypes)

    def projection_layers(self) -> list[nn.Module]:
        return mlp_layers(self.projector)  # the online projector; the prototypes are not a feature layer

    def param_groups(self, base_lr: float) -> list[dict]:
        """Every trained parameter; the EMA target is not trained."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": base_lr, "fix_lr": False}]

    def loss(self, batch: Batch) -> dict:
        anchor, target = batch.views  # (B, 3, S, S) each
        cfg = self.cfg
        keep = random_keep(self.backbone.num_patches(*anchor.shape[-2:]), cfg.mask_ratio, anchor.device)
        probs = prototype_probs(self.projector(self.backbone(anchor, keep=keep)), self.prototypes, cfg.temperature)
        with torch.no_grad():
            z_target = self.target_projector(self.target_backbone(target))
            targets = sharpen(prototype_probs(z_target, self.prototypes, cfg.temperature), cfg.sharpen)
            targets = sinkhorn(targets, self.prior, cfg.sinkhorn_iterations)
        loss, _, _ = msn_objective(probs, targets, self.prior, cfg.reg_weight)
        self._progress = (batch.step + 1) / max(batch.total_steps, 1)
        return {"loss": loss}

    def momentum(self) -> float:
        """The EMA momentum now: `momentum` at the start, 1 at the end of training, linear in between."""
        return self.cfg.momentum + (1.0 - self.cfg.momentum) * min(self._progress, 1.0)

    @torch.no_grad()
    def after_step(self) -> None:
        m = self.momentum()
        online = [p.detach() for p in (*self.backbone.parameters(), *self.projector.parameters())]
        target = [*self.target_backbone.parameters(), *self.target_projector.parameters()]
        # t <- m t + (1 - m) p over every tensor at once: two foreach ops instead of two per tensor (126 launches
        # a step for vit_tiny on a GPU; benchmarks/ops_per_step.py), and the same rounding as per tensor.
        torch._foreach_mul_(target, m)
        torch._foreach_add_(target, online, alpha=1.0 - m)


class PMSN(MSN):
    """MSN with a power-law prior in the regulariser (and the Sinkhorn marginal) instead of the uniform one."""

    Config = PMSNConfig
    paper = Paper("The Hidden Uniform Cluster Prior in Self-Supervised Learning",
                  "Mahmoud Assran, Randall Balestriero, Quentin Duval, Florian Bordes, Ishan Misra, Piotr Bojanowski, "
                  "Pascal Vincent, Michael Rabbat, Nicolas Ballas", 2023, "https://arxiv.org/abs/2210.07277")

    @staticmethod
    def make_prior(cfg: PMSNConfig) -> Tensor:
        return power_law_prior(cfg.num_prototypes, cfg.power_law_tau)
