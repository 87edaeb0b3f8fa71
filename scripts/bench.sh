#!/usr/bin/env bash
# Worker vs the raw commands a careful operator would run (git clone --depth 1 && podman build &&
# podman push), on the same repository, same machine, alternating. Prints a table of medians.
#   BENCH_RUNS=5 scripts/bench.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
runs=${BENCH_RUNS:-5}
dir=$here/.run/bench
port=${BENCH_GIT_PORT:-9419}
log() { printf '[bench] %s\n' "$*" >&2; }

scripts/services.sh up >/dev/null 2>&1
scripts/toolchain.sh
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
# The local registry speaks plain HTTP: the built-in local overlay, chosen explicitly.
export IMAGE_BUILDER_ENV=local
cargo build --release --quiet --bins
bin=$here/target/release

rm -rf "$dir" && mkdir -p "$dir/git" "$dir/src/src"
export IMAGE_BUILDER__AMQP__PREFIX=bench-$(date +%s) IMAGE_BUILDER__DATA_DIR=$dir/data
# 4 build slots; cached answers take deliveries beyond them (amqp.lookahead) and need no slot.
slots=4 lookahead=${BENCH_LOOKAHEAD:-12}
export IMAGE_BUILDER__AMQP__PREFETCH=$slots IMAGE_BUILDER__AMQP__LOOKAHEAD=$lookahead
export IMAGE_BUILDER__LOG__LEVEL=warn

# The repository: a dependency step (expensive RUN) before the source copy, as real apps do.
cd "$dir/src"
cat >Dockerfile <<'DOCKERFILE'
FROM localhost/busybox:latest
COPY deps.txt /deps.txt
RUN i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; sha256sum /deps.txt > /deps.sum
COPY src/ /app/src/
DOCKERFILE
cat >bench.Dockerfile <<'DOCKERFILE'
FROM localhost/busybox:latest
ARG N
RUN i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; echo "$N" > /n.txt
DOCKERFILE
# A hostile build's output: 300 MB without a newline, then 300 MB of short lines.
cat >flood.Dockerfile <<'DOCKERFILE'
FROM localhost/busybox:latest
ARG N
RUN head -c 300000000 /dev/zero; yes "flood line $N" | head -c 300000000; echo
DOCKERFILE
echo "deps 0" >deps.txt && echo "main 0" >src/main.txt
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
git init -q -b main . && git add -A && git commit -qm init
git clone -q --bare . "$dir/git/bench.git"
git remote add origin "$dir/git/bench.git"
commit() { echo "$2" >"$1"; git commit -qam "$2"; git push -q origin main; }
cd "$here"
pkill -f "git-daemon.*--port=$port" 2>/dev/null || true
git daemon --reuseaddr --export-all --base-path="$dir/git" --listen=127.0.0.1 --port="$port" \
  --detach --pid-file="$dir/git-daemon.pid"
repo=git://127.0.0.1:$port/bench.git

"$bin/image-builder" worker 2>"$dir/worker.log" &
worker=$!
trap 'kill $worker 2>/dev/null; kill $(cat "$dir/git-daemon.pid") 2>/dev/null' EXIT
sleep 2
rss() { awk "/^$1:/ {print \$2}" "/proc/$worker/status"; }
idle_rss=$(rss VmRSS)

printf '{"connector":"git","repo":"%s","user_id":"bench","image":"worker"}\n' "$repo" >"$dir/req.json"
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
raw() { # one raw clone+build+push, prints ms
  local t0; t0=$(now_ms)
  rm -rf "$dir/clone"
  git clone -q --depth 1 "$repo" "$dir/clone"
  # A careful operator isolates strangers' builds too (the chroot cost is measured below).
  podman build -q --layers --isolation oci --runtime runc --network private -t "127.0.0.1:5000/bench/raw:$1" "$dir/clone" >/dev/null
  podman push -q --tls-verify=false "127.0.0.1:5000/bench/raw:$1"
  echo $(( $(now_ms) - t0 ))
}
worker_ms() { "$bin/ib-bench" --body "$dir/req.json" --n 1 | sed -n 's/.*"p50_ms":\([0-9.]*\).*/\1/p'; }

declare -a raw_cold wrk_cold raw_warm wrk_warm raw_same wrk_same
for i in $(seq 1 "$runs"); do
  log "run $i/$runs"
  (cd "$dir/src" && commit deps.txt "deps raw $i-$RANDOM"); raw_cold+=("$(raw c$i)")
  (cd "$dir/src" && commit deps.txt "deps wrk $i-$RANDOM"); wrk_cold+=("$(worker_ms)")
  (cd "$dir/src" && commit src/main.txt "main raw $i"); raw_warm+=("$(raw w$i)")
  (cd "$dir/src" && commit src/main.txt "main wrk $i"); wrk_warm+=("$(worker_ms)")
  raw_same+=("$(raw w$i)"); wrk_same+=("$(worker_ms)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.0f", m}'; }
row() { # name raw-array worker-array
  local r w; r=$(median "${@:2:$1}"); shift $(( $1 + 1 )); w=$(median "$@")
  echo "$r $w"
}
read -r rc wc < <(row "$runs" "${raw_cold[@]}" "${wrk_cold[@]}")
read -r rw ww < <(row "$runs" "${raw_warm[@]}" "${wrk_warm[@]}")
read -r rs ws < <(row "$runs" "${raw_same[@]}" "${wrk_same[@]}")

log "cached re-requests: latency and throughput"
latency=$("$bin/ib-bench" --body "$dir/req.json" --n 100 --concurrency 1)
throughput=$("$bin/ib-bench" --body "$dir/req.json" --n 1000 --concurrency 64)

log "4 concurrent cold builds"
echo 5 >"/proc/$worker/clear_refs" # resets VmHWM to the current RSS
printf '{"connector":"git","repo":"%s","user_id":"bench","image":"conc","dockerfile":"bench.Dockerfile","build_args":{"N":"{id}"}}\n' \
  "$repo" >"$dir/conc.json"
concurrent=$("$bin/ib-bench" --body "$dir/conc.json" --n 4 --concurrency 4)
peak_rss=$(rss VmHWM)

log "a build flooding its output"
echo 5 >"/proc/$worker/clear_refs"
printf '{"connector":"git","repo":"%s","user_id":"bench","image":"flood","dockerfile":"flood.Dockerfile","build_args":{"N":"{id}"}}\n' \
  "$repo" >"$dir/flood.json"
"$bin/ib-bench" --body "$dir/flood.json" --n 1 >/dev/null
flood_rss=$(rss VmHWM)

# The sandbox's cost: the same cold build on a second worker whose builds run in chroot with
# the host's network (what builds ran in before the sandbox), alternating with the first.
log "cold builds: sandbox (oci, runc, cgroup) vs chroot"
chroot_prefix=$IMAGE_BUILDER__AMQP__PREFIX-chroot
IMAGE_BUILDER__AMQP__PREFIX=$chroot_prefix IMAGE_BUILDER__DATA_DIR=$dir/data-chroot \
  IMAGE_BUILDER__BUILD__ISOLATION=chroot IMAGE_BUILDER__BUILD__NETWORK=host \
  "$bin/image-builder" worker 2>"$dir/worker-chroot.log" &
chroot_worker=$!
trap 'kill $worker $chroot_worker 2>/dev/null; kill $(cat "$dir/git-daemon.pid") 2>/dev/null' EXIT
sleep 2
declare -a box_cold chr_cold
for i in $(seq 1 "$runs"); do
  (cd "$dir/src" && commit deps.txt "deps box $i-$RANDOM"); box_cold+=("$(worker_ms)")
  (cd "$dir/src" && commit deps.txt "deps chroot $i-$RANDOM")
  chr_cold+=("$(IMAGE_BUILDER__AMQP__PREFIX=$chroot_prefix worker_ms)")
done
read -r cc bc < <(row "$runs" "${chr_cold[@]}" "${box_cold[@]}")

field() { printf '%s' "$1" | sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p"; }
ratio() { awk -v w="$1" -v r="$2" 'BEGIN { printf "%.2f", w / r }'; }
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); podman $(podman --version | awk '{print $3}'); runs: $runs (medians)"
printf '%-36s %10s %10s %8s\n' scenario "raw ms" "worker ms" ratio
printf '%-36s %10s %10s %8s\n' "cold build (deps changed)" "$rc" "$wc" "$(ratio "$wc" "$rc")"
printf '%-36s %10s %10s %8s\n' "warm rebuild (one file changed)" "$rw" "$ww" "$(ratio "$ww" "$rw")"
printf '%-36s %10s %10s %8s\n' "identical re-request (cached)" "$rs" "$ws" "$(ratio "$ws" "$rs")"
echo "cached publish->image.updated: p50 $(field "$latency" p50_ms) ms, p90 $(field "$latency" p90_ms) ms (100 sequential)"
echo "cached re-requests: $(field "$throughput" per_s) /s on one replica (1000 requests, 64 in flight, $slots build slots, lookahead $lookahead)"
echo "4 concurrent cold builds: $(field "$concurrent" wall_s) s wall"
echo "worker RSS: idle $((idle_rss / 1024)) MB, peak during 4 concurrent builds $((peak_rss / 1024)) MB (podman excluded)"
echo "worker RSS peak while a build prints 600 MB (half of it one line): $((flood_rss / 1024)) MB (target <= 100)"
printf '%-36s %10s %10s %8s\n' "cold build: chroot vs sandbox" "$cc" "$bc" "$(ratio "$bc" "$cc")"
echo "(the sandbox's cost: oci isolation with runc, own network, build cgroup; target ratio <= 1.05)"
