#!/usr/bin/env bash
# The GPU check (issue 11): SimSiam ResNet-18 images/s and TFLOP/s, peak memory, k-means, one epoch per stage.
# Usage: benchmarks/gpu.sh [OUT.json]   (default benchmarks/results/gpu.json; under 8 minutes on one H100/H200)
# Without CUDA, benchmarks/gpu.py runs its CPU smoke version and writes the same keys with "device": "cpu".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out="${1:-$root/benchmarks/results/gpu.json}"
python="${PYTHON:-python}"

cd "$root"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda:", torch.cuda.is_available())'
# 480 s: the issue's 8-minute budget; a hang (compile, driver) fails the run instead of eating the device time.
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" timeout 480 "$python" "$here/gpu.py" "$out"
echo "wrote $out"
