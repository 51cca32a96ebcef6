"""CIFAR-10/100 from the official python pickles, unpickled with an allow-list so a tampered file cannot run code."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np

from lt_ssl.errors import DataError

CifarName = Literal["cifar10", "cifar100"]

# Everything a CIFAR batch (a dict of bytes, lists and one uint8 array) asks pickle to import.
# Files written by NumPy < 2 (the official ones) name numpy.core; NumPy >= 2 writes numpy._core.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


@dataclass(frozen=True)
class _Layout:
    """Where one CIFAR variant keeps its batches and labels."""

    title: str
    subdir: str  # the folder the official archive unpacks to
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes
    classes: int


_LAYOUT = {
    "cifar10": _Layout(
        "CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels", 10
    ),
    "cifar100": _Layout("CIFAR-100", "cifar-100-python", ("train",), ("test",), b"fine_labels", 100),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in _ALLOWED_GLOBALS (Python docs, "Restricting Globals")."""

    def __init__(self, f: IO[bytes], source: str) -> None:
        super().__init__(f, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self._source}: CIFAR batches contain only "
                "arrays, lists and bytes; the file is corrupt or malicious"
            )
        return super().find_class(module, name)


def restricted_load(f: IO[bytes]) -> object:
    """Unpickle a CIFAR batch from a binary file object; any refused global or corrupt byte is a DataError."""
    source = str(getattr(f, "name", "<stream>"))
    try:
        return _CifarUnpickler(f, source).load()
    except DataError:
        raise
    except Exception as exc:  # a damaged pickle can fail in any of pickle's or numpy's decoders
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise DataError(
            f"cannot unpickle {source} ({detail}): the file is truncated or corrupt; download it again"
        ) from exc


def _batch_folder(root: Path, layout: _Layout, probe: str) -> Path:
    """The folder holding the batches: `root` itself, or the archive's sub-folder inside it."""
    nested = root / layout.subdir
    if not (root / probe).is_file() and (nested / probe).is_file():
        return nested
    return root


def _load_batch(path: Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """One pickle file -> data (N,3072) uint8, labels (N,) int64, both validated."""
    with open(path, "rb") as f:
        batch = restricted_load(f)
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict: download it again")
    missing = [k.decode() for k in (b"data", layout.label_key) if k not in batch]
    if missing:
        raise DataError(
            f"{path} lacks key(s) {missing}: it is not a {layout.title} python batch; "
            "check data.root and the dataset name"
        )
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path} has data {desc}, expected uint8 (N, 3072): the file is corrupt; download it again")
    try:
        labels = np.asarray(batch[layout.label_key])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path} has unreadable labels ({exc}): download it again") from exc
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path} labels are {labels.dtype} {labels.shape}, expected a list of ints: download it again")
    if len(labels) != len(data):
        raise DataError(
            f"{path} has {len(data)} images but {len(labels)} labels: the file is corrupt; download it again"
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= layout.classes):
        raise DataError(
            f"{path} has labels in [{labels.min()}, {labels.max()}], outside [0, {layout.classes}): "
            "wrong dataset name or a corrupt file"
        )
    return data, labels


def _layout(name: str) -> _Layout:
    """The layout of a dataset name, or a DataError listing the known names."""
    if name not in _LAYOUT:
        raise DataError(f"unknown CIFAR dataset {name!r}: use 'cifar10' or 'cifar100'")
    return _LAYOUT[name]


def load_cifar(root: str | os.PathLike[str], name: CifarName, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """-> images (N,3,32,32) uint8, labels (N,) int64 (fine labels for CIFAR-100).

    root is the folder with the python batches (cifar-10-batches-py / cifar-100-python) or
    its parent, as torchvision's download leaves it.
    """
    layout = _layout(name)
    names = layout.train if train else layout.test
    folder = _batch_folder(Path(root), layout, names[0])
    files = [folder / f for f in names]
    for path in files:
        if not path.is_file():
            raise DataError(
                f"{layout.title} file {path} not found: pass data.root=<folder with the python batches "
                f"({layout.subdir})> or download with --download"
            )
    parts = [_load_batch(p, layout) for p in files]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    # Rows are channel-major: 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
    return data.reshape(-1, 3, 32, 32), labels


def download_cifar(root: str | os.PathLike[str], name: CifarName) -> Path:
    """Download and verify (MD5) the python batches into root via torchvision; -> the batch folder."""
    from torchvision.datasets import CIFAR10, CIFAR100

    layout = _layout(name)
    dataset = CIFAR10 if name == "cifar10" else CIFAR100
    Path(root).mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            dataset(root=str(root), train=train, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision raises RuntimeError on bad MD5
        detail = " ".join(str(exc).split())[:200]
        raise DataError(
            f"downloading {name} into {root} failed ({detail}): fetch it on a machine with internet "
            "and pass data.root=<folder with the python batches>"
        ) from exc
    return Path(root) / layout.subdir
