"""SimCLR (Chen et al., 2020): contrast each view's projection with its positive against all other views."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from lt_ssl.losses import embedding_std_tensor, nt_xent_loss
from lt_ssl.methods.base import Batch, Method, Paper
from lt_ssl.models.heads import mlp_layers, simclr_projector
from lt_ssl.schema import Float, Section


class SimCLRConfig(Section):
    name: Literal["simclr"] = "simclr"
    proj_dim: int = Field(128, ge=1)  # output width of the projection head (paper: 128)
    proj_hidden: int = Field(2048, ge=1)  # hidden width (paper: the backbone's 2048 for ResNet-50)
    temperature: Float = Field(0.5, gt=0)  # NT-Xent softmax temperature, dimensionless (paper's CIFAR-10 choice: 0.5)


class SimCLR(Method):
    """backbone -> projector (z); NT-Xent over the 2B views of a batch.
    The paper trains with LARS, lr 0.3 * B / 256, weight decay 1e-6, for its large batches (train.optimizer=lars).
    No collapse rule: the negatives keep the embeddings apart."""

    Config = SimCLRConfig
    paper = Paper("A Simple Framework for Contrastive Learning of Visual Representations",
                  "Ting Chen, Simon Kornblith, Mohammad Norouzi, Geoffrey Hinton", 2020, "https://arxiv.org/abs/2002.05709")

    def __init__(self, backbone, cfg: SimCLRConfig):
        super().__init__(backbone, cfg)
        self.projector = simclr_projector(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)

    def projection_layers(self) -> list:
        """The projection head's two layers, Linear-BN-ReLU and Linear."""
        return mlp_layers(self.projector)

    def project(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views' projections (B, proj_dim) each, from one pass: BN statistics span all 2B views, as in SimCLR's code."""
        x1, x2 = batch.views
        return self.projector(self.backbone(torch.cat([x1, x2]))).chunk(2)

    def loss(self, batch: Batch) -> dict:
        z1, z2 = self.project(batch)
        return {"loss": nt_xent_loss(z1, z2, self.cfg.temperature), "z_std": embedding_std_tensor(z1)}
