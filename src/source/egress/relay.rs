//! A relay on 127.0.0.1 that lives for one fetch. libgit2 connects to it instead of the git
//! host; the relay resolves the host itself, checks every address against the policy, and
//! connects to an address it checked, so a name that rebinds between check and connect gets
//! nowhere. Every connection is cut when the fetch's build is cancelled or its deadline
//! passes (libgit2 calls back nothing while it reads the ref list), and when the fetch ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
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
        let (mut from_client, mut to_client) = client.split();
        let (mut from_server, mut to_server) = server.split();
        // The request's body flows on while the answer's status line is read.
        let upstream = async {
            let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
            let _ = to_server.shutdown().await;
            std::future::pending::<()>().await
        };
        let downstream = async {
            let Some(start) = status_line(&mut from_server).await else {
                return;
            };
            if let Some(code) = redirect(&start) {
                if let Ok(mut slot) = self.refusal.lock() {
                    slot.get_or_insert(format!(
                        "{host} answered with a redirect (HTTP {code}), and redirects are not \
                         followed: give the repository's final URL"
                    ));
                }
                let _ = to_client.write_all(&status(502, "Bad Gateway")).await;
                return;
            }
            if to_client.write_all(&start).await.is_ok() {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            }
        };
        // One request per connection (`Connection: close`): the answer's end is the end.
        tokio::select! {
            _ = upstream => {}
            _ = downstream => {}
        }
    }
}

/// Enough of an answer to read its status code ("HTTP/1.1 302"), or all of a shorter one.
const STATUS_START: usize = 12;

/// The answer's first bytes, at least `STATUS_START` of them unless it is shorter; None when
/// the server failed before sending any.
async fn status_line(server: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut start = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while start.len() < STATUS_START {
        match server.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => start.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
    }
    (!start.is_empty()).then_some(start)
}

/// The status code of an answer that redirects. libgit2 follows a redirect to another port of
/// the same host even with redirects off; its host is the relay's, on loopback, so a redirect
/// passed on would take the fetch past the relay to any local port (the broker, the store).
fn redirect(start: &[u8]) -> Option<u16> {
    let line = start.get(..STATUS_START)?;
    let code = std::str::from_utf8(line.strip_prefix(b"HTTP/1.")?.get(2..5)?).ok()?;
    let code: u16 = code.parse().ok()?;
    (300..400).contains(&code).then_some(code)
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
        let answer = b"HTTP/1.1 200 OK\r\n\r\nhello";
        server.write_all(answer).await.expect("write");
        let mut got = [0; 24];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, answer);

        cancel.cancel();
        let mut rest = Vec::new();
        let n = client.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "the relay closed the connection on cancel");
    }

    /// A redirect never reaches libgit2, which would follow it to another port of the relay's
    /// own host (loopback) past the policy: the fetch gets a 502 and the refusal says why.
    #[tokio::test]
    async fn a_redirect_is_answered_by_the_relay_and_recorded() {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("target");
        let addr = target.local_addr().expect("addr");
        let policy = NetworkPolicy::allowing(vec!["127.0.0.0/8".parse().expect("cidr")]);
        let relay = Relay::start(policy, self::target(addr), stop())
            .await
            .expect("relay");
        let mut client = ask(&relay).await;
        let (mut server, _) = target.accept().await.expect("accepted");
        let mut head = vec![0; 256];
        let _ = server.read(&mut head).await.expect("request");
        let moved = "HTTP/1.1 301 Moved Permanently\r\nLocation: http://127.0.0.1:5672/\r\n\r\n";
        server.write_all(moved.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("answer");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert!(!answer.contains("5672"), "{answer}");
        let refusal = relay.refusal().expect("recorded");
        assert!(refusal.contains("redirect (HTTP 301)"), "{refusal}");
    }

    #[test]
    fn only_3xx_answers_are_redirects() {
        assert_eq!(redirect(b"HTTP/1.1 302 Found\r\n"), Some(302));
        assert_eq!(redirect(b"HTTP/1.0 307 x"), Some(307));
        assert_eq!(redirect(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(redirect(b"HTTP/1.1 404 Not Found"), None);
        assert_eq!(redirect(b"hello"), None);
    }
}
