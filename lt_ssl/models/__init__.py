"""Backbones and the MLP heads built on top of them."""

from lt_ssl.models.backbones import BACKBONES, build_backbone
from lt_ssl.models.heads import regression_head, simclr_projector, simsiam_predictor, simsiam_projector

__all__ = [
    "BACKBONES",
    "build_backbone",
    "regression_head",
    "simclr_projector",
    "simsiam_predictor",
    "simsiam_projector",
]
