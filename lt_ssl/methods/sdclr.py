"""SDCLR (Jiang et al., 2021, "Self-Damaging Contrastive Learning"): contrast the encoder with a pruned copy of itself.

    masks: global magnitude pruning of the encoder's conv/linear weights W: keep |w| >= t, where t is the
           ceil(p * N)-th smallest |w| over all N prunable weights (p = prune_fraction); recomputed from the
           dense weights at the start of every epoch (the pruned branch shares the dense weights: W * mask)
    z1 = g(f(x1; W))            dense branch, view 1         (B, D)
    z2 = g(f(x2; W * mask))     pruned branch, view 2, with its own BatchNorm ("dual BN")
    loss = NT-Xent(z1, z2; temperature)

Pruning "damages" the encoder most on what it memorised least -- in a long-tailed set, the tail -- so the
contrast between the two branches puts weight on those samples without labels.

Where each choice comes from (reference VITA-Group/SDCLR):
- global, not per-layer, magnitude threshold and the ceil(p * N) index: prune/mask.py `magnitudePruning`;
- re-pruned from the dense weights every epoch: prune/prune_simCLR.py ("prune every epoch");
- the dense branch sees view 1 and the pruned branch view 2, one NT-Xent between them, gradients into both:
  prune_simCLR.py computes the two halves of that gradient in two backward passes (a DDP workaround); one
  backward through both branches gives the same sum;
- separate BatchNorm for the pruned branch: the reference's `--prune_dual_bn` models;
- p = 0.7, temperature 0.2, 128-d projections: cmds/shell_scrips/cifar-10-LT.sh defaults for CIFAR-10-LT;
- only the backbone is pruned; the projection head is shared unpruned (our choice: the head is discarded after
  pre-training, and pruning it would damage the loss, not the representation).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from lt_ssl.losses import embedding_std_tensor, nt_xent_loss
from lt_ssl.methods.base import Batch, Method, Paper
from lt_ssl.models.heads import mlp_layers, simclr_projector
from lt_ssl.schema import Float, Section


class SDCLRConfig(Section):
    name: Literal["sdclr"] = "sdclr"
    proj_dim: int = Field(128, ge=1)  # projection width (reference CIFAR scripts: --output_ch 128)
    proj_hidden: int = Field(2048, ge=1)  # hidden width of SimCLR's head
    temperature: Float = Field(0.2, gt=0)  # NT-Xent temperature (reference CIFAR-10-LT script: 0.2)
    prune_fraction: Float = Field(0.7, ge=0, lt=1)  # share of encoder weights zeroed in the pruned branch (script: 0.7)


def magnitude_masks(weights: list[Tensor], fraction: float) -> list[Tensor]:
    """Global magnitude pruning: keep |w| >= t, t the ceil(fraction * N)-th smallest |w| over all N weights.

    weights: tensors of any shapes -> float masks of the same shapes (1 = kept).
    """
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    k = min(math.ceil(fraction * flat.numel()), flat.numel() - 1)
    threshold = flat.sort().values[k]
    return [(w.detach().abs() >= threshold).float() for w in weights]


class SDCLR(Method):
    """Dense encoder vs its magnitude-pruned self, NT-Xent between them (formula in the module docstring)."""

    Config = SDCLRConfig
    paper = Paper("Self-Damaging Contrastive Learning", "Ziyu Jiang, Tianlong Chen, Bobak Mortazavi, Zhangyang Wang",
                  2021, "https://arxiv.org/abs/2106.02990")

    def __init__(self, backbone: nn.Module, cfg: SDCLRConfig):
        super().__init__(backbone, cfg)
        self.projector = simclr_projector(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        # Prunable: every conv/linear weight of the backbone. Masks are buffers, so a resumed epoch keeps its mask.
        self._prunable = [f"{n}.weight" for n, m in backbone.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for i, w in enumerate(self._masked_weights()):
            self.register_buffer(f"mask_{i}", torch.ones_like(w))
        # The pruned branch's own BatchNorm layers (dual BN), as copies of the backbone's.
        bns = {n: m for n, m in backbone.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        self.pruned_bn = nn.ModuleList(type(m)(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                                               track_running_stats=m.track_running_stats) for m in bns.values())
        self._bn_names = list(bns)
        self.prune()

    def projection_layers(self) -> list:
        """The shared (unpruned) projection head's layers, as SimCLR's."""
        return mlp_layers(self.projector)

    def _masked_weights(self) -> list[Tensor]:
        params = dict(self.backbone.named_parameters())
        return [params[n] for n in self._prunable]

    def masks(self) -> list[Tensor]:
        return [getattr(self, f"mask_{i}") for i in range(len(self._prunable))]

    @torch.no_grad()
    def prune(self) -> None:
        """Recompute the masks from the current dense weights."""
        for mask, new in zip(self.masks(), magnitude_masks(self._masked_weights(), self.cfg.prune_fraction)):
            mask.copy_(new)

    def pruned_features(self, x: Tensor) -> Tensor:
        """The backbone with W * mask and the pruned branch's BatchNorm. x: (B, 3, S, S) -> (B, out_dim)."""
        swap = {n: w * m for n, w, m in zip(self._prunable, self._masked_weights(), self.masks())}
        for name, bn in zip(self._bn_names, self.pruned_bn):
            swap.update({f"{name}.{k}": v for k, v in [*bn.named_parameters(), *bn.named_buffers()]})
        return functional_call(self.backbone, swap, (x,))

    def loss(self, batch: Batch) -> dict:
        x1, x2 = batch.views  # (B, 3, S, S) each
        z1 = self.projector(self.backbone(x1))  # dense branch (B, proj_dim)
        z2 = self.projector(self.pruned_features(x2))  # pruned branch (B, proj_dim)
        return {"loss": nt_xent_loss(z1, z2, self.cfg.temperature), "z_std": embedding_std_tensor(z1)}

    def on_epoch_end(self, epoch: int) -> None:
        self.prune()  # the next epoch contrasts with a copy pruned from the weights as they are now
