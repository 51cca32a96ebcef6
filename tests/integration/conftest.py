"""Real servers on 127.0.0.1 for integration tests: moto's S3 server, Pushgateway, Prometheus.

- `s3_server` (session): moto's ThreadedMotoServer; yields its endpoint URL.
- `s3_bucket` (per test): sets the AWS_* variables (fake credentials, the moto endpoint) with
  monkeypatch, creates a fresh bucket and yields an `S3Env(endpoint, bucket, client)`.
- `pushgateway`, `prometheus` (session): Debian's `prometheus-pushgateway` and `prometheus`
  binaries on free ports, Prometheus scraping the Pushgateway every second with honor_labels.
  Skipped with a reason when the binaries are absent (`apt-get install prometheus
  prometheus-pushgateway`).
- `query_until(prom_url, promql, timeout)`: poll Prometheus' /api/v1/query until a non-empty
  result (also available as the `query_until` fixture).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - 127.0.0.1 only
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            status, _ = _http_get(url, timeout=1.0)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if not path:
        pytest.skip(f"{name} not installed: apt-get install -y prometheus prometheus-pushgateway (Debian/Ubuntu)")
    return path


# ------------------------------------------------------------------------------------------ S3


@dataclass(frozen=True)
class S3Env:
    endpoint: str
    bucket: str
    client: Any  # a boto3 S3 client on the same endpoint, for arranging and inspecting

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 (and friends) on 127.0.0.1:<free port>, in a thread of this process."""
    pytest.importorskip("moto", reason="moto[server] not installed: pip install 'moto[server]'")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address=LOCALHOST, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def set_aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, tmp_path: Path) -> None:
    """Point boto3 at `endpoint` with fake credentials, isolated from ~/.aws and the metadata service."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_REQUEST_CHECKSUM_CALCULATION"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("LT_SSL_S3_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("LT_SSL_S3_MAX_ATTEMPTS", "2")  # fail fast in tests
    monkeypatch.setenv("LT_SSL_S3_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("LT_SSL_S3_READ_TIMEOUT", "30")


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Env]:
    """AWS_* variables pointing at moto, and a fresh empty bucket for this test."""
    import boto3
    from botocore.config import Config

    set_aws_env(monkeypatch, s3_server, tmp_path)
    client = boto3.session.Session().client(
        "s3", endpoint_url=s3_server, region_name="us-east-1", config=Config(s3={"addressing_style": "path"})
    )
    bucket = f"lt-ssl-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield S3Env(endpoint=s3_server, bucket=bucket, client=client)


# -------------------------------------------------------------------------- Prometheus stack


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's prometheus-pushgateway on 127.0.0.1:<free port>; yields http://127.0.0.1:<port>."""
    binary = _binary("prometheus-pushgateway")
    work = tmp_path_factory.mktemp("pushgateway")
    port = free_port()
    log = work / "pushgateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--web.listen-address={LOCALHOST}:{port}",
                f"--persistence.file={work / 'pushgateway.data'}",  # Debian's default is under /var/lib
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{LOCALHOST}:{port}"
    try:
        _wait_ready(f"{url}/-/ready", proc, log)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def prometheus(pushgateway: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's prometheus on 127.0.0.1:<free port> scraping the Pushgateway every 1 s (honor_labels)."""
    binary = _binary("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    target = urllib.parse.urlparse(pushgateway).netloc
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: pushgateway\n"
        "    honor_labels: true\n"  # keep the pushed job/run/stage labels instead of the scrape's
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    log = work / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address={LOCALHOST}:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
    url = f"http://{LOCALHOST}:{port}"
    try:
        _wait_ready(f"{url}/-/ready", proc, log)
        yield url
    finally:
        _stop(proc)


def query_until(
    prom_url: str,
    promql: str,
    timeout: float = 20.0,
    predicate: Callable[[list[dict]], bool] = bool,
    interval: float = 0.25,
) -> list[dict]:
    """Poll GET /api/v1/query until `predicate(result)` holds (default: non-empty); return the result.

    Raises AssertionError naming the query and the last answer when `timeout` seconds pass.
    """
    url = f"{prom_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            status, body = _http_get(url, timeout=2.0)
            last = body.decode(errors="replace")
            if status == 200:
                answer = json.loads(body)
                if answer.get("status") == "success":
                    result = answer["data"]["result"]
                    if predicate(result):
                        return result
        except OSError as e:
            last = repr(e)
        if time.monotonic() >= deadline:
            raise AssertionError(f"Prometheus query {promql!r} did not match within {timeout} s; last answer: {last}")
        time.sleep(interval)


@pytest.fixture(name="query_until")
def query_until_fixture() -> Callable[..., list[dict]]:
    return query_until
