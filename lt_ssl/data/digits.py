"""scikit-learn's bundled 8x8 handwritten digits as small RGB uint8 images: a real dataset needing no download."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from lt_ssl.errors import ConfigError


def load_digits_images(
    train: bool, size: int = 16, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """-> images (N,3,size,size) uint8, labels (N,) int64 in 0..9.

    The 1,797 images (values 0..16) are scaled to 0..255 and bilinearly upsampled, so that a
    random resized crop has more than 8 pixels to work with. The split is stratified and
    seeded: for one (test_fraction, seed) the train and test sets partition the 1,797 images.
    """
    if size < 1:
        raise ConfigError(f"digits image size must be >= 1, got {size}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"digits test_fraction must be in (0, 1), got {test_fraction}")
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (1797,8,8), 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_ix, test_ix = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    keep = np.sort(train_ix if train else test_ix)  # dataset order, independent of the shuffle
    x = torch.from_numpy(images[keep] * (255.0 / 16.0)).unsqueeze(1)  # (N,1,8,8)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    return np.ascontiguousarray(x.numpy()), labels[keep]
