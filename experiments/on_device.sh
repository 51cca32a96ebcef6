#!/usr/bin/env bash
# An experiment's cells on a lent CUDA machine, in one device call, and what they produced brought back.
# Usage: experiments/on_device.sh OUT_DIR SECONDS EXPERIMENT.yaml [lt-ssl experiment run options...]
#   e.g. through the device tool (carry [".whl", ".data"], timeout_s 560):
#   LT_SSL_GIT_COMMIT=<commit> bash experiments/on_device.sh "$OUT" 460 experiments/methods_p100.yaml --device cuda --parallel 24
# Carried: .whl/ (the pydantic wheels, benchmarks/README.md says how) and .data/fashion-mnist/ (the four IDX files of
# Debian's dataset-fashion-mnist, copied from /usr/share/datasets/fashion-mnist), put at that Debian path there.
# The copy on the device has no .git: set LT_SSL_GIT_COMMIT so each stage's provenance names the code.
# PYTHON: the interpreter (default python3); LT_SSL_DEVICE_RUNS: where the cells' folders go (default /tmp/lt-ssl-runs).
# LT_SSL_THREADS: the cores the runner shares out (default the CPU count). A cell of T threads runs up to min(T, 4)
# stages at once, so a recipe cell needs 3 to train its base beside its baseline and its 3 experts together: for 6
# such cells on 16 cores, LT_SSL_THREADS=18 (session 7: Experiment II at p = 10, six cells in 307 s). A GPU step
# is launch-bound on one core, so the share oversubscribes little.
# After SECONDS the runner gets SIGTERM, so each training stage writes a checkpoint and exits, and the archive is
# made inside the call's limit: every cell's outputs except weights (*.pt: models and checkpoints), in 15 MiB parts
# OUT_DIR/runs.tgz.00, .01, ... because a call brings back at most 8 files of 16 MiB (64 MiB in all; G-SimCLR's
# pseudo-label codes alone are 7.6 MB a cell, which lost a whole 22 MB archive once), and OUT_DIR/experiment.log,
# the runner's log with each line tagged by its cell, and the experiment's report made there (<name>.md, <name>.csv:
# small files, so the table comes back even if the parts do not; `lt-ssl experiment report --from-log` is the last
# resort). Here: mkdir -p runs/X && cat runs.tgz.* | tar -C runs/X -xz, then `lt-ssl experiment report ... --prefix`.
set -uo pipefail

out="${1:?usage: experiments/on_device.sh OUT_DIR SECONDS EXPERIMENT.yaml [run options...]}"
seconds="${2:?usage: experiments/on_device.sh OUT_DIR SECONDS EXPERIMENT.yaml [run options...]}"
experiment="${3:?usage: experiments/on_device.sh OUT_DIR SECONDS EXPERIMENT.yaml [run options...]}"
shift 3
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
mkdir -p "$out"
python="${PYTHON:-python3}"
runs="${LT_SSL_DEVICE_RUNS:-/tmp/lt-ssl-runs}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$python" -c 'import pydantic' 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
fmnist=/usr/share/datasets/fashion-mnist  # the dataset's default data.root (lt_ssl.data.datasets)
if [ ! -e "$fmnist" ] && [ -d .data/fashion-mnist ]; then
    mkdir -p "$(dirname "$fmnist")" && cp -r .data/fashion-mnist "$fmnist" || exit 1
fi
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"

start=$SECONDS
timeout -k 60 "$seconds" "$python" -m lt_ssl experiment run "$experiment" --prefix "file://$runs" "$@" \
    >"$out/experiment.log" 2>&1
echo "experiment run: exit $? in $((SECONDS - start)) s"
grep -E '^\[[^]]+\] (done|failed|finished)' "$out/experiment.log"
report="$(mktemp -d)"
if "$python" -m lt_ssl experiment report "$experiment" --prefix "file://$runs" --out "$report" >/dev/null; then
    cp "$report"/*.md "$report"/*.csv "$out"/ 2>/dev/null
    echo "wrote the report: $(cd "$out" && ls ./*.md ./*.csv | tr '\n' ' ')"
fi
mkdir -p "$runs"
tar -C "$runs" --exclude='*.pt' -cz . | split -b 15M -d -a 2 - "$out/runs.tgz." || exit 1
parts=("$out"/runs.tgz.*)
echo "wrote ${#parts[@]} part(s) of runs.tgz, $(cat "${parts[@]}" | wc -c) bytes"
if [ "$(ls "$out" | wc -l)" -gt 8 ]; then echo "more than 8 files in $out: a call brings back 8, so some are lost" >&2; exit 1; fi
