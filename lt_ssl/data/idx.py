"""MNIST-family datasets in the IDX format (Fashion-MNIST, MNIST, KMNIST): gzipped or plain, checked, as uint8 RGB.

IDX layout (LeCun's MNIST page): 2 zero bytes, a type byte (0x08 = unsigned byte), a byte with the number of
dimensions, then one big-endian uint32 per dimension, then the data. Images are 3-D (N, rows, cols), labels 1-D (N,).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lt_ssl.errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

# The file names every MNIST-family dataset uses (Fashion-MNIST and KMNIST copied MNIST's).
FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(root: Path, stem: str) -> tuple[bytes, Path]:
    """The file `stem.gz` or `stem` under root, decompressed; a missing or broken gzip is a one-line DataError."""
    for path in (root / f"{stem}.gz", root / stem):
        if path.is_file():
            try:
                return (gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()), path
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                raise DataError(f"{path} is not a readable gzip file ({e}); download it again") from None
    raise DataError(f"{root / (stem + '.gz')} not found; point data.root at the folder with the IDX files "
                    "(for Fashion-MNIST on Debian/Ubuntu: apt-get install dataset-fashion-mnist)")


def parse_idx(raw: bytes, magic: int, path: Path) -> np.ndarray:
    """The array an IDX file holds, checked against the expected magic number and its own declared size."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated ({len(raw)} bytes, shorter than its header); download it again")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path} has magic number {found:#010x}, expected {magic:#010x} "
                        f"({'images' if magic == IMAGES_MAGIC else 'labels'}); is it the right file?")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DataError(f"{path} declares {shape} ({size} bytes of data) but holds {len(raw) - header}: "
                        "the file is truncated or corrupt; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_images(root: Path, train: bool, size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """-> images (N, 3, S, S) uint8 and labels (N,) int64 from the IDX pair under root.

    Grey is replicated to 3 channels: every backbone, augmentation and normaliser here takes RGB, and a grey image
    stays grey under all of them (colour jitter's saturation and hue act on nothing). size > 0 resizes once at load
    time (bilinear, antialiased) so a CPU budget can train at 16 px instead of 28.
    """
    (img_raw, img_path), (lab_raw, lab_path) = (_read_bytes(root, stem) for stem in FILES[train])
    images = parse_idx(img_raw, IMAGES_MAGIC, img_path)  # (N, rows, cols)
    labels = parse_idx(lab_raw, LABELS_MAGIC, lab_path)  # (N,)
    if len(images) != len(labels):
        raise DataError(f"{img_path} holds {len(images)} images but {lab_path} {len(labels)} labels; "
                        "the two files are not a pair")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N,1,H,W)
    if size and size != x.shape[-1]:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.expand(-1, 3, -1, -1).numpy()), labels.astype(np.int64)
