#!/usr/bin/env bash
# Fills a folder with every wheel the trainer image installs (pinned torch/torchvision, the
# package's dependencies and its build backend), using this machine's pip and its configuration,
# so the image can then be built with no network at all:
#   infra/wheelhouse.sh [DIR] && WHEELHOUSE=DIR infra/build-image.sh
# Default DIR: images/context/wheelhouse (git-ignored, outside the build context's allowlist).
# Idempotent: pip skips wheels already in DIR. Env: PYTHON (default python3), PLATFORMS.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load_versions

dir="${1:-$LT_SSL_ROOT/images/context/wheelhouse}"
python="${PYTHON:-python3}"
# The image's interpreter: CPython 3.11 on Debian bookworm (glibc 2.36), x86_64. pip does not
# widen a given --platform to older glibc tags, so name every manylinux tag up to 2.36.
read -r -a platforms <<<"${PLATFORMS:-manylinux1_x86_64 manylinux2010_x86_64 manylinux2014_x86_64 $(
  printf 'manylinux_2_%s_x86_64 ' $(seq 5 36))}"
platform_flags=()
for p in "${platforms[@]}"; do
  platform_flags+=(--platform "$p")
done
need "$python"
"$python" -m pip --version >/dev/null 2>&1 || die "$python has no pip"

mkdir -p "$dir"
reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
"$python" - "$LT_SSL_ROOT/pyproject.toml" >"$reqs" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    meta = tomllib.load(f)
print("\n".join(meta["project"]["dependencies"] + meta["build-system"]["requires"]))
PY

log "downloading wheels into $dir"
"$python" -m pip download --dest "$dir" \
  --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
  "${platform_flags[@]}" \
  "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" -r "$reqs" >&2
log "$(find "$dir" -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir"
