#!/usr/bin/env bash
# Pulls an artifact with ORAS, the ecosystem's client for OCI artifacts (oras-py, the ORAS
# project's Python SDK, from PyPI into a venv of its own; the Go CLI is not in any package
# registry these machines reach). Proves an artifact image-builder stored is an ORAS artifact.
# Usage: scripts/oras-pull.sh <registry>/<repository>@<digest> <outdir>   (plain-HTTP registry)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${IMAGE_BUILDER_STATE_DIR:-$here/.run}/oras-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import oras.client' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'oras==0.2.25'
fi
"$venv/bin/python" - "$1" "$2" <<'PY'
import sys
import oras.client

reference, outdir = sys.argv[1], sys.argv[2]
client = oras.client.OrasClient(hostname=reference.split("/", 1)[0], insecure=True)
for path in client.pull(target=reference, outdir=outdir):
    print(path)
PY
