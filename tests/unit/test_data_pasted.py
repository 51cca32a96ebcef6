"""The PMSN toy dataset: Fashion-MNIST garments with a digit pasted top-left, labelled by the digit."""

from __future__ import annotations

import numpy as np

from lt_ssl.config import load_config
from lt_ssl.data.datasets import load_arrays, select_subset
from lt_ssl.data.digits import load_digits_images
from lt_ssl.data.longtail import longtail_counts
from lt_ssl.data.pasted import DIGIT_FRACTION
from tests.unit.test_data_idx import write_pair


def _garments(tmp_path, images: np.ndarray, train: bool = True):
    write_pair(tmp_path, images, np.zeros(len(images), dtype=np.uint8), train=train)
    cfg = load_config(None, ["data.dataset=fashion_mnist_digits", f"data.root={tmp_path}"])
    return cfg, load_arrays(cfg.data, train=train)


def test_on_black_garments_the_corner_is_a_digit_of_the_label_class(tmp_path):
    cfg, a = _garments(tmp_path, np.zeros((200, 24, 24), dtype=np.uint8))
    side = 24 // DIGIT_FRACTION
    digits, digit_labels = load_digits_images(train=True, size=side)
    assert a.images.shape == (200, 3, 24, 24) and a.labels.min() >= 0 and a.labels.max() <= 9
    assert (a.images[:, :, side:, :] == 0).all() and (a.images[:, :, :, side:] == 0).all()  # only the corner is drawn
    for img, label in zip(a.images, a.labels):
        corner = img[:, :side, :side]
        match = np.flatnonzero((digits == corner).all(axis=(1, 2, 3)))
        assert len(match) and (digit_labels[match] == label).all()  # a digits image of exactly the label's class


def test_paste_keeps_the_brighter_pixel_and_leaves_the_garment_elsewhere(tmp_path):
    garments = np.full((50, 24, 24), 120, dtype=np.uint8)
    _, a = _garments(tmp_path, garments)
    side = 24 // DIGIT_FRACTION
    assert (a.images[:, :, :side, :side] >= 120).all() and (a.images[:, :, :side, :side] > 120).any()
    assert (a.images[:, :, side:, :] == 120).all()


def test_pairing_is_seeded_and_train_and_test_use_different_digits(tmp_path):
    black = np.zeros((300, 24, 24), dtype=np.uint8)
    _, a = _garments(tmp_path / "a", black)
    _, b = _garments(tmp_path / "b", black)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    _, test = _garments(tmp_path / "t", black, train=False)
    side = 24 // DIGIT_FRACTION
    train_digits = {img[:, :side, :side].tobytes() for img in a.images}
    assert not train_digits & {img[:, :side, :side].tobytes() for img in test.images}


def test_long_tailed_subset_makes_the_digit_classes_power_law(tmp_path):
    cfg, a = _garments(tmp_path, np.zeros((3000, 12, 12), dtype=np.uint8))
    cfg = load_config(None, ["data.dataset=fashion_mnist_digits", f"data.root={tmp_path}", "data.imbalance=10"])
    subset = select_subset(cfg.data, a.labels, 10)
    counts = sorted(np.bincount(a.labels[subset], minlength=10).tolist(), reverse=True)
    n_max = np.bincount(a.labels).min()  # the formula's N_max is capped by the rarest class's supply
    assert counts == sorted(longtail_counts(min(n_max, counts[0]), 10, 10), reverse=True)
