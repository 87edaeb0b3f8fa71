#!/usr/bin/env bash
# The whole test suite, as CI runs it: services up, formatting, lints, unit and integration tests
# against the real RabbitMQ, registry, podman and a local git server.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/services.sh up
# What an earlier, failed or killed run left on the broker (no test runs yet).
scripts/services.sh sweep
# The cluster test starts a 3-node RabbitMQ cluster beside the single node: not left running.
trap 'scripts/services.sh cluster down >/dev/null 2>&1 || true' EXIT
# Debian's chromium and playwright-core for the web console's browser test.
scripts/browser-deps.sh
scripts/toolchain.sh
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
# A clean build and its tests need about 3 GB under target/; rustc fails with a bare exit status 101
# when the disk fills, so say how much there is before it starts.
free_kb=$(df -Pk "$here" | awk 'NR==2 {print $4}')
echo "test.sh: $((free_kb / 1024 / 1024)) GB free on the disk holding $here"
if [ "$free_kb" -lt $((4 * 1024 * 1024)) ]; then
  echo "test.sh: warning: under 4 GB free; the build may fail for want of disk (README, Tests)" >&2
fi
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# The tests set IMAGE_BUILDER_ENV=local on every worker and API they start (tests/integration/
# support), each explicitly; secure_defaults.rs starts the binary with none at all.
cargo test --all-targets "$@"
