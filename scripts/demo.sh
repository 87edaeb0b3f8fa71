#!/usr/bin/env bash
# The main job on one machine: services up, worker + HTTP API (`image-builder run`) built and
# started in the background, and a demo build of examples/hello-world (served by `git daemon`)
# submitted, waited for, and read back from the API.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
run_dir=$here/.run
git_root=$run_dir/git
git_port=${DEMO_GIT_PORT:-9418}
bin=$here/target/release/image-builder
api_addr=${DEMO_API_ADDR:-127.0.0.1:8080}
api=http://$api_addr
# config/local.toml accepts this key (its SHA-256); make your own with `image-builder api-key`.
key=local-dev-key
# The built-in local overlay (plain-HTTP registry, git:// demo repository, the key above) is
# only ever chosen explicitly; without it the binary runs with the safe production defaults.
export IMAGE_BUILDER_ENV=local

log() { printf '[demo] %s\n' "$*" >&2; }

scripts/services.sh up
scripts/toolchain.sh
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
log "building image-builder (release)"
cargo build --release --quiet

# The example as a git repository with a deterministic commit, served over git://.
log "publishing examples/hello-world as git://127.0.0.1:$git_port/hello-world.git"
rm -rf "$git_root/hello-world.git" "$run_dir/hello-src"
mkdir -p "$git_root"
cp -r examples/hello-world "$run_dir/hello-src"
(
  cd "$run_dir/hello-src"
  export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.invalid GIT_COMMITTER_NAME=demo \
    GIT_COMMITTER_EMAIL=demo@example.invalid GIT_AUTHOR_DATE=2026-01-01T00:00:00Z \
    GIT_COMMITTER_DATE=2026-01-01T00:00:00Z
  git init -q -b main . && git add -A && git commit -qm "hello-world demo"
  git clone -q --bare . "$git_root/hello-world.git"
)
rm -rf "$run_dir/hello-src"
if ! pgrep -f "git-daemon.*--base-path=$git_root" >/dev/null; then
  git daemon --reuseaddr --export-all --base-path="$git_root" --listen=127.0.0.1 --port="$git_port" \
    --detach --pid-file="$run_dir/git-daemon.pid"
fi

if [ -f "$run_dir/worker.pid" ] && kill -0 "$(cat "$run_dir/worker.pid")" 2>/dev/null; then
  log "restarting the worker"
  kill -TERM "$(cat "$run_dir/worker.pid")"
  while kill -0 "$(cat "$run_dir/worker.pid")" 2>/dev/null; do sleep 0.2; done
fi
log "starting the worker and the API on ${api} (log: .run/worker.log)"
IMAGE_BUILDER__API__LISTEN=$api_addr nohup "$bin" run >"$run_dir/worker.log" 2>&1 &
echo $! >"$run_dir/worker.pid"
for _ in $(seq 1 100); do curl -sf "$api/readyz" >/dev/null && break; sleep 0.2; done

log "submitting the demo build"
start=$(date +%s%N)
outcome=$("$bin" submit --connector git --repo "git://127.0.0.1:$git_port/hello-world.git" \
  --user-id demo --wait --timeout-secs 300)
end=$(date +%s%N)
echo "$outcome"
image=$(printf '%s' "$outcome" | sed -n 's/.*"image": "\(.*\)".*/\1/p')
digest=$(printf '%s' "$outcome" | sed -n 's/.*"digest": "\(.*\)".*/\1/p')
echo
echo "[demo] pushed $image@$digest in $(((end - start) / 1000000)) ms"
echo "[demo] registry tags of demo/hello-world: $(curl -s http://127.0.0.1:5000/v2/demo/hello-world/tags/list)"
id=$(printf '%s' "$outcome" | sed -n 's/.*"build_id": "\(.*\)".*/\1/p')
echo "[demo] the record: curl -H 'Authorization: Bearer $key' $api/v1/builds/$id"
curl -s -H "Authorization: Bearer $key" "$api/v1/builds/$id" | python3 -c \
  'import json,sys; b=json.load(sys.stdin); print("  state:", b["state"], "| commit:", b["commit"], "| states:", " -> ".join(s["state"] for s in b["states"]))'
echo "[demo] its log: curl -H 'Authorization: Bearer $key' $api/v1/builds/$id/logs"
curl -s -H "Authorization: Bearer $key" "$api/v1/builds/$id/logs" | tail -n 3 | sed 's/^/  /'
echo "[demo] how to pull it: $(curl -s -H "Authorization: Bearer $key" "$api/v1/images?repo=git://127.0.0.1:$git_port/hello-world.git" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pull"])')"
echo "[demo] the worker keeps running (pid $(cat "$run_dir/worker.pid")); 'make down' stops everything"
