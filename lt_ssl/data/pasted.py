"""Fashion-MNIST with a handwritten digit pasted into its top-left corner: the PMSN paper's toy for priors.

Assran et al. 2023 ("The Hidden Uniform Cluster Prior in Self-Supervised Learning", Fig. 3) label a clothing
image by a small digit drawn on it and make the digit classes power-law distributed; an embedding whose
prototypes assume uniform clusters splits the frequent digits and merges the rare ones, one with a power-law
prior keeps them apart. Here the label is the digit (0-9); the long-tailed subset (`data.subset=longtail`,
`data.imbalance=p`) draws the digit classes by the project's N_c = N_max * p^(-c/(C-1)), which is the power law.

Our choices (the paper gives no recipe): each garment image gets one digit class uniformly at random (seeded,
so the pairing is the same on every machine), and an image of that class from scikit-learn's digits (its own
train/test split, so no test digit is seen in training), resized to a third of the side and pasted by
maximum into the top-left corner, so both the garment and the digit stay visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .digits import load_digits_images
from .idx import load_idx_images

DIGIT_FRACTION = 3  # the digit's side is 1/3 of the image side
PAIRING_SEED = 0


def load_fashion_digits(root: Path, train: bool, size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """-> images (N, 3, S, S) uint8 (Fashion-MNIST with a digit pasted), labels (N,) int64: the digit classes."""
    garments, _ = load_idx_images(root, train=train, size=size)
    side = garments.shape[-1]
    digits, digit_labels = load_digits_images(train=train, size=max(4, side // DIGIT_FRACTION))
    rng = np.random.default_rng(PAIRING_SEED + (0 if train else 1))
    labels = rng.integers(0, 10, size=len(garments))
    by_class = [np.flatnonzero(digit_labels == c) for c in range(10)]
    picks = np.empty(len(garments), dtype=np.int64)
    for c in range(10):  # an image of the drawn class, uniformly among that class's digits
        rows = np.flatnonzero(labels == c)
        picks[rows] = rng.choice(by_class[c], size=len(rows))
    out = garments.copy()
    d = digits.shape[-1]
    np.maximum(out[:, :, :d, :d], digits[picks], out=out[:, :, :d, :d])
    return out, labels.astype(np.int64)
