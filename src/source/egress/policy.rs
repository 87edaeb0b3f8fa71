//! Which addresses a repository URL may lead to. Public addresses always; loopback, private,
//! link-local, shared, reserved and multicast ranges only when `request.allowed_networks`
//! names them; a cloud metadata address only when an entry names that very address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Addresses of instance metadata services: credentials live there, so a wide allowed network
/// (say 169.254.0.0/16) does not open them.
const METADATA: [IpAddr; 5] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Ranges that are not the public internet, with what to call them in a refusal.
const SPECIAL: [(&str, &str); 20] = [
    ("0.0.0.0/8", "a 'this network' address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("fc00::/7", "a unique-local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local (private) address"),
    ("ff00::/8", "a multicast address"),
    ("100::/64", "a discard-only address"),
    ("2001::/23", "an IETF protocol address"),
    ("2001:db8::/32", "a documentation address"),
];

/// Looks a host name up: `(name, port) -> addresses`. Must not block for long.
pub type Lookup = Arc<dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The outbound policy for git hosts; cheap to clone.
#[derive(Clone, Default)]
pub struct NetworkPolicy {
    allowed: Arc<Vec<IpNet>>,
    /// The system's resolver when `None`.
    lookup: Option<Lookup>,
}

impl std::fmt::Debug for NetworkPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkPolicy")
            .field("allowed", &self.allowed)
            .field("lookup", &self.lookup.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// A refused address, said as: "<url> resolves to <addr>, <what>, which ...".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub addr: IpAddr,
    pub what: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resolves to {}, {}, which request.allowed_networks does not allow",
            self.addr, self.what
        )
    }
}

impl NetworkPolicy {
    /// Public addresses plus `allowed` (empty: public addresses only).
    pub fn allowing(allowed: Vec<IpNet>) -> Self {
        Self {
            allowed: Arc::new(allowed),
            lookup: None,
        }
    }

    /// Resolves names with `lookup` instead of the system's resolver. Whatever it answers is
    /// checked and is where connections go: no other lookup happens for a fetch.
    pub fn resolving_with(mut self, lookup: Lookup) -> Self {
        self.lookup = Some(lookup);
        self
    }

    /// Whether a connection may go to `addr`.
    pub(crate) fn check(&self, addr: IpAddr) -> Result<(), Refused> {
        // An IPv4 address in IPv6 clothing is judged as the IPv4 address it reaches.
        let (addr, seen) = (embedded_v4(addr).map_or(addr, IpAddr::V4), addr);
        if METADATA.contains(&addr) {
            return match self.allowed.iter().any(|net| names_only(net, addr)) {
                true => Ok(()),
                false => Err(Refused {
                    addr: seen,
                    what: "a cloud metadata address",
                }),
            };
        }
        let Some(what) = special_range(addr) else {
            return Ok(());
        };
        if self
            .allowed
            .iter()
            .any(|net| net.contains(&addr) || net.contains(&seen))
        {
            return Ok(());
        }
        Err(Refused { addr: seen, what })
    }

    /// Resolves `host` (a name or an IP literal, IPv6 without brackets) and checks every
    /// address it resolves to: one refused answer refuses the host, so a name cannot mix a
    /// private address into a public set. The caller connects only to what this returns.
    pub(crate) async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Denied> {
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => match &self.lookup {
                Some(lookup) => lookup(host, port),
                None => tokio::net::lookup_host((host, port))
                    .await
                    .map(Iterator::collect),
            }
            .map_err(|e| Denied::Unresolved(format!("failed to resolve {host}: {e}")))?,
        };
        if addrs.is_empty() {
            return Err(Denied::Unresolved(format!("{host} has no address")));
        }
        for addr in &addrs {
            self.check(addr.ip()).map_err(Denied::Refused)?;
        }
        Ok(addrs)
    }
}

/// Why a host cannot be reached under the policy.
#[derive(Debug, Clone)]
pub(crate) enum Denied {
    Refused(Refused),
    /// DNS gave nothing usable (said as is: it names the host, not a secret).
    Unresolved(String),
}

fn special_range(addr: IpAddr) -> Option<&'static str> {
    SPECIAL.iter().find_map(|(net, what)| {
        let net: IpNet = net.parse().ok()?;
        net.contains(&addr).then_some(*what)
    })
}

/// An entry that is exactly this one address.
fn names_only(net: &IpNet, addr: IpAddr) -> bool {
    net.addr() == addr && net.prefix_len() == net.max_prefix_len()
}

/// The IPv4 address behind an IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d),
/// NAT64 (64:ff9b::/96) or 6to4 (2002::/16) IPv6 address: each can carry traffic to it.
fn embedded_v4(addr: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = addr else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        // ::a.b.c.d, but not :: and ::1 (judged as IPv6).
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn nets(list: &[&str]) -> NetworkPolicy {
        NetworkPolicy::allowing(list.iter().map(|n| n.parse().expect("cidr")).collect())
    }

    fn refused_as(policy: &NetworkPolicy, addr: &str) -> &'static str {
        match policy.check(ip(addr)) {
            Err(refused) => refused.what,
            Ok(()) => panic!("{addr} was allowed"),
        }
    }

    #[test]
    fn every_special_range_parses() {
        for (net, _) in SPECIAL {
            assert!(net.parse::<IpNet>().is_ok(), "{net}");
        }
    }

    #[test]
    fn public_addresses_pass_and_special_ones_are_refused_by_default() {
        let policy = NetworkPolicy::default();
        for public in ["140.82.112.3", "8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert_eq!(policy.check(ip(public)), Ok(()), "{public}");
        }
        for (addr, what) in [
            ("127.0.0.1", "a loopback address"),
            ("127.0.0.2", "a loopback address"),
            ("0.0.0.0", "a 'this network' address"),
            ("10.1.2.3", "a private address"),
            ("172.31.255.255", "a private address"),
            ("192.168.1.1", "a private address"),
            ("100.64.0.1", "a shared (carrier-grade NAT) address"),
            ("169.254.1.1", "a link-local address"),
            ("224.0.0.1", "a multicast address"),
            ("255.255.255.255", "a reserved address"),
            ("::1", "a loopback address"),
            ("::", "the unspecified address"),
            ("fe80::1", "a link-local address"),
            ("fd12:3456::1", "a unique-local (private) address"),
            ("ff02::1", "a multicast address"),
        ] {
            assert_eq!(refused_as(&policy, addr), what, "{addr}");
        }
        assert_eq!(
            policy.check(ip("172.32.0.1")),
            Ok(()),
            "just past 172.16/12"
        );
    }

    #[test]
    fn metadata_addresses_are_named_and_need_an_exact_entry() {
        let wide = nets(&["169.254.0.0/16", "fd00::/8"]);
        for addr in ["169.254.169.254", "fd00:ec2::254", "100.100.100.200"] {
            assert_eq!(
                refused_as(&wide, addr),
                "a cloud metadata address",
                "{addr}"
            );
        }
        assert_eq!(
            wide.check(ip("169.254.1.1")),
            Ok(()),
            "the rest of the range"
        );
        let exact = nets(&["169.254.169.254/32"]);
        assert_eq!(exact.check(ip("169.254.169.254")), Ok(()));
    }

    #[test]
    fn ipv4_inside_ipv6_is_judged_as_ipv4() {
        let policy = NetworkPolicy::default();
        for addr in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ] {
            assert_eq!(refused_as(&policy, addr), "a loopback address", "{addr}");
        }
        assert_eq!(
            refused_as(&policy, "::ffff:169.254.169.254"),
            "a cloud metadata address"
        );
        assert_eq!(policy.check(ip("::ffff:8.8.8.8")), Ok(()));
        // The refusal names the address as resolved.
        let refused = policy.check(ip("::ffff:10.0.0.1")).expect_err("refused");
        assert_eq!(refused.addr, ip("::ffff:10.0.0.1"));
    }

    #[test]
    fn the_allowlist_opens_exactly_its_networks() {
        let policy = nets(&["127.0.0.0/8", "::1/128", "10.20.0.0/16"]);
        for addr in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "10.20.3.4",
        ] {
            assert_eq!(policy.check(ip(addr)), Ok(()), "{addr}");
        }
        assert_eq!(refused_as(&policy, "10.21.0.1"), "a private address");
        assert_eq!(refused_as(&policy, "fe80::1"), "a link-local address");
        assert_eq!(refused_as(&policy, "0.0.0.0"), "a 'this network' address");
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_without_an_entry() {
        let refused = NetworkPolicy::default().resolve("localhost", 80).await;
        assert!(matches!(refused, Err(Denied::Refused(_))), "{refused:?}");
        let allowed = nets(&["127.0.0.0/8", "::1/128"])
            .resolve("localhost", 80)
            .await
            .expect("allowed");
        assert!(allowed.iter().all(|a| a.ip().is_loopback()));
    }

    #[tokio::test]
    async fn a_given_lookup_replaces_the_system_resolver_and_is_checked() {
        let lookup: Lookup = Arc::new(|_, port| Ok(vec![SocketAddr::new(ip("10.9.9.9"), port)]));
        let refused = NetworkPolicy::default()
            .resolving_with(lookup.clone())
            .resolve("localhost", 443)
            .await;
        assert!(
            matches!(&refused, Err(Denied::Refused(r)) if r.what == "a private address"),
            "{refused:?}"
        );
        let allowed = nets(&["10.9.0.0/16"])
            .resolving_with(lookup)
            .resolve("localhost", 443)
            .await
            .expect("allowed");
        assert_eq!(allowed, vec![SocketAddr::new(ip("10.9.9.9"), 443)]);
    }
}
