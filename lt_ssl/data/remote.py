"""Dataset roots that live in S3: mirror `s3://bucket/prefix` once into a local cache, then reuse it.

    resolve_data_root("/data/cifar-10-batches-py")          -> Path("/data/cifar-10-batches-py")
    resolve_data_root("s3://datasets/cifar-10-batches-py")  -> ~/.cache/lt-ssl/datasets/datasets/cifar-10-batches-py

The cache base is `cache_dir`, else $LT_SSL_DATA_CACHE, else ~/.cache/lt-ssl/datasets; the mirror
of s3://<bucket>/<prefix> lives at <base>/<bucket>/<prefix>. Every object is written to a temp name,
checked (size; and MD5 against the ETag for single-part uploads, whose ETag is the MD5), then
renamed into place. `.complete.json` (listing key, size and ETag of every object) is written last:
a later call lists the prefix and, if the listing equals the marker and every file is present
with its size, downloads nothing. Concurrent callers (expert processes) serialise on a lock file.
If the endpoint cannot be reached but a complete mirror exists, the mirror is used with a warning.

Set LT_SSL_DATA_SKIP_ETAG=1 where single-part ETags are not MD5s (SSE-KMS / SSE-C encrypted buckets).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

from lt_ssl.errors import DataError, StorageError

log = logging.getLogger(__name__)

MARKER = ".complete.json"
_MD5_ETAG_LEN = 32


def default_cache_base() -> Path:
    env = os.environ.get("LT_SSL_DATA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lt-ssl" / "datasets"


def _safe_parts(text: str, what: str) -> list[str]:
    parts = text.strip("/").split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise DataError(f"{what} is not a plain relative path (empty, '.' or '..' parts); rename the object")
    return parts


def resolve_data_root(root: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local folder for `root`: a path (or file:// URI) as is; s3://bucket/prefix mirrored into a cache."""
    if not root.startswith("s3://"):
        if root.startswith("file://"):
            parsed = urlparse(root)
            if parsed.netloc not in ("", "localhost"):
                raise DataError(f"data root {root!r} names a host; use file:///abs/path (three slashes)")
            return Path(unquote(parsed.path))
        if "://" in root:
            raise DataError(f"data root {root!r}: use a local folder, file:///abs/path or s3://bucket/prefix")
        return Path(root).expanduser()

    parsed = urlparse(root)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if not bucket or not prefix:
        raise DataError(f"data root {root!r} needs a bucket and a prefix: s3://bucket/path/to/dataset")
    _safe_parts(prefix, f"data root {root!r}")
    uri = f"s3://{bucket}/{prefix}"
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_base()
    dest = base / bucket / prefix
    dest.mkdir(parents=True, exist_ok=True)

    from lt_ssl.store.s3 import S3Store

    store = S3Store(bucket, prefix)
    with _lock(dest):
        try:
            remote = store.list_objects()
        except StorageError as e:
            cached = _read_marker(dest)
            if cached is not None and cached.get("uri") == uri and _files_present(dest, cached["files"]):
                log.warning("using the cached copy of %s in %s: %s", uri, dest, e)
                return dest
            raise
        if not remote:
            raise DataError(f"no objects under {uri}/ (missing or empty prefix); upload the dataset there or fix data.root")
        for obj in remote:
            _safe_parts(obj["key"], f"object {uri}/{obj['key']}")

        marker = _read_marker(dest)
        fresh = marker is not None and marker.get("uri") == uri and marker.get("files") == remote
        if fresh and _files_present(dest, remote):
            log.debug("dataset %s already cached in %s", uri, dest)
            return dest

        (dest / MARKER).unlink(missing_ok=True)  # the mirror is incomplete until the marker is back
        _download_all(store, uri, dest, remote)
        _remove_stale(dest, {o["key"] for o in remote})
        _atomic_write(dest / MARKER, (json.dumps({"uri": uri, "files": remote}, indent=2) + "\n").encode())
        log.info("downloaded %d objects (%d bytes) from %s to %s", len(remote), sum(o["size"] for o in remote), uri, dest)
    return dest


def _read_marker(dest: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), list) else None


def _files_present(dest: Path, files: list[dict[str, Any]]) -> bool:
    for obj in files:
        path = dest / obj["key"]
        try:
            if path.stat().st_size != obj["size"]:
                return False
        except OSError:
            return False
    return True


def _md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 - integrity check against S3's ETag, not security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, obj: dict[str, Any], where: str) -> None:
    size = path.stat().st_size
    if size != obj["size"]:
        raise DataError(f"{where}: downloaded {size} bytes, the listing says {obj['size']}; "
                        "the object changed or the transfer was cut, run again")
    etag = obj["etag"]
    if len(etag) == _MD5_ETAG_LEN and "-" not in etag and not os.environ.get("LT_SSL_DATA_SKIP_ETAG"):
        digest = _md5(path)
        if digest != etag.lower():
            raise DataError(
                f"{where}: MD5 {digest} differs from the ETag {etag}; the download is corrupt "
                "(for SSE-KMS/SSE-C buckets, whose ETags are not MD5s, set LT_SSL_DATA_SKIP_ETAG=1)"
            )


def _download_all(store: Any, uri: str, dest: Path, remote: list[dict[str, Any]]) -> None:
    for obj in remote:
        target = dest / obj["key"]
        where = f"{uri}/{obj['key']}"
        if target.is_file() and target.stat().st_size == obj["size"]:
            try:  # a previous, interrupted run got this one: keep it if it checks out
                _verify(target, obj, where)
                continue
            except DataError:
                pass
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            store.fetch_object(obj["key"], tmp)
            _verify(tmp, obj, where)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _remove_stale(dest: Path, keep: set[str]) -> None:
    """Delete files the remote no longer has (and temp files of killed downloads); keep the lock."""
    for path in dest.rglob("*"):
        if path.is_file():
            rel = path.relative_to(dest).as_posix()
            if rel not in keep and path.name != MARKER and not path.name.endswith(".lock"):  # nested mirrors keep theirs
                path.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _lock(dest: Path) -> Iterator[None]:
    """An exclusive lock beside the mirror (not in it), so parallel processes download once."""
    lock_path = dest.parent / f".{dest.name}.lock"
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
