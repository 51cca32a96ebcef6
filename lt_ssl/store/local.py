"""file:// artifact store: write to a temp name in the same folder, fsync, rename.

A temp name carries its writer's host and pid (`.<name>.<host>-<pid>.<random>.tmp`), so a writer
killed mid-write (SIGKILL, OOM) leaves a file that the next LocalStore on that host recognises as
dead and deletes, instead of litter that accumulates with every kill."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import RunBusyError, StorageError
from .base import Store, check_key


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64]
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_dead_temporaries(root: Path) -> list[Path]:
    """Delete temp files under `root` whose writer (on this host) no longer runs; returns them."""
    removed = []
    for path in root.rglob(".*.tmp") if root.is_dir() else ():
        m = _TEMP.match(path.name)
        if m and m["host"] == _HOST and not _alive(int(m["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class LocalStore(Store):
    def __init__(self, root: Path):
        self.root = root
        self.uri = root.as_uri()
        remove_dead_temporaries(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.url(key)} does not exist; run the stage that writes it first") from None

    def _atomic_write(self, key: str, write) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX: readers see the old object or the new, never half
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")  # hidden = temp files of unfinished writes
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def upload_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as src:
            self._atomic_write(key, lambda f: shutil.copyfileobj(src, f, 1 << 20))

    @contextmanager
    def lock(self, key: str, holder: str) -> Iterator[None]:
        """flock(2) on the key's file: the kernel drops it when the holder exits, however it exits (SIGKILL too),
        so no stale lock outlives its process. The file stays, empty between holders. Keep a key whose name starts
        with '.' so list() does not show it."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:  # a+: create it if missing, never truncate another holder's record on open
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                other = f.read().strip() or "another process"
                raise RunBusyError.held_by(self.uri, other) from None
            f.truncate(0)
            f.write(holder + "\n")
            f.flush()
            try:
                yield
            finally:
                f.truncate(0)

    def download_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise StorageError(f"{self.url(key)} does not exist; run the stage that writes it first")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
