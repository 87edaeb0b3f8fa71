//! A relay on 127.0.0.1 that lives for one fetch. libgit2 connects to it instead of the git
//! host; the relay resolves the host itself, checks every address against the policy, and
//! connects to an address it checked, so a name that rebinds between check and connect gets
//! nowhere. Every connection is cut when the fetch's build is cancelled or its deadline
//! passes (libgit2 calls back nothing while it reads the ref list), and when the fetch ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::head::Head;
use super::policy::{Denied, NetworkPolicy};
use crate::source::stop::Stop;

/// The http host the relay stands in for: libgit2 1.9 sends http requests straight to the
/// server, never through a proxy, so the relay takes them as the server and passes them on.
#[derive(Clone)]
pub(super) struct Target {
    pub host: String,
    pub port: u16,
    pub host_header: String,
}

pub(super) struct Relay {
    pub addr: SocketAddr,
    /// The first address the relay refused, said as "<host> resolves to ...".
    refusal: Arc<Mutex<Option<String>>>,
    _lifetime: DropGuard,
}

impl Relay {
    pub(super) async fn start(
        policy: NetworkPolicy,
        target: Target,
        stop: Stop,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let refusal = Arc::new(Mutex::new(None));
        let lifetime = CancellationToken::new();
        let conn = Conn {
            policy,
            target,
            refusal: refusal.clone(),
        };
        tokio::spawn(accept(listener, conn, stop, lifetime.clone()));
        Ok(Self {
            addr,
            refusal,
            _lifetime: lifetime.drop_guard(),
        })
    }

    pub(super) fn refusal(&self) -> Option<String> {
        self.refusal.lock().ok().and_then(|r| r.clone())
    }
}

async fn accept(listener: TcpListener, conn: Conn, stop: Stop, lifetime: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.reached() => return,
            _ = lifetime.cancelled() => return,
        };
        let Ok((client, _)) = accepted else { return };
        let (conn, stop, lifetime) = (conn.clone(), stop.clone(), lifetime.clone());
        tokio::spawn(async move {
            // Dropping `serve` closes both sides, which is what ends libgit2's blocking read.
            tokio::select! {
                _ = conn.serve(client) => {}
                _ = stop.reached() => {}
                _ = lifetime.cancelled() => {}
            }
        });
    }
}

#[derive(Clone)]
struct Conn {
    policy: NetworkPolicy,
    target: Target,
    refusal: Arc<Mutex<Option<String>>>,
}

impl Conn {
    async fn serve(&self, mut client: TcpStream) {
        let head = match Head::read(&mut client).await {
            Ok(head) => head,
            Err(why) => {
                tracing::debug!("egress relay: {why}");
                return;
            }
        };
        if !head.target.starts_with('/') {
            let _ = client.write_all(&status(400, "Bad Request")).await;
            return;
        }
        let Target {
            host,
            port,
            host_header,
        } = &self.target;
        let addrs = match self.policy.resolve(host, *port).await {
            Ok(addrs) => addrs,
            Err(Denied::Refused(refused)) => {
                if let Ok(mut slot) = self.refusal.lock() {
                    slot.get_or_insert(format!("{host} {refused}"));
                }
                let _ = client.write_all(&status(403, "Forbidden")).await;
                return;
            }
            Err(Denied::Unresolved(why)) => {
                tracing::debug!("egress relay: {why}");
                let _ = client.write_all(&status(502, "Bad Gateway")).await;
                return;
            }
        };
        // Only addresses that passed the check: no second lookup.
        let Ok(mut server) = TcpStream::connect(&addrs[..]).await else {
            let _ = client.write_all(&status(502, "Bad Gateway")).await;
            return;
        };
        let first = head.forwarded(host_header);
        if server.write_all(&first).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}

fn status(code: u16, text: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code} {text}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::AsyncReadExt;

    use super::*;

    fn stop() -> Stop {
        Stop::new(
            &CancellationToken::new(),
            Instant::now() + Duration::from_secs(600),
        )
    }

    fn target(addr: SocketAddr) -> Target {
        Target {
            host: addr.ip().to_string(),
            port: addr.port(),
            host_header: addr.to_string(),
        }
    }

    /// Sends a request head to the relay; returns the connection.
    async fn ask(relay: &Relay) -> TcpStream {
        let mut client = TcpStream::connect(relay.addr).await.expect("relay");
        let ask = "GET /a.git/info/refs HTTP/1.1\r\nHost: x\r\n\r\n";
        client.write_all(ask.as_bytes()).await.expect("ask");
        client
    }

    #[tokio::test]
    async fn a_refused_target_is_never_connected_to() {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("target");
        let addr = target.local_addr().expect("addr");
        let relay = Relay::start(NetworkPolicy::default(), self::target(addr), stop())
            .await
            .expect("relay");
        let mut client = ask(&relay).await;
        let mut answer = vec![0; 128];
        let n = client.read(&mut answer).await.expect("answer");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        let refusal = relay.refusal().expect("recorded");
        assert!(refusal.contains("a loopback address"), "{refusal}");
        // The relay answers only after connecting, so had it connected, its connection would
        // be the first in the backlog: the first one must be this marker.
        let mut marker = TcpStream::connect(addr).await.expect("marker");
        marker.write_all(b"mine").await.expect("marker write");
        let (mut first, _) = target.accept().await.expect("accept");
        let mut got = [0; 4];
        first.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"mine", "the relay connected to the target");
    }

    #[tokio::test]
    async fn an_allowed_target_gets_the_request_and_is_cut_on_cancel() {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("target");
        let addr = target.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let stop = Stop::new(&cancel, Instant::now() + Duration::from_secs(600));
        let policy = NetworkPolicy::allowing(vec!["127.0.0.0/8".parse().expect("cidr")]);
        let relay = Relay::start(policy, self::target(addr), stop)
            .await
            .expect("relay");
        let mut client = ask(&relay).await;
        let (mut server, _) = target.accept().await.expect("accepted");
        let mut head = vec![0; 256];
        let n = server.read(&mut head).await.expect("request");
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.contains(&format!("Host: {addr}\r\n")), "{head}");
        server.write_all(b"hello").await.expect("write");
        let mut got = [0; 5];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");

        cancel.cancel();
        let mut rest = Vec::new();
        let n = client.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "the relay closed the connection on cancel");
    }
}
