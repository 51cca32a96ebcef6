#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Shared helpers for infra/*.sh: error messages, tool checks, pinned versions, podman flags.
# Sourced, never run: `. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`.

LT_SSL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LT_SSL_ROOT

die() {
  echo "error: $*" >&2
  exit 1
}

log() {
  echo "==> $*" >&2
}

# need TOOL [HINT]: one clear line, then exit, when TOOL is not on PATH.
need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH${2:+: $2}"
}

load_versions() {
  # shellcheck source=versions.env
  . "$LT_SSL_ROOT/infra/versions.env"
}

# container_tool: docker when its daemon answers, else podman, else docker without a daemon
# (so its own error shows), else a one-line error. CONTAINER_TOOL overrides.
container_tool() {
  if [[ -n "${CONTAINER_TOOL:-}" ]]; then
    need "$CONTAINER_TOOL"
    echo "$CONTAINER_TOOL"
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo docker
  elif command -v podman >/dev/null 2>&1; then
    echo podman
  else
    die "neither docker (with a running daemon) nor podman found: install one (apt-get install podman)"
  fi
}

# podman's global flags. Without systemd as init (containers, CI VMs) podman's defaults
# (systemd cgroup manager, journald events) fail, so use cgroupfs and a file event log;
# prefer runc where crun is absent. PODMAN_FLAGS overrides.
podman_flags() {
  if [[ -n "${PODMAN_FLAGS+x}" ]]; then
    echo "$PODMAN_FLAGS"
    return
  fi
  local flags=()
  if [[ ! -d /run/systemd/system ]]; then
    flags+=(--cgroup-manager cgroupfs --events-backend file)
  fi
  if ! command -v crun >/dev/null 2>&1 && command -v runc >/dev/null 2>&1; then
    flags+=(--runtime runc)
  fi
  echo "${flags[*]}"
}

# Run the container tool with the right global flags: ctr podman build ..., ctr docker run ...
ctr() {
  local tool="$1"
  shift
  if [[ "$tool" == podman ]]; then
    local flags
    read -r -a flags <<<"$(podman_flags)"
    podman "${flags[@]}" "$@"
  else
    "$tool" "$@"
  fi
}

# Low ulimits for `podman run`: the host's hard limits can exceed what runc may set here.
run_ulimits() {
  echo "--ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
}
