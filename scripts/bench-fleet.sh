#!/usr/bin/env bash
# 3 worker replicas on this machine, each acting as its own host (own data_dir: git mirrors and
# cache mounts; own podman storage: layer cache), sharing one PostgreSQL store, the registry and
# the broker. Runs the same 200 mixed requests (cold = first build of a repository, warm = one
# file changed, cached = identical re-request) across several repositories twice:
#   shared   -- every replica consumes one build queue (amqp.affinity_fallback_ms = 0);
#   affinity -- a request goes to the replica its repository hashes to, and to any replica if
#               that one has not taken it within amqp.affinity_fallback_ms (BENCH_FALLBACK_MS).
# Prints throughput, p99 pickup latency (publish -> build.started), the warm-hit ratio and the
# mean build time of each mode.
#   BENCH_REPOS=9 BENCH_WARM=4 BENCH_REQUESTS=200 scripts/bench-fleet.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
repos=${BENCH_REPOS:-9} warm=${BENCH_WARM:-4} requests=${BENCH_REQUESTS:-200}
replicas=3 in_flight=${BENCH_IN_FLIGHT:-9} profile=${BENCH_PROFILE:-release}
fallback_ms=${BENCH_FALLBACK_MS:-2000}
dir=$here/.run/bench-fleet
# A free port unless one is given: fixed ones collide with other benches on a shared machine.
port=${BENCH_GIT_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log() { printf '[bench-fleet] %s\n' "$*" >&2; }

# Started unless they answer already (services.sh asks the broker's CLI, which can be slow).
curl -sf -m 5 -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null &&
  curl -sf -m 5 http://127.0.0.1:5000/v2/ >/dev/null &&
  psql -qtAc 'SELECT 1' "postgres://image_builder:image_builder@127.0.0.1:5432/image_builder" >/dev/null ||
  scripts/services.sh up >/dev/null 2>&1
  scripts/services.sh sweep 2>/dev/null || true
scripts/toolchain.sh
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
# The local registry speaks plain HTTP: the built-in local overlay, chosen explicitly.
export IMAGE_BUILDER_ENV=local
if [ "$profile" = release ]; then cargo build --release --quiet --bins; else cargo build --quiet --bins; fi
bin=$here/target/$profile

rm -rf "$dir" && mkdir -p "$dir/git" "$dir/src"
stamp=$(date +%s)
export IMAGE_BUILDER__LOG__LEVEL=info IMAGE_BUILDER__AMQP__PREFETCH=2
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid

# Repositories: an expensive dependency step before the source copy, and a step reading the
# source after it (so a changed source file is a real rebuild from the COPY on, not an edit of
# the final layers). Commit 0, then `warm` commits that each change one source file.
declare -A commits
for r in $(seq 1 "$repos"); do
  src=$dir/src/r$r && mkdir -p "$src/src" && cd "$src"
  cat >Dockerfile <<'DOCKERFILE'
FROM localhost/busybox:latest
COPY deps.txt /deps.txt
RUN i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sha256sum /deps.txt > /deps.sum
COPY src/ /app/src/
RUN cat /app/src/* | wc -c > /app/size
DOCKERFILE
  echo "deps of r$r $stamp" >deps.txt && echo "main 0" >src/main.txt
  git init -q -b main . && git add -A && git commit -qm "commit 0"
  commits[$r,0]=$(git rev-parse HEAD)
  for c in $(seq 1 "$warm"); do
    echo "main $c" >src/main.txt && git commit -qam "commit $c"
    commits[$r,$c]=$(git rev-parse HEAD)
  done
  git clone -q --bare . "$dir/git/r$r.git"
done
cd "$here"
git daemon --reuseaddr --export-all --base-path="$dir/git" --listen=127.0.0.1 --port="$port" \
  --detach --pid-file="$dir/git-daemon.pid"
timeout 20 git ls-remote -q "git://127.0.0.1:$port/r1.git" >/dev/null || { log "git daemon on port $port does not answer"; exit 1; }

# The plan, in rounds: round c builds commit c of every repository (round 0 cold, later rounds
# warm), each repository's build followed (from round 2) by identical re-requests of its commit
# two rounds back; the rest of the cached re-requests close the plan.
plan() { # mode -> JSON lines
  local mode=$1 builds=$((repos * (warm + 1))) n=0 per_round
  per_round=$(( (requests - builds) / (repos * warm) ))
  line() { printf '{"connector":"git","repo":"git://127.0.0.1:%s/r%s.git","ref":"%s","user_id":"bench","image":"fleet-%s-%s-r%s"}\n' \
    "$port" "$1" "${commits[$1,$2]}" "$stamp" "$mode" "$1"; n=$((n + 1)); }
  for c in $(seq 0 "$warm") $((warm + 1)); do
    for r in $(seq 1 "$repos"); do
      if [ "$c" -le "$warm" ]; then line "$r" "$c"; fi
      # Two rounds back, never one that may still be building: that would be a second build.
      if [ "$c" -ge 2 ]; then for _ in $(seq 1 "$per_round"); do line "$r" $((c - 2)); done; fi
    done
  done
  while [ $n -lt "$requests" ]; do line $(( n % repos + 1 )) "$warm"; done
}

# Every replica its own podman storage, seeded with the base image only.
podman save -q -o "$dir/busybox.tar" localhost/busybox:latest
declare -a workers=()
stop_workers() { # SIGTERM; SIGKILL what still runs 15 s later (nothing is in flight by then)
  local deadline=$((SECONDS + 15))
  for pid in "${workers[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${workers[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  workers=()
}
trap 'stop_workers; kill $(cat "$dir/git-daemon.pid") 2>/dev/null' EXIT
trap 'exit 1' INT TERM

database() { # a fresh PostgreSQL database shared by one mode's replicas; prints its URL
  local name=ib_fleet_${stamp}_$1
  psql -q "postgres://image_builder:image_builder@127.0.0.1:5432/image_builder" -c "CREATE DATABASE $name" >/dev/null
  echo "postgres://image_builder:image_builder@127.0.0.1:5432/$name"
}

run_mode() { # mode -> one JSON line of figures
  local mode=$1 store
  store=$(database "$mode")
  export IMAGE_BUILDER__AMQP__PREFIX=ib-fleet-$stamp-$mode IMAGE_BUILDER__STORE__URL=$store
  # The same deliveries held per replica in both modes (4): affinity takes `prefetch` from its
  # own queue beyond the shared queue's prefetch + lookahead.
  export IMAGE_BUILDER__AMQP__AFFINITY_FALLBACK_MS=0 IMAGE_BUILDER__AMQP__LOOKAHEAD=$IMAGE_BUILDER__AMQP__PREFETCH
  if [ "$mode" = affinity ]; then
    IMAGE_BUILDER__AMQP__AFFINITY_FALLBACK_MS=$fallback_ms IMAGE_BUILDER__AMQP__LOOKAHEAD=0
  fi
  for i in $(seq 1 $replicas); do
    local home=$dir/$mode/replica$i
    mkdir -p "$home/storage" "$home/run"
    printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' \
      "$home/storage" "$home/run" >"$home/storage.conf"
    CONTAINERS_STORAGE_CONF=$home/storage.conf podman load -q -i "$dir/busybox.tar" >/dev/null
    CONTAINERS_STORAGE_CONF=$home/storage.conf IMAGE_BUILDER__AMQP__REPLICA=replica$i \
      IMAGE_BUILDER__DATA_DIR=$home/data "$bin/image-builder" worker >"$home/worker.log" 2>&1 &
    workers+=($!)
    local deadline=$((SECONDS + 60))
    until grep -qs consuming "$home/worker.log"; do
      [ $SECONDS -lt $deadline ] || { log "replica $i did not start:"; tail "$home/worker.log" >&2; exit 1; }
      sleep 0.2
    done
  done
  plan "$mode" >"$dir/$mode.plan"
  log "$mode: $(wc -l <"$dir/$mode.plan") requests, $replicas replicas"
  "$bin/ib-fleet-bench" --plan "$dir/$mode.plan" --concurrency "$in_flight"
  stop_workers
}

# Not in $(...): the EXIT trap must see the replicas of a mode that fails.
run_mode shared >"$dir/shared.json"
run_mode affinity >"$dir/affinity.json"
shared=$(cat "$dir/shared.json") affinity=$(cat "$dir/affinity.json")

field() { printf '%s' "$1" | sed -n "s/.*\"$2\":\([0-9.e+-]*\).*/\1/p"; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { printf f, v }'; }
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); podman $(podman --version | awk '{print $3}')"
echo "$replicas replicas (own data_dir and podman storage each, $IMAGE_BUILDER__AMQP__PREFETCH build slots), $repos repositories, $in_flight requests in flight; affinity fallback $fallback_ms ms"
printf '%-10s %9s %9s %7s %7s %10s %10s %9s %10s %10s\n' mode requests "builds" cached "req/s" "pickup p50" "pickup p99" "warm-hit" "mean build" "wall s"
for mode in shared affinity; do
  figures=${!mode}
  printf '%-10s %9s %9s %7s %7s %10s %10s %9s %10s %10s\n' "$mode" "$(field "$figures" n)" \
    "$(field "$figures" builds)" "$(field "$figures" cached)" "$(fmt "$(field "$figures" per_s)" %.2f)" \
    "$(fmt "$(field "$figures" pickup_p50_ms)" %.0f)ms" "$(fmt "$(field "$figures" pickup_p99_ms)" %.0f)ms" \
    "$(fmt "$(field "$figures" warm_hit_ratio)" %.2f)" "$(fmt "$(field "$figures" mean_build_ms)" %.0f)ms" \
    "$(fmt "$(field "$figures" wall_s)" %.0f)"
done
echo "warm-hit = a build (not a cached answer) started on a replica where a build of the same"
echo "repository had already succeeded; mean build = image.updated duration_ms of those builds."
echo "raw: shared $shared"
echo "raw: affinity $affinity"
