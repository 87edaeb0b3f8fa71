//! Smart HTTP over TLS to the checked addresses. The client resolves the URL's host to those
//! addresses and refuses any other name; TLS sends the URL's host as SNI and verifies the
//! certificate against it (system roots plus `request.git_ca_file`). Redirects are followed
//! only within the remote's scheme, host and port (the same checked addresses); the token is
//! sent only after the host asks for it, as libgit2 does.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use git2::transport::{Service, SmartSubtransportStream};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use url::Url;

use super::{Bounds, ExtraRoots, Session, net_error};
use crate::source::credentials::same_origin;

const USER_AGENT: &str = concat!("git/2.0 (image-builder ", env!("CARGO_PKG_VERSION"), ")");
const MAX_REDIRECTS: usize = 5;
/// Request, response, and what the body of a request is.
const LIST_REFS: Exchange = Exchange {
    method: Method::GET,
    path: "info/refs",
    query: Some("service=git-upload-pack"),
    response_type: "application/x-git-upload-pack-advertisement",
};
const UPLOAD_PACK: Exchange = Exchange {
    method: Method::POST,
    path: "git-upload-pack",
    query: None,
    response_type: "application/x-git-upload-pack-result",
};
const UPLOAD_PACK_REQUEST: &str = "application/x-git-upload-pack-request";

struct Exchange {
    method: Method,
    path: &'static str,
    query: Option<&'static str>,
    response_type: &'static str,
}

/// A client for one fetch: `host` resolves to `addrs`, nothing else resolves, no proxy, no
/// redirects of its own (the stream follows the allowed ones).
pub(super) fn client(
    host: &str,
    addrs: &[SocketAddr],
    roots: &ExtraRoots,
    bounds: Bounds,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Checked {
            host: host.to_ascii_lowercase(),
            addrs: addrs.to_vec(),
        })
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .https_only(true)
        .http1_only()
        .connect_timeout(bounds.connect)
        .tls_certs_merge(roots.certificates())
        .user_agent(USER_AGENT)
        .build()
}

/// Resolves the remote's host to its checked addresses, and no other name at all.
struct Checked {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl Resolve for Checked {
    fn resolve(&self, name: Name) -> Resolving {
        let answer = match name.as_str().eq_ignore_ascii_case(&self.host) {
            true => Ok(Box::new(self.addrs.clone().into_iter()) as Addrs),
            false => Err(format!("{} is not the checked host", name.as_str()).into()),
        };
        Box::pin(std::future::ready(answer))
    }
}

/// The smart subtransport of one https fetch.
pub(super) struct Smart {
    session: Session,
    /// Where the repository is: the remote, or where a redirect of the ref list moved it.
    base: Arc<Mutex<Url>>,
}

impl Smart {
    pub(super) fn new(session: Session) -> Self {
        let base = Arc::new(Mutex::new(session.pinned.remote.clone()));
        Self { session, base }
    }

    pub(super) fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        if !same_origin(&self.session.pinned.remote, url) {
            return Err(git2::Error::from_str(
                "libgit2 asked for a URL other than the checked remote",
            ));
        }
        let exchange = match action {
            Service::UploadPackLs => LIST_REFS,
            _ => UPLOAD_PACK,
        };
        Ok(Box::new(Stream {
            session: self.session.clone(),
            base: self.base.clone(),
            exchange,
            body: Vec::new(),
            response: None,
            pending: Vec::new(),
            at: 0,
        }))
    }
}

/// One request: what libgit2 writes is its body, sent on the first read; reads give the
/// response body.
struct Stream {
    session: Session,
    base: Arc<Mutex<Url>>,
    exchange: Exchange,
    body: Vec<u8>,
    /// `None` until sent; `Some(None)` once the body has ended.
    response: Option<Option<reqwest::Response>>,
    pending: Vec<u8>,
    at: usize,
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.response.is_some() {
            return Err(net_error("libgit2 wrote after reading the response"));
        }
        self.body.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.response.is_none() {
            self.response = Some(Some(self.send()?));
        }
        while self.at == self.pending.len() {
            let Some(Some(response)) = self.response.as_mut() else {
                return Ok(0);
            };
            let pinned = &self.session.pinned;
            match pinned.wait(async { response.chunk().await.map_err(|e| failed(pinned, &e)) })? {
                Some(chunk) => (self.pending, self.at) = (chunk.to_vec(), 0),
                None => self.response = Some(None),
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Stream {
    fn url(&self) -> std::io::Result<Url> {
        let base = self
            .base
            .lock()
            .map_err(|_| net_error("the https transport's state was poisoned"))?;
        let mut url = base.clone();
        let path = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            self.exchange.path
        );
        url.set_path(&path);
        url.set_query(self.exchange.query);
        url.set_fragment(None);
        Ok(url)
    }

    /// Sends the request, following allowed redirects and answering one credentials challenge.
    fn send(&mut self) -> std::io::Result<reqwest::Response> {
        let mut url = self.url()?;
        for _ in 0..=MAX_REDIRECTS {
            let response = self.request(&url)?;
            let status = response.status();
            if status.is_success() {
                return self.checked(response, &url);
            }
            if status == StatusCode::UNAUTHORIZED {
                self.authorize(&response, &url)?;
            } else if status.is_redirection() && self.exchange.method == Method::GET {
                url = self.follow(&response, &url)?;
            } else if status == StatusCode::NOT_FOUND {
                return Err(net_error(format!("{url}: 404 not found")));
            } else {
                return Err(net_error(format!("{url} answered {status}")));
            }
        }
        Err(net_error(format!("{url}: too many redirects")))
    }

    fn request(&self, url: &Url) -> std::io::Result<reqwest::Response> {
        let pinned = &self.session.pinned;
        let http = pinned
            .http
            .as_ref()
            .ok_or_else(|| net_error("no https client for this fetch"))?;
        let mut request = http
            .request(self.exchange.method.clone(), url.clone())
            .header(ACCEPT, self.exchange.response_type);
        if self.exchange.method == Method::POST {
            request = request
                .header(CONTENT_TYPE, UPLOAD_PACK_REQUEST)
                .body(self.body.clone());
        }
        // Once the host asked and got the token, later requests carry it from the start.
        if let Some((user, token)) = self.session.token.granted() {
            request = request.basic_auth(user, Some(token.expose_secret()));
        }
        pinned.wait(async { request.send().await.map_err(|e| failed(pinned, &e)) })
    }

    /// A 401: take the token for the next try, or fail saying why not.
    fn authorize(&self, response: &reqwest::Response, url: &Url) -> std::io::Result<()> {
        let basic = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .any(|v| {
                v.as_bytes()
                    .get(..6)
                    .is_some_and(|s| s.eq_ignore_ascii_case(b"basic "))
            });
        match self.session.token.ask(url.as_str(), basic) {
            Ok(_) => Ok(()),
            Err(why) => Err(net_error(format!("{url}: 401: {why}"))),
        }
    }

    /// The target of a redirect of the ref list, if it stays on the checked host; the
    /// repository's base moves with it, as libgit2 does.
    fn follow(&self, response: &reqwest::Response, url: &Url) -> std::io::Result<Url> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| net_error(format!("{url} redirected without a location")))?;
        let next = url
            .join(location)
            .map_err(|_| net_error(format!("{url} redirected to an invalid location")))?;
        if !same_origin(&self.session.pinned.remote, next.as_str()) {
            return Err(net_error(format!(
                "{url} redirected to {}, which is not followed: only the checked host is \
                 connected to",
                origin(&next)
            )));
        }
        let suffix = format!("/{}", LIST_REFS.path);
        let Some(base_path) = next.path().strip_suffix(&suffix) else {
            return Err(net_error(format!(
                "{url} redirected to {}, which is not a git repository's ref list",
                next.path()
            )));
        };
        let mut base = next.clone();
        base.set_path(base_path);
        base.set_query(None);
        if let Ok(mut slot) = self.base.lock() {
            *slot = base;
        }
        Ok(next)
    }

    /// A success is only one if it is smart git: a dumb server or a web page is not.
    fn checked(
        &self,
        response: reqwest::Response,
        url: &Url,
    ) -> std::io::Result<reqwest::Response> {
        let content_type = response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes());
        if content_type != Some(self.exchange.response_type.as_bytes()) {
            return Err(net_error(format!(
                "{url} did not answer as a smart git http server (content type is not {})",
                self.exchange.response_type
            )));
        }
        Ok(response)
    }
}

/// A failed request said as libgit2 would ("failed to connect ..." / "... timed out"), with
/// the causes (a certificate error is one).
fn failed(pinned: &super::Pinned, e: &reqwest::Error) -> std::io::Error {
    let mut why = String::new();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cause {
        why.push_str(": ");
        why.push_str(&c.to_string());
        cause = c.source();
    }
    let host = &pinned.host;
    match (e.is_connect(), e.is_timeout()) {
        (true, _) => net_error(format!("failed to connect to {host}{why}")),
        (false, true) => net_error(format!("could not read from {host}: timed out")),
        (false, false) => net_error(format!("{host}: {e}{why}")),
    }
}

fn origin(url: &Url) -> String {
    match url.port_or_known_default() {
        Some(port) => format!("{}://{}:{port}", url.scheme(), url.host_str().unwrap_or("")),
        None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")),
    }
}
