#!/usr/bin/env bash
# Everything a session with a CUDA machine should run, in one device call (run it with timeout_s=600: the parts'
# limits add up to 590 s):
#   1. the CUDA-only tests (train loop sync window, CUDA k-means, bf16 on CUDA, augmentation generators, kNN's
#      deterministic kernels);
#   2. benchmarks/pipeline.py on the quickstart (every stage on CUDA, wall time per stage, a profiler trace);
#   3. benchmarks/gpu.sh (SimSiam ResNet-18 throughput, TFLOP/s, memory, k-means, one epoch per stage);
#   4. benchmarks/ops_per_step.py --time cuda (each method's step rate against SimCLR's, one process, alternating).
# Usage: benchmarks/device_check.sh OUT_DIR   (writes pytest.log, gpu.json, gpu.log, pipeline_cuda.json, pipeline.log,
# methods_cuda.json, methods.log). Session 6's whole call took 230 s.
# The device machine's python3 has torch but not pydantic: carry its wheels in .whl/ (benchmarks/README.md says
# how); they are installed to /tmp/site first. Each part has its own time limit, so one hang costs only its part.
set -uo pipefail

out="${1:?usage: benchmarks/device_check.sh OUT_DIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root" || exit 1
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="/tmp/site:$root${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
nvidia-smi -L
python3 -c 'import torch, pydantic; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' || exit 1

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, print its exit code and time
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - start)) s"
    tail -n 5 "$out/$name.log"
}
part pytest 90 python3 -m pytest -q -p no:cacheprovider -rs tests/unit/test_train_loop.py tests/unit/test_cluster.py \
    tests/unit/test_train_precision.py tests/unit/test_data_augment.py tests/unit/test_evaluate.py
part pipeline 120 python3 benchmarks/pipeline.py --run file:///tmp/lt-ssl-quickstart-cuda --trace /tmp/trace.json \
    --out "$out/pipeline_cuda.json"
part gpu 310 env PYTHON=python3 benchmarks/gpu.sh "$out/gpu.json"
part methods 70 sh -c "python3 benchmarks/ops_per_step.py --time cuda > '$out/methods_cuda.json'"
