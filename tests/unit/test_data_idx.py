"""The IDX reader on files the tests write (gzipped and plain, corrupt ones included), and on Debian's Fashion-MNIST."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from lt_ssl.config import load_config
from lt_ssl.data.datasets import DATASETS, load_arrays, select_subset
from lt_ssl.data.idx import IMAGES_MAGIC, LABELS_MAGIC, load_idx_images
from lt_ssl.errors import ConfigError, DataError

FMNIST = Path(DATASETS["fashion_mnist"].default_root)
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                  reason=f"Debian's dataset-fashion-mnist is not installed ({FMNIST}); `make test` as root installs it")


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """An IDX file written out by hand: magic, one big-endian uint32 per dimension, the bytes."""
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.astype(np.uint8).tobytes()


def write_pair(root: Path, images: np.ndarray, labels: np.ndarray, *, train=True, gz=True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    stem = "train" if train else "t10k"
    for name, data in ((f"{stem}-images-idx3-ubyte", idx_bytes(IMAGES_MAGIC, images)),
                       (f"{stem}-labels-idx1-ubyte", idx_bytes(LABELS_MAGIC, labels))):
        (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 5, 4), dtype=np.uint8), np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_what_was_written_as_grey_rgb(tmp_path, small, gz):
    images, labels = small
    write_pair(tmp_path, images, labels, gz=gz)
    x, y = load_idx_images(tmp_path, train=True)
    assert x.shape == (6, 3, 5, 4) and x.dtype == np.uint8 and y.dtype == np.int64
    for c in range(3):  # grey replicated to every channel, pixel for pixel
        assert np.array_equal(x[:, c], images)
    assert y.tolist() == labels.tolist()


def test_resize_at_load_time(tmp_path):
    images = np.full((2, 28, 28), 200, dtype=np.uint8)
    write_pair(tmp_path, images, np.array([0, 1], dtype=np.uint8))
    x, _ = load_idx_images(tmp_path, train=True, size=16)
    assert x.shape == (2, 3, 16, 16) and (x == 200).all()  # a constant image stays that constant


def test_wrong_magic_names_the_file(tmp_path, small):
    images, labels = small
    write_pair(tmp_path, images, labels, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(LABELS_MAGIC, images.reshape(-1)))  # a labels file where images belong
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte has magic number 0x00000801, expected 0x00000803"):
        load_idx_images(tmp_path, train=True)


def test_truncated_file(tmp_path, small):
    images, labels = small
    write_pair(tmp_path, images, labels, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"declares \(6, 5, 4\) \(120 bytes of data\) but holds 113"):
        load_idx_images(tmp_path, train=True)
    path.write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="truncated"):
        load_idx_images(tmp_path, train=True)


def test_broken_gzip(tmp_path, small):
    images, labels = small
    write_pair(tmp_path, images, labels)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DataError, match="not a readable gzip file"):
        load_idx_images(tmp_path, train=True)


def test_image_label_count_mismatch(tmp_path, small):
    images, labels = small
    write_pair(tmp_path, images, labels[:5])
    with pytest.raises(DataError, match="holds 6 images but .* 5 labels"):
        load_idx_images(tmp_path, train=True)


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_idx_images(tmp_path, train=False)


def test_label_out_of_range_is_caught_by_the_dataset_check(tmp_path, small):
    images, labels = small
    labels = labels.copy()
    labels[0] = 10
    write_pair(tmp_path, images, labels)
    cfg = load_config(None, ["data.dataset=mnist", f"data.root={tmp_path}"])
    with pytest.raises(DataError, match=r"labels must be 6 ints in \[0,10\)"):
        load_arrays(cfg.data, train=True)


def test_roots_required_exactly_where_no_default_exists():
    from lt_ssl.config import _NEEDS_ROOT

    assert set(_NEEDS_ROOT) == {n for n, s in DATASETS.items() if n != "digits" and not s.default_root}
    with pytest.raises(ConfigError, match="data.root"):
        load_config(None, ["data.dataset=mnist"])
    assert load_config(None, ["data.dataset=fashion_mnist"]).data.root == ""


@needs_fmnist
def test_real_fashion_mnist_counts_and_long_tailed_sizes():
    cfg = load_config(None, ["data.dataset=fashion_mnist"])
    train, test = load_arrays(cfg.data, train=True), load_arrays(cfg.data, train=False)
    assert train.images.shape == (60_000, 3, 28, 28) and test.images.shape == (10_000, 3, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10 and np.bincount(test.labels).tolist() == [1000] * 10
    # N_c = N_max * p^(-c/(C-1)) summed over the 10 classes.
    for p, size in ((10, 24_516), (100, 14_886)):
        for split in (0, 1, 2):
            data = load_config(None, ["data.dataset=fashion_mnist", f"data.imbalance={p}", f"data.split={split}"]).data
            lt = select_subset(data, train.labels, 10)
            assert len(lt) == size
            counts = sorted(np.bincount(train.labels[lt], minlength=10).tolist(), reverse=True)
            assert counts[0] == 6000 and counts[-1] == 6000 // p
            balanced = load_config(None, ["data.dataset=fashion_mnist", f"data.imbalance={p}", "data.subset=balanced",
                                          f"data.split={split}"]).data
            assert len(select_subset(balanced, train.labels, 10)) == size
