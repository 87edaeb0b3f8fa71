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
parts=" ${BENCH_PARTS:-busybox debian mix bases} "
part() { [[ $parts == *" $1 "* ]]; }

scripts/services.sh up >/dev/null 2>&1
scripts/services.sh sweep 2>/dev/null || true # topology earlier runs left (in-use prefixes stay)
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
# Stage timings (pipeline, info) show where a build's time goes.
export IMAGE_BUILDER__LOG__LEVEL=warn,image_builder::pipeline=info,image_builder::engine::podman=info,image_builder::source=info

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

hport=${BENCH_HTTP_PORT:-9420}
python3 scripts/git-http.py "$dir/git" "$hport" &
http_server=$!
"$bin/image-builder" worker 2>"$dir/worker.log" &
worker=$!
trap 'kill $worker $http_server 2>/dev/null; kill $(cat "$dir/git-daemon.pid") 2>/dev/null' EXIT
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

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.0f", m}'; }
row() { # name raw-array worker-array
  local r w; r=$(median "${@:2:$1}"); shift $(( $1 + 1 )); w=$(median "$@")
  echo "$r $w"
}
field() { printf '%s' "$1" | sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p"; }
ratio() { awk -v w="$1" -v r="$2" 'BEGIN { printf "%.2f", w / r }'; }
report=$dir/report.txt
: >"$report"
out() { printf "$@" >>"$report"; }

if part busybox; then
declare -a raw_cold wrk_cold raw_warm wrk_warm raw_same wrk_same
for i in $(seq 1 "$runs"); do
  log "run $i/$runs"
  (cd "$dir/src" && commit deps.txt "deps raw $i-$RANDOM"); raw_cold+=("$(raw c$i)")
  (cd "$dir/src" && commit deps.txt "deps wrk $i-$RANDOM"); wrk_cold+=("$(worker_ms)")
  (cd "$dir/src" && commit src/main.txt "main raw $i"); raw_warm+=("$(raw w$i)")
  (cd "$dir/src" && commit src/main.txt "main wrk $i"); wrk_warm+=("$(worker_ms)")
  raw_same+=("$(raw w$i)"); wrk_same+=("$(worker_ms)")
done
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
trap 'kill $worker $http_server $chroot_worker 2>/dev/null; kill $(cat "$dir/git-daemon.pid") 2>/dev/null' EXIT
sleep 2
declare -a box_cold chr_cold
for i in $(seq 1 "$runs"); do
  (cd "$dir/src" && commit deps.txt "deps box $i-$RANDOM"); box_cold+=("$(worker_ms)")
  (cd "$dir/src" && commit deps.txt "deps chroot $i-$RANDOM")
  chr_cold+=("$(IMAGE_BUILDER__AMQP__PREFIX=$chroot_prefix worker_ms)")
done
read -r cc bc < <(row "$runs" "${chr_cold[@]}" "${box_cold[@]}")

kill $chroot_worker 2>/dev/null || true
{
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
} >>"$report"
fi

# The heavier shape, over smart HTTP. Each side (raw, wrk) has its own repositories and lockfile
# line: raw and worker share the host's podman layer cache, and neither may reuse the other's.
if part debian || part mix; then
  log "debian: base image, repositories"
  podman tag "$(scripts/debian-base.sh)" localhost/debian:bookworm
  export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
  mkdir -p "$dir/deb" && cd "$dir/deb"
  cat >Dockerfile <<'DOCKERFILE'
FROM localhost/debian:bookworm
COPY packages.lock /packages.lock
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    apt-get update -q && grep -v '^#' /packages.lock | xargs apt-get install -y -q --no-install-recommends
COPY src/ /app/src/
DOCKERFILE
  printf '# rev 0\nhello\n' >packages.lock
  # About 2,000 files in 40 directories, then 29 more commits touching a few of them.
  awk 'BEGIN { for (d = 0; d < 40; d++) { system("mkdir -p src/m" d);
    for (f = 0; f < 50; f++) { p = "src/m" d "/f" f ".txt"; for (l = 0; l < 20; l++) print "module " d " file " f " line " l > p; close(p) } } }'
  git init -q -b main . && git add -A && git commit -qm init
  for c in $(seq 1 29); do echo "change $c" >>"src/m$((c % 40))/f$c.txt"; git commit -qam "change $c"; done
  cd "$here"
  # repo SIDE NAME: a working copy $dir/w-NAME of side SIDE's history, served as NAME.git.
  repo() {
    git clone -q "$dir/w-$1" "$dir/w-$2"
    git init -q --bare -b main "$dir/git/$2.git"
    git -C "$dir/w-$2" remote set-url origin "$dir/git/$2.git"
  }
  # change NAME FILE-KIND: one commit (lock: the lockfile's first line; src: one source file), pushed.
  change() {
    local w=$dir/w-$1
    case $2 in
      lock) sed -i "1s/.*/# rev $RANDOM$RANDOM/" "$w/packages.lock" ;;
      src) echo "edit $RANDOM" >>"$w/src/m1/f1.txt" ;;
    esac
    git -C "$w" commit -qam "$2 $RANDOM" && git -C "$w" push -q origin main
  }
  for side in raw wrk; do
    git clone -q "$dir/deb" "$dir/w-$side"
    git init -q --bare -b main "$dir/git/$side.git"
    git -C "$dir/w-$side" remote set-url origin "$dir/git/$side.git"
    printf '# rev 0\n# side %s\nhello\n' "$side" >"$dir/w-$side/packages.lock"
    git -C "$dir/w-$side" commit -qam "side $side" && git -C "$dir/w-$side" push -q origin main
  done
  http=http://127.0.0.1:$hport
  # Its own worker: builds reach Debian's mirror from the sandbox's network unless the sandbox
  # firewall closes the mirror's address (it closes private and reserved ranges; an operator
  # opens an internal mirror with IMAGE_BUILDER_SANDBOX_ALLOW). Then, and said so, the host's.
  mirror=$(getent hosts deb.debian.org | awk '{print $1; exit}')
  deb_network=${BENCH_DEB_NETWORK:-isolated}
  case $mirror in
    10.*|127.*|169.254.*|172.1[6-9].*|172.2[0-9].*|172.3[01].*|192.168.*|192.0.2.*|198.51.100.*|203.0.113.*|100.6[4-9].*|100.[7-9][0-9].*|100.1[01][0-9].*|100.12[0-7].*)
      if [ -z "${BENCH_DEB_NETWORK:-}" ] && ! nft list table inet image_builder_sandbox 2>/dev/null | grep -q "daddr { [^}]*$mirror"; then
        log "deb.debian.org is $mirror, which the sandbox firewall closes: debian builds use build.network = host"
        deb_network=host
      fi ;;
  esac
  deb_prefix=$IMAGE_BUILDER__AMQP__PREFIX-deb
  IMAGE_BUILDER__AMQP__PREFIX=$deb_prefix IMAGE_BUILDER__DATA_DIR=$dir/data-deb \
    IMAGE_BUILDER__BUILD__NETWORK=$deb_network "$bin/image-builder" worker 2>"$dir/worker-deb.log" &
  deb_worker=$!
  trap 'kill $worker $http_server $deb_worker 2>/dev/null; kill $(cat "$dir/git-daemon.pid") 2>/dev/null' EXIT
  sleep 2
  # raw NAME TAG [TMPDIR]: clone+build+push of NAME.git, in ms. buildah keeps cache mounts under
  # TMPDIR: a cold build gets a fresh one, a repository's later builds keep theirs (as the worker does).
  debraw() {
    local t0 tmp=${3:-$dir/tmp-$1}; mkdir -p "$tmp"; t0=$(now_ms)
    rm -rf "$dir/clone"
    git clone -q --depth 1 "$http/$1.git" "$dir/clone"
    TMPDIR=$tmp podman build -q --layers --isolation oci --runtime runc --network private \
      -t "127.0.0.1:5000/bench/$1:$2" "$dir/clone" >/dev/null
    podman push -q --tls-verify=false "127.0.0.1:5000/bench/$1:$2"
    echo $(( $(now_ms) - t0 ))
  }
  request() { printf '{"connector":"git","repo":"%s/%s.git","user_id":"bench","image":"%s"}' "$http" "$1" "$1"; }
  debwrk() { request "$1" >"$dir/deb-req.json"; worker_ms_of "$dir/deb-req.json"; }
  worker_ms_of() { IMAGE_BUILDER__AMQP__PREFIX=$deb_prefix "$bin/ib-bench" --body "$1" --n 1 | sed -n 's/.*"p50_ms":\([0-9.]*\).*/\1/p'; }
  log "debian: first builds (the base's first push, the apt cache)"
  debraw raw first >/dev/null; debwrk wrk >/dev/null
fi

if part debian; then
  declare -a dr_cold dw_cold dr_dep dw_dep dr_warm dw_warm dr_same dw_same lsr
  for i in $(seq 1 "$runs"); do
    log "debian run $i/$runs"
    repo raw cold-raw-$i && change cold-raw-$i lock; dr_cold+=("$(debraw cold-raw-$i c "$dir/tmp-cold-raw-$i")")
    repo wrk cold-wrk-$i && change cold-wrk-$i lock; dw_cold+=("$(debwrk cold-wrk-$i)")
    change raw lock; dr_dep+=("$(debraw raw d$i)")
    change wrk lock; dw_dep+=("$(debwrk wrk)")
    change raw src; dr_warm+=("$(debraw raw w$i)")
    change wrk src; dw_warm+=("$(debwrk wrk)")
    dr_same+=("$(debraw raw w$i)"); dw_same+=("$(debwrk wrk)")
    t0=$(now_ms); git ls-remote "$http/wrk.git" >/dev/null; lsr+=($(( $(now_ms) - t0 )))
  done
  read -r drc dwc < <(row "$runs" "${dr_cold[@]}" "${dw_cold[@]}")
  read -r drd dwd < <(row "$runs" "${dr_dep[@]}" "${dw_dep[@]}")
  read -r drw dww < <(row "$runs" "${dr_warm[@]}" "${dw_warm[@]}")
  read -r drs dws < <(row "$runs" "${dr_same[@]}" "${dw_same[@]}")
  ls_ms=$(median "${lsr[@]}")
  {
    echo "debian base + apt layer, 2,000 files, 30 commits, smart HTTP; medians of $runs; worker's build.network = $deb_network"
    printf '%-36s %10s %10s %8s %8s\n' scenario "raw ms" "worker ms" ratio target
    printf '%-36s %10s %10s %8s %8s\n' "cold (new repository)" "$drc" "$dwc" "$(ratio "$dwc" "$drc")" "<= 0.9"
    printf '%-36s %10s %10s %8s %8s\n' "warm (one source file changed)" "$drw" "$dww" "$(ratio "$dww" "$drw")" "<= 0.05"
    printf '%-36s %10s %10s %8s %8s\n' "dependency change (lockfile line)" "$drd" "$dwd" "$(ratio "$dwd" "$drd")" "-"
    printf '%-36s %10s %10s %8s %8s\n' "identical re-request (cached)" "$drs" "$dws" "$(ratio "$dws" "$drs")" "-"
    echo "cached answer $dws ms - one git ls-remote $ls_ms ms = $(( dws - ls_ms )) ms (target <= 20)"
  } >>"$report"
fi

# 8 mixed requests with 4 build slots: 2 cold (new repositories), 2 warm (one file changed since
# their last build), 4 cached; all at once, then the same shape one after another.
if part mix; then
  log "mix: two repositories to rebuild warm"
  for w in 1 2; do repo wrk mixw-$w; git -C "$dir/w-mixw-$w" push -q origin main; debwrk mixw-$w >/dev/null; done
  mix() { # SET: writes the 8 requests of set SET (new cold repositories, new warm commits)
    local line
    for c in 1 2; do repo wrk "mixc-$1-$c" && change "mixc-$1-$c" lock; done
    for w in 1 2; do change "mixw-$w" src; done
    for line in "cold mixc-$1-1" "cached wrk" "warm mixw-1" "cached wrk" "cold mixc-$1-2" "cached wrk" "warm mixw-2" "cached wrk"; do
      set -- "$1" $line
      printf '{"kind":"%s","body":%s}\n' "$2" "$(request "$3")"
    done
  }
  mix at >"$dir/mix-at.jsonl"; at=$(IMAGE_BUILDER__AMQP__PREFIX=$deb_prefix "$bin/ib-bench" --mix "$dir/mix-at.jsonl" --concurrency 8)
  mix serial >"$dir/mix-serial.jsonl"; serial=$(IMAGE_BUILDER__AMQP__PREFIX=$deb_prefix "$bin/ib-bench" --mix "$dir/mix-serial.jsonl" --concurrency 1)
  cached_of() { printf '%s' "$1" | sed -n 's/.*"cached":{\([^}]*\)}.*/\1/p'; } # the kind
  {
    echo "8 mixed requests (2 cold, 2 warm, 4 cached), $slots build slots:"
    echo "  at once $(field "$at" wall_s) s wall, one after another $(field "$serial" wall_s) s"
    echo "  cached ones at once: p99 $(field "$(cached_of "$at")" p99_ms) ms; one after another: p99 $(field "$(cached_of "$serial")" p99_ms) ms"
  } >>"$report"
fi
# A base image moves: push to the last of 20 dependents' image.updated (its own script: it runs
# its own registry with notifications and its own API).
if part bases; then
  log "base updates: 20 dependents"
  scripts/bench-bases.sh 2>"$dir/bench-bases.log" | tail -1 >>"$report" ||
    echo "base updates: failed (see $dir/bench-bases.log)" >>"$report"
fi
echo
cat "$report"
