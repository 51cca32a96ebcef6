#!/usr/bin/env bash
# Makes the Debian bookworm base image (python3, venv, pip) from Debian packages alone,
# for machines that can reach Debian's archive but no image registry:
#   debootstrap --variant=minbase bookworm DIR && tar -C DIR -c . | podman import - TAG
# Usage: infra/base-image.sh [TAG]   (default: LOCAL_BASE_IMAGE from versions.env)
# Env: FORCE=1 rebuilds an existing image; DEBIAN_MIRROR overrides the archive.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load_versions

tag="${1:-$LOCAL_BASE_IMAGE}"
tool="$(container_tool)"

if [[ "${FORCE:-0}" != 1 ]] && ctr "$tool" image inspect "$tag" >/dev/null 2>&1; then
  log "$tag exists (FORCE=1 rebuilds it)"
  exit 0
fi

[[ "$(id -u)" == 0 ]] || die "debootstrap needs root (run with sudo)"
need debootstrap "apt-get install debootstrap"

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/lt-ssl-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT

log "debootstrap $DEBIAN_SUITE into $rootfs"
# passwd: useradd for the image's non-root user; ca-certificates: pip over https.
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
  "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >&2
# Keep the image small: no apt lists, caches or docs.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log

log "importing as $tag"
tar --numeric-owner -C "$rootfs" -c . | ctr "$tool" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$tag" >/dev/null
log "built $tag"
