"""benchmarks/gpu.sh without CUDA: its CPU fallback runs every code path of the GPU check and writes its JSON keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_benchmark

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the full GPU check, minutes long")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_sh_cpu_smoke_writes_the_gpu_keys(tmp_path: Path) -> None:
    """The script a device runs, as it runs there (strict bash, its own timeout), on this machine's CPU."""
    text = (BENCH / "gpu.sh").read_text()
    assert "set -euo pipefail" in text
    gpu = load_benchmark("gpu")
    out = tmp_path / "gpu.json"
    done = subprocess.run(["bash", str(BENCH / "gpu.sh"), str(out)], env=os.environ | {"PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out}" in done.stdout
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["smoke"] is True
    assert report["cudnn_benchmark"] == {"throughput": False, "epochs": False}  # the epochs run as the stages do
    assert report["batch_size"] == gpu.SMOKE.batch
    assert report["throughput"]["eager"]["images_per_s"] > 0
    assert report["throughput"]["eager"]["images_per_s_with_augment"] > 0
    assert "skipped" in report["throughput"]["compile"]
    # The counted FLOP agree with the issue's ~6.7 GFLOP per image at 32 px, scaled by the pixel count.
    expected = gpu.REFERENCE_FLOP_PER_IMAGE * (gpu.SMOKE.image / 32) ** 2
    assert report["flop_per_image"] == pytest.approx(expected, rel=0.1)
    assert report["peak_tflops"] is None and report["fraction_of_peak"] == {"eager": None}
    assert report["peak_memory_bytes"] > 0
    assert report["kmeans"]["k10_s"] > 0 and report["kmeans"]["k64_inertia"] < report["kmeans"]["k10_inertia"]
    assert set(report["epochs"]) == {"pretrain", "expert", "distill"}
    for stage in report["epochs"].values():
        assert stage["steps"] == 1 and stage["seconds"] > 0


def test_peak_table_matches_device_names() -> None:
    gpu = load_benchmark("gpu")
    lookup = dict(gpu.PEAK_BF16_TFLOPS)
    name = "NVIDIA H100 PCIe"
    assert next(p for k, p in gpu.PEAK_BF16_TFLOPS if k in name) == lookup["H100 PCIe"]
    assert next(p for k, p in gpu.PEAK_BF16_TFLOPS if k in "NVIDIA H200") == 989.0
