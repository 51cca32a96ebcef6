"""Artifact stores by URI scheme: file:// (local folder) and s3:// (any S3-compatible endpoint)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import RunUriError
from .base import Store, check_key

__all__ = ["Store", "check_key", "open_store", "normalize_uri"]


def normalize_uri(uri: str) -> str:
    """Turn a plain path into file:// and check the scheme; no trailing slash."""
    if "://" not in uri:
        return Path(uri).expanduser().resolve().as_uri()
    scheme = uri.split("://", 1)[0]
    if scheme not in ("file", "s3"):
        raise RunUriError(f"run URI {uri!r} has scheme {scheme!r}; use file:///abs/path or s3://bucket/prefix")
    return uri.rstrip("/")


def open_store(uri: str) -> Store:
    """The store for a run URI: file:///abs/path/runs/<id> or s3://bucket/runs/<id>."""
    uri = normalize_uri(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise RunUriError(f"run URI {uri!r} names a host; use file:///abs/path (three slashes)")
        from .local import LocalStore

        return LocalStore(Path(unquote(parsed.path)))
    if not parsed.netloc or not parsed.path.strip("/"):
        raise RunUriError(f"run URI {uri!r} needs a bucket and a prefix: s3://bucket/runs/<id>")
    try:
        check_key(parsed.path.strip("/"))  # same rules as keys: no '..', no empty parts
    except RunUriError:
        raise RunUriError(f"run URI {uri!r} has an empty, '.' or '..' part or odd characters; use s3://bucket/runs/<id>") from None
    from .s3 import S3Store

    return S3Store(parsed.netloc, parsed.path.strip("/"))
