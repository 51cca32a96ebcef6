"""The artifact store interface: keys relative to one run prefix, whole-object atomic writes."""

from __future__ import annotations

import io
import json
import re
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RunUriError

_KEY_PART = re.compile(r"^[A-Za-z0-9._=-]+$")


def check_key(key: str) -> str:
    """Reject keys that could leave the run prefix (absolute, '..', empty parts, odd characters)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise RunUriError(f"artifact key {key!r} is not a plain relative path inside the run; use names like 'stage/file.ext'")
    return key


class Store(ABC):
    """A run's artifacts. Writes are all-or-nothing per object: readers never see a partial one."""

    uri: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (a folder, '' for the whole run), sorted, relative to the run."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def upload_file(self, key: str, path: Path) -> None:
        """Store a local file as one object (large files: multipart where the backend has it)."""

    @abstractmethod
    def download_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def lock(self, key: str, holder: str) -> AbstractContextManager[None]:
        """Hold `key` as an exclusive lock for the with-block, recording `holder` (who, where, since when) in it.

        Raises RunBusyError naming the current holder when another process holds it. A holder that dies
        without releasing it does not block the run for ever (each backend says how)."""

    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{check_key(key)}"

    # Typed helpers shared by every backend.
    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode()

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode())

    def read_numpy(self, key: str) -> np.ndarray:
        return np.load(io.BytesIO(self.read_bytes(key)), allow_pickle=False)

    def write_numpy(self, key: str, array: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        self.write_bytes(key, buf.getvalue())
