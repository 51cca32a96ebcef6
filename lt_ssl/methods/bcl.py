"""BCL (Zhou et al., 2022, "Contrastive Learning with Boosted Memorization"): SimCLR whose hard-to-memorise samples
get stronger augmentation, chosen from each sample's loss tracked over epochs.

    l_i     = (l_i^(1) + l_i^(2)) / 2           sample i's NT-Xent terms of its two views, averaged   (detached)
    m_i    <- l_i                                the first time sample i is seen
    m_i    <- beta * m_i + (1 - beta) * l_i      every later time                  (the momentum loss)
    at each epoch end, over the samples seen so far:
    z_i     = (m_i - mean(m)) / std(m)
    w_i     = z_i / max_j |z_j| / 2 + 1/2        in [0, 1]; all 1/2 when every m_i is equal
    next epoch: each view of sample i gets `rand_ops` rounds of one random RandAugment-style op, applied with
    probability w_i at magnitude rand_magnitude * w_i * U(0, 1)          (lt_ssl.data.augment.ExtraOps)
    loss    = mean over the 2B views of the NT-Xent terms                (plain SimCLR: m and w carry no gradient)

Samples the network has not memorised yet (high momentum loss -- in a long-tailed set, mostly the tail) get
harder views, which the paper argues makes the model memorise them, boosting the tail without labels.

Where each choice comes from (reference MediaBrain-SJTU/BCL):
- per-sample loss = the mean of the sample's two view terms: losses/nt_xent.py (`loss.view(2, B).mean(0)`);
- beta = 0.95, and the first epoch stores the loss itself: train.py (`--momentum_loss_beta 0.95`, `if epoch > 1`);
  we start from the loss at a sample's first observation instead of "epoch 1", the same thing when every sample
  is seen in epoch 1, and the right thing here, where the loop drops the ragged last batch;
- the normalisation (z-score, then divided by the largest |z|, halved, shifted by 1/2):
  data/memoboosted_cifar100.py `calculate_momentum_weight`; the std cancels against max|z| but is kept for the
  reference's form. It normalises over the samples with a recorded loss (the reference: the whole set, which its
  loop sees every epoch); a sample without one gets 1/2, the strength of an average sample (our choice);
- strength 0 everywhere in the first epoch: the reference's `momentum_weight` starts at 0;
- one op per view (k = 1), magnitude up to 30 of RandAugment's 30, applied with probability w_i, after the
  SimCLR recipe: the reference's `RandAugment_prob(rand_k, rand_strength * w_i * rand(), w_i)` in the dataset's
  transform, with `--rand_k 1 --rand_strength 30`; both views draw their ops independently;
- the ops and their ranges: data/randaug.py (see lt_ssl.data.augment.EXTRA_OPS for where ours differ);
- temperature 0.2, 128-d projections with a hidden layer as wide as the backbone (ResNet-18: 512):
  bash_scripts/cifar-LT-BCL.sh and models/simclr.py; the reference's head ends in a BatchNorm, ours is SimCLR's;
- the paper's lr 0.5 per 512 images, weight decay 5e-4, batch 512, 2000 epochs: the same script.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from lt_ssl.data.augment import ExtraOps
from lt_ssl.losses import embedding_std_tensor, nt_xent_per_view
from lt_ssl.methods.base import Batch, Paper
from lt_ssl.methods.simclr import SimCLR
from lt_ssl.schema import Float, Section

_EQUAL = 1e-5  # momentum losses equal up to this relative float32 rounding are equal: every strength 1/2


class BCLConfig(Section):
    name: Literal["bcl"] = "bcl"
    proj_dim: int = Field(128, ge=1)  # projection width (reference: 128)
    proj_hidden: int = Field(512, ge=1)  # hidden width (reference: the backbone's width, 512 for ResNet-18)
    temperature: Float = Field(0.2, gt=0)  # NT-Xent temperature (reference script: 0.2)
    momentum: Float = Field(0.95, ge=0, lt=1)  # beta of the momentum loss (reference: --momentum_loss_beta 0.95)
    rand_ops: int = Field(1, ge=0)  # extra RandAugment rounds per view (reference: --rand_k 1)
    rand_magnitude: Float = Field(1.0, ge=0, le=1)  # largest magnitude, a fraction of the ops' ranges (reference: 30/30)


def momentum_update(shadow: Tensor, seen: Tensor, loss: Tensor, beta: float) -> Tensor:
    """m <- beta * m + (1 - beta) * l where seen, m <- l where not. shadow, loss: (B,) float, seen: (B,) bool -> (B,)."""
    return torch.where(seen, beta * shadow + (1.0 - beta) * loss, loss)


def momentum_strength(shadow: Tensor, seen: Tensor) -> Tensor:
    """Per-sample strengths in [0, 1] from momentum losses. shadow: (N,) float, seen: (N,) bool -> (N,).

    w = z / max|z| / 2 + 1/2 with z the z-score of the seen samples' m; unseen samples and an all-equal m get 1/2.
    """
    out = torch.full_like(shadow, 0.5)
    m = shadow[seen].float()
    if m.numel() < 2:
        return out
    centred = m - m.mean()
    if centred.abs().max() <= _EQUAL * m.abs().max():
        return out
    z = centred / m.std()
    out[seen] = z / z.abs().max() / 2 + 0.5
    return out


class BCL(SimCLR):
    """SimCLR's encoder, head and NT-Xent; per-sample momentum losses set each sample's extra augmentation.

    The statistics are buffers keyed by the sample's position in the training tensor (Batch.idx), so checkpoints
    carry them and a resumed run continues with the same strengths; they start over with each training run
    (on_train_start), sized to its images then, so no step reads an index back from the device.
    """

    Config = BCLConfig
    paper = Paper("Contrastive Learning with Boosted Memorization",
                  "Zhihan Zhou, Jiangchao Yao, Yanfeng Wang, Bo Han, Ya Zhang", 2022, "https://arxiv.org/abs/2205.12693")

    def __init__(self, backbone: nn.Module, cfg: BCLConfig):
        super().__init__(backbone, cfg)
        self.register_buffer("shadow", torch.zeros(0))  # m_i, the momentum loss
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))  # whether m_i holds a loss yet
        self.register_buffer("strength", torch.zeros(0))  # w_i: 0 in the first epoch, then set at each epoch end

    @torch.no_grad()
    def on_train_start(self, num_images: int) -> None:
        # Batch.idx now indexes another image set (an expert started from the base model): start over.
        self.shadow, self.strength = (torch.zeros(num_images, device=self.shadow.device) for _ in range(2))
        self.seen = torch.zeros(num_images, dtype=torch.bool, device=self.seen.device)

    def loss(self, batch: Batch) -> dict:
        z1, z2 = self.project(batch)  # (B, proj_dim) each
        terms = nt_xent_per_view(z1, z2, self.cfg.temperature)  # (2B,)
        if self.training:
            self.track(batch.idx, terms.detach().view(2, -1).mean(dim=0))
        return {"loss": terms.mean(), "z_std": embedding_std_tensor(z1)}

    @torch.no_grad()
    def track(self, idx: Tensor, loss: Tensor) -> None:
        """Fold this step's per-sample losses (B,) into the momentum losses of samples idx (B,)."""
        self.shadow[idx] = momentum_update(self.shadow[idx], self.seen[idx], loss.float(), self.cfg.momentum)
        self.seen[idx] = True

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        self.strength.copy_(momentum_strength(self.shadow, self.seen))  # 1/2 for a sample not seen yet

    def augment_strength(self, idx: Tensor) -> ExtraOps | None:
        if self.cfg.rand_ops == 0:
            return None
        return ExtraOps(self.strength[idx], self.cfg.rand_ops, self.cfg.rand_magnitude)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint's buffers have the length of the set it was trained on; take that length before loading.
        # Checkpoints from before 2026-12-04 grew them only to the largest index seen, and kept the strength of an
        # index beyond them in new_strength: padded to this run's length (on_train_start's) with it, they resume
        # as they would have.
        beyond = state_dict.pop(prefix + "new_strength", None)
        for name in ("shadow", "seen", "strength"):
            saved = state_dict.get(prefix + name)
            if saved is None:
                continue
            missing = getattr(self, name).numel() - saved.numel()
            if beyond is not None and missing > 0:
                fill = beyond.item() if name == "strength" else 0
                state_dict[prefix + name] = saved = torch.cat([saved, saved.new_full((missing,), fill)])
            setattr(self, name, torch.zeros(saved.shape, dtype=saved.dtype, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
