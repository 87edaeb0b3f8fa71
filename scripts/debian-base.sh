#!/usr/bin/env bash
# A Debian bookworm base image made here with debootstrap (no registry can be pulled from on these
# machines), imported once into podman and reused: prints its name. Used by service-image.sh and
# bench.sh.   scripts/debian-base.sh [name]
set -euo pipefail
base=${1:-localhost/image-builder-base/debian:bookworm}
if ! podman image exists "$base"; then
  command -v debootstrap >/dev/null || apt-get install -y -qq -o DPkg::Lock::Timeout=600 debootstrap >/dev/null
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "[debian-base] debootstrap bookworm (minbase) -> $base" >&2
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  tar -C "$root" -c . | podman import - "$base" >/dev/null
fi
echo "$base"
