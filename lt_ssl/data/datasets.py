"""The dataset a run trains on: train/test arrays by config, plus the long-tailed subset and groups."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .longtail import balanced_indices, longtail_indices


@dataclass(frozen=True)
class Arrays:
    """A whole dataset in memory: images uint8 (N,3,H,W), labels int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int


@dataclass(frozen=True)
class DatasetSpec:
    """What the loader needs to know of one dataset: its classes and where its files are unless data.root says."""

    num_classes: int
    default_root: str = ""  # "" = data.root is required (or the dataset ships with a Python package)
    idx: bool = False  # MNIST-family IDX files (else CIFAR's python batches)
    digit_pasted: bool = False  # the IDX garments with a digit pasted on, labelled by the digit (data/pasted.py)


# Fashion-MNIST's default is where Debian's dataset-fashion-mnist package puts the original IDX files.
DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(10),
    "cifar10": DatasetSpec(10),
    "cifar100": DatasetSpec(100),
    "fashion_mnist": DatasetSpec(10, "/usr/share/datasets/fashion-mnist", idx=True),
    "mnist": DatasetSpec(10, idx=True),
    "kmnist": DatasetSpec(10, idx=True),
    "fashion_mnist_digits": DatasetSpec(10, "/usr/share/datasets/fashion-mnist", idx=True, digit_pasted=True),
}


def load_arrays(data: DataConfig, train: bool) -> Arrays:
    """Load the configured dataset's train or test split, checked for shape and label range."""
    spec = DATASETS[data.dataset]
    num_classes = spec.num_classes
    if data.dataset == "digits":  # ships inside scikit-learn: no root
        from .digits import load_digits_images

        images, labels = load_digits_images(train=train, size=data.image_size or 16)
    else:
        from .remote import resolve_data_root

        root = resolve_data_root(data.root or spec.default_root)
        if spec.digit_pasted:
            from .pasted import load_fashion_digits

            images, labels = load_fashion_digits(root, train=train, size=data.image_size)
        elif spec.idx:
            from .idx import load_idx_images

            images, labels = load_idx_images(root, train=train, size=data.image_size)
        else:
            from .cifar import download_cifar, load_cifar

            if data.download:
                download_cifar(root, data.dataset)
            images, labels = load_cifar(root, data.dataset, train=train)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise DataError(f"{data.dataset} images must be uint8 (N,3,H,W), got {images.dtype} {images.shape}")
    if len(labels) != len(images) or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{data.dataset} labels must be {len(images)} ints in [0,{num_classes}); the files are corrupt")
    return Arrays(images, labels.astype(np.int64), num_classes)


def select_subset(data: DataConfig, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Indices of the training subset the config asks for (long-tailed, balanced-rescaled or full)."""
    if data.subset == "full":
        return np.arange(len(labels), dtype=np.int64)
    lt = longtail_indices(labels, data.imbalance, data.split)
    if data.subset == "longtail":
        return lt
    return balanced_indices(labels, total=len(lt), seed=data.split)


def group_counts(data: DataConfig, labels: np.ndarray, subset: np.ndarray, num_classes: int) -> list[int]:
    """Per-class counts that define many/medium/few: always the long-tailed counts of this split, so the
    balanced and full baselines are scored on the same class groups as the long-tailed run."""
    lt = longtail_indices(labels, data.imbalance, data.split) if data.imbalance > 1 else subset
    return np.bincount(labels[lt], minlength=num_classes).tolist()
