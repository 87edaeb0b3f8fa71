//! Outbound policy for git hosts (`request.allowed_networks`): where one fetch may connect, and
//! the route it takes so that the connection goes to the address that was checked.
//!
//! - https: checked just before the fetch, then libgit2 connects by itself (the relay's
//!   `CONNECT` route is built and unit-tested, but libgit2 1.9 hangs after a proxy's `200`).
//! - http: libgit2 1.9 never sends http through a proxy, so it fetches from the relay as if it
//!   were the host, and the relay passes each request on (redirects are not followed: they
//!   would go around the relay).
//! - git:// (and other non-http schemes): libgit2 connects by itself. The host is checked just
//!   before, but a name that rebinds in between is not caught: only for trusted producers
//!   (off unless `request.allowed_schemes` names the scheme).

mod head;
mod policy;
mod relay;

use url::{Host, Url};

pub use policy::{Lookup, NetworkPolicy};

use self::policy::Denied;
use self::relay::{Mode, Relay};
use super::stop::Stop;
use crate::error::BuildError;
use crate::request::Rejection;

/// How one fetch reaches its remote. Dropping it closes the relay and its connections.
pub(super) struct Route {
    remote: Url,
    /// What libgit2 fetches: the remote itself, or the relay standing in for an http host.
    pub fetch_url: Url,
    /// The proxy libgit2 tunnels through (https remotes).
    pub proxy: Option<String>,
    relay: Option<Relay>,
}

impl Route {
    /// Checks the remote's host (before any connection, so a refusal names the URL) and sets
    /// up the route its fetch takes.
    pub(super) async fn open(
        policy: &NetworkPolicy,
        remote: &Url,
        stop: &Stop,
    ) -> Result<Self, BuildError> {
        let mut route = Self {
            remote: remote.clone(),
            fetch_url: remote.clone(),
            proxy: None,
            relay: None,
        };
        let host = match remote.host() {
            Some(Host::Domain(name)) => name.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            // file:// reads the local disk (and is for trusted producers only).
            None => return Ok(route),
        };
        let port = remote
            .port_or_known_default()
            .or_else(|| (remote.scheme() == "git").then_some(9418))
            .ok_or_else(|| {
                Rejection::new("repo", format!("{remote} has no port and no known default"))
            })?;
        policy
            .resolve(&host, port)
            .await
            .map_err(|denied| refusal(remote, denied))?;
        let mode = match remote.scheme() {
            // libgit2 1.9 with OpenSSL hangs after a proxy answers its CONNECT (seen with this
            // relay and with a bare 20-line proxy alike): https connects by itself, to a host
            // checked just before, as git:// does, until that is solved.
            "https" => return Ok(route),
            "http" => Mode::Forward {
                host_header: match remote.port() {
                    Some(port) => format!("{}:{port}", remote.host_str().unwrap_or_default()),
                    None => remote.host_str().unwrap_or_default().to_owned(),
                },
                host,
                port,
            },
            _ => return Ok(route),
        };
        let relay = Relay::start(policy.clone(), mode.clone(), stop.clone())
            .await
            .map_err(|e| {
                BuildError::Internal(anyhow::anyhow!("failed to start the egress relay: {e}"))
            })?;
        match mode {
            Mode::Connect => route.proxy = Some(format!("http://{}", relay.addr)),
            Mode::Forward { .. } => {
                let stand_in = (route.fetch_url.set_ip_host(relay.addr.ip()).ok())
                    .and_then(|()| route.fetch_url.set_port(Some(relay.addr.port())).ok());
                if stand_in.is_none() {
                    return Err(BuildError::Internal(anyhow::anyhow!(
                        "failed to point {remote} at the egress relay"
                    )));
                }
            }
        }
        route.relay = Some(relay);
        Ok(route)
    }

    /// Whether libgit2 may follow redirects: not when it fetches from the relay directly.
    pub(super) fn follows_redirects(&self) -> bool {
        self.fetch_url == self.remote
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
