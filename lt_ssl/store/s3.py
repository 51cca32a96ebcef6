"""s3:// artifact store on any S3-compatible endpoint (AWS, MinIO, Ceph RGW), through boto3.

Configuration comes from the standard AWS environment, so the same code talks to AWS or to a
MinIO in a kind cluster unchanged:

    AWS_ENDPOINT_URL        e.g. http://minio:9000 (unset: AWS). When set, path-style addressing
                            (http://host/bucket/key), which MinIO and Ceph need without wildcard DNS.
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY[, AWS_SESSION_TOKEN]   (or any boto3 credential source)
    AWS_DEFAULT_REGION      (or AWS_REGION; default us-east-1, which MinIO accepts)

and, for this package (all optional):

    LT_SSL_S3_MAX_ATTEMPTS          total attempts per request, first included (default 5;
                                    falls back to AWS_MAX_ATTEMPTS)
    LT_SSL_S3_RETRY_MODE            standard | adaptive (default standard; falls back to AWS_RETRY_MODE)
    LT_SSL_S3_CONNECT_TIMEOUT       seconds (default 5)
    LT_SSL_S3_READ_TIMEOUT          seconds (default 60)
    LT_SSL_S3_ADDRESSING_STYLE      path | virtual | auto (default: path with an endpoint, else auto)
    LT_SSL_S3_MULTIPART_THRESHOLD   bytes above which upload_file goes multipart (default 64 MiB)
    LT_SSL_S3_MULTIPART_CHUNKSIZE   part size in bytes (default 16 MiB; S3's minimum is 5 MiB)

A request therefore takes at most about MAX_ATTEMPTS * (CONNECT_TIMEOUT + READ_TIMEOUT) plus the
backoff (standard mode: random, capped at 20 s per retry) before it fails with StorageError.

Atomicity: `write_bytes` is one PutObject, which S3 makes visible whole or not at all.
`upload_file` goes through boto3's transfer manager: one PutObject below the threshold, a
multipart upload above it; a multipart upload is only visible once CompleteMultipartUpload
succeeds, and a failed one is aborted (s3transfer registers AbortMultipartUpload as a failure
cleanup; we abort again here in case the cleanup itself failed). A process killed outright leaves
invisible parts behind: give the bucket an AbortIncompleteMultipartUpload lifecycle rule.

Locks (`lock`) are leases on S3 conditional writes (If-None-Match / If-Match on PutObject: AWS since
2024, MinIO since RELEASE.2024-08). A store that ignores those headers gives no protection.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LtSslError, RunBusyError, StorageAccessError, StorageError
from .base import Store, check_key

_MiB = 1 << 20
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AccessDenied",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
    "403",
    "Forbidden",
}
# A lock's holder rewrites it every LOCK_BEAT_S; one not rewritten for LOCK_STALE_S (by the server's clock) is a dead
# holder's and is taken over. Four missed beats: a slow request is not a death.
LOCK_BEAT_S = 30.0
LOCK_STALE_S = 120.0
_PRECONDITION = {409, 412}  # 412 PreconditionFailed; 409 ConditionalRequestConflict (two conditional writes raced)

_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound", "Not Found"}
_BARE_404 = {"", "404", "NotFound", "Not Found"}  # a HEAD's 404: no body, so no code saying what is missing


def _env(*names: str, default: str | None = None) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
    return default


def _env_num(kind: type, *names: str, default: Any) -> Any:
    raw = _env(*names)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{names[0]}={raw!r} is not a number; unset it or give e.g. {default}") from None
    if value <= 0:
        raise ConfigError(f"{names[0]}={raw!r} must be > 0")
    return value


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (AWS_ENDPOINT_URL_S3 wins, as in botocore), or None for AWS."""
    return _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class S3Store(Store):
    """Artifacts under s3://bucket/prefix. Thread-safe: one lazily built client shared by all threads."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        multipart_threshold: int | None = None,
        multipart_chunksize: int | None = None,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._multipart_threshold = multipart_threshold
        self._multipart_chunksize = multipart_chunksize
        self._lock = threading.Lock()
        self._client_obj: Any = None
        self._client_pid: int | None = None
        self._bucket_seen = False  # set once a request proved the bucket exists

    # ----------------------------------------------------------------- client and errors

    def _client(self) -> Any:
        """The boto3 client, built on first use (and again in a forked child: clients don't survive fork)."""
        pid = os.getpid()
        if self._client_obj is not None and self._client_pid == pid:
            return self._client_obj
        with self._lock:
            if self._client_obj is None or self._client_pid != pid:
                self._client_obj = self._make_client()
                self._client_pid = pid
            return self._client_obj

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        endpoint = endpoint_url()
        mode = _env("LT_SSL_S3_RETRY_MODE", "AWS_RETRY_MODE", default="standard")
        if mode not in ("standard", "adaptive", "legacy"):
            raise ConfigError(f"LT_SSL_S3_RETRY_MODE={mode!r}: use standard or adaptive")
        style = _env("LT_SSL_S3_ADDRESSING_STYLE", default="path" if endpoint else "auto")
        if style not in ("path", "virtual", "auto"):
            raise ConfigError(f"LT_SSL_S3_ADDRESSING_STYLE={style!r}: use path, virtual or auto")
        extra: dict[str, Any] = {}
        has_checksum_options = "request_checksum_calculation" in Config.OPTION_DEFAULTS  # botocore >= 1.36
        if endpoint and has_checksum_options and not _env("AWS_REQUEST_CHECKSUM_CALCULATION"):
            # botocore >= 1.36 sends CRC checksums (and aws-chunked bodies) on every upload by
            # default; older MinIO and Ceph RGW reject those. Outside AWS, send them only where an
            # operation requires one; write_bytes still sends Content-MD5, which every S3 checks.
            extra["request_checksum_calculation"] = "when_required"
            extra["response_checksum_validation"] = "when_required"
        config = Config(
            region_name=_env("AWS_DEFAULT_REGION", "AWS_REGION", default="us-east-1"),
            retries={"mode": mode, "max_attempts": _env_num(int, "LT_SSL_S3_MAX_ATTEMPTS", "AWS_MAX_ATTEMPTS", default=5)},
            connect_timeout=_env_num(float, "LT_SSL_S3_CONNECT_TIMEOUT", default=5.0),
            read_timeout=_env_num(float, "LT_SSL_S3_READ_TIMEOUT", default=60.0),
            s3={"addressing_style": style},
            max_pool_connections=32,
            **extra,
        )
        # A private Session: boto3's default session is not thread-safe to create clients from.
        return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _endpoint_for_message(self) -> str:
        endpoint = endpoint_url()
        if endpoint:
            return endpoint
        try:
            return self._client().meta.endpoint_url
        except Exception:  # noqa: BLE001 - only for a message
            return "AWS S3"

    @contextmanager
    def _request(self, what: str, *, reading: bool = False) -> Iterator[None]:
        """Run S3 calls, translating any failure into one StorageError line naming `what` (a URI)."""
        try:
            yield
        except LtSslError:
            raise  # already one line (a bad LT_SSL_S3_* setting)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line
            if _status(exc) == 404 and _code(exc) in _BARE_404 and not self._bucket_seen:
                self._check_bucket(what)  # a HEAD's 404 has no body: is it the key or the bucket?
            raise self._error(exc, what, reading=reading) from exc
        self._bucket_seen = True

    def _check_bucket(self, what: str) -> None:
        try:
            self._client().head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404:
                raise self._no_bucket(what) from exc
            raise self._error(exc, what) from exc
        self._bucket_seen = True

    def _no_bucket(self, what: str) -> StorageAccessError:
        return StorageAccessError(f"bucket {self.bucket!r} does not exist at {self._endpoint_for_message()} "
                                  f"(for {what}); create it or fix the run URI")

    def _error(self, exc: BaseException, what: str, *, reading: bool = False) -> StorageError:
        """Translate a boto3/botocore failure into a one-line StorageError naming `what` (a URI).
        Errors only a user can fix (credentials, a missing bucket) are StorageAccessErrors: exit 2, no retry."""
        from botocore import exceptions as bce

        # boto3's upload wraps ClientError in S3UploadFailedError (chained as __context__).
        cause: BaseException | None = exc
        seen = set()
        while cause is not None and id(cause) not in seen:
            seen.add(id(cause))
            if isinstance(cause, (bce.ClientError, bce.BotoCoreError)):
                break
            inner = getattr(cause, "last_exception", None)  # RetriesExceededError
            cause = inner or cause.__cause__ or cause.__context__
        if cause is None:
            cause = exc

        endpoint = self._endpoint_for_message()
        if isinstance(cause, (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ConnectionClosedError)):
            return StorageError(f"cannot reach S3 endpoint {endpoint} for {what}: {_one_line(cause)}; check AWS_ENDPOINT_URL")
        if isinstance(cause, bce.ReadTimeoutError):
            return StorageError(f"S3 endpoint {endpoint} timed out for {what}: {_one_line(cause)}; "
                                "the stage is retried, or raise LT_SSL_S3_READ_TIMEOUT")
        if isinstance(cause, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return StorageAccessError(f"no S3 credentials for {what}: {_one_line(cause)}; "
                                      "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if isinstance(cause, bce.ClientError):
            code, status = _code(cause), _status(cause)
            message = _one_line(cause.response.get("Error", {}).get("Message") or cause)
            if code == "NoSuchBucket":
                return self._no_bucket(what)
            if code in _CREDENTIAL_CODES or status == 403:
                return StorageAccessError(f"S3 at {endpoint} refused the credentials for {what} ({code or status}: "
                                          f"{message}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            if reading and (code in _MISSING_KEY_CODES or status == 404):
                return StorageError(f"{what} does not exist; run the stage that writes it first")
            return StorageError(f"S3 request for {what} failed ({code or status}: {message})")
        if isinstance(cause, bce.BotoCoreError):
            return StorageError(f"S3 request for {what} failed: {_one_line(cause)}")
        return StorageError(f"S3 request for {what} failed: {type(exc).__name__}: {_one_line(exc)}")

    # ----------------------------------------------------------------- Store interface

    def read_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._request(self.url(key), reading=True):
            body = self._client().get_object(Bucket=self.bucket, Key=full)["Body"]
            try:
                return body.read()
            finally:
                body.close()

    def write_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - integrity, not security
        with self._request(self.url(key)):
            self._client().put_object(Bucket=self.bucket, Key=full, Body=data, ContentMD5=md5)

    def _head(self, full: str, what: str) -> dict | None:
        """The object's HEAD, or None if it does not exist (in a bucket that does)."""
        try:
            with self._request(what, reading=True):
                return self._client().head_object(Bucket=self.bucket, Key=full)
        except StorageError as e:
            if _status(e.__cause__) == 404 and not isinstance(e, StorageAccessError):
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(self._full(key), self.url(key)) is not None

    def last_modified(self, key: str) -> float | None:
        """The object's Last-Modified as a Unix time, or None if it does not exist."""
        head = self._head(self._full(key), self.url(key))
        return head["LastModified"].timestamp() if head else None

    def list_objects(self, prefix: str = "") -> list[dict[str, Any]]:
        """[{key, size, etag}] under a folder ('' = all), keys relative to the store, sorted by key."""
        folder = prefix.strip("/")
        if folder:
            check_key(folder)
        base = f"{self.prefix}/" if self.prefix else ""
        out: list[dict[str, Any]] = []
        with self._request(f"{self.uri}/{folder + '/' if folder else ''}"):
            pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + (f"{folder}/" if folder else ""))
            for page in pages:
                for obj in page.get("Contents", ()):
                    rel = obj["Key"][len(base):]
                    if rel and not rel.endswith("/"):  # folder markers some tools create
                        out.append({"key": rel, "size": int(obj["Size"]), "etag": str(obj.get("ETag", "")).strip('"')})
        return sorted(out, key=lambda o: o["key"])

    def list(self, prefix: str = "") -> list[str]:
        return [o["key"] for o in self.list_objects(prefix)]

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._request(self.url(key)):
            self._client().delete_object(Bucket=self.bucket, Key=full)  # idempotent: no error if absent

    @contextmanager
    def lock(self, key: str, holder: str, *, beat_s: float = LOCK_BEAT_S,
             stale_s: float = LOCK_STALE_S) -> Iterator[None]:
        """A lease: created only where absent (If-None-Match: *), refreshed every beat_s by a thread only while
        it is still ours (If-Match: our ETag), deleted on release if still ours. A lock whose Last-Modified is
        stale_s older than the server's Date is a dead holder's (SIGKILL, a lost node) and is taken over once."""
        full, body = self._full(key), (holder + "\n").encode()
        for takeover in (False, True):
            try:
                with self._request(self.url(key)):
                    etag = self._client().put_object(Bucket=self.bucket, Key=full, Body=body, IfNoneMatch="*")["ETag"]
                break
            except StorageError as e:
                if _status(e.__cause__) not in _PRECONDITION:
                    raise
            other, age = self._lock_holder(full)
            if takeover or (age is not None and age < stale_s):
                other = other if age is not None else "another runner"  # it changed hands while we looked
                raise RunBusyError.held_by(self.uri, other) from None
            if age is not None:  # stale (None: released in between): take it over, and try once more
                print(f"lt-ssl: {self.url(key)}: taking over a lock not refreshed for {age:.0f} s ({other})",
                      file=sys.stderr)
                self.delete(key)
        stop, lost = threading.Event(), threading.Event()

        def beat() -> None:
            while not stop.wait(beat_s):
                try:
                    with self._request(self.url(key)):
                        self._client().put_object(Bucket=self.bucket, Key=full, Body=body, IfMatch=etag)
                except StorageError as e:
                    if _status(e.__cause__) in _PRECONDITION or _status(e.__cause__) == 404:
                        lost.set()  # taken over (we looked dead) or deleted: never write it again
                        print(f"lt-ssl: lost the lock {self.url(key)}; another runner may now write this run",
                              file=sys.stderr)
                        return
                    # Unreachable for now: the next beat retries; a holder silent for stale_s may be taken over.

        thread = threading.Thread(target=beat, name=f"lock-beat {key}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            try:
                head = None if lost.is_set() else self._head(full, self.url(key))
                if head is not None and head.get("ETag") == etag:  # still ours: release it
                    self.delete(key)
            except StorageError as e:  # never hide why the with-block ended behind a failed release
                print(f"lt-ssl: could not release the lock {self.url(key)} ({e}); the next runner takes it over "
                      f"after {stale_s:.0f} s", file=sys.stderr)

    def _lock_holder(self, full: str) -> tuple[str, float | None]:
        """(who holds the lock, seconds since it was last written by the server's clock), or age None if absent."""
        try:
            with self._request(f"s3://{self.bucket}/{full}", reading=True):
                obj = self._client().get_object(Bucket=self.bucket, Key=full)
                text = obj["Body"].read().decode(errors="replace").strip()
        except StorageError as e:
            if _status(e.__cause__) == 404:
                return "", None
            raise
        now = email.utils.parsedate_to_datetime(obj["ResponseMetadata"]["HTTPHeaders"]["date"])
        return text or "another process", (now - obj["LastModified"]).total_seconds()

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        threshold = self._multipart_threshold or _env_num(int, "LT_SSL_S3_MULTIPART_THRESHOLD", default=64 * _MiB)
        chunk = self._multipart_chunksize or _env_num(int, "LT_SSL_S3_MULTIPART_CHUNKSIZE", default=16 * _MiB)
        return TransferConfig(multipart_threshold=threshold, multipart_chunksize=chunk, max_concurrency=8)

    def upload_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"cannot upload {path} to {self.url(key)}: not a file")
        config = self._transfer_config()
        try:
            with self._request(self.url(key)):
                self._client().upload_file(str(path), self.bucket, full, Config=config)
        except BaseException as exc:
            if path.stat().st_size >= config.multipart_threshold and not _unreachable(exc.__cause__ or exc):
                self._abort_multipart(full)  # s3transfer aborts too; this covers a failed abort
            raise

    def _abort_multipart(self, full: str) -> None:
        """Best effort: abort multipart uploads of exactly this key left by a failed upload_file."""
        try:
            client = self._client()
            listing = client.list_multipart_uploads(Bucket=self.bucket, Prefix=full)
            for upload in listing.get("Uploads", ()):
                if upload.get("Key") == full:
                    client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload["UploadId"])
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass

    def download_file(self, key: str, path: Path) -> None:
        self._download(self._full(key), self.url(key), Path(path))

    def fetch_object(self, rel_key: str, path: Path) -> None:
        """Download `prefix/rel_key` to `path` for dataset mirroring, where keys need not follow check_key
        (e.g. CIFAR-100's 'file.txt~'); the caller guarantees `path` stays inside its folder."""
        if not rel_key or rel_key.startswith("/") or any(p in ("", ".", "..") for p in rel_key.split("/")):
            raise StorageError(f"object key {rel_key!r} under {self.uri} is not a plain relative path")
        self._download(f"{self.prefix}/{rel_key}" if self.prefix else rel_key, f"{self.uri}/{rel_key}", Path(path))

    def _download(self, full: str, what: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # s3transfer writes to a temporary name beside `path` and renames it when complete.
        with self._request(what, reading=True):
            self._client().download_file(self.bucket, full, str(path), Config=self._transfer_config())


def _unreachable(exc: BaseException) -> bool:
    from botocore import exceptions as bce

    kinds = (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.NoCredentialsError)
    return isinstance(exc, kinds) or isinstance(exc.__context__, kinds)


def _status(exc: Any) -> int | None:
    response = getattr(exc, "response", None)
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None


def _code(exc: Any) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
