"""Provenance's code version: the checkout's commit, marked dirty by changed tracked files, and read at import."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lt_ssl.pipeline import contract

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_code_commit_is_the_head_and_dirty_only_when_tracked_files_changed(tmp_path):
    assert contract.code_commit(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert contract.code_commit(tmp_path) == head
    (tmp_path / "notes.txt").write_text("untracked\n")  # an untracked file (a .venv link, a log) is not a change
    assert contract.code_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert contract.code_commit(tmp_path) == f"{head}-dirty"


def test_provenance_names_the_commit_read_at_import_unless_the_environment_names_one(monkeypatch):
    monkeypatch.delenv("LT_SSL_GIT_COMMIT", raising=False)
    monkeypatch.setattr(contract, "_CODE_COMMIT", "abc123")  # what the process read when it imported the code
    assert contract.provenance()["git_commit"] == "abc123"  # a later checkout of the tree does not change it
    monkeypatch.setenv("LT_SSL_GIT_COMMIT", "from-image")
    assert contract.provenance()["git_commit"] == "from-image"
