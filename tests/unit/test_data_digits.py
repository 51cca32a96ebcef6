"""scikit-learn digits as RGB uint8 images with a stratified, deterministic split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from lt_ssl.data.digits import load_digits_images
from lt_ssl.errors import ConfigError


def test_shapes_dtypes_and_channels() -> None:
    images, labels = load_digits_images(train=True, size=16)
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 16, 16)
    assert labels.dtype == np.int64 and labels.shape == (len(images),)
    assert set(labels.tolist()) == set(range(10))
    assert images.max() == 255  # 16 -> 255
    np.testing.assert_array_equal(images[:, 0], images[:, 2])


def test_train_and_test_partition_the_dataset_stratified() -> None:
    train_x, train_y = load_digits_images(train=True, size=8)
    test_x, test_y = load_digits_images(train=False, size=8)
    assert len(train_y) + len(test_y) == 1797
    assert abs(len(test_y) - 0.2 * 1797) < 1
    # at size 8 the images are the originals scaled to 0..255: both splits together are all of them
    bunch = load_digits()
    original = np.round(bunch.images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    ours = np.concatenate([train_x[:, 0], test_x[:, 0]]).reshape(1797, -1)
    assert sorted(map(bytes, ours)) == sorted(map(bytes, original))
    train_share = np.bincount(train_y, minlength=10) / np.bincount(bunch.target, minlength=10)
    assert np.all(np.abs(train_share - 0.8) < 0.02)


def test_split_is_deterministic() -> None:
    a = load_digits_images(train=False, seed=1)
    b = load_digits_images(train=False, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_bad_fraction_is_refused() -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_digits_images(train=True, test_fraction=1.0)
