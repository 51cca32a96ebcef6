"""S3 faults against moto's server on 127.0.0.1, through a fault-injecting proxy (see _proxy.py).

- SIGKILL mid-upload: a stage's PutObject is stalled half-sent and the stage process killed; the
  object never appears (S3 makes an object visible only once whole), the previous checkpoint is the
  newest, and the rerun resumes from it.
- Endpoint down mid-stage (the moto server stopped, then restarted): the stage's retries carry it
  over a short outage and it completes; a long outage fails it with exit 74 and one line, within a
  bounded time, nothing half-written, and the rerun resumes.
- Slow responses, read timeouts, 503 SlowDown: retried, the stage completes; an endpoint that is
  always too slow fails with exit 74 and one line within a bounded time.
- Multipart upload (S3Store.upload_file; the stages themselves write whole objects with PutObject):
  a dropped part is retried; a part or the completion failing for good is a one-line StorageError
  with no object and no multipart upload left behind. A process killed mid-multipart leaves no
  object but does leave the unfinished upload's parts, invisible, until the bucket's
  AbortIncompleteMultipartUpload lifecycle rule removes them (documented in lt_ssl/store/s3.py).
"""

from __future__ import annotations

import io
import os
import re
import time
import uuid
from pathlib import Path

import pytest
import torch

from lt_ssl.errors import StorageError
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART, TINY

from ._proxy import FaultProxy
from .conftest import RESUME, Journal, read_all

pytestmark = pytest.mark.integration

PRETRAIN = TINY + ["pretrain.epochs=3", "pretrain.checkpoint_every=1"]
MiB = 1 << 20


@pytest.fixture
def proxy(s3_server):
    host, port = s3_server.rsplit(":", 1)
    p = FaultProxy(host.split("//")[1], int(port))
    yield p
    p.close()


def _newest_ckpt(store, prefix: str = "pretrain") -> tuple[int, int] | None:
    keys = sorted(k for k in store.list(f"{prefix}/ckpt") if k.endswith(".pt"))
    if not keys:
        return None
    state = torch.load(io.BytesIO(store.read_bytes(keys[-1])), map_location="cpu", weights_only=True)
    return state["epoch"], state["step"]


def _prepare(forked, run_uri: str, journal: Journal, overrides: list[str]) -> None:
    rc, log = forked.run(["stage", "prepare", "--run", run_uri, "--config", QUICKSTART, *overrides],
                         journal=str(journal.path))
    assert rc == 0, log


def _resumed_from(log: str, name: str = "pretrain") -> tuple[int, int] | None:
    seen = [(int(m["epoch"]), int(m["step"])) for m in RESUME.finditer(log) if m["name"] == name]
    assert len(seen) <= 1, log
    return seen[0] if seen else None


def _error_lines(log: str) -> list[str]:
    assert "Traceback" not in log, log
    return [ln for ln in log.splitlines() if ln.startswith("lt-ssl:")]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ------------------------------------------------------------------------------------ SIGKILL mid-upload


def test_sigkill_mid_upload_leaves_no_partial_object_and_resumes(forked, s3_bucket, proxy, tmp_path):
    run_uri = s3_bucket.uri(f"runs/kill-{uuid.uuid4().hex[:8]}")
    store = open_store(run_uri)  # this process talks to moto directly
    journal = Journal(tmp_path / "journal")
    _prepare(forked, run_uri, journal, PRETRAIN)
    via_proxy = {"AWS_ENDPOINT_URL": proxy.url}
    kills = 0
    # (what is being uploaded when the process dies, how many matching uploads go through first)
    plan = [(r"/pretrain/ckpt/step-\d+\.pt", 0), (r"/pretrain/ckpt/step-\d+\.pt", 1),
            (r"/pretrain/model\.pt$", 0), (r"/pretrain/_SUCCESS\.json$", 0)]
    for pattern, skip in plan:
        newest = _newest_ckpt(store)
        rule = proxy.add(method="PUT", path=pattern, action="stall", skip=skip)
        child = forked.start(["stage", "pretrain", "--run", run_uri], env=via_proxy, journal=str(journal.path))
        _wait_for(lambda: rule.hit.is_set() or not child.proc.is_alive(), 90, f"an upload matching {pattern}")
        assert rule.hit.is_set(), child.text()
        target = next(t for _, m, t, a in reversed(proxy.requests) if a == "stall")
        key = re.sub(r"^/[^/]+/", "", target.split("?")[0])  # /bucket/runs/x/pretrain/... -> runs/x/pretrain/...
        # Half the body is on the wire: the object is not there, and all that is visible is whole.
        absent = lambda: s3_bucket.client.list_objects_v2(Bucket=s3_bucket.bucket, Prefix=key).get("KeyCount", 0) == 0  # noqa: E731
        assert absent(), key  # each of these keys is being uploaded for the first time
        assert journal.check(read_all(store)) == []
        child.kill()
        assert child.wait() == -9
        kills += 1
        rule.release.set()
        proxy.clear()
        time.sleep(0.2)  # let moto notice the dropped connection
        assert absent(), f"{key} appeared although its upload was cut off"
        assert journal.check(read_all(store)) == [], f"partial object after a kill mid-upload of {key}"
        assert not store.exists("pretrain/_SUCCESS.json")
        got = _resumed_from(child.text())
        assert got in (None, newest)
    newest = _newest_ckpt(store)
    assert newest is not None
    rc, log = forked.run(["stage", "pretrain", "--run", run_uri], env=via_proxy, journal=str(journal.path))
    assert rc == 0, log
    assert _resumed_from(log) == newest
    assert store.exists("pretrain/_SUCCESS.json")
    assert journal.check(read_all(store)) == []
    assert kills == 4


# ------------------------------------------------------------------------------------ endpoint down


@pytest.fixture
def own_moto(s3_server):
    """A second moto server on its own port that a test may stop and restart (moto's state lives in
    this process, so objects survive the restart, as MinIO's survive a pod restart)."""
    from moto.server import ThreadedMotoServer

    from tests.integration.conftest import free_port

    port = free_port()
    servers = []

    class Own:
        def start(self):
            s = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            s.start()
            servers.append(s)

        def stop(self):
            s = servers[-1]
            s.stop()
            s._server.server_close()  # stop() leaves the socket listening: close it, connections are refused

    own = Own()
    own.port = port
    own.start()
    yield own
    try:
        own.stop()
    except Exception:  # noqa: BLE001 - already stopped
        pass


def test_endpoint_down_for_a_while_mid_stage_is_retried_and_completes(forked, s3_bucket, own_moto, tmp_path):
    proxy = FaultProxy("127.0.0.1", own_moto.port)  # resets the stage's open connections with the server
    try:
        run_uri = s3_bucket.uri(f"runs/down-{uuid.uuid4().hex[:8]}")
        store, journal = open_store(run_uri), Journal(tmp_path / "journal")
        _prepare(forked, run_uri, journal, TINY + ["pretrain.epochs=6", "pretrain.checkpoint_every=1"])
        env = {"AWS_ENDPOINT_URL": proxy.url, "LT_SSL_S3_MAX_ATTEMPTS": "10", "LT_SSL_S3_CONNECT_TIMEOUT": "1"}
        t0 = time.monotonic()
        child = forked.start(["stage", "pretrain", "--run", run_uri], env=env, journal=str(journal.path))
        _wait_for(lambda: any("/ckpt/" in t for _, m, t, a in proxy.requests if m == "PUT") or not child.proc.is_alive(),
                  90, "the first checkpoint upload")
        proxy.down()
        own_moto.stop()
        time.sleep(2.0)
        assert child.proc.is_alive() and not store.exists("pretrain/_SUCCESS.json")  # it is waiting on the endpoint
        own_moto.start()
        restarted = time.time()
        proxy.up()
        rc = child.wait(120)
        elapsed = time.monotonic() - t0
        assert rc == 0, child.text()
        assert elapsed < 60, f"took {elapsed:.0f} s"
        assert any(t0 > restarted for t0, *_ in proxy.requests)  # it carried on after the restart
        assert store.exists("pretrain/_SUCCESS.json")
        assert journal.check(read_all(store)) == []
    finally:
        proxy.close()


def test_endpoint_down_longer_than_the_retries_fails_with_74_then_resumes(forked, s3_bucket, proxy, tmp_path):
    run_uri = s3_bucket.uri(f"runs/long-{uuid.uuid4().hex[:8]}")
    store, journal = open_store(run_uri), Journal(tmp_path / "journal")
    _prepare(forked, run_uri, journal, TINY + ["pretrain.epochs=6", "pretrain.checkpoint_every=1"])
    env = {"AWS_ENDPOINT_URL": proxy.url, "LT_SSL_S3_MAX_ATTEMPTS": "2", "LT_SSL_S3_CONNECT_TIMEOUT": "1"}
    child = forked.start(["stage", "pretrain", "--run", run_uri], env=env, journal=str(journal.path))
    _wait_for(lambda: store.list("pretrain/ckpt") or not child.proc.is_alive(), 90, "the first checkpoint")
    proxy.down()
    t_down = time.monotonic()
    rc = child.wait(120)
    failed_after = time.monotonic() - t_down
    log = child.text()
    assert rc == 74, log
    assert failed_after < 30, f"took {failed_after:.0f} s to give up"
    lines = _error_lines(log)
    assert len(lines) == 1 and lines[0].startswith(f"lt-ssl: error: cannot reach S3 endpoint {proxy.url} for {run_uri}/pretrain/")
    assert lines[0].endswith("check AWS_ENDPOINT_URL")
    assert journal.check(read_all(store)) == [] and not store.exists("pretrain/_SUCCESS.json")
    newest = _newest_ckpt(store)
    assert newest is not None
    proxy.up()
    rc, log = forked.run(["stage", "pretrain", "--run", run_uri], env=env, journal=str(journal.path))
    assert rc == 0, log
    assert _resumed_from(log) == newest
    assert journal.check(read_all(store)) == []


# ------------------------------------------------------------------------------------ slow, throttled


def test_slow_and_throttled_responses_are_retried_and_the_stage_completes(forked, s3_bucket, proxy, tmp_path):
    run_uri = s3_bucket.uri(f"runs/slow-{uuid.uuid4().hex[:8]}")
    store, journal = open_store(run_uri), Journal(tmp_path / "journal")
    _prepare(forked, run_uri, journal, PRETRAIN)
    # The first rule that applies to a request wins.
    proxy.add(method="PUT", path=r"/pretrain/ckpt/", action="delay", delay=1.6, times=2)  # past the read timeout
    proxy.add(method="PUT", path=r"/pretrain/model\.pt$", action="status", status=503, times=2)  # SlowDown
    proxy.add(method="GET", path=r"/prepare/", action="status", status=500, times=1)  # InternalError
    proxy.add(method="*", path=".", action="delay", delay=0.05, times=None)  # and a slow endpoint throughout
    env = {"AWS_ENDPOINT_URL": proxy.url, "LT_SSL_S3_MAX_ATTEMPTS": "5", "LT_SSL_S3_READ_TIMEOUT": "1"}
    t0 = time.monotonic()
    rc, log = forked.run(["stage", "pretrain", "--run", run_uri], env=env, journal=str(journal.path))
    elapsed = time.monotonic() - t0
    assert rc == 0, log
    assert elapsed < 90
    actions = [a for *_, a in proxy.requests]
    assert actions.count("status") == 3 and actions.count("delay") >= 5
    puts = [t for _, m, t, a in proxy.requests if m == "PUT" and "/model.pt" in t]
    assert len(puts) == 3  # two refused with 503, the third stored
    assert store.exists("pretrain/_SUCCESS.json") and journal.check(read_all(store)) == []


def test_an_always_too_slow_endpoint_fails_with_74_in_bounded_time(forked, s3_bucket, proxy, tmp_path):
    run_uri = s3_bucket.uri(f"runs/tooslow-{uuid.uuid4().hex[:8]}")
    store, journal = open_store(run_uri), Journal(tmp_path / "journal")
    _prepare(forked, run_uri, journal, PRETRAIN)
    before = read_all(store)
    proxy.add(method="*", path=".", action="delay", delay=1.6, times=None)
    env = {"AWS_ENDPOINT_URL": proxy.url, "LT_SSL_S3_MAX_ATTEMPTS": "2", "LT_SSL_S3_READ_TIMEOUT": "1"}
    t0 = time.monotonic()
    rc, log = forked.run(["stage", "pretrain", "--run", run_uri], env=env, journal=str(journal.path))
    elapsed = time.monotonic() - t0
    assert rc == 74, log
    assert elapsed < 30
    lines = _error_lines(log)
    assert len(lines) == 1 and f"S3 endpoint {proxy.url} timed out for {run_uri}/" in lines[0], lines
    assert lines[0].endswith("raise LT_SSL_S3_READ_TIMEOUT")
    proxy.clear()
    time.sleep(1.8)  # delayed requests still in the proxy reach moto (S3 may apply a request the client gave up on)
    assert read_all(store) == before  # a stage that never got to write left the run as it was


# ------------------------------------------------------------------------------------ multipart


@pytest.fixture
def big_file(tmp_path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(11 * MiB))  # parts of 5, 5 and 1 MiB (S3's minimum part is 5 MiB)
    return path


def _multipart_store(monkeypatch, proxy, run_uri):
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("LT_SSL_S3_MULTIPART_THRESHOLD", str(5 * MiB))
    monkeypatch.setenv("LT_SSL_S3_MULTIPART_CHUNKSIZE", str(5 * MiB))
    return open_store(run_uri)


def _uploads(s3_bucket, key: str) -> list:
    return [u for u in s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", []) if u["Key"] == key]


def test_a_dropped_part_is_retried_and_the_upload_completes(s3_bucket, proxy, big_file, monkeypatch):
    run_uri = s3_bucket.uri(f"runs/mp-{uuid.uuid4().hex[:8]}")
    store = _multipart_store(monkeypatch, proxy, run_uri)
    proxy.add(method="PUT", path=r"partNumber=2", action="drop", times=1)
    store.upload_file("pretrain/big.bin", big_file)
    full = f"{run_uri.split('/', 3)[3]}/pretrain/big.bin"
    got = s3_bucket.client.get_object(Bucket=s3_bucket.bucket, Key=full)["Body"].read()
    assert got == big_file.read_bytes()
    assert sum(1 for _, m, t, _a in proxy.requests if "partNumber=2" in t) == 2
    assert _uploads(s3_bucket, full) == []


@pytest.mark.parametrize("where", ["part", "complete"])
def test_a_multipart_upload_that_keeps_failing_is_a_one_line_error_and_leaves_nothing(
        s3_bucket, proxy, big_file, monkeypatch, where):
    run_uri = s3_bucket.uri(f"runs/mpfail-{uuid.uuid4().hex[:8]}")
    store = _multipart_store(monkeypatch, proxy, run_uri)
    if where == "part":
        proxy.add(method="PUT", path=r"partNumber=2", action="status", status=500, times=None)
    else:
        proxy.add(method="POST", path=r"uploadId=", action="status", status=500, times=None)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as ei:
        store.upload_file("pretrain/big.bin", big_file)
    assert time.monotonic() - t0 < 30
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"S3 request for {run_uri}/pretrain/big.bin failed (InternalError"), msg
    assert ei.value.exit_code == 74
    full = f"{run_uri.split('/', 3)[3]}/pretrain/big.bin"
    assert s3_bucket.client.list_objects_v2(Bucket=s3_bucket.bucket, Prefix=full).get("KeyCount", 0) == 0
    assert _uploads(s3_bucket, full) == []  # aborted: no parts left behind


def test_sigkill_mid_multipart_upload_leaves_no_object(forked, s3_bucket, proxy, big_file, tmp_path):
    run_uri = s3_bucket.uri(f"runs/mpkill-{uuid.uuid4().hex[:8]}")
    env = {"AWS_ENDPOINT_URL": proxy.url, "LT_SSL_S3_MULTIPART_THRESHOLD": str(5 * MiB),
           "LT_SSL_S3_MULTIPART_CHUNKSIZE": str(5 * MiB)}
    rule = proxy.add(method="PUT", path=r"partNumber=2", action="stall")
    child = forked.start([], env=env, upload=(run_uri, "pretrain/big.bin", str(big_file)))
    _wait_for(lambda: rule.hit.is_set() or not child.proc.is_alive(), 60, "part 2 of the upload")
    assert rule.hit.is_set(), child.text()
    child.kill()
    assert child.wait() == -9
    rule.release.set()
    time.sleep(0.2)
    full = f"{run_uri.split('/', 3)[3]}/pretrain/big.bin"
    assert s3_bucket.client.list_objects_v2(Bucket=s3_bucket.bucket, Prefix=full).get("KeyCount", 0) == 0
    left = _uploads(s3_bucket, full)
    print(f"\nkilled mid-multipart: no object; {len(left)} unfinished multipart upload(s) left for the lifecycle rule")
