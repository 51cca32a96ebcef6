#!/usr/bin/env bash
# Builds the trainer image (images/Dockerfile) with docker or podman, whichever is present.
# Usage: infra/build-image.sh            (env below; make image / make image VARIANT=cuda)
#   VARIANT=cpu|cuda        which torch (default cpu)
#   IMAGE=NAME:TAG          default ${REGISTRY}lt-ssl:$VARIANT
#   REGISTRY=host/path/     optional prefix for the tag
#   BASE_IMAGE=...          default from infra/versions.env (python slim for cpu, pytorch for cuda)
#   TORCH_INDEX_URL=...     default PyTorch's cpu or cu130 index
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL   passed on to pip inside the build when set
#   WHEELHOUSE=DIR          offline build: wheels from DIR only (infra/wheelhouse.sh), no network
#   CONTAINER_TOOL=docker|podman         force one
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load_versions

variant="${VARIANT:-cpu}"
case "$variant" in
  cpu)
    base="${BASE_IMAGE:-$PYTHON_BASE_IMAGE}"
    torch_index="${TORCH_INDEX_URL:-$TORCH_CPU_INDEX_URL}"
    ;;
  cuda)
    base="${BASE_IMAGE:-$CUDA_BASE_IMAGE}"
    torch_index="${TORCH_INDEX_URL:-$TORCH_CUDA_INDEX_URL}"
    ;;
  *) die "VARIANT must be cpu or cuda, not '$variant'" ;;
esac
image="${IMAGE:-${REGISTRY:-}lt-ssl:$variant}"
tool="$(container_tool)"
commit="$(git -C "$LT_SSL_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"

args=(
  build
  --file "$LT_SSL_ROOT/images/Dockerfile"
  --tag "$image"
  --build-arg "VARIANT=$variant"
  --build-arg "BASE_IMAGE=$base"
  --build-arg "TORCH_VERSION=$TORCH_VERSION"
  --build-arg "TORCHVISION_VERSION=$TORCHVISION_VERSION"
  --build-arg "TORCH_INDEX_URL=$torch_index"
  --build-arg "GIT_COMMIT=$commit"
)
[[ -n "${PIP_INDEX_URL:-}" ]] && args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
[[ -n "${PIP_EXTRA_INDEX_URL:-}" ]] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL")
if [[ -n "${WHEELHOUSE:-}" ]]; then
  [[ -d "$WHEELHOUSE" ]] || die "WHEELHOUSE=$WHEELHOUSE is not a folder (fill it with infra/wheelhouse.sh)"
  args+=(--build-context "wheelhouse=$(cd "$WHEELHOUSE" && pwd)" --build-arg PIP_NO_INDEX=1 --network none)
fi
if [[ "$tool" == podman ]]; then
  # podman reads only .containerignore/.dockerignore at the context root unless told; the
  # docker image format keeps the Dockerfile's SHELL (OCI has no field for it) and is what
  # kind and minikube load.
  read -r -a ulimits <<<"$(run_ulimits)"
  args+=(--ignorefile "$LT_SSL_ROOT/images/Dockerfile.dockerignore" --format docker --layers "${ulimits[@]}")
fi

log "$tool: building $image (variant $variant, base $base, commit $commit)"
start=$SECONDS
ctr "$tool" "${args[@]}" "$LT_SSL_ROOT"
log "built $image in $((SECONDS - start)) s, $(ctr "$tool" image inspect --format '{{.Size}}' "$image") bytes"
