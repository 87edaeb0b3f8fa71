//! One network namespace per build for `build.network = "isolated"`. All the build's RUN steps
//! share it (podman `--network ns:<path>`); a veth pair attaches it to image-builder's bridge
//! with one address of `build.subnet`. Setting it up and removing it costs about 10 ms per
//! build, where podman's own `private` network cost about 650 ms per RUN step on these hosts
//! (netavark adds and removes a dozen iptables rules for every step). The NAT and the fence
//! (this host, private ranges, other builds) are nftables rules that
//! `scripts/sandbox-firewall.sh` installs once for the subnet, not per build.
//!
//! Addresses are leased with one lock file per address under /run: an flock dies with the
//! worker's file descriptors, even on SIGKILL, so replicas on one host never share an address,
//! and the next holder of an address first removes whatever a dead holder left behind.

use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::{BridgeName, BuildSubnet};

const LEASES: &str = "/run/image-builder/build-net";
const NETNS_DIR: &str = "/run/netns";
const IP_TIMEOUT: Duration = Duration::from_secs(20);
/// The table `scripts/sandbox-firewall.sh` owns.
const FIREWALL_TABLE: &str = "image_builder_sandbox";

#[derive(Debug, thiserror::Error)]
pub enum BuildNetError {
    #[error("cannot run `ip` (iproute2) for the build's network namespace: {0}")]
    Spawn(std::io::Error),
    #[error("`ip {what}` for the build's network namespace failed: {stderr}")]
    Ip { what: String, stderr: String },
    #[error("`ip` did not finish within {0:?} setting up the build's network namespace")]
    TimedOut(Duration),
    #[error("cannot lease an address of build.subnet under {LEASES}: {0}")]
    Lease(std::io::Error),
    #[error("every address of build.subnet {0} is leased to a running build")]
    Exhausted(ipnet::Ipv4Net),
    #[error("the build bridge {bridge} does not exist and could not be created: {why}")]
    Bridge { bridge: String, why: String },
}

/// A build's network namespace; removed (and its address released) when dropped.
pub struct BuildNet {
    name: String,
    lease: Option<Flock<File>>,
}

impl BuildNet {
    pub async fn create(bridge: &BridgeName, subnet: &BuildSubnet) -> Result<Self, BuildNetError> {
        ensure_bridge(bridge, subnet).await?;
        let (address, lease) = lease(subnet)?;
        let name = namespace_name(address);
        remove_leftovers(&name).await;
        // From here on, Drop removes whatever part of the namespace got made.
        let net = Self {
            name,
            lease: Some(lease),
        };
        let n = &net.name;
        let host_side = format!(
            "netns add {n}\n\
             link add {n} type veth peer name eth0 netns {n}\n\
             link set {n} master {bridge} up\n",
            bridge = bridge.as_str()
        );
        ip(&[], &host_side, "netns add").await?;
        let inside = format!(
            "link set lo up\n\
             addr add {address}/{prefix} dev eth0\n\
             link set eth0 up\n\
             route add default via {gateway}\n",
            prefix = subnet.net().prefix_len(),
            gateway = subnet.gateway()
        );
        ip(&["-n", n], &inside, "-n <build> addr add").await?;
        Ok(net)
    }

    /// podman's `--network` value for the build's RUN steps.
    pub fn podman_network(&self) -> String {
        format!("ns:{NETNS_DIR}/{}", self.name)
    }
}

impl Drop for BuildNet {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        // Deleting the namespace deletes its veth pair; the lease is released only afterwards,
        // so the next holder never finds the address half-removed. Off the build's path.
        let teardown = move || {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .env_clear()
                .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            drop(lease);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(teardown)),
            Err(_) => teardown(),
        }
    }
}

/// Why the build network is not fenced, if it is not: `scripts/sandbox-firewall.sh` installs
/// the NAT and the rules that keep builds off this host and private ranges, for one bridge and
/// subnet. Checked structurally at start (the table and its bridge), never by sending traffic.
pub fn fence_missing(bridge: &BridgeName, subnet: &BuildSubnet) -> Option<String> {
    let listed = std::process::Command::new("nft")
        .args(["list", "table", "inet", FIREWALL_TABLE])
        .env_clear()
        .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
        .stdin(Stdio::null())
        .output();
    let rules = match listed {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(_) => return Some(format!("no nftables table inet {FIREWALL_TABLE}")),
        Err(e) => return Some(format!("cannot run nft to check the firewall: {e}")),
    };
    let fenced = rules.contains(&format!("iifname \"{}\"", bridge.as_str()))
        && rules.contains(&subnet.net().to_string());
    (!fenced).then(|| {
        format!(
            "the nftables table inet {FIREWALL_TABLE} is for another bridge or subnet than \
             build.bridge = {} / build.subnet = {}",
            bridge.as_str(),
            subnet.net()
        )
    })
}

/// Netns and host-side veth share this name: unique per address, within the 15 bytes an
/// interface name may have.
fn namespace_name(address: Ipv4Addr) -> String {
    format!("ib{:08x}", u32::from(address))
}

/// The first address of `subnet` no running build holds, with its lock.
fn lease(subnet: &BuildSubnet) -> Result<(Ipv4Addr, Flock<File>), BuildNetError> {
    std::fs::create_dir_all(LEASES).map_err(BuildNetError::Lease)?;
    for address in subnet.build_addresses() {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Path::new(LEASES).join(address.to_string()))
            .map_err(BuildNetError::Lease)?;
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            return Ok((address, lock));
        }
    }
    Err(BuildNetError::Exhausted(subnet.net()))
}

/// What a worker killed mid-build left of a namespace whose address is now ours.
async fn remove_leftovers(name: &str) {
    if Path::new(NETNS_DIR).join(name).exists() {
        let _ = ip(&[], &format!("netns del {name}\n"), "netns del").await;
    }
    if Path::new("/sys/class/net").join(name).exists() {
        let _ = ip(&[], &format!("link del {name}\n"), "link del").await;
    }
}

/// Creates the bridge with the gateway address unless it exists. Replicas may race here: the
/// loser's "File exists" is fine as long as the bridge is there afterwards.
async fn ensure_bridge(bridge: &BridgeName, subnet: &BuildSubnet) -> Result<(), BuildNetError> {
    let b = bridge.as_str();
    let exists = || Path::new("/sys/class/net").join(b).exists();
    if !exists() {
        let batch = format!(
            "link add {b} type bridge\n\
             addr add {gateway}/{prefix} dev {b}\n\
             link set {b} up\n",
            gateway = subnet.gateway(),
            prefix = subnet.net().prefix_len()
        );
        let made = ip(&["-force"], &batch, "link add type bridge").await;
        if !exists() {
            return Err(BuildNetError::Bridge {
                bridge: b.to_owned(),
                why: made
                    .err()
                    .map_or_else(|| "unknown".to_owned(), |e| e.to_string()),
            });
        }
        // Builds get IPv4 only; no link-local IPv6 address on the host side either.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{b}/disable_ipv6"), "1");
    }
    // Routing the builds' traffic out (as podman's own networks do).
    if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    }
    Ok(())
}

/// Runs `ip <flags> -batch -` with `batch` on stdin. Not through the confined process runner:
/// `ip netns add` must mount in this host's mount namespace, which that runner's private one
/// would hide. Nothing here comes from a request.
async fn ip(flags: &[&str], batch: &str, what: &str) -> Result<(), BuildNetError> {
    let mut child = Command::new("ip")
        .args(flags)
        .args(["-batch", "-"])
        .env_clear()
        .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(BuildNetError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(batch.as_bytes())
            .await
            .map_err(BuildNetError::Spawn)?;
    }
    let output = tokio::time::timeout(IP_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| BuildNetError::TimedOut(IP_TIMEOUT))?
        .map_err(BuildNetError::Spawn)?;
    if output.status.success() {
        return Ok(());
    }
    Err(BuildNetError::Ip {
        what: what.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_name_is_unique_per_address_and_fits_an_interface_name() {
        let a = namespace_name(Ipv4Addr::new(10, 231, 0, 2));
        let b = namespace_name(Ipv4Addr::new(10, 231, 1, 2));
        assert_eq!(a, "ib0ae70002");
        assert_ne!(a, b);
        assert!(a.len() <= 15);
    }
}
