#!/usr/bin/env bash
# Uploads the datasets you have into the cluster's MinIO at the shared dataset prefixes:
#   DIR/cifar-10-batches-py/ -> s3://lt-ssl/datasets/cifar-10-batches-py/
#   DIR/cifar-100-python/    -> s3://lt-ssl/datasets/cifar-100-python/
#   $FASHION_MNIST_DIR       -> s3://lt-ssl/datasets/fashion-mnist/   (the regression cron's Fashion-MNIST cell)
# (DIR as extracted from the official python-version tarballs; FASHION_MNIST_DIR defaults to where Debian's
# dataset-fashion-mnist package puts the IDX files, and is skipped when absent.) Nothing is downloaded: the
# quickstart needs no dataset (scikit-learn's bundled digits), so neither means nothing to do.
# Usage: infra/seed-data.sh [DIR]
# Env: KUBE_CONTEXT (default: current context), SEED_UPLOADER=aws|python. S3_ENDPOINT=http://HOST:PORT skips the
#      port-forward and uses AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the environment.
#      FASHION_MNIST_DIR (default /usr/share/datasets/fashion-mnist).
# Idempotent: objects already present with the same size are skipped.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bucket=lt-ssl
src="${1:-}"
fashion="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
# Folders to upload and their names under datasets/, pairwise.
uploads=()
if [[ -n "$src" ]]; then
  [[ -d "$src" ]] || die "$src is not a folder"
  for name in cifar-10-batches-py cifar-100-python; do
    [[ -d "$src/$name" ]] && uploads+=("$src/$name" "$name")
  done
  ((${#uploads[@]})) || die "$src holds neither cifar-10-batches-py/ nor cifar-100-python/"
fi
[[ -d "$fashion" ]] && uploads+=("$fashion" fashion-mnist)
if ! ((${#uploads[@]})); then
  log "no dataset folder given and no $fashion: nothing to seed (the quickstart uses scikit-learn's bundled digits)"
  exit 0
fi

# An uploader: the aws CLI, else Python with boto3 (the repo's .venv has it).
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  for candidate in "$LT_SSL_ROOT/.venv/bin/python" python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import boto3' 2>/dev/null; then
      python="$candidate"
      break
    fi
  done
fi
# SEED_UPLOADER=aws|python forces one; `aws --version` also weeds out version-manager shims.
uploader="${SEED_UPLOADER:-}"
if [[ -z "$uploader" ]]; then
  if aws --version >/dev/null 2>&1; then
    uploader=aws
  elif [[ -n "$python" ]]; then
    uploader=python
  else
    die "need the aws CLI or python3 with boto3 (pip install boto3) to upload"
  fi
fi

if [[ -n "${S3_ENDPOINT:-}" ]]; then
  endpoint="$S3_ENDPOINT"
else
  need kubectl "https://kubernetes.io/docs/tasks/tools/"
  kc=(kubectl -n lt-ssl)
  [[ -n "${KUBE_CONTEXT:-}" ]] && kc+=(--context "$KUBE_CONTEXT")
  secret() {
    "${kc[@]}" get secret lt-ssl-s3 -o "jsonpath={.data.$1}" | base64 -d
  }
  AWS_ACCESS_KEY_ID="$(secret AWS_ACCESS_KEY_ID)" || die "cannot read Secret lt-ssl-s3 in namespace lt-ssl"
  AWS_SECRET_ACCESS_KEY="$(secret AWS_SECRET_ACCESS_KEY)"
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  port="${SEED_PORT:-19000}"
  pf_log="$(mktemp)"
  "${kc[@]}" port-forward svc/minio "$port:9000" >"$pf_log" 2>&1 &
  pf_pid=$!
  trap 'kill "$pf_pid" 2>/dev/null || true; rm -f "$pf_log"' EXIT
  for _ in $(seq 60); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$pf_pid" 2>/dev/null || die "port-forward to svc/minio failed: $(cat "$pf_log")"
    sleep 0.5
  done
  endpoint="http://127.0.0.1:$port"
fi
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

for ((i = 0; i < ${#uploads[@]}; i += 2)); do
  dir="${uploads[i]}" name="${uploads[i + 1]}"
  dest="s3://$bucket/datasets/$name/"
  log "uploading $dir -> $dest"
  if [[ "$uploader" == aws ]]; then
    aws --endpoint-url "$endpoint" s3 sync --only-show-errors "$dir" "$dest"
  else
    "$python" - "$endpoint" "$bucket" "$dir" "datasets/$name/" <<'PY'
import os, sys
import boto3
endpoint, bucket, root, prefix = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint)
have = {}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    have.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
sent = 0
for dirpath, _, files in os.walk(root):
    for f in sorted(files):
        path = os.path.join(dirpath, f)
        key = prefix + os.path.relpath(path, root).replace(os.sep, "/")
        if have.get(key) != os.path.getsize(path):
            s3.upload_file(path, bucket, key)
            sent += 1
print(f"{sent} uploaded, {len(have)} already there under s3://{bucket}/{prefix}")
PY
  fi
done
