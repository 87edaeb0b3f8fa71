#!/usr/bin/env bash
# Latency of the records API with many stored builds: seeds N builds (default 10,000) into a fresh
# SQLite file and a fresh PostgreSQL database, serves each with `image-builder serve`, and loads
# GET /v1/builds (and two variants) with wrk. Prints p50/p99 and requests/s per store and route.
#   BENCH_BUILDS=10000 BENCH_SECS=10 scripts/bench-api.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
n=${BENCH_BUILDS:-10000}
secs=${BENCH_SECS:-10}
dir=$here/.run/bench-api
port=${BENCH_API_PORT:-18181}
key=bench-key-$RANDOM$RANDOM
log() { printf '[bench-api] %s\n' "$*" >&2; }

scripts/services.sh up >/dev/null 2>&1
command -v wrk >/dev/null || { log "installing wrk"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
scripts/toolchain.sh
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
# The local registry speaks plain HTTP: the built-in local overlay, chosen explicitly.
export IMAGE_BUILDER_ENV=local
cargo build --release --quiet --bins
bin=$here/target/release
hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
export IMAGE_BUILDER__API__KEY_HASHES=$hash IMAGE_BUILDER__API__LISTEN=127.0.0.1:$port
export IMAGE_BUILDER__LOG__LEVEL=warn IMAGE_BUILDER__AMQP__PREFIX=bench-api

pg_db=ib_bench_$(date +%s)
psql -q postgres://image_builder:image_builder@127.0.0.1:5432/image_builder -c "CREATE DATABASE $pg_db"
declare -A stores=(
  [sqlite]=""
  [postgres]="postgres://image_builder:image_builder@127.0.0.1:5432/$pg_db"
)

# wrk's --latency table: "50%  1.23ms" -> milliseconds.
ms() { awk -v q="$1" '$1 == q { v=$2; if (v ~ /us$/) { sub(/us/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms/,"",v) } else if (v ~ /s$/) { sub(/s/,"",v); v*=1000 } printf "%.2f", v }'; }

printf '\n| store | route | p50 ms | p99 ms | requests/s |\n|---|---|---|---|---|\n' >"$dir.table" 2>/dev/null || { mkdir -p "$(dirname "$dir")"; printf '\n| store | route | p50 ms | p99 ms | requests/s |\n|---|---|---|---|---|\n' >"$dir.table"; }
for store in sqlite postgres; do
  rm -rf "$dir" && mkdir -p "$dir"
  export IMAGE_BUILDER__DATA_DIR=$dir IMAGE_BUILDER__STORE__URL=${stores[$store]}
  log "$store: seeding $n builds"
  t0=$(date +%s)
  "$bin/ib-seed" --n "$n" >/dev/null
  log "$store: seeded in $(( $(date +%s) - t0 )) s"
  "$bin/image-builder" serve 2>"$dir/serve.log" &
  server=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  some_id=$(curl -s -H "Authorization: Bearer $key" "http://127.0.0.1:$port/v1/builds?limit=1" | sed -n 's/.*"id":"\(seed-[^"]*\)".*/\1/p' | head -1)
  for route in "/v1/builds" "/v1/builds?repo=acme/service-7&state=succeeded&limit=20" "/v1/builds/$some_id"; do
    out=$(wrk -t2 -c16 -d"${secs}s" --latency -H "Authorization: Bearer $key" "http://127.0.0.1:$port$route")
    p50=$(printf '%s\n' "$out" | ms 50%); p99=$(printf '%s\n' "$out" | ms 99%)
    rps=$(printf '%s\n' "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
    errors=$(printf '%s\n' "$out" | awk '/Non-2xx/ {print $NF}')
    [ -n "$errors" ] && log "$store $route: $errors non-2xx answers"
    printf '| %s | `GET %s` | %s | %s | %s |\n' "$store" "${route/$some_id/{id\}}" "$p50" "$p99" "$rps" >>"$dir.table"
  done
  kill "$server"; wait "$server" 2>/dev/null || true
done
psql -q postgres://image_builder:image_builder@127.0.0.1:5432/image_builder -c "DROP DATABASE $pg_db"
echo "$n stored builds, wrk -t2 -c16 -d${secs}s, $(nproc) cores:"
cat "$dir.table"
