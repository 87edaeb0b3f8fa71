//! Outbound policy for git hosts (`request.allowed_networks`): where one fetch may connect, and
//! the route it takes so that the connection goes to the address that was checked.
//!
//! - https and git://: libgit2 fetches through our own transports (`pinned`), which connect to
//!   the addresses the host was checked to and never look the name up again.
//! - http: libgit2 1.9 never sends http through a proxy, so it fetches from the relay as if it
//!   were the host, and the relay passes each request on (redirects are not followed: they
//!   would go around the relay).
//! - file:// has no host (trusted producers only). Any other scheme is refused.

mod head;
mod pinned;
mod policy;
mod relay;

use std::sync::Arc;
use std::time::Duration;

use url::{Host, Url};

pub use pinned::ExtraRoots;
pub use policy::{Lookup, NetworkPolicy};

use self::pinned::{Bounds, Pinned};
pub(super) use self::pinned::{Entered, install};
use self::policy::Denied;
use self::relay::{Relay, Target};
use super::credentials::Token;
use super::stop::Stop;
use crate::error::BuildError;
use crate::request::Rejection;

/// Connecting gives up after this (or the stall bound, when shorter).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How one fetch reaches its remote. Dropping it closes the relay and its connections.
pub(super) struct Route {
    remote: Url,
    /// What libgit2 fetches: the remote itself, or the relay standing in for an http host.
    pub fetch_url: Url,
    relay: Option<Relay>,
    /// https and git://: the checked addresses our transports connect to.
    pinned: Option<Arc<Pinned>>,
}

impl Route {
    /// Checks the remote's host (before any connection, so a refusal names the URL) and sets
    /// up the route its fetch takes. `stall` bounds each read of the pinned transports.
    pub(super) async fn open(
        policy: &NetworkPolicy,
        roots: &ExtraRoots,
        remote: &Url,
        stop: &Stop,
        stall: Duration,
    ) -> Result<Self, BuildError> {
        let mut route = Self {
            remote: remote.clone(),
            fetch_url: remote.clone(),
            relay: None,
            pinned: None,
        };
        let host = match remote.host() {
            Some(Host::Domain(name)) => name.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            // file:// reads the local disk (and is for trusted producers only).
            None => return Ok(route),
        };
        let scheme = remote.scheme();
        if !matches!(scheme, "http" | "https" | "git") {
            return Err(
                Rejection::new("repo", format!("{scheme}:// remotes are not supported")).into(),
            );
        }
        let port = remote
            .port_or_known_default()
            .or_else(|| (scheme == "git").then_some(9418))
            .ok_or_else(|| {
                Rejection::new("repo", format!("{remote} has no port and no known default"))
            })?;
        let addrs = policy
            .resolve(&host, port)
            .await
            .map_err(|denied| refusal(remote, denied))?;
        if scheme != "http" {
            let bounds = Bounds {
                connect: CONNECT_TIMEOUT.min(stall),
                stall,
            };
            let pinned = Pinned::new(remote, host, addrs, roots, stop.clone(), bounds)
                .map_err(|e| BuildError::Internal(anyhow::anyhow!(e)))?;
            route.pinned = Some(Arc::new(pinned));
            return Ok(route);
        }
        let target = Target {
            host_header: match remote.port() {
                Some(port) => format!("{}:{port}", remote.host_str().unwrap_or_default()),
                None => remote.host_str().unwrap_or_default().to_owned(),
            },
            host,
            port,
        };
        let relay = Relay::start(policy.clone(), target, stop.clone())
            .await
            .map_err(|e| {
                BuildError::Internal(anyhow::anyhow!("failed to start the egress relay: {e}"))
            })?;
        let stand_in = (route.fetch_url.set_ip_host(relay.addr.ip()).ok())
            .and_then(|()| route.fetch_url.set_port(Some(relay.addr.port())).ok());
        if stand_in.is_none() {
            return Err(BuildError::Internal(anyhow::anyhow!(
                "failed to point {remote} at the egress relay"
            )));
        }
        route.relay = Some(relay);
        Ok(route)
    }

    /// Until the returned guard drops, the https or git:// transport libgit2 creates on this
    /// thread connects to this route's checked addresses (and offers `token`). `None` for
    /// routes that need no transport of ours.
    pub(super) fn enter(&self, token: &Arc<Token>) -> Option<Entered> {
        let pinned = self.pinned.clone()?;
        Some(pinned::enter(pinned, token.clone()))
    }

    /// The refusal that failed the fetch, if the relay refused an address.
    pub(super) fn refused(&self) -> Option<BuildError> {
        let why = self.relay.as_ref()?.refusal()?;
        Some(Rejection::new("repo", format!("{} is refused: {why}", self.remote)).into())
    }
}

fn refusal(remote: &Url, denied: Denied) -> BuildError {
    match denied {
        Denied::Refused(refused) => Rejection::new("repo", format!("{remote} {refused}")).into(),
        Denied::Unresolved(why) => BuildError::GitUnavailable(format!("{remote}: {why}")),
    }
}
