"""SimSiam (Chen & He, 2021): a siamese encoder whose predictor matches the other view's stop-gradient projection."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from lt_ssl.losses import embedding_std_tensor, simsiam_loss
from lt_ssl.methods.base import Batch, Method, Paper
from lt_ssl.models.heads import mlp_layers, simsiam_predictor, simsiam_projector
from lt_ssl.schema import Section


class SimSiamConfig(Section):
    name: Literal["simsiam"] = "simsiam"
    proj_dim: int = Field(2048, ge=1)  # output width of the projector (paper: 2048)
    proj_hidden: int = Field(2048, ge=1)  # hidden width of the projector (paper: equal to proj_dim)
    proj_layers: Literal[2, 3] = 3  # 3 as facebookresearch/simsiam's ImageNet builder; the paper's CIFAR variant uses 2
    pred_hidden: int = Field(512, ge=1)  # predictor bottleneck (paper: proj_dim / 4)
    collapse_fraction: float = Field(0.02, ge=0, lt=1)  # collapse when std of normalised z < this / sqrt(proj_dim)


class SimSiam(Method):
    """backbone -> projector (z) -> predictor (p); loss 0.5*D(p1, z2) + 0.5*D(p2, z1) with stop-grad on z,
    D(p, z) = -cos(p, z). Trained with SGD, momentum 0.9, lr 0.05 * B / 256 (0.03 for CIFAR), cosine decay."""

    Config = SimSiamConfig
    paper = Paper("Exploring Simple Siamese Representation Learning", "Xinlei Chen, Kaiming He", 2021,
                  "https://arxiv.org/abs/2011.10566")

    def __init__(self, backbone, cfg: SimSiamConfig):
        super().__init__(backbone, cfg)
        self.projector = simsiam_projector(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, num_layers=cfg.proj_layers)
        self.predictor = simsiam_predictor(cfg.proj_dim, cfg.pred_hidden)

    def loss(self, batch: Batch) -> dict:
        x1, x2 = batch.views  # (B, 3, S, S) each
        # Two passes, not one concatenated batch: BN statistics stay per view, as in the reference code.
        z1 = self.projector(self.backbone(x1))  # (B, proj_dim)
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return {"loss": simsiam_loss(p1, p2, z1, z2), "z_std": embedding_std_tensor(z1)}

    def projection_layers(self) -> list:
        """The projector's layers (the predictor is not part of the projection head)."""
        return mlp_layers(self.projector)

    def param_groups(self, base_lr: float) -> list[dict]:
        """The encoder group follows the schedule; the predictor keeps base_lr (the paper's fix_pred_lr option)."""
        encoder = [*self.backbone.parameters(), *self.projector.parameters()]
        return [
            {"params": encoder, "lr": base_lr, "fix_lr": False},
            {"params": list(self.predictor.parameters()), "lr": base_lr, "fix_lr": True},
        ]

    def collapse_std(self) -> float:
        """Healthy L2-normalised D-dim outputs have per-dimension std about 1/sqrt(D) (SimSiam §4); collapsed, 0."""
        return self.cfg.collapse_fraction / math.sqrt(self.cfg.proj_dim)
