#!/usr/bin/env bash
# A base image moves: how long until every image built on it is rebuilt? N dependents (20) are
# built on a base in a private registry whose push notifications go to the API; the base is
# pushed again with new content and the time from that push to the last dependent's recorded
# finish (its image.updated) is printed, with the first one's.
#   BENCH_DEPENDENTS=20 BENCH_PROFILE=release scripts/bench-bases.sh
# BENCH_POLL_MS=500 measures polling instead (notifications off).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
n=${BENCH_DEPENDENTS:-20}
poll_ms=${BENCH_POLL_MS:-0}
dir=$here/.run/bench-bases
log() { printf '[bench-bases] %s\n' "$*" >&2; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

scripts/services.sh up >/dev/null 2>&1
scripts/services.sh sweep 2>/dev/null || true # topology earlier runs left (in-use prefixes stay)
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
export IMAGE_BUILDER_ENV=local
if [ "${BENCH_PROFILE:-release}" = release ]; then
  cargo build --release --quiet --bin image-builder; bin=$here/target/release
else
  cargo build --quiet --bin image-builder; bin=$here/target/debug
fi

rm -rf "$dir" && mkdir -p "$dir/git" "$dir/src" "$dir/base" "$dir/registry"
reg_port=$(free_port) api_port=$(free_port) git_port=$(free_port)
key=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
hash=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
registry=127.0.0.1:$reg_port
base=$registry/bench/base:v1
local_base=localhost/ib-bench-bases-$reg_port:v
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$dir/git-daemon.pid" ] && kill "$(cat "$dir/git-daemon.pid")" 2>/dev/null || true
  podman untag "${local_base}1" "${local_base}1" 2>/dev/null || true
  podman untag "${local_base}2" "${local_base}2" 2>/dev/null || true
  podman untag "$base" "$base" 2>/dev/null || true
}
trap cleanup EXIT

# The service first: the registry's first notifications then find it listening.
IMAGE_BUILDER__AMQP__PREFIX=bench-bases-$(date +%s) IMAGE_BUILDER__DATA_DIR=$dir/data \
  IMAGE_BUILDER__API__LISTEN=127.0.0.1:$api_port IMAGE_BUILDER__API__KEY_HASHES=$hash \
  IMAGE_BUILDER__REGISTRY__HOST=$registry IMAGE_BUILDER__BASES__NOTIFY_KEY=$key \
  IMAGE_BUILDER__BASES__POLL_INTERVAL_MS=$poll_ms IMAGE_BUILDER__LOG__LEVEL=${BENCH_LOG_LEVEL:-warn} \
  "$bin/image-builder" run 2>"$dir/image-builder.log" &
pids+=($!)
api=http://127.0.0.1:$api_port
until curl -fsS "$api/readyz" >/dev/null 2>&1; do sleep 0.2; done
# The registry, notifying the API of every push (unless polling is measured).
notifications=""
if [ "$poll_ms" = 0 ]; then
  notifications="notifications:
  endpoints:
    - name: image-builder
      url: http://127.0.0.1:$api_port/v1/registry-events
      headers:
        Authorization: [Bearer $key]
      timeout: 5s
      threshold: 5
      backoff: 200ms"
fi
cat >"$dir/registry/config.yml" <<YAML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/registry/data
http:
  addr: $registry
$notifications
YAML
docker-registry serve "$dir/registry/config.yml" >"$dir/registry.log" 2>&1 &
pids+=($!)
until curl -fsS "http://$registry/v2/" >/dev/null 2>&1; do sleep 0.1; done

push_base() { # version -> pushes it as $base
  printf 'FROM localhost/busybox:latest\nCOPY base-version /base-version\n' >"$dir/base/Containerfile"
  echo "base $1" >"$dir/base/base-version"
  podman build -q -t "$local_base$1" "$dir/base" >/dev/null
  podman push -q --tls-verify=false "$local_base$1" "docker://$base"
}
push_base 1

# One repository, one Dockerfile (so one configuration) per dependent, each with a RUN step.
cd "$dir/src"
for i in $(seq 1 "$n"); do
  printf 'FROM %s\nRUN cat /base-version > /seen && echo %s > /dependent\n' "$base" "$i" >"d$i.Dockerfile"
done
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
git init -q -b main . && git add -A && git commit -qm init
git clone -q --bare . "$dir/git/deps.git"
cd "$here"
git daemon --reuseaddr --export-all --base-path="$dir/git" --listen=127.0.0.1 --port="$git_port" \
  --detach --pid-file="$dir/git-daemon.pid"

builds() { # the records of user "bench", newest first
  curl -fsS -H "Authorization: Bearer $key" "$api/v1/builds?user_id=bench&limit=100"
}
wait_for() { # jq filter counting builds, wanted count
  local deadline=$(( $(date +%s) + ${BENCH_TIMEOUT_SECS:-900} ))
  until [ "$(builds | jq "[.builds[] | select($1)] | length")" -ge "$2" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      log "timed out waiting for $2 builds ($1); the registry's notification errors:"
      grep -i 'sink' "$dir/registry.log" | tail -5 >&2 || true
      exit 1
    fi
    if builds | jq -e '[.builds[] | select(.state == "failed")] | length > 0' >/dev/null; then
      log "a build failed:"; builds | jq -c '.builds[] | select(.state == "failed") | {id, error}' >&2
      exit 1
    fi
    sleep 0.2
  done
}

log "building $n dependents on $base"
for i in $(seq 1 "$n"); do
  curl -fsS -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d "{\"connector\":\"git\",\"repo\":\"git://127.0.0.1:$git_port/deps.git\",\"user_id\":\"bench\",\"image\":\"dep$i\",\"dockerfile\":\"d$i.Dockerfile\"}" \
    "$api/v1/builds" >/dev/null
done
wait_for '.state == "succeeded"' "$n"

log "pushing the base again with new content"
push_base 2
pushed_ms=$(now_ms)
wait_for '(.id | contains("-base-")) and .state == "succeeded"' "$n"
# The records' finish times (written with each image.updated), not when this loop noticed.
read -r first last < <(builds | python3 -c '
import datetime, json, sys
rebuilt = [b for b in json.load(sys.stdin)["builds"] if "-base-" in b["id"]]
done = sorted(datetime.datetime.fromisoformat(b["finished_at"].replace("Z", "+00:00")).timestamp() * 1000 for b in rebuilt)
print(int(done[0]), int(done[-1]))')
echo
echo "machine: $(nproc) cores, podman $(podman --version | awk '{print $3}'); $(if [ "$poll_ms" = 0 ]; then echo "registry notifications"; else echo "polling every $poll_ms ms"; fi); one replica, $(grep -m1 -o 'prefetch = [0-9]*' config/default.toml | awk '{print $3}') build slots"
echo "$n dependents rebuilt after a base push: first image.updated $((first - pushed_ms)) ms, last $((last - pushed_ms)) ms after the push"
