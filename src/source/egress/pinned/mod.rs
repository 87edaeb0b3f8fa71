//! libgit2 transports for https:// and git:// that connect only to the addresses the policy
//! checked: libgit2's own would look the name up again, and a name that rebinds between the
//! check and the connection would get through.
//!
//! Transports are registered once for the whole process. A fetch hands its checked addresses
//! to the transport through its own thread ([`enter`]): libgit2 creates a fetch's transport on
//! the thread that calls `fetch`, so fetches running side by side never see each other's.
//! A transport created on a thread with nothing entered refuses to connect.
//!
//! Not libgit2's https through the relay as a CONNECT proxy: when the server's certificate is
//! refused, libgit2 1.9 frees the proxy's socket before closing the TLS stream on top of it,
//! whose close_notify then waits in poll() on fd -1 with a timeout read from freed memory,
//! forever (httpclient.c `http_client_connect`, error path).

mod daemon;
mod https;
mod roots;

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use tokio::runtime::Handle;
use url::Url;

pub use roots::ExtraRoots;

use crate::source::credentials::{Token, same_origin};
use crate::source::stop::Stop;

/// One fetch's target: the remote, the addresses its host was checked to, and its bounds.
pub(in crate::source) struct Pinned {
    remote: Url,
    /// The URL's host as written (no brackets): TLS names it, the git:// request too.
    host: String,
    addrs: Vec<SocketAddr>,
    stop: Stop,
    runtime: Handle,
    stall: Duration,
    connect: Duration,
    /// https only: a client that resolves `host` to `addrs` and nothing else.
    http: Option<reqwest::Client>,
}

/// How long connecting and each read or write may take.
#[derive(Debug, Clone, Copy)]
pub(in crate::source) struct Bounds {
    pub connect: Duration,
    pub stall: Duration,
}

impl Pinned {
    /// Called from async code (it keeps the runtime the blocking transport waits on).
    pub(in crate::source) fn new(
        remote: &Url,
        host: String,
        addrs: Vec<SocketAddr>,
        roots: &ExtraRoots,
        stop: Stop,
        bounds: Bounds,
    ) -> Result<Self, String> {
        let http = match remote.scheme() {
            "https" => Some(
                https::client(&host, &addrs, roots, bounds)
                    .map_err(|e| format!("failed to set up the https client: {e}"))?,
            ),
            _ => None,
        };
        let runtime = Handle::try_current()
            .map_err(|e| format!("a pinned transport needs the async runtime: {e}"))?;
        Ok(Self {
            remote: remote.clone(),
            host,
            addrs,
            stop,
            runtime,
            stall: bounds.stall,
            connect: bounds.connect,
            http,
        })
    }

    /// Runs `io` to completion from the fetch's blocking thread; gives up when the build stops
    /// or after `stall` without an answer.
    fn wait<T>(&self, io: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
        self.runtime.block_on(async {
            tokio::select! {
                done = tokio::time::timeout(self.stall, io) => done.unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("could not read from {}: timed out", self.host),
                    ))
                }),
                _ = self.stop.reached() => Err(std::io::Error::other("the build was stopped")),
            }
        })
    }
}

/// What a transport needs from its fetch.
#[derive(Clone)]
struct Session {
    pinned: Arc<Pinned>,
    token: Arc<Token>,
}

thread_local! {
    static CURRENT: RefCell<Option<Session>> = const { RefCell::new(None) };
}

/// While alive, transports created on this thread use the entered route. Not `Send`: it
/// clears this thread's slot when dropped.
pub(in crate::source) struct Entered(PhantomData<*const ()>);

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|slot| slot.borrow_mut().take());
    }
}

/// Hands `pinned` (and the fetch's token) to the transports libgit2 creates on this thread.
pub(in crate::source) fn enter(pinned: Arc<Pinned>, token: Arc<Token>) -> Entered {
    install();
    CURRENT.with(|slot| *slot.borrow_mut() = Some(Session { pinned, token }));
    Entered(PhantomData)
}

/// Registers the transports, once per process. Called before any fetch can create a transport
/// (libgit2's list of transports is not locked against a registration running alongside).
#[allow(unsafe_code)]
pub(in crate::source) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (scheme, rpc) in [("https", true), ("git", false)] {
            // SAFETY: inside `call_once`, and every fetch calls `install` (through `enter`)
            // before libgit2 creates its transport, so no transport is being created while
            // this registers.
            let registered = unsafe {
                git2::transport::register(scheme, move |remote| {
                    Transport::smart(remote, rpc, Subtransport::for_remote(remote)?)
                })
            };
            if let Err(e) = registered {
                tracing::error!("failed to register the pinned {scheme}:// transport: {e}");
            }
        }
    });
}

/// The subtransport of one fetch, by scheme.
enum Subtransport {
    Https(https::Smart),
    Git(daemon::Daemon),
}

impl Subtransport {
    fn for_remote(remote: &git2::Remote<'_>) -> Result<Self, git2::Error> {
        let session = CURRENT.with(|slot| slot.borrow().clone()).ok_or_else(|| {
            git2::Error::from_str("no checked address for this fetch: it was not routed")
        })?;
        let url = remote.url().unwrap_or_default();
        if !same_origin(&session.pinned.remote, url) {
            return Err(git2::Error::from_str(
                "the fetch's URL is not the one whose address was checked",
            ));
        }
        match session.pinned.remote.scheme() {
            "https" => Ok(Self::Https(https::Smart::new(session))),
            _ => Ok(Self::Git(daemon::Daemon::new(session))),
        }
    }
}

impl SmartSubtransport for Subtransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        if matches!(action, Service::ReceivePackLs | Service::ReceivePack) {
            return Err(git2::Error::from_str("pushing is not supported"));
        }
        match self {
            Self::Https(smart) => smart.action(url, action),
            Self::Git(daemon) => daemon.action(url, action),
        }
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// An io error as libgit2 reports it (class Net, the message as is).
fn net_error(message: impl Into<String>) -> std::io::Error {
    std::io::Error::other(message.into())
}
