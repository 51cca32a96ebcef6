#!/usr/bin/env bash
# Deletes the local cluster made by infra/cluster-up.sh (and everything in it: MinIO's data
# included). Usage: infra/cluster-down.sh kind|minikube. Idempotent: no cluster, no error.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load_versions

cluster="${1:-${CLUSTER:-}}"
[[ "$cluster" == kind || "$cluster" == minikube ]] || die "usage: $0 kind|minikube"
need "$cluster" "see https://kind.sigs.k8s.io or https://minikube.sigs.k8s.io"

if [[ "$cluster" == kind ]]; then
  if [[ "$(container_tool)" == podman ]]; then
    export KIND_EXPERIMENTAL_PROVIDER=podman
  fi
  if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"; then
    kind delete cluster --name "$KIND_CLUSTER_NAME"
  else
    log "no kind cluster $KIND_CLUSTER_NAME"
  fi
else
  if minikube profile list -o json 2>/dev/null | grep -q "\"Name\":\"$MINIKUBE_PROFILE\""; then
    minikube delete -p "$MINIKUBE_PROFILE"
  else
    log "no minikube profile $MINIKUBE_PROFILE"
  fi
fi
