#!/usr/bin/env bash
# What the web console's browser test (tests/integration/console.rs) needs, installed when
# missing: Debian's chromium, fonts for readable screenshots, Node.js with npm, and
# playwright-core at the version tests/browser/package-lock.json pins (`npm ci`; no browser is
# downloaded: the test drives /usr/bin/chromium). Run by scripts/test.sh; must run as root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
packages=(chromium fonts-dejavu-core nodejs npm)

log() { printf '[browser-deps] %s\n' "$*" >&2; }

missing=()
for p in "${packages[@]}"; do
  # Node.js may come from elsewhere than Debian (a newer one is fine): only the command counts.
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${missing[*]}; run as root to install them"
    exit 1
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  log "Node.js $(node --version) is too old for playwright-core; 20 or newer is needed"
  exit 1
fi

cd "$here/tests/browser"
# Installed already at the locked version: nothing to do (npm ci would reinstall every time).
locked=$(node -p 'require("./package-lock.json").packages["node_modules/playwright-core"].version')
installed=$(node -p 'try { require("./node_modules/playwright-core/package.json").version } catch { "" }')
if [ "$locked" != "$installed" ]; then
  log "npm ci in tests/browser"
  npm ci --no-audit --no-fund --loglevel=error
fi
