"""experiments/on_device.sh on this machine's CPU, as a device call runs it: one cell of the tiny grid, and what comes
back (the runner's log, the report, the archive parts) unpacks to the cell's folder without its weights."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CELL = "simsiam-c-d--split-0"


def test_on_device_script_brings_back_the_log_the_report_and_the_outputs_without_weights(tmp_path: Path) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = os.environ | {"PYTHON": sys.executable, "LT_SSL_DEVICE_RUNS": str(runs), "LT_SSL_GIT_COMMIT": "test-commit"}
    done = subprocess.run(["bash", "experiments/on_device.sh", str(out), "400", "experiments/tiny_digits.yaml",
                           "--device", "cpu", "--cells", CELL], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "experiment run: exit 0" in done.stdout
    assert f"[{CELL}] done" in (out / "experiment.log").read_text()
    md = (out / "tiny_digits.md").read_text()
    assert "| SimSiam+C+D |  | 1/2 |" in md and (out / "tiny_digits.csv").exists()  # one of the two splits ran

    parts = sorted(out.glob("runs.tgz.*"))
    assert [p.name for p in parts] == ["runs.tgz.00"]
    archive = tmp_path / "runs.tgz"
    archive.write_bytes(b"".join(p.read_bytes() for p in parts))
    back = tmp_path / "back"
    with tarfile.open(archive) as tar:
        tar.extractall(back, filter="data")
    assert (back / CELL / "evaluate" / "metrics.json").exists()
    assert '"git_commit": "test-commit"' in (back / CELL / "evaluate" / "_SUCCESS.json").read_text()
    assert list(runs.rglob("*.pt")) and not list(back.rglob("*.pt"))  # weights stay on the device
