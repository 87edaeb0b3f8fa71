//! Where the Docker Engine API daemon listens, parsed once from `build.docker_host`.

use std::fmt;

use bollard::{API_DEFAULT_VERSION, Docker};

/// A daemon address: a unix socket, or plain HTTP (`tcp://` is docker's spelling of it).
/// TLS (`https://`) is not offered: bollard's TLS would pull in a second TLS stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerHost {
    kind: Kind,
    /// As configured, for messages.
    shown: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
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
        let kind = if let Some(path) = raw.strip_prefix("unix://") {
            if !path.starts_with('/') || path.len() < 2 || path.contains('\0') {
                return Err(format!("{expected}; {raw:?} has no absolute socket path"));
            }
            Kind::Unix(path.to_owned())
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
            Kind::Http(format!("{host}:{port}"))
        } else {
            return Err(format!("{expected}, not {raw:?}"));
        };
        Ok(Self {
            kind,
            shown: raw.to_owned(),
        })
    }

    /// A client for this daemon. Nothing is sent yet; a unix socket that does not exist is
    /// already an error here. `timeout_secs` bounds each request up to its response headers
    /// (for a build that includes uploading the context).
    pub fn client(&self, timeout_secs: u64) -> Result<Docker, bollard::errors::Error> {
        match &self.kind {
            Kind::Unix(path) => Docker::connect_with_unix(path, timeout_secs, API_DEFAULT_VERSION),
            Kind::Http(addr) => Docker::connect_with_http(addr, timeout_secs, API_DEFAULT_VERSION),
        }
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
        assert_eq!(unix.kind, Kind::Unix("/var/run/docker.sock".into()));
        assert_eq!(unix.to_string(), "unix:///var/run/docker.sock");
        let tcp = DockerHost::parse("tcp://10.0.0.5:2375").expect("tcp");
        assert_eq!(tcp.kind, Kind::Http("10.0.0.5:2375".into()));
        let http = DockerHost::parse("http://builder.internal:2375/").expect("http");
        assert_eq!(http.kind, Kind::Http("builder.internal:2375".into()));
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
