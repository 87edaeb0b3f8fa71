#!/usr/bin/env bash
# The whole test suite, as CI runs it: services up, formatting, lints, unit and integration tests
# against the real RabbitMQ, registry, podman and a local git server.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/services.sh up
scripts/toolchain.sh
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets "$@"
