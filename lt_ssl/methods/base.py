"""What the training loop and the stages need from a self-supervised method; optional hooks default to no-ops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from lt_ssl.data.augment import ExtraOps
from lt_ssl.schema import Section


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    year: int | None  # None where the source gives none (a thesis' code without a dated paper)
    url: str


@dataclass(frozen=True)
class Batch:
    """One training step's input to a method's loss."""

    views: list[Tensor]  # num_views independently augmented views, each (B, 3, S, S), normalised
    idx: Tensor  # (B,) long: the images' positions in the training set (per-sample statistics key on it)
    epoch: int  # 0-based
    step: int  # global step, 0-based
    total_steps: int


class Method(nn.Module):
    """backbone + the method's heads. A method file subclasses this, sets Config, paper, and writes loss().

    Config: the method's typed config; its `name: Literal["..."]` selects it under `method.name`.
    """

    Config: ClassVar[type[Section]]
    paper: ClassVar[Paper]
    num_views: ClassVar[int] = 2
    # Optional stages of the plan (plan.py, `optional=True`) whose outputs this method reads; a run's plan
    # includes them only when one of its methods names them (contract.plan_of).
    needs_stages: ClassVar[tuple[str, ...]] = ()
    masks_patches: ClassVar[bool] = False  # drops patch tokens: needs a ViT backbone (patch_size, forward(x, keep))

    def __init__(self, backbone: nn.Module, cfg: Section):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """{"loss": scalar with grad, optional "z_std": detached scalar the collapse rule reads}."""
        raise NotImplementedError

    def param_groups(self, base_lr: float) -> list[dict]:
        """One scheduled group with every parameter; `fix_lr: True` keeps a group at base_lr."""
        return [{"params": list(self.parameters()), "lr": base_lr, "fix_lr": False}]

    def collapse_std(self) -> float:
        """An epoch whose mean "z_std" falls below this raises CollapseError; 0 = the method has no such rule."""
        return 0.0

    def projection_layers(self) -> list[nn.Module]:
        """The projection head as its successive layers, backbone side first; [] for a method without one.

        Layer i maps the output of layer i - 1 (layer 0: the backbone's features) on; the evaluation's
        head_layers probes (G-SimCLR's P1, P2, ...) read the features after each. Each layer is a Linear with
        the normalisation/activation that follows it (models.heads.mlp_layers cuts an MLP head that way).
        """
        return []

    def on_train_start(self, num_images: int) -> None:
        """Called before training on num_images images, before a checkpoint of that run is loaded: per-sample state
        keyed by Batch.idx (0 .. num_images - 1) starts over here, sized once, so that no step has to ask the
        device how large an index is (an expert started from the base model trains on other images)."""

    def after_step(self) -> None:
        """Called after each optimizer step (momentum/EMA targets)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after each finished epoch (per-sample statistics)."""

    def set_pseudolabels(self, labels: Tensor) -> None:
        """labels: (N,) long, one per training image in the order the loop indexes them; called before training
        by methods whose needs_stages has "pseudolabel"."""

    def epoch_order(self, n: int, generator: torch.Generator) -> Tensor:
        """(n,) long: the order in which the loop visits the n training images this epoch, cut into batches
        in that order (the last ragged batch dropped). Default: a uniform shuffle."""
        return torch.randperm(n, generator=generator)

    def augment_strength(self, idx: Tensor) -> ExtraOps | None:
        """Extra augmentation for the samples idx (B,): a per-sample strength for every view; None = the plain recipe."""
        return None
