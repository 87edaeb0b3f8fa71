//! The one reconnect loop: open a broker session with backoff, use it until it is lost, open
//! another, until shutdown. The worker and the API server both keep their sessions with it.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

/// How a session ended.
pub enum SessionEnd {
    /// Shutdown was asked for: stop reconnecting.
    Shutdown,
    /// The broker went away: reconnect.
    Lost(anyhow::Error),
}

/// The backoff between tries to reach the broker (connecting, or publishing across reconnects).
pub fn broker_backoff(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
}

/// Opens sessions with `open` (retried with backoff) and hands each to `run`, until `run` ends
/// with `Shutdown` or `shutdown` is cancelled while connecting. `who` names the caller in logs.
pub async fn keep_session<S, Open, Opening, Run, Running>(
    who: &str,
    shutdown: &CancellationToken,
    open: Open,
    mut run: Run,
) where
    Open: FnMut() -> Opening,
    Opening: Future<Output = anyhow::Result<S>>,
    Run: FnMut(S) -> Running,
    Running: Future<Output = SessionEnd>,
{
    let backoff = broker_backoff(Duration::from_millis(200), Duration::from_secs(10));
    let mut open = open;
    // When the last session was lost: the time to the next one is logged (the outage as seen here).
    let mut lost_at: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        // Retries until connected; only shutdown ends the wait.
        let session = tokio::select! {
            session = (&mut open)
                .retry(backoff)
                .notify(|e: &anyhow::Error, wait| {
                    tracing::warn!("{who}: broker not ready, retrying in {wait:?}: {e:#}")
                }) => session,
            _ = shutdown.cancelled() => return,
        };
        let session = match session {
            Ok(session) => session,
            Err(e) => {
                tracing::error!("{who}: gave up connecting to the broker: {e:#}");
                continue;
            }
        };
        if let Some(at) = lost_at.take() {
            let secs = at.elapsed().as_secs_f64();
            tracing::info!(secs, "{who}: reconnected to the broker after {secs:.3} s");
        }
        match run(session).await {
            SessionEnd::Shutdown => return,
            SessionEnd::Lost(e) => {
                lost_at = Some(Instant::now());
                tracing::warn!("{who}: lost the broker, reconnecting: {e:#}");
            }
        }
    }
}
