"""The trainer image, built for real: podman on a debootstrap base, offline from a local
wheelhouse (infra/image-test.sh), then `lt-ssl --help` inside. Opt-in: pytest -m slow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PODMAN = ["podman", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]


def _skip_reason(config) -> str | None:
    if "slow" not in (config.getoption("-m") or ""):
        return "slow (builds a multi-GB image): run with -m slow"
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman buildah runc)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (apt-get install debootstrap)"
    if os.geteuid() != 0:
        return "debootstrap needs root"
    return None


@pytest.mark.slow
def test_cpu_image_builds_and_runs_lt_ssl_help(request):
    reason = _skip_reason(request.config)
    if reason:
        pytest.skip(reason)
    start = time.monotonic()
    out = subprocess.run(
        ["bash", "infra/image-test.sh", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=3600,
    )
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "usage: lt-ssl" in out.stdout
    print(f"image-test: {elapsed:.0f} s; {out.stderr.strip().splitlines()[-1]}")

    flags = PODMAN + (["--runtime", "runc"] if shutil.which("crun") is None else [])
    inspect = subprocess.run(flags + ["image", "inspect", "lt-ssl:cpu"], capture_output=True, text=True, check=True)
    (image,) = json.loads(inspect.stdout)
    config = image["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["lt-ssl"]
    assert config["WorkingDir"] == "/app"
    labels = config["Labels"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    expected = commit.stdout.strip() if commit.returncode == 0 else "unknown"
    assert labels["org.opencontainers.image.revision"] == expected
    assert labels["io.lt-ssl.torch-version"] == "2.14.1"
