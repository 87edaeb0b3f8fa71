//! The publisher of the current broker session. Reconnecting installs a new one, so a build that
//! finishes after its connection dropped still reports its outcome on the next connection.

use std::time::Duration;

use backon::Retryable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Publisher;

#[derive(Clone)]
pub struct PublisherSlot {
    rx: watch::Receiver<Option<Publisher>>,
}

/// The reconnect loop's end of the slot.
pub struct PublisherSlotSetter {
    tx: watch::Sender<Option<Publisher>>,
}

pub fn publisher_slot() -> (PublisherSlotSetter, PublisherSlot) {
    let (tx, rx) = watch::channel(None);
    (PublisherSlotSetter { tx }, PublisherSlot { rx })
}

impl PublisherSlotSetter {
    pub fn set(&self, publisher: Option<Publisher>) {
        self.tx.send_replace(publisher);
    }
}

impl PublisherSlot {
    /// Waits for a connected session's publisher.
    async fn current(&self) -> anyhow::Result<Publisher> {
        let mut rx = self.rx.clone();
        let publisher = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| anyhow::anyhow!("the worker is stopping: no broker session"))?;
        publisher
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no broker session"))
    }

    /// Runs `publish` until the broker confirms it, across reconnects, with backoff. Gives up only
    /// when `stop` is cancelled (the delivery is then redelivered: at-least-once).
    pub async fn reliably<F, Fut>(&self, stop: &CancellationToken, publish: F) -> anyhow::Result<()>
    where
        F: Fn(Publisher) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let attempt = || async { publish(self.current().await?).await };
        let backoff = super::broker_backoff(Duration::from_millis(100), Duration::from_secs(5));
        tokio::select! {
            result = attempt
                .retry(backoff)
                .notify(|e: &anyhow::Error, wait| {
                    tracing::warn!("failed to publish, retrying in {wait:?}: {e:#}")
                }) => result,
            _ = stop.cancelled() => anyhow::bail!("stopped before the broker confirmed the outcome"),
        }
    }
}
