"""Fixtures of the fault suite: forked stage processes, a fault-injecting S3 proxy, tiny CIFAR files,
and the journal/snapshot checks that prove no reader ever sees a partial artifact.

Stage processes are forked from a fork server that imported torch and lt_ssl once (see _child.py):
real processes, killed with real signals, but without a torch import per process. A few tests
still start `python -m lt_ssl` itself where the fresh interpreter matters (SIGTERM, one-line CLI).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import pickle
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.integration.conftest import s3_bucket, s3_server  # noqa: F401 - moto fixtures, shared

from ._child import Spec

ONE_THREAD = {"LT_SSL_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
GRACE_S = 30  # Kubernetes' default terminationGracePeriodSeconds: SIGTERM to SIGKILL
RESUME = re.compile(r"\[(?P<name>[\w-]+)\] resuming from epoch (?P<epoch>\d+) step (?P<step>\d+)")


# ------------------------------------------------------------------------------------ processes


class Cli:
    """A real `python -m lt_ssl ...` process (one thread), its stderr read line by line as it comes."""

    def __init__(self, args: list[str]):
        # Its own process group, as a terminal's foreground job: Ctrl-C (SIGINT) goes to the whole group.
        self.proc = subprocess.Popen([sys.executable, "-m", "lt_ssl", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=os.environ | ONE_THREAD,
                                     start_new_session=True)
        self.seen: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(ln) for ln in self.proc.stderr] + [self._lines.put(None)],
                         daemon=True).start()

    def until(self, needle: str, timeout: float = 180) -> None:
        """Read stderr until a line holds `needle`; fails if the process ends or the time runs out first."""
        deadline = time.monotonic() + timeout
        while not any(needle in ln for ln in self.seen):
            assert time.monotonic() < deadline and self.proc.poll() is None, self.log
            try:
                ln = self._lines.get(timeout=1)
            except queue.Empty:
                continue
            assert ln is not None, self.log
            self.seen.append(ln)

    def stop(self, grace_s: float, ctrl_c: bool = False) -> tuple[int, float]:
        """SIGTERM to the process (`kill PID`), or with ctrl_c SIGINT to its whole process group (Ctrl-C on a
        terminal), then wait up to grace_s: (exit code, seconds from the signal to the exit); reads all of stderr."""
        t0 = time.monotonic()
        if ctrl_c:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(grace_s)
        took = time.monotonic() - t0
        self.finish()
        return rc, took

    def finish(self) -> str:
        """Read stderr to its end (the process has exited or is about to); the whole log."""
        while (ln := self._lines.get(timeout=600)) is not None:
            self.seen.append(ln)
        self.proc.wait()
        return self.log

    @property
    def log(self) -> str:
        return "".join(self.seen)


class Child:
    """One forked stage process: wait for its pause marker, kill it, read its log."""

    def __init__(self, proc, spec: Spec):
        self.proc, self.spec = proc, spec
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_marker(self, timeout: float = 90.0) -> str | None:
        """The key the process paused on, or None if it exited (or timed out) first."""
        marker = Path(self.spec.pause_marker)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.exists():
                return marker.read_text()
            if not self.proc.is_alive():
                return marker.read_text() if marker.exists() else None
            time.sleep(0.01)
        return None

    def kill(self, sig: int = 9) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 180.0) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join(10)
            raise AssertionError(f"stage process {self.spec.argv} did not finish within {timeout} s:\n{self.text()[-3000:]}")
        return self.proc.exitcode

    def text(self) -> str:
        try:
            return Path(self.spec.log).read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Forked:
    """Starts `lt-ssl ...` in processes forked from the preloaded fork server."""

    def __init__(self, ctx, workdir: Path):
        self.ctx, self.workdir = ctx, workdir

    def start(self, argv: list[str], *, env: dict | None = None, journal: str | None = None,
              pause_key: str | None = None, pause_after: bool = False, upload=None) -> Child:
        tag = uuid.uuid4().hex[:10]
        spec = Spec(argv=[str(a) for a in argv], env={**os.environ, **ONE_THREAD, **(env or {})},
                    log=str(self.workdir / f"{tag}.log"), journal=journal, pause_key=pause_key,
                    pause_marker=str(self.workdir / f"{tag}.paused"), pause_after=pause_after, upload=upload)
        from ._child import main

        proc = self.ctx.Process(target=main, args=(spec,), daemon=True)
        proc.start()
        return Child(proc, spec)

    def run(self, argv: list[str], timeout: float = 180.0, **kw) -> tuple[int, str]:
        child = self.start(argv, **kw)
        rc = child.wait(timeout)
        return rc, child.text()


@pytest.fixture(scope="session")
def forked(tmp_path_factory) -> Forked:
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.faults._child"])
    saved = dict(os.environ)
    try:  # the fork server starts with one thread and can import tests.faults._child from any cwd
        os.environ.update(ONE_THREAD)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    forked = Forked(ctx, tmp_path_factory.mktemp("forked"))
    rc, log = forked.run(["--version"], timeout=300)  # waits for the fork server's imports, once
    assert rc == 0, log
    return forked


# ------------------------------------------------------------------------------------ journal


class Journal:
    """The intent log the stage processes write (see _child.py): URL -> hashes of complete writes."""

    def __init__(self, path: Path):
        self.path = path
        path.touch()

    def hashes(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for line in self.path.read_text().splitlines():
            digest, url = line.split(" ", 1)
            out[url].add(digest)
        return out

    def record(self, url: str, data: bytes) -> None:
        from ._child import journal_write

        journal_write(str(self.path), url, data)

    def check(self, objects: dict[str, bytes]) -> list[str]:
        """Objects (URL -> bytes, read *before* this call) that are not exactly one complete write."""
        known = self.hashes()
        bad = []
        for url, data in objects.items():
            if hashlib.sha256(data).hexdigest() not in known.get(url, ()):
                bad.append(f"{url} ({len(data)} bytes) is not any complete write of it")
        return bad


def read_all(store) -> dict[str, bytes]:
    """Every object a reader of the run can see (hidden temp files are not listed), URL -> bytes."""
    out = {}
    for key in store.list():
        try:
            out[store.url(key)] = store.read_bytes(key)
        except Exception:  # noqa: BLE001 - replaced or deleted between list and read: not visible any more
            continue
    return out


# ------------------------------------------------------------------------------------ snapshots


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root (hidden ones too): relative path -> (size, mtime_ns, sha256)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


# ------------------------------------------------------------------------------------ CIFAR files


def cifar_batch_bytes(n: int, *, seed: int = 0, distinct: int | None = None, num_classes: int = 10,
                      label_key: bytes = b"labels", data=None, labels=None) -> bytes:
    """One batch in the official python layout: a dict with bytes keys, data uint8 (n, 3072), int labels.

    `distinct` repeats that many random images (duplicates give k-means empty clusters)."""
    rng = np.random.default_rng(seed)
    if data is None:
        pats = rng.integers(0, 256, size=(distinct or n, 3072), dtype=np.uint8)
        data = pats[np.arange(n) % len(pats)]
    if labels is None:
        labels = [int(x) for x in rng.integers(0, num_classes, size=len(data))]
    batch = {b"batch_label": b"tiny batch", label_key: labels, b"data": data,
             b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(len(data))]}
    return pickle.dumps(batch, protocol=4)


def write_cifar10(root: Path, n: int = 20, *, distinct: int | None = None, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in cifar-10-batches-py layout: 5 train batches and a test batch of n images each."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    pats = np.random.default_rng(seed).integers(0, 256, size=(distinct, 3072), dtype=np.uint8) if distinct else None
    for j, name in enumerate(names):
        data = pats[(np.arange(n) + j * n) % distinct] if distinct else None  # the same few images in every batch
        (root / name).write_bytes(cifar_batch_bytes(n, seed=seed + j, data=data))
    return root


def cifar_overrides(root: Path) -> list[str]:
    return ["data.dataset=cifar10", f"data.root={root}", "backbone=small_cnn", "augment.size=32", "data.subset=full",
            "pretrain.batch_size=16", "baseline.train.batch_size=16", "distill.train.batch_size=16",
            "expert.train.batch_size=8", "evaluate.knn_k=5"]


def malicious_pickle(marker: Path) -> bytes:
    """A pickle whose loading would run `touch <marker>`: refused loaders leave the marker absent."""

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Boom(), protocol=2)


def torch_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
