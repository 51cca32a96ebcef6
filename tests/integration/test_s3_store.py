"""S3Store and resolve_data_root against moto's S3 server on 127.0.0.1, spoken to as MinIO would be."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from lt_ssl.data.remote import MARKER, resolve_data_root
from lt_ssl.errors import DataError, RunBusyError, RunUriError, StorageError
from lt_ssl.store import open_store
from lt_ssl.store.s3 import S3Store

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------------------ round trip


def test_every_store_method_round_trips(s3_bucket, tmp_path):
    store = open_store(s3_bucket.uri("runs/r1"))
    assert isinstance(store, S3Store)
    assert store.uri == f"s3://{s3_bucket.bucket}/runs/r1"
    assert store.url("prepare/info.json") == f"s3://{s3_bucket.bucket}/runs/r1/prepare/info.json"

    store.write_bytes("prepare/blob.bin", b"\x00\x01binary")
    assert store.read_bytes("prepare/blob.bin") == b"\x00\x01binary"
    store.write_json("prepare/info.json", {"a": [1, 2], "b": "x"})
    assert store.read_json("prepare/info.json") == {"a": [1, 2], "b": "x"}
    store.write_text("config.yaml", "name: t\n")
    assert store.read_text("config.yaml") == "name: t\n"
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.write_numpy("prepare/subset.npy", arr)
    np.testing.assert_array_equal(store.read_numpy("prepare/subset.npy"), arr)

    assert store.exists("prepare/info.json")
    assert not store.exists("prepare/nope.json")

    src = tmp_path / "model.pt"
    src.write_bytes(os.urandom(3000))
    store.upload_file("pretrain/model.pt", src)
    dst = tmp_path / "down" / "deep" / "model.pt"
    store.download_file("pretrain/model.pt", dst)
    assert dst.read_bytes() == src.read_bytes()

    # a key outside the run prefix (same leading characters) must not be listed
    s3_bucket.client.put_object(Bucket=s3_bucket.bucket, Key="runs/r10/config.yaml", Body=b"other run")
    assert store.list() == ["config.yaml", "prepare/blob.bin", "prepare/info.json", "prepare/subset.npy", "pretrain/model.pt"]
    assert store.list("prepare") == ["prepare/blob.bin", "prepare/info.json", "prepare/subset.npy"]
    assert store.list("prepare/") == store.list("prepare")
    assert store.list("pre") == []  # a folder, not a string prefix
    assert store.list("missing") == []

    store.delete("prepare/blob.bin")
    store.delete("prepare/blob.bin")  # idempotent
    assert not store.exists("prepare/blob.bin")
    # and the object really sits at bucket/runs/r1/<key>, path-style
    head = s3_bucket.client.head_object(Bucket=s3_bucket.bucket, Key="runs/r1/prepare/info.json")
    assert head["ContentLength"] > 0


def test_list_paginates_past_one_page(s3_bucket):
    store = open_store(s3_bucket.uri("runs/many"))
    for i in range(23):
        s3_bucket.client.put_object(Bucket=s3_bucket.bucket, Key=f"runs/many/ckpt/{i:05d}.bin", Body=b"x")
    pages = {"n": 0}

    def small_pages(params, **_):  # S3 pages at 1000 keys; ask for 5 so the paginator must follow tokens
        params["MaxKeys"] = 5
        pages["n"] += 1

    store._client().meta.events.register("provide-client-params.s3.ListObjectsV2", small_pages)
    keys = store.list("ckpt")
    assert len(keys) == 23 and keys[0] == "ckpt/00000.bin" and keys[-1] == "ckpt/00022.bin"
    assert pages["n"] == 5


def test_client_is_lazy_and_shared_across_threads(s3_bucket):
    from concurrent.futures import ThreadPoolExecutor

    store = open_store(s3_bucket.uri("runs/lazy"))
    assert store._client_obj is None  # open_store made no client and no request
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.write_text(f"t/{i}.txt", str(i)), range(32)))
    assert len(store.list("t")) == 32
    assert store._client_obj is not None


# ------------------------------------------------------------------------------ multipart


def test_large_upload_goes_multipart_and_round_trips(s3_bucket, tmp_path):
    store = S3Store(s3_bucket.bucket, "runs/mp", multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(9 * MiB))
    store.upload_file("pretrain/model.pt", src)
    head = s3_bucket.client.head_object(Bucket=s3_bucket.bucket, Key="runs/mp/pretrain/model.pt")
    assert head["ContentLength"] == 9 * MiB
    assert head["ETag"].strip('"').endswith("-2")  # 2 parts: a multipart upload happened
    dst = tmp_path / "back.bin"
    store.download_file("pretrain/model.pt", dst)
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_multipart_threshold_from_environment(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("LT_SSL_S3_MULTIPART_THRESHOLD", str(5 * MiB))
    monkeypatch.setenv("LT_SSL_S3_MULTIPART_CHUNKSIZE", str(5 * MiB))
    store = open_store(s3_bucket.uri("runs/mpenv"))
    src = tmp_path / "big.bin"
    src.write_bytes(b"\x07" * (6 * MiB))
    store.upload_file("x.bin", src)
    etag = s3_bucket.client.head_object(Bucket=s3_bucket.bucket, Key="runs/mpenv/x.bin")["ETag"]
    assert etag.strip('"').endswith("-2")


def test_interrupted_multipart_leaves_no_object_and_no_success(s3_bucket, tmp_path):
    """A stage's upload dies mid-way: no object, no pending parts, and _SUCCESS.json never written."""
    store = S3Store(s3_bucket.bucket, "runs/cut", multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    client = store._client()
    calls = {"n": 0}

    def cut_second_part(params, **_):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise ConnectionResetError("connection reset by peer (simulated)")

    client.meta.events.register("before-call.s3.UploadPart", cut_second_part)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * MiB))

    def stage():
        store.upload_file("pretrain/model.pt", src)
        store.write_json("pretrain/_SUCCESS.json", {"outputs": ["pretrain/model.pt"]})  # last, as the contract says

    with pytest.raises(StorageError) as ei:
        stage()
    msg = _one_line(ei.value)
    assert f"s3://{s3_bucket.bucket}/runs/cut/pretrain/model.pt" in msg and "reset" in msg
    assert calls["n"] >= 2
    listing = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.bucket, Prefix="runs/cut/")
    assert listing.get("KeyCount", 0) == 0
    uploads = s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.bucket)
    assert not uploads.get("Uploads"), uploads.get("Uploads")  # aborted: no parts left to pay for
    client.meta.events.unregister("before-call.s3.UploadPart", cut_second_part)
    assert not store.exists("pretrain/_SUCCESS.json") and not store.exists("pretrain/model.pt")


# ------------------------------------------------------------------------------ errors


def test_missing_key_is_a_one_line_storage_error(s3_bucket, tmp_path):
    store = open_store(s3_bucket.uri("runs/r2"))
    uri = f"s3://{s3_bucket.bucket}/runs/r2/prepare/info.json"
    for call in (lambda: store.read_bytes("prepare/info.json"),
                 lambda: store.download_file("prepare/info.json", tmp_path / "x")):
        with pytest.raises(StorageError) as ei:
            call()
        msg = _one_line(ei.value)
        assert uri in msg and "does not exist" in msg
    assert not (tmp_path / "x").exists()


def test_missing_bucket_is_a_one_line_storage_error(s3_bucket, tmp_path):
    store = open_store("s3://no-such-bucket-lt-ssl/runs/r3")
    calls = {
        "write": lambda: store.write_text("config.yaml", "x"),
        "read": lambda: store.read_bytes("config.yaml"),
        "exists": lambda: store.exists("config.yaml"),
        "list": lambda: store.list(),
        "download": lambda: store.download_file("config.yaml", tmp_path / "x"),
    }
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    calls["upload"] = lambda: store.upload_file("f", src)
    for name, call in calls.items():
        with pytest.raises(StorageError) as ei:
            call()
        msg = _one_line(ei.value)
        assert "no-such-bucket-lt-ssl" in msg and "s3://no-such-bucket-lt-ssl/runs/r3" in msg, (name, msg)
        assert "bucket" in msg and "does not exist" in msg, (name, msg)
        assert ei.value.exit_code == 2, (name, "only a user can create the bucket: Argo must not retry")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def test_unreachable_endpoint_is_a_one_line_storage_error(s3_bucket, monkeypatch):
    dead = f"http://127.0.0.1:{_dead_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("LT_SSL_S3_MAX_ATTEMPTS", "2")
    store = open_store(s3_bucket.uri("runs/r4"))
    with pytest.raises(StorageError) as ei:
        store.read_bytes("config.yaml")
    msg = _one_line(ei.value)
    assert msg.startswith(f"cannot reach S3 endpoint {dead} for s3://{s3_bucket.bucket}/runs/r4/config.yaml: ")
    assert msg.endswith("check AWS_ENDPOINT_URL")
    assert ei.value.exit_code == 74  # retried by Argo with backoff


def test_wrong_credentials_are_a_one_line_storage_error(s3_bucket, monkeypatch):
    from moto.core.authorization import enable_iam_authentication

    with enable_iam_authentication():
        # an unknown access key id
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
        store = open_store(s3_bucket.uri("runs/r5"))
        with pytest.raises(StorageError) as ei:
            store.write_text("config.yaml", "x")
        msg = _one_line(ei.value)
        assert f"s3://{s3_bucket.bucket}/runs/r5/config.yaml" in msg and "InvalidAccessKeyId" in msg
        assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in msg
        assert ei.value.exit_code == 2  # wrong credentials: a user error, never retried


def test_wrong_secret_is_a_one_line_storage_error(s3_bucket, monkeypatch):
    from moto.core.authorization import enable_iam_authentication

    import boto3

    iam = boto3.session.Session().client("iam", endpoint_url=s3_bucket.endpoint, region_name="us-east-1")
    user = f"u-{s3_bucket.bucket[-8:]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    with enable_iam_authentication():
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"] + "wrong")
        store = open_store(s3_bucket.uri("runs/r6"))
        with pytest.raises(StorageError) as ei:
            store.list()
        msg = _one_line(ei.value)
        assert f"s3://{s3_bucket.bucket}/runs/r6/" in msg and "SignatureDoesNotMatch" in msg


def test_keys_escaping_the_run_are_refused(s3_bucket, tmp_path):
    store = open_store(s3_bucket.uri("runs/r7"))
    for bad in ("../r8/config.yaml", "a/../../x", "/abs", "", "a//b", "./a"):
        with pytest.raises(RunUriError):
            store.write_bytes(bad, b"x")
        with pytest.raises(RunUriError):
            store.read_bytes(bad)
    with pytest.raises(RunUriError):
        store.list("..")
    with pytest.raises(RunUriError):
        open_store(f"s3://{s3_bucket.bucket}/runs/../etc")
    assert s3_bucket.client.list_objects_v2(Bucket=s3_bucket.bucket).get("KeyCount", 0) == 0


# ------------------------------------------------------------------------------ datasets


def _put_dataset(s3_bucket, prefix: str) -> dict[str, bytes]:
    files = {"data_batch_1": os.urandom(2000), "batches.meta": b"meta", "sub/test_batch": os.urandom(500),
             "file.txt~": b"CIFAR-100 ships one of these"}
    for name, data in files.items():
        s3_bucket.client.put_object(Bucket=s3_bucket.bucket, Key=f"{prefix}/{name}", Body=data)
    return files


def test_resolve_data_root_downloads_once_then_reuses(s3_bucket, tmp_path, monkeypatch):
    files = _put_dataset(s3_bucket, "datasets/cifar-10-batches-py")
    root = s3_bucket.uri("datasets/cifar-10-batches-py")
    cache = tmp_path / "cache"

    gets = {"n": 0}
    original = S3Store.fetch_object

    def counting(self, key, path):
        gets["n"] += 1
        return original(self, key, path)

    monkeypatch.setattr(S3Store, "fetch_object", counting)
    local = resolve_data_root(root, cache_dir=str(cache))
    assert local == cache / s3_bucket.bucket / "datasets" / "cifar-10-batches-py"
    assert {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file() and p.name != MARKER} == files
    assert (local / MARKER).is_file()
    assert gets["n"] == len(files)

    assert resolve_data_root(root, cache_dir=str(cache)) == local  # cached: nothing downloaded
    assert gets["n"] == len(files)

    # env var as the cache base, and a changed remote object refreshes only that file
    monkeypatch.setenv("LT_SSL_DATA_CACHE", str(cache))
    s3_bucket.client.put_object(Bucket=s3_bucket.bucket, Key="datasets/cifar-10-batches-py/batches.meta", Body=b"meta v2")
    assert resolve_data_root(root) == local
    assert (local / "batches.meta").read_bytes() == b"meta v2"
    assert gets["n"] == len(files) + 1

    # a local file that lost bytes is fetched again
    (local / "data_batch_1").write_bytes(b"truncated")
    resolve_data_root(root)
    assert (local / "data_batch_1").read_bytes() == files["data_batch_1"]


def test_resolve_data_root_local_paths_pass_through(tmp_path):
    assert resolve_data_root(str(tmp_path)) == tmp_path
    assert resolve_data_root(tmp_path.as_uri()) == tmp_path


def test_resolve_data_root_missing_prefix_is_a_data_error(s3_bucket, tmp_path):
    root = s3_bucket.uri("datasets/nothing-here")
    with pytest.raises(DataError) as ei:
        resolve_data_root(root, cache_dir=str(tmp_path))
    msg = _one_line(ei.value)
    assert root in msg and "no objects" in msg


def test_resolve_data_root_corrupt_download_is_refused(s3_bucket, tmp_path, monkeypatch):
    _put_dataset(s3_bucket, "datasets/bad")

    def corrupting(self, key, path):
        Path(path).write_bytes(b"\xff" * len(self.read_bytes(key)) if "/" not in key and key != "file.txt~" else b"\xff")

    monkeypatch.setattr(S3Store, "fetch_object", corrupting)
    with pytest.raises(DataError) as ei:
        resolve_data_root(s3_bucket.uri("datasets/bad"), cache_dir=str(tmp_path))
    assert "datasets/bad/" in _one_line(ei.value)
    dest = tmp_path / s3_bucket.bucket / "datasets" / "bad"
    assert not (dest / MARKER).exists()
    assert not [p for p in dest.rglob("*") if p.is_file()]  # nothing unverified kept


def test_bad_tuning_variables_are_config_errors_not_retried(s3_bucket, monkeypatch):
    from lt_ssl.errors import ConfigError

    monkeypatch.setenv("LT_SSL_S3_MAX_ATTEMPTS", "many")
    with pytest.raises(ConfigError, match="LT_SSL_S3_MAX_ATTEMPTS='many'"):
        open_store(s3_bucket.uri("runs/r9")).read_bytes("config.yaml")


# ------------------------------------------------------------------------------ lock (a lease on conditional writes)


def _lock_body(s3_bucket, prefix: str) -> str | None:
    try:
        return s3_bucket.client.get_object(Bucket=s3_bucket.bucket, Key=f"{prefix}/.runner.lock")["Body"].read().decode()
    except s3_bucket.client.exceptions.NoSuchKey:
        return None


def test_lock_refuses_a_second_holder_naming_the_first_and_is_gone_after_release(s3_bucket):
    store = open_store(s3_bucket.uri("runs/locked"))
    with store.lock(".runner.lock", "holder A"):
        assert _lock_body(s3_bucket, "runs/locked") == "holder A\n"
        with pytest.raises(RunBusyError) as e:
            with open_store(s3_bucket.uri("runs/locked")).lock(".runner.lock", "holder B"):
                pass
        assert _one_line(e.value) == (f"s3://{s3_bucket.bucket}/runs/locked is in use by holder A; wait for it to end "
                                      "(or stop it), then rerun to resume")
    assert _lock_body(s3_bucket, "runs/locked") is None
    with store.lock(".runner.lock", "holder B"):
        pass


def test_a_refreshed_lock_holds_and_an_abandoned_one_is_taken_over(s3_bucket, capsys):
    store = open_store(s3_bucket.uri("runs/lease"))
    with store.lock(".runner.lock", "beating", beat_s=0.3, stale_s=2):
        time.sleep(3)  # past stale_s: only the refreshes keep it fresh
        with pytest.raises(RunBusyError, match="in use by beating"):
            with store.lock(".runner.lock", "newcomer", stale_s=2):
                pass
    # A holder killed outright leaves its lock object: arrange one written 3 s ago that nobody refreshes.
    s3_bucket.client.put_object(Bucket=s3_bucket.bucket, Key="runs/lease/.runner.lock", Body=b"dead holder\n")
    time.sleep(3)
    with store.lock(".runner.lock", "newcomer", stale_s=2):
        assert _lock_body(s3_bucket, "runs/lease") == "newcomer\n"
    assert "taking over a lock not refreshed for" in capsys.readouterr().err


def test_a_holder_whose_lock_was_taken_over_neither_refreshes_nor_deletes_it(s3_bucket, capsys):
    store = open_store(s3_bucket.uri("runs/lost"))
    with store.lock(".runner.lock", "slow holder", beat_s=0.3):
        # Another runner judged it dead (stale_s=0) and took it over; the slow holder's next refresh fails.
        with open_store(s3_bucket.uri("runs/lost")).lock(".runner.lock", "new holder", stale_s=0):
            time.sleep(1)
            assert _lock_body(s3_bucket, "runs/lost") == "new holder\n"
        # The new holder released it; the slow one must not recreate or delete anything from here on.
    assert _lock_body(s3_bucket, "runs/lost") is None
    assert "lost the lock" in capsys.readouterr().err


def test_a_failed_release_does_not_hide_why_the_block_ended(s3_bucket, capsys, monkeypatch):
    store = open_store(s3_bucket.uri("runs/gone"))

    def unreachable(*_):
        raise StorageError("S3 request for the lock failed (connection refused)")

    with pytest.raises(ValueError, match="the stage's own failure"):
        with store.lock(".runner.lock", "holder"):
            monkeypatch.setattr(store, "_head", unreachable)  # the store is unreachable by release time
            raise ValueError("the stage's own failure")
    assert "could not release the lock" in capsys.readouterr().err
