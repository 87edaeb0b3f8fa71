//! The handler's two ways out to the broker, as small traits so tests run the handler in
//! process: the outbox publishes outcome messages (confirmed before `Ok`), the acker settles the
//! delivery. The broker versions wrap `amqp`; `tests` has recording fakes.

use async_trait::async_trait;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio_util::sync::CancellationToken;

use crate::amqp::{MessageMeta, PublisherSlot};
use crate::events::Event;

#[async_trait]
pub trait Outbox: Send + Sync {
    /// An event, confirmed by the broker. An error means it was given up (the worker stops).
    async fn event(&self, event: &Event) -> anyhow::Result<()>;

    /// A request straight into `queue` (a retry tier or the dead queue), confirmed.
    async fn to_queue(&self, queue: &str, body: &[u8], meta: &MessageMeta) -> anyhow::Result<()>;
}

#[async_trait]
pub trait DeliveryAcker: Send + Sync {
    async fn ack(&self) -> anyhow::Result<()>;

    /// Back to the queue, for this or another replica.
    async fn requeue(&self) -> anyhow::Result<()>;
}

/// Publishes on whichever broker session is current, retrying across reconnects until the
/// broker confirms or `stop` (the end of the shutdown grace period) is cancelled.
pub struct BrokerOutbox {
    pub publishers: PublisherSlot,
    pub stop: CancellationToken,
}

#[async_trait]
impl Outbox for BrokerOutbox {
    async fn event(&self, event: &Event) -> anyhow::Result<()> {
        self.publishers
            .reliably(&self.stop, |p| async move { p.event(event).await })
            .await
    }

    async fn to_queue(&self, queue: &str, body: &[u8], meta: &MessageMeta) -> anyhow::Result<()> {
        self.publishers
            .reliably(&self.stop, |p| async move {
                p.to_queue(queue, body, meta.to_headers()).await
            })
            .await
    }
}

#[async_trait]
impl DeliveryAcker for Acker {
    async fn ack(&self) -> anyhow::Result<()> {
        Acker::ack(self, BasicAckOptions::default()).await?;
        Ok(())
    }

    async fn requeue(&self) -> anyhow::Result<()> {
        let requeue = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        Acker::nack(self, requeue).await?;
        Ok(())
    }
}
