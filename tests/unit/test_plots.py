"""Tests for lt_ssl.plots: every figure renders to deterministic PNG bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lt_ssl.errors import DataError
from lt_ssl.plots import accuracy_bars_png, class_distribution_png, cluster_scatter_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _long_tail(num_classes: int, head: int, ratio: float) -> np.ndarray:
    counts = [max(1, int(head * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]
    return np.repeat(np.arange(num_classes), counts)


def test_cluster_scatter_png() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(300, 16, generator=gen)
    ids = torch.randint(0, 4, (300,), generator=gen)
    png = cluster_scatter_png(feats, ids)
    assert png.startswith(PNG_SIGNATURE)
    with_labels = cluster_scatter_png(feats, ids, labels=torch.randint(0, 10, (300,), generator=gen))
    assert with_labels.startswith(PNG_SIGNATURE) and with_labels != png
    assert cluster_scatter_png(feats, ids) == png  # deterministic bytes


def test_cluster_scatter_rejects_mismatched_shapes() -> None:
    with pytest.raises(DataError, match="assignments"):
        cluster_scatter_png(np.zeros((5, 3)), np.zeros(4, dtype=np.int64))


@pytest.mark.parametrize("num_classes", [10, 100])
def test_class_distribution_png(num_classes: int) -> None:
    labels = _long_tail(num_classes, head=200, ratio=50)
    ids = np.random.default_rng(0).integers(0, 3, size=labels.shape[0])
    png = class_distribution_png(labels, ids, num_classes=num_classes, k=3)
    assert png.startswith(PNG_SIGNATURE)


def test_accuracy_bars_png() -> None:
    results = {
        "base": {"many": 0.8, "medium": 0.6, "few": 0.3, "all": 0.62},
        "distilled": {"many": 0.82, "medium": 0.66, "few": 0.41, "all": 0.67},
        "knn": {"many": 0.7, "all": 0.5},  # a missing group is left blank, not an error
    }
    png = accuracy_bars_png(results)
    assert png.startswith(PNG_SIGNATURE)
    with pytest.raises(DataError, match="no results"):
        accuracy_bars_png({})
