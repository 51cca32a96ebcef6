"""SimCLR (Chen et al., 2020): contrast each view's projection with its positive against all other views."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lt_ssl.losses import embedding_std_tensor, nt_xent_loss
from lt_ssl.models.heads import simclr_projector


class SimCLR(nn.Module):
    """backbone -> projector (z); NT-Xent over the 2B views of a batch."""

    default_optimizer = "lars"  # the paper: LARS, lr 0.3 * B / 256, weight decay 1e-6, for its large batches

    def __init__(self, backbone: nn.Module, proj_dim: int = 128, proj_hidden: int = 2048, temperature: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.projector = simclr_projector(backbone.out_dim, proj_hidden, proj_dim)
        self.temperature = temperature  # dimensionless; 0.5 is the paper's CIFAR-10 choice

    def forward(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        """x1, x2: two augmented views (B, 3, H, W) -> {"loss": scalar, "z_std": detached scalar}."""
        # One pass over both views: BN statistics span all 2B views, as in SimCLR's code.
        z1, z2 = self.projector(self.backbone(torch.cat([x1, x2]))).chunk(2)
        return {"loss": nt_xent_loss(z1, z2, self.temperature), "z_std": embedding_std_tensor(z1)}

    def param_groups(self, base_lr: float) -> list[dict]:
        """One scheduled group; LARS itself leaves biases and BN parameters unadapted and undecayed."""
        return [{"params": list(self.parameters()), "lr": base_lr, "fix_lr": False}]
