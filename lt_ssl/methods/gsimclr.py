"""G-SimCLR (Chakraborty, Gosthipaty and Paul, 2020): SimCLR on batches whose images carry distinct pseudo-labels.

    pseudo-labels: k-means (K = 64) on a denoising autoencoder's latent codes (the pseudolabel stage,
                   lt_ssl/pseudolabel.py, formulas there)
    batches:       the training set dealt out round-robin over the pseudo-labels (lt_ssl.data.samplers
                   .round_robin_order): while enough labels remain, no two images of a batch share one, so
                   fewer of NT-Xent's negatives are images of the positive's own class
    loss:          SimCLR's NT-Xent on the batch, unchanged

Where each choice comes from (reference ariG23498/G-SimCLR, CIFAR10/SimCLR_Pseudo_Labels/
SimCLR_Pseudo_Labels_Training.ipynb):
- the batch order: rank within cluster, sort by rank, batch without shuffling (see round_robin_order; we
  reshuffle within the rule every epoch);
- temperature 0.1 and the projection head 256 -> 50: the reference's `temperature=0.1` and
  `get_resnet_simclr_deeper(256, 128, 50)`; our SimCLR head has one hidden layer (Linear-BN-ReLU-Linear), so
  the reference's middle 128-d layer is left out;
- batch size 64 = K in the reference; here the batch size is the training stage's (train.batch_size), so set
  it to pseudo_k for the paper's setting (configs/gsimclr.yaml does).
In the offline-clustering recipe an expert trains on one cluster's images and keeps their pseudo-labels from
the run's pseudolabel stage (looked up by each image's position in the training subset).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from lt_ssl.data.samplers import round_robin_order
from lt_ssl.errors import StageError
from lt_ssl.methods.base import Paper
from lt_ssl.methods.simclr import SimCLR
from lt_ssl.pseudolabel import PseudoLabelConfig
from lt_ssl.schema import Float


class GSimCLRConfig(PseudoLabelConfig):
    name: Literal["gsimclr"] = "gsimclr"
    proj_dim: int = Field(50, ge=1)  # projection output width (reference: 50)
    proj_hidden: int = Field(256, ge=1)  # projection hidden width (reference's first hidden layer: 256)
    temperature: Float = Field(0.1, gt=0)  # NT-Xent temperature, dimensionless (reference: 0.1)


class GSimCLR(SimCLR):
    """SimCLR's encoder, head and loss; the loop visits the images in pseudo-label round-robin order."""

    Config = GSimCLRConfig
    paper = Paper("G-SimCLR: Self-Supervised Contrastive Learning with Guided Projection via Pseudo Labelling",
                  "Souradip Chakraborty, Aritra Roy Gosthipaty, Sayak Paul", 2020, "https://arxiv.org/abs/2009.12007")
    needs_stages = ("pseudolabel",)

    def __init__(self, backbone, cfg: GSimCLRConfig):
        super().__init__(backbone, cfg)
        self.pseudolabels: Tensor | None = None  # not a buffer: a checkpoint holds weights only

    def set_pseudolabels(self, labels: Tensor) -> None:
        self.pseudolabels = labels.detach().cpu().long()

    def epoch_order(self, n: int, generator: torch.Generator) -> Tensor:
        if self.pseudolabels is None:
            raise StageError("gsimclr trains on pseudo-label batches but got no pseudo-labels; run the pseudolabel stage")
        if self.pseudolabels.shape != (n,):
            raise StageError(f"gsimclr got {self.pseudolabels.shape[0]} pseudo-labels for {n} training images; "
                             "rerun the pseudolabel stage for this run")
        return round_robin_order(self.pseudolabels, generator)
