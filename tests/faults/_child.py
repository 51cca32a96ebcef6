"""What a fault test's stage process runs: `lt-ssl <argv>` in a process forked from a fork server.

The fork server (multiprocessing's "forkserver", started by tests/faults/conftest.py) imports this
module once, and with it torch, lt_ssl, scikit-learn, matplotlib and boto3. Every stage process is
then a fork of it: a real process with its own pid that a test can SIGKILL or SIGTERM, running the
real CLI entry point `lt_ssl.cli.main`, but starting in milliseconds instead of paying the 2-4 s
torch import each time. That is what lets the suite kill stages dozens of times within its budget.

Hooks a test can switch on per process (all off by default):
- journal: before every store write, append "<sha256 of the whole object> <object URL>" to a file.
  A reader then checks that every object it can see is byte-for-byte one of the complete writes,
  i.e. no reader ever sees a partial artifact.
- pause: at the first write whose key matches a regex, write half of the bytes into the local
  store's temp file (flushed and fsynced), create a marker file naming the key, and wait there, so
  the test can SIGKILL the process exactly mid-write. `pause_after` instead waits right after the
  write completed (the object renamed into place).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Imported here, in the fork server, once: everything a stage imports lazily as well.
import boto3  # noqa: F401
import botocore.session  # noqa: F401
import matplotlib  # noqa: F401
import numpy as np  # noqa: F401
import sklearn.cluster  # noqa: F401
import sklearn.datasets  # noqa: F401
import torch  # noqa: F401

import lt_ssl.cli
import lt_ssl.metrics  # noqa: F401
import lt_ssl.pipeline.stages  # noqa: F401
from lt_ssl.store.local import LocalStore
from lt_ssl.store.s3 import S3Store

PAUSE_LIMIT_S = 120.0  # a paused writer carries on after this, so a broken test cannot hang for ever


@dataclass
class Spec:
    argv: list[str]  # arguments after `lt-ssl`
    env: dict[str, str]  # the whole environment of the process
    log: str  # stdout and stderr go here
    journal: str | None = None
    pause_key: str | None = None  # regex searched in the key
    pause_marker: str | None = None
    pause_after: bool = False
    upload: tuple[str, str, str] | None = None  # (run URI, key, local file): S3Store.upload_file instead of the CLI
    extra: dict = field(default_factory=dict)


def journal_write(path: str, url: str, data: bytes) -> None:
    """One O_APPEND write per line: a kill leaves the line whole or absent."""
    line = f"{hashlib.sha256(data).hexdigest()} {url}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _park(marker: str, key: str) -> None:
    tmp = f"{marker}.tmp"
    Path(tmp).write_text(key)
    os.replace(tmp, marker)
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while time.monotonic() < deadline:  # the test SIGKILLs us here
        time.sleep(0.05)


def install_hooks(journal: str | None, pause_key: str | None = None, pause_marker: str | None = None,
                  pause_after: bool = False) -> None:
    """Wrap LocalStore.write_bytes and S3Store.write_bytes (every store write goes through them)."""
    orig_local, orig_s3 = LocalStore.write_bytes, S3Store.write_bytes
    pattern = re.compile(pause_key) if pause_key else None
    state = {"armed": pattern is not None}

    def take(key: str) -> bool:
        if state["armed"] and pattern.search(key):
            state["armed"] = False
            return True
        return False

    def local_write(self, key, data):
        if journal:
            journal_write(journal, self.url(key), data)
        if not take(key):
            return orig_local(self, key, data)
        if pause_after:
            orig_local(self, key, data)
            _park(pause_marker, key)
            return None

        def half_then_park(f):
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            _park(pause_marker, key)
            f.write(data[len(data) // 2:])

        return self._atomic_write(key, half_then_park)  # the real temp-file-then-rename path

    def s3_write(self, key, data):
        if journal:
            journal_write(journal, self.url(key), data)
        return orig_s3(self, key, data)

    LocalStore.write_bytes = local_write
    S3Store.write_bytes = s3_write


def main(spec: Spec) -> None:
    fd = os.open(spec.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
    os.environ.clear()
    os.environ.update(spec.env)
    install_hooks(spec.journal, spec.pause_key, spec.pause_marker, spec.pause_after)
    try:
        if spec.upload:
            from lt_ssl.store import open_store

            uri, key, path = spec.upload
            open_store(uri).upload_file(key, Path(path))
            rc = 0
        else:
            rc = lt_ssl.cli.main(list(spec.argv))
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - report, never hang
        import traceback

        traceback.print_exc()
        rc = 99
    os._exit(rc)
