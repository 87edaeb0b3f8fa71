#!/usr/bin/env bash
# Makes sure a Rust toolchain (edition 2024: Rust >= 1.85) with rustfmt and clippy is available.
set -euo pipefail
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "[toolchain] installing Rust with rustup" >&2
  command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy >/dev/null \
    || { echo "[toolchain] could not install Rust; install rustup (https://rustup.rs) and retry" >&2; exit 1; }
  . "$HOME/.cargo/env"
fi
command -v cc >/dev/null || { apt-get update -qq && apt-get install -y -qq build-essential >/dev/null; }
# nixpacks generates Dockerfiles for repositories without one (about 3 min to build, once).
if ! command -v nixpacks >/dev/null 2>&1; then
  echo "[toolchain] installing nixpacks (cargo install, once)" >&2
  cargo install nixpacks --locked --quiet
fi
