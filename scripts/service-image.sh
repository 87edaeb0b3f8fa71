#!/usr/bin/env bash
# Builds the service image from Containerfile with podman, as `make test` checks it: the runtime
# stage over a Debian base made here with debootstrap (no registry can be pulled from on these
# machines), with a binary built here (`--build-arg BINARY=prebuilt`). Then, since `podman run`
# fails on this kernel, checks the image's contents from its mounted root: the binary runs with
# the image's own libraries, and podman, buildah, runc, nft and ip are there.
# Usage: scripts/service-image.sh [path/to/image-builder] [tag]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
binary=${1:-$here/target/debug/image-builder}
tag=${2:-localhost/image-builder:test}
base=localhost/image-builder-base/debian:bookworm
log() { echo "[service-image] $*" >&2; }

"$here/scripts/debian-base.sh" "$base" >/dev/null

mkdir -p "$here/dist"
# Debug info is most of a debug binary's size; the image does not need it.
objcopy --strip-debug "$binary" "$here/dist/image-builder"
log "podman build --target runtime -> $tag"
podman build --quiet --isolation chroot --target runtime \
  --build-arg BINARY=prebuilt --build-arg RUNTIME_IMAGE="$base" \
  -t "$tag" -f "$here/Containerfile" "$here" >/dev/null

mnt=$(podman image mount "$tag")
trap 'podman image unmount "$tag" >/dev/null || true' EXIT
for tool in /usr/local/bin/image-builder /usr/bin/podman /usr/bin/buildah /usr/sbin/runc \
  /usr/sbin/nft /usr/sbin/ip /etc/ssl/certs/ca-certificates.crt; do
  [ -e "$mnt$tool" ] || { log "missing in the image: $tool"; exit 1; }
done
# The image's binary, with the image's loader and libraries.
chroot "$mnt" /usr/local/bin/image-builder --version
entry=$(podman image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$tag")
log "entrypoint and command: $entry"
[ "$entry" = '["/usr/local/bin/image-builder"] ["worker"]' ]
