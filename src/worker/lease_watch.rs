//! While a build runs (and until its outcome is recorded): renew its lease in the store and
//! look for a stored cancel, every `store.poll_ms`. Either a stored cancel or a lease this replica can no longer prove it holds
//! stops the build; which one is left in `Stopped` for the handler to tell apart.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::cause_chain;
use crate::store::{BuildStore, Lease, Renewal};

/// Why the watch stopped a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// A cancel was stored (the API answered 202; the broadcast may never have arrived).
    Cancelled,
    /// Not renewed for the lease's whole term (store unreachable) or taken over: another
    /// replica may build it now, so this one must not go on.
    LeaseLost,
}

/// Never returns: once it has stopped the build it waits for the build to end.
pub async fn watch(
    store: &BuildStore,
    build_id: &str,
    lease: &Lease,
    poll: Duration,
    build: &CancellationToken,
    stopped: &OnceLock<Stopped>,
) -> Infallible {
    let mut renewed = Instant::now();
    let why = loop {
        tokio::time::sleep(poll).await;
        match store.renew(build_id, lease).await {
            Ok(Renewal::Held { cancel_requested }) => {
                renewed = Instant::now();
                if cancel_requested {
                    tracing::info!("cancel found in the build store; stopping the build");
                    break Stopped::Cancelled;
                }
            }
            Ok(Renewal::Lost) => {
                tracing::warn!("the build's lease was taken over; stopping the build");
                break Stopped::LeaseLost;
            }
            Err(e) => {
                tracing::warn!("failed to renew the build's lease: {}", cause_chain(&e));
                // Renewing within the term failed: past it another replica may take the build.
                if renewed.elapsed() + poll >= lease.ttl {
                    tracing::warn!("the build's lease lapses; stopping the build");
                    break Stopped::LeaseLost;
                }
            }
        }
    };
    let _ = stopped.set(why);
    build.cancel();
    std::future::pending().await
}

/// Renews the lease while an outcome is published and recorded (which clears it); never
/// returns. Failures only log: the build is over, there is nothing left to stop.
pub async fn keep(store: &BuildStore, build_id: &str, lease: &Lease, poll: Duration) -> Infallible {
    loop {
        tokio::time::sleep(poll).await;
        match store.renew(build_id, lease).await {
            Ok(Renewal::Held { .. }) => {}
            Ok(Renewal::Lost) => break,
            Err(e) => tracing::warn!("failed to renew the build's lease: {}", cause_chain(&e)),
        }
    }
    std::future::pending().await
}
