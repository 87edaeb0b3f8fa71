#!/usr/bin/env bash
# Installs (when missing) and manages the services image-builder needs on one Debian/Ubuntu host:
# RabbitMQ with the management plugin, an OCI registry on 127.0.0.1:5000, podman/buildah/skopeo,
# a locally seeded base image so builds work without pulling from the internet, and PostgreSQL on
# 127.0.0.1:5432 (role and database image_builder, password image_builder) for shared build records.
#
#   scripts/services.sh up       install what is missing, start everything (idempotent)
#   scripts/services.sh down     stop RabbitMQ and the registry
#   scripts/services.sh status   say what runs
#   scripts/services.sh cluster up|down|status
#                                a 3-node RabbitMQ cluster beside the single node (failover tests)
#   scripts/services.sh sweep    delete the broker topology tests and benches left behind
#
# Must run as root (it installs packages and starts system services without systemd).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
state_dir=${IMAGE_BUILDER_STATE_DIR:-$here/.run}
registry_addr=${REGISTRY_ADDR:-127.0.0.1:5000}
registry_dir=$state_dir/registry
base_image=localhost/busybox:latest
packages=(podman buildah skopeo runc nftables iproute2 docker-registry rabbitmq-server busybox-static git curl pkg-config libssl-dev postgresql python3 python3-venv)
pg_url=postgres://image_builder:image_builder@127.0.0.1:5432/image_builder

log() { printf '[services] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (installs packages and starts services)"
    exit 1
  fi
}

install_missing() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Bounded, and lighter than `status` (which waits on the broker's file handle cache).
rabbit_running() { [ "$(timeout 30 rabbitmqctl -q eval 'rabbit:is_running().' 2>/dev/null)" = true ]; }

# Every RabbitMQ listener on loopback only: AMQP, the management API (guest/guest works from
# localhost), epmd and Erlang distribution. Builds have their own network namespace, but a
# listener on 0.0.0.0 is also reachable through the bridge gateway and from other hosts.
configure_rabbitmq_loopback() {
  mkdir -p /etc/rabbitmq
  cat >/etc/rabbitmq/rabbitmq.conf <<'EOF'
# Written by image-builder's scripts/services.sh: loopback only.
listeners.tcp.default = 127.0.0.1:5672
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672
# How long a delivery may stay unacked before the broker takes it back (ms). Must equal the
# worker's amqp.consumer_timeout_secs, which must exceed build.timeout_secs by 300 s: the default
# 30 min equals the default build timeout and would hand a long build to a second replica.
consumer_timeout = 3600000
EOF
  cat >/etc/rabbitmq/rabbitmq-env.conf <<'EOF'
# Written by image-builder's scripts/services.sh: loopback only.
NODE_IP_ADDRESS=127.0.0.1
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  # Sourced as shell by the broker's start script, after su: see rabbit_nofile.
  echo "ulimit -n $rabbit_nofile 2>/dev/null || ulimit -n \"\$(ulimit -Hn)\" 2>/dev/null || true" \
    >>/etc/rabbitmq/rabbitmq-env.conf
}

# Ports of ours listening beyond loopback (from the kernel's socket tables).
exposed_ports() {
  local port
  for port in 5672 15672 25672 4369; do
    if ss -Hltn "sport = :$port" 2>/dev/null | awk '{print $4}' | grep -vqE '^(127\.0\.0\.1|\[::1\]):'; then
      echo "$port"
    fi
  done
}

# Open files RabbitMQ gets. Every quorum queue holds file handles; with Debian's default of 1024
# (927 for RabbitMQ's handle cache) a few hundred queues take them all, and from then on every
# classic queue's file operation waits forever: declares, deletes, the closing of connections
# that own exclusive queues (seen: the broker wedged with 307 quorum queues, handle cache at
# 927/927, classic declares hanging while quorum ones still answered). Up to what the host
# allows (`ulimit -Hn`); set in rabbitmq-env.conf, because the packaged wrapper starts the broker
# through `su`, whose PAM session resets the soft limit to 1024. A broker below
# `rabbit_nofile_min` is restarted.
rabbit_nofile=65536
hard_nofile=$(ulimit -Hn)
if [ "$hard_nofile" != unlimited ] && [ "$hard_nofile" -lt "$rabbit_nofile" ]; then
  rabbit_nofile=$hard_nofile
fi
rabbit_nofile_min=4096

# The open-files limit of the running broker (0 when unknown).
rabbit_nofile_now() {
  local pid
  pid=$(cat "/var/lib/rabbitmq/mnesia/rabbit@$(hostname -s).pid" 2>/dev/null) || { echo 0; return; }
  awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null || echo 0
}

start_rabbitmq() {
  configure_rabbitmq_loopback
  local restart=""
  if rabbit_running && [ -n "$(exposed_ports)" ]; then
    restart="on loopback only (it listened on: $(exposed_ports | tr '\n' ' '))"
  elif rabbit_running && [ "$(rabbit_nofile_now)" -lt "$rabbit_nofile_min" ]; then
    restart="with $rabbit_nofile open files (it had $(rabbit_nofile_now))"
  fi
  if [ -n "$restart" ]; then
    log "restarting RabbitMQ $restart"
    timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 ||
      kill -9 "$(cat "/var/lib/rabbitmq/mnesia/rabbit@$(hostname -s).pid" 2>/dev/null)" 2>/dev/null || true
    epmd -kill >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do rabbit_running || break; sleep 0.2; done
  fi
  if ! pgrep -x epmd >/dev/null; then
    # Started here so that it binds loopback whoever starts the broker.
    ERL_EPMD_ADDRESS=127.0.0.1 epmd -daemon
  fi
  if ! rabbit_running; then
    log "starting RabbitMQ"
    # The Debian package may have started it through its init script; -detached is for bare hosts.
    rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  rabbitmqctl wait --timeout 90 "/var/lib/rabbitmq/mnesia/rabbit@$(hostname -s).pid" >/dev/null
  if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
    rabbitmq-plugins enable rabbitmq_management >/dev/null
  fi
  # Cache affinity (amqp.affinity_fallback_ms) hashes requests over replicas with it; online.
  if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_consistent_hash_exchange; then
    rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null
  fi
  # A broker started before the line above was written: the same value, at run time (new channels).
  rabbitmqctl -q eval 'application:set_env(rabbit, consumer_timeout, 3600000).' >/dev/null ||
    log "could not set consumer_timeout at run time; it applies at the next broker start"
  for _ in $(seq 1 60); do
    curl -sf -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null && return 0
    sleep 1
  done
  log "RabbitMQ management API did not come up on :15672"
  return 1
}

registry_running() { curl -sf "http://$registry_addr/v2/" >/dev/null 2>&1; }

start_registry() {
  registry_running && return 0
  mkdir -p "$registry_dir/data"
  # Our own config: the packaged one demands htpasswd auth.
  cat >"$registry_dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $registry_dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $registry_addr
EOF
  log "starting registry on $registry_addr"
  nohup docker-registry serve "$registry_dir/config.yml" >"$registry_dir/registry.log" 2>&1 &
  echo $! >"$registry_dir/pid"
  for _ in $(seq 1 50); do
    registry_running && return 0
    sleep 0.2
  done
  log "registry did not start; see $registry_dir/registry.log"
  return 1
}

pg_running() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

start_postgres() {
  if ! pg_running; then
    local cluster
    cluster=$(pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $1" "$2}')
    if [ -z "$cluster" ]; then
      local version
      version=$(ls /usr/lib/postgresql | sort -V | tail -1)
      pg_createcluster "$version" main >/dev/null
      cluster="$version main"
    fi
    log "starting PostgreSQL ($cluster)"
    # shellcheck disable=SC2086
    pg_ctlcluster $cluster start
    for _ in $(seq 1 50); do pg_running && break; sleep 0.2; done
  fi
  # The role may create databases: each test gets its own.
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='image_builder'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE ROLE image_builder LOGIN CREATEDB PASSWORD 'image_builder'\"" >/dev/null
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='image_builder'\"" | grep -q 1 ||
    su postgres -c "createdb -O image_builder image_builder"
}

# A busybox root filesystem imported as an image: builds need a base and no registry is reachable.
seed_base_image() {
  podman image exists "$base_image" && return 0
  log "seeding $base_image from busybox-static"
  local root
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for cmd in sh ls cat echo mkdir rm cp mv touch grep sed wc head tail env sleep true false test; do
    ln -sf busybox "$root/bin/$cmd"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  tar -C "$root" -c . | podman import -q --change 'CMD ["/bin/sh"]' - "$base_image" >/dev/null
  rm -rf "$root"
}

up() {
  need_root
  install_missing
  start_rabbitmq
  start_registry
  start_postgres
  seed_base_image
  "$here/scripts/sandbox-firewall.sh" apply
  status
}

down() {
  if [ -f "$registry_dir/pid" ]; then
    kill "$(cat "$registry_dir/pid")" 2>/dev/null || true
    rm -f "$registry_dir/pid"
  fi
  pkill -f "docker-registry serve $registry_dir" 2>/dev/null || true
  if command -v rabbitmqctl >/dev/null && rabbit_running; then
    rabbitmqctl -q stop >/dev/null 2>&1 || true
  fi
  if command -v pg_lsclusters >/dev/null && pg_running; then
    # shellcheck disable=SC2046
    pg_ctlcluster $(pg_lsclusters -h | awk 'NR==1 {print $1" "$2}') stop || true
  fi
  log "stopped"
}

status() {
  local ok=0
  if command -v rabbitmqctl >/dev/null && rabbit_running; then
    log "rabbitmq: running (amqp://127.0.0.1:5672, management http://127.0.0.1:15672 guest/guest)"
  else
    log "rabbitmq: stopped"; ok=1
  fi
  if registry_running; then log "registry: running (http://$registry_addr)"; else log "registry: stopped"; ok=1; fi
  if pg_running; then log "postgres: running ($pg_url)"; else log "postgres: stopped"; ok=1; fi
  if [ -n "$(exposed_ports)" ]; then
    log "rabbitmq: listens beyond loopback on $(exposed_ports | tr '\n' ' ')(run: $0 up)"; ok=1
  fi
  if command -v nft >/dev/null && nft list table inet image_builder_sandbox >/dev/null 2>&1; then
    log "sandbox firewall: applied (scripts/sandbox-firewall.sh show)"
  else
    log "sandbox firewall: missing (scripts/sandbox-firewall.sh apply)"; ok=1
  fi
  if command -v podman >/dev/null && podman image exists "$base_image"; then
    log "base image: $base_image present"
  else
    log "base image: missing"; ok=1
  fi
  return $ok
}

# Queues, exchanges and policies of tests (`ibt-`) and benches (`bench-`, `ib-fleet-`) that a
# failed or killed run left on the single node: each leftover quorum queue keeps a Raft member,
# its files and handles (300 of them once used up the handle cache and wedged the node). A prefix
# with a consumer on any of its queues is in use and left alone, and so is everything else
# (`image-builder.*` of `make run`, an operator's own prefixes).
sweep() {
  rabbit_running || { log "rabbitmq: stopped, nothing to sweep"; return 0; }
  python3 - <<'PYEOF'
import json, sys, urllib.parse, urllib.request

API = "http://127.0.0.1:15672/api"
LEFTOVER = ("ibt-", "bench-", "ib-fleet-")
auth = urllib.request.HTTPPasswordMgrWithDefaultRealm()
auth.add_password(None, API, "guest", "guest")
opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(auth))


def call(method, path):
    req = urllib.request.Request(API + path, method=method)
    with opener.open(req, timeout=30) as res:
        body = res.read()
    return json.loads(body) if body else None


def delete(kind, name):
    call("DELETE", f"/{kind}/%2f/{urllib.parse.quote(name, safe='')}")


def prefix(name):
    return name.split(".")[0]


swept = {"queues": 0, "exchanges": 0, "policies": 0}
queues = [q for q in call("GET", "/queues/%2f?columns=name,consumers")
          if q["name"].startswith(LEFTOVER)]
# A prefix with a consumer anywhere is in use (its retry queues never have consumers), and so is
# one whose queue the broker has no statistics for yet (just declared).
busy = {prefix(q["name"]) for q in queues if (q.get("consumers") is None or q["consumers"] > 0)}
for q in queues:
    if prefix(q["name"]) not in busy:
        delete("queues", q["name"])
        swept["queues"] += 1
for kind, path in (("exchanges", "/exchanges/%2f?columns=name"), ("policies", "/policies/%2f")):
    for item in call("GET", path):
        name = item["name"]
        if name.startswith(LEFTOVER) and prefix(name) not in busy:
            delete(kind, name)
            swept[kind] += 1
print("[services] swept leftover broker topology: "
      + ", ".join(f"{n} {k}" for k, n in swept.items()), file=sys.stderr)
PYEOF
}

case "${1:-}" in
  up) up ;;
  sweep) sweep ;;
  down) down ;;
  status) status ;;
  cluster)
    . "$here/scripts/rabbitmq-cluster.sh"
    case "${2:-}" in
      up) need_root; install_missing; cluster_up ;;
      down) cluster_down ;;
      status) cluster_status ;;
      *) echo "usage: $0 cluster up|down|status" >&2; exit 2 ;;
    esac
    ;;
  *) echo "usage: $0 up|down|status|sweep|cluster up|down|status" >&2; exit 2 ;;
esac
