"""Long-tailed and balanced-rescaled subsets of a labelled dataset, and many/medium/few class groups."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lt_ssl.errors import DataError


def longtail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Exponential profile N_c = floor(n_max * imbalance**(-c/(C-1))), c = 0..C-1 (Cao et al., LDAM).

    imbalance is N_max/N_min; 1 gives a balanced list. CIFAR-10-LT (5000, 10, 100) sums to 12,406.
    """
    if not imbalance >= 1:  # `not >=` also rejects NaN
        raise DataError(f"imbalance must be >= 1 (N_max/N_min), got {imbalance}: use 1 for balanced data")
    if num_classes < 1 or n_max < 1:
        raise DataError(f"need n_max >= 1 and num_classes >= 1, got n_max={n_max}, num_classes={num_classes}")
    if num_classes == 1:
        return [n_max]
    return [math.floor(n_max * imbalance ** (-c / (num_classes - 1))) for c in range(num_classes)]


def _class_indices(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """labels: (N,) int -> (classes (C,) sorted, per-class index arrays in dataset order)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a non-empty 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    classes = np.unique(labels)
    return classes, [np.flatnonzero(labels == c) for c in classes]


def longtail_indices(labels: np.ndarray, imbalance: float, split: int) -> np.ndarray:
    """labels: (N,) int -> sorted int64 indices of an exponentially long-tailed subset.

    n_max is the smallest class size (so every class can supply its quota). The class taking
    rank r (and so N_r images) comes from a permutation seeded by `split`, so different splits
    put different classes in the head and tail; images inside a class come from the same rng.
    """
    classes, per_class = _class_indices(labels)
    n_max = min(len(ix) for ix in per_class)
    counts = longtail_counts(n_max, len(classes), imbalance)
    rng = np.random.default_rng(split)
    order = rng.permutation(len(classes))
    quota = np.empty(len(classes), dtype=np.int64)
    quota[order] = counts
    chosen = [rng.choice(ix, size=int(n), replace=False) for ix, n in zip(per_class, quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def balanced_indices(labels: np.ndarray, total: int, seed: int) -> np.ndarray:
    """labels: (N,) int -> sorted int64 indices of `total` images split equally over classes.

    The "balanced rescaled" control: same size as a long-tailed subset, uniform over classes;
    the total % C leftover images go one each to the first classes of a seeded class order.
    """
    classes, per_class = _class_indices(labels)
    if total < 0:
        raise DataError(f"balanced subset size must be >= 0, got {total}")
    rng = np.random.default_rng(seed)
    quota = np.full(len(classes), total // len(classes), dtype=np.int64)
    quota[rng.permutation(len(classes))[: total % len(classes)]] += 1
    short = [int(c) for c, ix, n in zip(classes, per_class, quota) if n > len(ix)]
    if short:
        raise DataError(
            f"balanced subset of {total} needs up to {quota.max()} images per class but classes {short} "
            "have fewer: use a smaller total or a larger dataset"
        )
    chosen = [rng.choice(ix, size=int(n), replace=False) for ix, n in zip(per_class, quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """labels: (N,) int -> sorted int64 indices of `fraction` of each class's images, drawn by a seeded generator.

    Class c keeps round(fraction * N_c) images (Python's round: nearest, ties to even), at least one, so every
    class present keeps a label: G-SimCLR's "10% of the labels", stratified so each class keeps its share.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"stratified fraction must be in (0, 1], got {fraction}")
    _, per_class = _class_indices(labels)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(ix, size=max(1, round(fraction * len(ix))), replace=False) for ix in per_class]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def class_groups(train_counts: Sequence[int]) -> dict[str, list[int]]:
    """train_counts: (C,) images per class id -> {"many", "medium", "few"}: lists of class ids.

    Classes are ranked by training count, largest first, ties broken by smaller class id, and
    cut into thirds with np.array_split, so leftover classes go to the first groups:
    10 classes -> 4/3/3, 100 -> 34/33/33. Each list is sorted by class id.
    """
    counts = np.asarray(train_counts)
    if counts.ndim != 1 or counts.size < 3:
        raise DataError(f"class groups need counts for at least 3 classes, got shape {counts.shape}")
    ranked = np.lexsort((np.arange(counts.size), -counts))  # last key is primary: count descending
    many, medium, few = np.array_split(ranked, 3)
    return {name: sorted(int(c) for c in g) for name, g in (("many", many), ("medium", medium), ("few", few))}
