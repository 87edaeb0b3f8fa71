//! The first request on a connection from libgit2: read and parsed (httparse), then passed on
//! with its Host set to the real git host.
//!
//! Header values are never logged or put into errors: an http remote's Authorization header
//! passes through here.

use tokio::io::{AsyncRead, AsyncReadExt};

/// libgit2's request heads are a few hundred bytes; anything past this is not libgit2.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// Headers about the hop to the relay, not meant for the git host (the relay sets its own
/// Host and Connection).
const HOP_HEADERS: [&str; 6] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "upgrade",
];

pub(super) struct Head {
    pub method: String,
    /// Origin-form path.
    pub target: String,
    headers: Vec<(String, Vec<u8>)>,
    /// Bytes read past the head (the start of a body): passed on as they are.
    pub rest: Vec<u8>,
}

impl Head {
    /// Reads up to the end of the head. Errors say what was wrong, never what was sent.
    pub(super) async fn read(conn: &mut (impl AsyncRead + Unpin)) -> Result<Self, &'static str> {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            let n = conn
                .read(&mut chunk)
                .await
                .map_err(|_| "the connection failed")?;
            if n == 0 {
                return Err("the connection closed before a request");
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = Self {
                        method: req.method.unwrap_or_default().to_owned(),
                        target: req.path.unwrap_or_default().to_owned(),
                        headers: req
                            .headers
                            .iter()
                            .map(|h| (h.name.to_owned(), h.value.to_vec()))
                            .collect(),
                        rest: Vec::new(),
                    };
                    return Ok(Self {
                        rest: buf[len..].to_vec(),
                        ..head
                    });
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => return Err("the request head is too long"),
                Err(_) => return Err("the request is not HTTP/1.1"),
            }
        }
    }

    /// The request for the git host: origin-form, its own Host, and one request per
    /// connection (`Connection: close`), so a later request cannot reuse a connection
    /// that was checked for another host.
    pub(super) fn forwarded(&self, host_header: &str) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (name, value) in &self.headers {
            if HOP_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!("Host: {host_header}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(&self.rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_is_passed_on_with_the_real_host_and_without_hop_headers() {
        let sent: &[u8] = b"POST /a/b.git/git-upload-pack HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\
            Authorization: Basic c2VjcmV0\r\nProxy-Authorization: Basic eA==\r\n\
            Connection: keep-alive\r\nContent-Length: 4\r\n\r\nbody";
        let mut conn = sent;
        let head = Head::read(&mut conn).await.expect("head");
        let out = String::from_utf8(head.forwarded("git.example:8080")).expect("utf8");
        assert_eq!(
            out,
            "POST /a/b.git/git-upload-pack HTTP/1.1\r\nAuthorization: Basic c2VjcmV0\r\n\
             Content-Length: 4\r\nHost: git.example:8080\r\nConnection: close\r\n\r\nbody"
        );
    }

    #[tokio::test]
    async fn garbage_and_endless_heads_are_refused() {
        let mut garbage: &[u8] = b"\x16\x03\x01 hello\r\n\r\n";
        assert!(Head::read(&mut garbage).await.is_err());
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(Head::read(&mut endless.as_bytes()).await.is_err());
    }
}
