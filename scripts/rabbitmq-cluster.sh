# Sourced by scripts/services.sh: a 3-node RabbitMQ cluster on this one host, for failover tests
# and for trying `amqp.urls`. It lives beside the single node `rabbit@<host>` (5672/15672), which
# it never touches: its own node names, ports, config, data and logs.
#
#   node           AMQP                   management               Erlang distribution
#   ib1@localhost  127.0.0.1:5681         http://127.0.0.1:15681   127.0.0.1:25681
#   ib2@localhost  127.0.0.1:5682         http://127.0.0.1:15682   127.0.0.1:25682
#   ib3@localhost  127.0.0.1:5683         http://127.0.0.1:15683   127.0.0.1:25683
#
# The nodes run as the `rabbitmq` user with its Erlang cookie, so the packaged `rabbitmqctl -n
# ib1@localhost ...` reaches them. ib2 and ib3 join ib1; a quorum queue declared on the cluster
# gets a member on each node (its initial group size defaults to the cluster size).

cluster_nodes=(ib1 ib2 ib3)
cluster_dir=${IMAGE_BUILDER_CLUSTER_DIR:-/var/lib/rabbitmq-cluster}

# The node's ordinal (1..3) gives its ports.
node_index() { echo "${1#ib}"; }
node_name() { echo "$1@localhost"; }
amqp_port() { echo $((5680 + $(node_index "$1"))); }
mgmt_port() { echo $((15680 + $(node_index "$1"))); }
dist_port() { echo $((25680 + $(node_index "$1"))); }

# rabbitmqctl as the packaged wrapper runs it (as `rabbitmq`, with its cookie), bounded in time:
# a CLI call that cannot reach a node must not hang the script.
ctl() {
  local node=$1
  shift
  timeout 150 rabbitmqctl -q -n "$(node_name "$node")" "$@"
}

node_pingable() { ctl "$1" ping >/dev/null 2>&1; }
# The Erlang VM may be up with the rabbit application stopped (`stop_app`).
node_running() { [ "$(ctl "$1" eval 'rabbit:is_running().' 2>/dev/null)" = true ]; }

write_node_config() {
  local node=$1 dir=$cluster_dir/$1
  mkdir -p "$dir/log" "$dir/mnesia"
  cat >"$dir/rabbitmq.conf" <<EOF
# Written by image-builder's scripts/services.sh (cluster): loopback only.
listeners.tcp.default = 127.0.0.1:$(amqp_port "$node")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(mgmt_port "$node")
# As the single node: must equal the worker's amqp.consumer_timeout_secs (README).
consumer_timeout = 3600000
EOF
  echo '[rabbitmq_management,rabbitmq_consistent_hash_exchange].' >"$dir/enabled_plugins"
  # An env file of its own, so the single node's /etc/rabbitmq/rabbitmq-env.conf is not read.
  cat >"$dir/rabbitmq-env.conf" <<'EOF'
# Written by image-builder's scripts/services.sh (cluster): loopback only.
NODE_IP_ADDRESS=127.0.0.1
EOF
  chown -R rabbitmq:rabbitmq "$dir"
}

# Starts the node's VM detached, as `rabbitmq`, with every path and port its own.
start_node() {
  local node=$1 dir=$cluster_dir/$1
  log "starting $(node_name "$node") (amqp 127.0.0.1:$(amqp_port "$node"))"
  runuser -u rabbitmq -- env \
    HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME="$(node_name "$node")" \
    RABBITMQ_USE_LONGNAME=false \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$node")" \
    RABBITMQ_DIST_PORT="$(dist_port "$node")" \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    /usr/lib/rabbitmq/bin/rabbitmq-server -detached >>"$dir/log/startup.log" 2>&1
}

# Is the node among ib1's running cluster nodes? `eval` prints an Erlang list such as
# [ib3@localhost,ib2@localhost,ib1@localhost] (atoms quoted only when they must be).
in_cluster() {
  ctl ib1 eval 'rabbit_nodes:all_running().' 2>/dev/null | tr -d "[]' \n" | tr , '\n' |
    grep -qx "$(node_name "$1")"
}

cluster_up() {
  if ! pgrep -x epmd >/dev/null; then
    ERL_EPMD_ADDRESS=127.0.0.1 epmd -daemon
  fi
  local node any_up=false
  for node in "${cluster_nodes[@]}"; do
    node_pingable "$node" && any_up=true
  done
  # A cluster started cold starts afresh. Its nodes hold nothing worth keeping (failover tests
  # and trials), and RabbitMQ 3.10 nodes that were clustered and boot together sync feature flags
  # while a peer's plugin flags are not registered yet: one crashes at boot (seen in CI:
  # `incompatible_feature_flags ... {badmap,undefined}`). Fresh nodes boot alone and join after.
  if ! $any_up; then
    for node in "${cluster_nodes[@]}"; do
      rm -rf "${cluster_dir:?}/$node/mnesia" "$cluster_dir/$node/pid"
    done
  fi
  for node in "${cluster_nodes[@]}"; do
    write_node_config "$node"
    if ! node_pingable "$node"; then
      start_node "$node"
    elif ! node_running "$node"; then
      # The VM is up with the application stopped (`stop_app`, as a failover test does).
      log "starting the application of $(node_name "$node")"
      ctl "$node" start_app >/dev/null
    fi
  done
  # All started before any is awaited: a node that was clustered waits for its peers at boot.
  for node in "${cluster_nodes[@]}"; do
    if ! ctl "$node" wait --timeout 120 "$cluster_dir/$node/pid" >/dev/null 2>&1; then
      log "$(node_name "$node") did not start; see $cluster_dir/$node/log"
      return 1
    fi
  done
  for node in "${cluster_nodes[@]:1}"; do
    in_cluster "$node" && continue
    log "joining $(node_name "$node") to $(node_name ib1)"
    ctl "$node" stop_app >/dev/null
    ctl "$node" join_cluster "$(node_name ib1)" >/dev/null
    ctl "$node" start_app >/dev/null
  done
  for node in "${cluster_nodes[@]}"; do
    local port
    port=$(mgmt_port "$node")
    for _ in $(seq 1 60); do
      curl -sf -u guest:guest "http://127.0.0.1:$port/api/overview" >/dev/null && break
      sleep 1
    done
  done
  cluster_status
}

cluster_down() {
  local node
  for node in "${cluster_nodes[@]}"; do
    node_pingable "$node" && ctl "$node" stop >/dev/null 2>&1 || true
  done
  log "cluster stopped (its data goes at the next cold start)"
}

cluster_status() {
  local node ok=0
  for node in "${cluster_nodes[@]}"; do
    if ! node_pingable "$node"; then
      log "$(node_name "$node"): stopped"; ok=1
    elif ! node_running "$node"; then
      log "$(node_name "$node"): Erlang VM up, application stopped (stop_app; run: cluster up)"; ok=1
    elif ! in_cluster "$node"; then
      log "$(node_name "$node"): running, not in the cluster of $(node_name ib1)"; ok=1
    elif ! curl -sf -u guest:guest "http://127.0.0.1:$(mgmt_port "$node")/api/overview" >/dev/null; then
      log "$(node_name "$node"): running, management API not answering yet"; ok=1
    else
      log "$(node_name "$node"): running (amqp://127.0.0.1:$(amqp_port "$node"), management http://127.0.0.1:$(mgmt_port "$node") guest/guest)"
    fi
  done
  return $ok
}
