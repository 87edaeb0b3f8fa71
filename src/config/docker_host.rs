//! `build.docker_host`: where the Docker Engine API daemon listens, parsed when the config loads.

use std::fmt;

/// A daemon address: a unix socket, or plain HTTP (`tcp://` is docker's spelling of it).
/// TLS (`https://`) is not offered: bollard's TLS would pull in a second TLS stack.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct DockerHost {
    address: DockerAddress,
    /// As configured, for messages.
    shown: String,
}

/// How to reach the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerAddress {
    /// Absolute path of the socket.
    Unix(String),
    /// `host:port`.
    Http(String),
}

impl DockerHost {
    /// Accepts `unix:///abs/path`, `tcp://host:port` and `http://host:port`; the error says
    /// what is expected (the caller prefixes the field name).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let expected = "must be unix:///path/to/docker.sock, tcp://host:port or http://host:port";
        let address = if let Some(path) = raw.strip_prefix("unix://") {
            if !path.starts_with('/') || path.len() < 2 || path.contains('\0') {
                return Err(format!("{expected}; {raw:?} has no absolute socket path"));
            }
            DockerAddress::Unix(path.to_owned())
        } else if let Some(rest) = raw
            .strip_prefix("tcp://")
            .or_else(|| raw.strip_prefix("http://"))
        {
            let url = url::Url::parse(&format!("http://{rest}"))
                .map_err(|e| format!("{expected}; {raw:?}: {e}"))?;
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                return Err(format!("{expected}; {raw:?} has no host"));
            };
            // bollard appends `/v1.xx/...` to the address: a path or credentials would be lost
            // or mangled, so they are refused rather than half-honoured.
            if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
                return Err(format!("{expected}; {raw:?} may not carry a path or user"));
            }
            DockerAddress::Http(format!("{host}:{port}"))
        } else {
            return Err(format!("{expected}, not {raw:?}"));
        };
        Ok(Self {
            address,
            shown: raw.to_owned(),
        })
    }

    pub fn address(&self) -> &DockerAddress {
        &self.address
    }
}

/// For serde: the message names the setting.
impl TryFrom<String> for DockerHost {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw).map_err(|e| format!("build.docker_host {e}"))
    }
}

impl fmt::Display for DockerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unix_sockets_and_http_addresses() {
        let unix = DockerHost::parse("unix:///var/run/docker.sock").expect("unix");
        assert_eq!(
            unix.address,
            DockerAddress::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(unix.to_string(), "unix:///var/run/docker.sock");
        let tcp = DockerHost::parse("tcp://10.0.0.5:2375").expect("tcp");
        assert_eq!(tcp.address, DockerAddress::Http("10.0.0.5:2375".into()));
        let http = DockerHost::parse("http://builder.internal:2375/").expect("http");
        assert_eq!(
            http.address,
            DockerAddress::Http("builder.internal:2375".into())
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for raw in [
            "",
            "/var/run/docker.sock",
            "unix://relative.sock",
            "unix://",
            "https://host:2376",
            "ssh://user@host",
            "tcp://",
            "tcp://host:2375/prefix",
            "tcp://user:pw@host:2375",
        ] {
            let err = DockerHost::parse(raw).expect_err(raw);
            assert!(err.starts_with("must be unix://"), "{raw}: {err}");
        }
    }
}
