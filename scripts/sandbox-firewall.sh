#!/usr/bin/env bash
# Firewall rules for the build sandbox (build.network = "isolated"): each build gets a network
# namespace of its own on image-builder's bridge (build.bridge, build.subnet; the worker creates
# the bridge on demand), and these rules give it NAT egress, so package installs work, but
# nothing of this host and nothing on private networks may be reached from it:
#   - traffic from the build subnet to this host itself (the bridge gateway, or any address of
#     the host) is dropped: the broker, the store, the registry and the API are out of reach
#     even if one listens beyond loopback;
#   - traffic from the build subnet to loopback, private, shared, link-local (cloud metadata
#     169.254.169.254 included), multicast and reserved ranges is dropped, and so is traffic
#     between two builds on the bridge (bridge netfilter is switched on for that);
#   - except the DNS servers of /etc/resolv.conf (port 53 only: builds resolve names through
#     them) and the operator's allowlist (internal package mirrors).
#
#   scripts/sandbox-firewall.sh apply [CIDR ...]   install (or replace) the rules; each CIDR is
#                                                  allowed through (e.g. 10.1.2.3/32 for a mirror)
#   scripts/sandbox-firewall.sh remove             remove them
#   scripts/sandbox-firewall.sh show               print them
#
# Also read: IMAGE_BUILDER_SANDBOX_ALLOW="10.1.2.3/32 10.9.0.0/16" (same as CIDR arguments), and
# the worker's own overrides of the bridge and its subnet, IMAGE_BUILDER__BUILD__BRIDGE and
# IMAGE_BUILDER__BUILD__SUBNET (defaults as in config/default.toml).
# One nftables table of its own (inet image_builder_sandbox); podman's and iptables' own rules
# are left alone. Needs root and nftables.
set -euo pipefail

table=image_builder_sandbox
bridge=${IMAGE_BUILDER__BUILD__BRIDGE:-ibbuild0}
subnet=${IMAGE_BUILDER__BUILD__SUBNET:-10.231.0.0/24}

log() { printf '[sandbox-firewall] %s\n' "$*" >&2; }

need_nft() {
  command -v nft >/dev/null || {
    log "nft is not installed (apt-get install nftables)"
    exit 1
  }
}

# What builds resolve names through: podman copies the host's resolv.conf into a step, or, when
# that names only a local stub (systemd-resolved's 127.0.0.53), the stub's upstream servers.
nameservers() {
  local file
  for file in /etc/resolv.conf /run/systemd/resolve/resolv.conf; do
    [ -f "$file" ] || continue
    awk '$1 == "nameserver" && $2 ~ /^[0-9.]+$/ && $2 !~ /^127\./ {print $2}' "$file"
  done | sort -u
}

joined() { local IFS=,; echo "$*"; }

apply() {
  need_nft
  local nets allow dns iface
  if ! [[ $bridge =~ ^[A-Za-z0-9_-]{1,15}$ && $subnet =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/[0-9]+$ ]]; then
    log "bridge '$bridge' or subnet '$subnet' is not valid"
    exit 1
  fi
  nets=("$subnet")
  iface=$bridge
  # shellcheck disable=SC2206
  allow=($@ ${IMAGE_BUILDER_SANDBOX_ALLOW:-})
  mapfile -t dns < <(nameservers)
  local builds closed
  builds=$(joined "${nets[@]}")
  closed="0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12,
          192.0.0.0/24, 192.0.2.0/24, 192.168.0.0/16, 198.18.0.0/15, 198.51.100.0/24,
          203.0.113.0/24, 224.0.0.0/4, 240.0.0.0/4"
  local allow_rules="" dns_rules=""
  if [ ${#allow[@]} -gt 0 ]; then
    allow_rules="ip saddr { $builds } ip daddr { $(joined "${allow[@]}") } accept"
  fi
  if [ ${#dns[@]} -gt 0 ]; then
    dns_rules="ip saddr { $builds } ip daddr { $(joined "${dns[@]}") } meta l4proto { tcp, udp } th dport 53 accept"
  fi
  # Builds on one bridge talk to each other without routing: only with these on does that
  # traffic pass the forward chain (and the rule keeping builds apart).
  if [ -d /proc/sys/net/bridge ]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
  else
    log "warning: no bridge netfilter (modprobe br_netfilter): builds running at once can reach each other"
  fi
  # The builds' traffic is routed out through this host (podman's own networks switch it on too).
  sysctl -qw net.ipv4.ip_forward=1
  # Replaced as a whole, atomically: `nft -f` applies the file in one transaction.
  nft -f - <<EOF
table inet $table
delete table inet $table
table inet $table {
  chain input {
    type filter hook input priority filter - 10; policy accept;
    iifname "$iface" counter drop comment "builds never reach this host"
    ip saddr { $builds } counter drop comment "builds never reach this host"
  }
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    iifname "$iface" ip saddr != { $builds } counter drop comment "no spoofed sources"
    $dns_rules
    $allow_rules
    ip saddr { $builds } ip daddr { $builds } counter drop comment "builds never reach each other"
    ip saddr { $builds } ip daddr { $closed } counter drop comment "builds never reach private, link-local or reserved ranges"
    meta nfproto ipv6 iifname "$iface" counter drop comment "builds get no IPv6"
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr { $builds } oifname != "$iface" counter masquerade comment "builds' egress"
  }
}
EOF
  log "applied: builds on $iface (${nets[*]}) reach neither this host nor private ranges${allow:+; allowed: ${allow[*]}}${dns:+; DNS: ${dns[*]}}"
}

remove() {
  need_nft
  nft list table inet "$table" >/dev/null 2>&1 && nft delete table inet "$table"
  log "removed"
}

show() {
  need_nft
  nft list table inet "$table"
}

case "${1:-}" in
  apply) shift; apply "$@" ;;
  remove) remove ;;
  show) show ;;
  *) echo "usage: $0 apply [CIDR ...] | remove | show" >&2; exit 2 ;;
esac
