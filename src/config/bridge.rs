//! `build.bridge` and `build.subnet`: the host bridge that `isolated` builds' network namespaces
//! hang off, and its IPv4 subnet. `scripts/sandbox-firewall.sh` fences the same pair (it reads
//! the `IMAGE_BUILDER__BUILD__BRIDGE` / `__SUBNET` overrides too), so both are checked at load.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;

/// A Linux interface name for the build bridge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct BridgeName(String);

impl BridgeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BridgeName {
    type Error = String;

    // Interface names are at most 15 bytes; the charset is narrower than the kernel's so the
    // name is safe in nft rules and `ip` batch lines alike.
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let fits = (1..=15).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if fits {
            Ok(Self(value))
        } else {
            Err(format!(
                "build.bridge must be an interface name of 1 to 15 letters, digits, '-' or '_', \
                 not {value:?}"
            ))
        }
    }
}

/// The build bridge's subnet: its first address is the gateway (on the bridge), the others are
/// handed to builds, one each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct BuildSubnet(Ipv4Net);

/// At most a /16 (65,534 builds is plenty), at least a /29 (a gateway and a few builds).
const PREFIXES: std::ops::RangeInclusive<u8> = 16..=29;

impl BuildSubnet {
    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    pub fn gateway(&self) -> Ipv4Addr {
        // `hosts()` of a /16../29 is never empty.
        self.0.hosts().next().unwrap_or(self.0.network())
    }

    /// The addresses builds may get, in order (every host address but the gateway).
    pub fn build_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        self.0.hosts().skip(1)
    }
}

impl TryFrom<String> for BuildSubnet {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let net: Ipv4Net = value.trim().parse().map_err(|_| {
            format!("build.subnet must be an IPv4 network like 10.231.0.0/24, not {value:?}")
        })?;
        if !PREFIXES.contains(&net.prefix_len()) {
            return Err(format!(
                "build.subnet {net}: the prefix must be between /{} and /{}",
                PREFIXES.start(),
                PREFIXES.end()
            ));
        }
        if net.addr() != net.network() {
            return Err(format!(
                "build.subnet {net} has host bits set; the network is {}",
                net.trunc()
            ));
        }
        if net.network().is_loopback() || net.network().is_link_local() {
            return Err(format!(
                "build.subnet {net} is a loopback or link-local range"
            ));
        }
        Ok(Self(net))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_name_is_a_short_plain_interface_name() {
        assert!(BridgeName::try_from("ibbuild0".to_owned()).is_ok());
        for bad in ["", "a-name-longer-than-15", "br 0", "br;0", "br/0", "brü"] {
            let err = BridgeName::try_from(bad.to_owned()).unwrap_err();
            assert!(err.contains("build.bridge"), "{err}");
        }
    }

    #[test]
    fn a_subnet_names_its_gateway_and_the_addresses_builds_get() {
        let net = BuildSubnet::try_from("10.231.0.0/29".to_owned()).unwrap();
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 231, 0, 1));
        let builds: Vec<Ipv4Addr> = net.build_addresses().collect();
        assert_eq!(builds.first(), Some(&Ipv4Addr::new(10, 231, 0, 2)));
        assert_eq!(builds.last(), Some(&Ipv4Addr::new(10, 231, 0, 6)));
        assert_eq!(builds.len(), 5);
    }

    #[test]
    fn a_bad_subnet_is_refused_naming_the_field_and_why() {
        for (bad, why) in [
            ("10.231.0.0", "IPv4 network"),
            ("fd00::/64", "IPv4 network"),
            ("10.231.0.0/30", "prefix"),
            ("10.0.0.0/8", "prefix"),
            ("10.231.0.5/24", "host bits"),
            ("127.0.0.0/24", "loopback"),
            ("169.254.0.0/16", "link-local"),
        ] {
            let err = BuildSubnet::try_from(bad.to_owned()).unwrap_err();
            assert!(
                err.contains("build.subnet") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }
}
