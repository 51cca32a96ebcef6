"""CIFAR loading from files in the official pickle layout, and refusal of corrupt or malicious files."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from lt_ssl.data.cifar import load_cifar, restricted_load
from lt_ssl.errors import DataError


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be extended
    """Writes str and bytes as Python 2 strings (what cPickle wrote the official batches with)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def _py2_dumps(obj: object) -> bytes:
    """Protocol 2 with Python 2 strings and NumPy 1's module name, like cifar-10-batches-py/data_batch_1."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _batch(n: int, labels_key: str, num_classes: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    batch: dict[str, object] = {
        "batch_label": f"batch {seed}",
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        labels_key: rng.integers(0, num_classes, size=n).tolist(),
        "filenames": [f"img_{seed}_{i}.png" for i in range(n)],
    }
    if labels_key == "fine_labels":
        batch["coarse_labels"] = rng.integers(0, 20, size=n).tolist()
    return batch


def _write(path: Path, obj: object) -> None:
    path.write_bytes(_py2_dumps(obj))


@pytest.fixture
def cifar10(tmp_path: Path) -> tuple[Path, list[dict[str, object]]]:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_batch(4, "labels", 10, seed) for seed in range(6)]
    for i, batch in enumerate(batches[:5], start=1):
        _write(folder / f"data_batch_{i}", batch)
    _write(folder / "test_batch", batches[5])
    return folder, batches


def test_cifar10_train_and_test_load_in_order(cifar10: tuple[Path, list[dict[str, object]]]) -> None:
    folder, batches = cifar10
    images, labels = load_cifar(folder, "cifar10", train=True)
    assert images.shape == (20, 3, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert labels.tolist() == sum((b["labels"] for b in batches[:5]), [])
    data = np.concatenate([b["data"] for b in batches[:5]])
    # pixel (channel c, row y, column x) is entry c*1024 + y*32 + x of a row
    assert images[7, 2, 5, 9] == data[7, 2 * 1024 + 5 * 32 + 9]
    test_images, test_labels = load_cifar(folder, "cifar10", train=False)
    np.testing.assert_array_equal(test_images.reshape(4, -1), batches[5]["data"])
    assert test_labels.tolist() == batches[5]["labels"]


def test_parent_folder_is_accepted(cifar10: tuple[Path, list[dict[str, object]]]) -> None:
    folder, _ = cifar10
    assert len(load_cifar(folder.parent, "cifar10", train=False)[1]) == 4


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    train, test = _batch(6, "fine_labels", 100, 0), _batch(3, "fine_labels", 100, 1)
    _write(tmp_path / "train", train)
    _write(tmp_path / "test", test)
    images, labels = load_cifar(tmp_path, "cifar100", train=True)
    assert images.shape == (6, 3, 32, 32)
    assert labels.tolist() == train["fine_labels"]
    assert load_cifar(tmp_path, "cifar100", train=False)[1].tolist() == test["fine_labels"]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "batches"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Exploit(marker)}, protocol=protocol))
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt)\.system from .*test_batch"):
        load_cifar(folder, "cifar10", train=False)
    assert not marker.exists()


def test_restricted_load_refuses_other_globals() -> None:
    payload = pickle.dumps(np.float64(1.0))  # a numpy scalar: harmless, but never in a CIFAR batch
    with pytest.raises(DataError, match="refusing to unpickle numpy"):
        restricted_load(io.BytesIO(payload))


def test_truncated_and_garbage_files_are_data_errors(cifar10: tuple[Path, list[dict[str, object]]]) -> None:
    folder, _ = cifar10
    whole = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="test_batch.*truncated or corrupt"):
        load_cifar(folder, "cifar10", train=False)
    (folder / "test_batch").write_bytes(b"\x00not a pickle at all")
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_cifar(folder, "cifar10", train=False)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data_batch_1 not found: pass data.root=.* or download with --download"):
        load_cifar(tmp_path, "cifar10", train=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": np.zeros((4, 3000), dtype=np.uint8)}, r"expected uint8 \(N, 3072\)"),
        ({"data": np.zeros((4, 3072), dtype=np.float32)}, r"expected uint8 \(N, 3072\)"),
        ({"labels": [0, 1, 2]}, "4 images but 3 labels"),
        ({"labels": [0, 1, 2, 10]}, r"outside \[0, 10\)"),
        ({"labels": [0, -1, 2, 3]}, r"outside \[0, 10\)"),
    ],
)
def test_bad_contents_are_data_errors(
    cifar10: tuple[Path, list[dict[str, object]]], change: dict[str, object], message: str
) -> None:
    folder, batches = cifar10
    _write(folder / "test_batch", {**batches[5], **change})
    with pytest.raises(DataError, match=message):
        load_cifar(folder, "cifar10", train=False)


def test_missing_key_and_non_dict_are_data_errors(cifar10: tuple[Path, list[dict[str, object]]]) -> None:
    folder, batches = cifar10
    _write(folder / "test_batch", {k: v for k, v in batches[5].items() if k != "labels"})
    with pytest.raises(DataError, match=r"lacks key\(s\) \['labels'\]"):
        load_cifar(folder, "cifar10", train=False)
    _write(folder / "test_batch", [1, 2, 3])
    with pytest.raises(DataError, match="not a CIFAR batch dict"):
        load_cifar(folder, "cifar10", train=False)
