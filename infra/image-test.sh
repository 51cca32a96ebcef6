#!/usr/bin/env bash
# End-to-end image check that needs no registry and no network in the build: makes the
# debootstrap base (infra/base-image.sh), gathers wheels with this machine's pip
# (infra/wheelhouse.sh), builds lt-ssl:cpu on that base with podman, offline, and runs lt-ssl in it.
# Usage: infra/image-test.sh [LT-SSL ARGS...]
#   default args: run --config /app/configs/quickstart.yaml --run file:///tmp/runs/q
# Env: WHEELHOUSE (default images/context/wheelhouse), IMAGE (default lt-ssl:cpu).
# Needs root (debootstrap), podman and debootstrap: apt-get install podman buildah runc debootstrap
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load_versions

need podman "apt-get install podman buildah runc"
export CONTAINER_TOOL=podman
wheelhouse="${WHEELHOUSE:-$LT_SSL_ROOT/images/context/wheelhouse}"
image="${IMAGE:-lt-ssl:cpu}"
if (($# == 0)); then
  set -- run --config /app/configs/quickstart.yaml --run file:///tmp/runs/q
fi

timings=()
step() {
  local name="$1" start=$SECONDS
  shift
  "$@"
  timings+=("$name $((SECONDS - start))s")
}

step base "$LT_SSL_ROOT/infra/base-image.sh"
step wheelhouse "$LT_SSL_ROOT/infra/wheelhouse.sh" "$wheelhouse"
step build env VARIANT=cpu IMAGE="$image" BASE_IMAGE="$LOCAL_BASE_IMAGE" WHEELHOUSE="$wheelhouse" \
  "$LT_SSL_ROOT/infra/build-image.sh"
read -r -a ulimits <<<"$(run_ulimits)"
log "podman run --rm $image $*"
step run ctr podman run --rm "${ulimits[@]}" --shm-size=1g "$image" "$@"

size="$(ctr podman image inspect --format '{{.Size}}' "$image")"
log "image-test passed: ${timings[*]}; $image is $((size / 1000000)) MB"
