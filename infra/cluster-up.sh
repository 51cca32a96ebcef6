#!/usr/bin/env bash
# Creates a local cluster ready for `argo submit`: cluster (pinned node image), Argo Workflows
# (server-side apply of the pinned release), lt-ssl manifests (k8s/overlays/<kind|minikube|gpu>),
# the trainer image built and loaded into the cluster, MinIO up with the bucket, and datasets.
# Usage: infra/cluster-up.sh kind|minikube
# Env:   GPU=1             nvkind (kind) or `minikube start --gpus all`, CUDA image, overlays/gpu
#        CIFAR_DIR=DIR     seed CIFAR from DIR (see infra/seed-data.sh); none needed for quickstart
#        SKIP_BUILD=1      load an already built image instead of building it
#        MINIKUBE_DRIVER   default docker; MINIKUBE_CPUS / MINIKUBE_MEMORY (default 4 / 8g)
# Idempotent: each step checks what exists and only does what is missing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load_versions

cluster="${1:-${CLUSTER:-}}"
[[ "$cluster" == kind || "$cluster" == minikube ]] || die "usage: $0 kind|minikube"
gpu="${GPU:-0}"
variant=cpu
overlay="$cluster"
if [[ "$gpu" == 1 ]]; then
  variant=cuda
  overlay=gpu
fi
image="lt-ssl:$variant"

need kubectl "https://kubernetes.io/docs/tasks/tools/"
need "$cluster" "see https://kind.sigs.k8s.io or https://minikube.sigs.k8s.io"
tool="$(container_tool)"

# --- cluster -------------------------------------------------------------------------------
if [[ "$cluster" == kind ]]; then
  context="kind-$KIND_CLUSTER_NAME"
  if [[ "$tool" == podman ]]; then
    export KIND_EXPERIMENTAL_PROVIDER=podman
  fi
  if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"; then
    log "kind cluster $KIND_CLUSTER_NAME exists"
  elif [[ "$gpu" == 1 ]]; then
    need nvkind "go install github.com/NVIDIA/nvkind/cmd/nvkind@$NVKIND_VERSION (needs nvidia-ctk set up for docker)"
    log "creating GPU kind cluster $KIND_CLUSTER_NAME with nvkind"
    nvkind cluster create --name "$KIND_CLUSTER_NAME" --image "$KIND_NODE_IMAGE" --wait 180s
  else
    log "creating kind cluster $KIND_CLUSTER_NAME ($KIND_NODE_IMAGE)"
    kind create cluster --name "$KIND_CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
      --config "$LT_SSL_ROOT/infra/kind/cluster.yaml" --wait 180s
  fi
else
  context="$MINIKUBE_PROFILE"
  if minikube -p "$MINIKUBE_PROFILE" status >/dev/null 2>&1; then
    log "minikube profile $MINIKUBE_PROFILE is running"
  else
    start=(start -p "$MINIKUBE_PROFILE" --kubernetes-version "$MINIKUBE_KUBERNETES_VERSION"
      --driver "${MINIKUBE_DRIVER:-docker}" --cpus "${MINIKUBE_CPUS:-4}" --memory "${MINIKUBE_MEMORY:-8g}")
    [[ "$gpu" == 1 ]] && start+=(--gpus all)
    log "starting minikube profile $MINIKUBE_PROFILE ($MINIKUBE_KUBERNETES_VERSION)"
    minikube "${start[@]}"
  fi
fi
kc=(kubectl --context "$context")

# --- Argo Workflows ------------------------------------------------------------------------
# Server-side apply: the full CRDs exceed the client-side last-applied annotation limit.
log "installing Argo Workflows $ARGO_VERSION into namespace argo"
"${kc[@]}" create namespace argo --dry-run=client -o yaml | "${kc[@]}" apply -f - >/dev/null
"${kc[@]}" apply --server-side -n argo \
  -f "https://github.com/argoproj/argo-workflows/releases/download/$ARGO_VERSION/install.yaml" >/dev/null
"${kc[@]}" -n argo rollout status deployment/workflow-controller --timeout=300s

# --- GPU device plugin (kind/nvkind; minikube --gpus all enables its own) -----------------
if [[ "$gpu" == 1 ]]; then
  if [[ "$cluster" == kind ]]; then
    log "installing the NVIDIA device plugin $NVIDIA_DEVICE_PLUGIN_VERSION"
    "${kc[@]}" apply -f "https://raw.githubusercontent.com/NVIDIA/k8s-device-plugin/$NVIDIA_DEVICE_PLUGIN_VERSION/deployments/static/nvidia-device-plugin.yml" >/dev/null
  fi
  log "waiting for nodes with allocatable nvidia.com/gpu"
  gpu_nodes=""
  for _ in $(seq 60); do
    gpu_nodes="$("${kc[@]}" get nodes -o jsonpath='{range .items[?(@.status.allocatable.nvidia\.com/gpu)]}{.metadata.name}{"\n"}{end}')"
    [[ -n "$gpu_nodes" ]] && break
    sleep 5
  done
  [[ -n "$gpu_nodes" ]] || die "no node reports allocatable nvidia.com/gpu (is the device plugin running?)"
  for node in $gpu_nodes; do
    "${kc[@]}" label node "$node" lt-ssl.dev/gpu=true --overwrite >/dev/null
  done
fi

# --- trainer image ---------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  VARIANT="$variant" IMAGE="$image" "$LT_SSL_ROOT/infra/build-image.sh"
fi
log "loading $image into $cluster"
if [[ "$tool" == docker ]]; then
  if [[ "$cluster" == kind ]]; then
    kind load docker-image "$image" --name "$KIND_CLUSTER_NAME"
  else
    minikube -p "$MINIKUBE_PROFILE" image load "$image"
  fi
else
  # podman names local images localhost/NAME; the cluster resolves lt-ssl:cpu as
  # docker.io/library/lt-ssl:cpu, so save it under that name.
  archive="$(mktemp "${TMPDIR:-/tmp}/lt-ssl-image.XXXXXX.tar")"
  trap 'rm -f "$archive"' EXIT
  ctr podman tag "$image" "docker.io/library/$image"
  ctr podman save --format docker-archive -o "$archive" "docker.io/library/$image"
  if [[ "$cluster" == kind ]]; then
    kind load image-archive "$archive" --name "$KIND_CLUSTER_NAME"
  else
    minikube -p "$MINIKUBE_PROFILE" image load "$archive"
  fi
fi

# --- lt-ssl manifests ------------------------------------------------------------------------
log "applying k8s/overlays/$overlay"
# Jobs are immutable: drop finished ones so a changed overlay (e.g. cpu -> gpu) applies cleanly.
"${kc[@]}" -n lt-ssl delete job minio-create-bucket gpu-check --ignore-not-found >/dev/null 2>&1 || true
"${kc[@]}" apply -k "$LT_SSL_ROOT/k8s/overlays/$overlay"
for deployment in minio pushgateway prometheus; do
  "${kc[@]}" -n lt-ssl rollout status "deployment/$deployment" --timeout=300s
done
"${kc[@]}" -n lt-ssl wait --for=condition=complete job/minio-create-bucket --timeout=300s
if [[ "$gpu" == 1 ]]; then
  "${kc[@]}" -n lt-ssl wait --for=condition=complete job/gpu-check --timeout=600s
  "${kc[@]}" -n lt-ssl logs job/gpu-check
fi

# --- datasets --------------------------------------------------------------------------------
KUBE_CONTEXT="$context" "$LT_SSL_ROOT/infra/seed-data.sh" ${CIFAR_DIR:+"$CIFAR_DIR"}

log "ready: make submit   (or: argo submit --watch -n lt-ssl workflows/cluster_distill.yaml -p config=/app/configs/quickstart.yaml)"
