//! Exchanges and queues, all derived from one prefix, declared idempotently by every replica.
//! Queues carry no settings but their type: TTLs, dead-lettering and the delivery limit are
//! RabbitMQ policies (`policies.rs`), which can change while the queues exist. A queue declared
//! with those as arguments by an older version is used as it is (see `declare_queue`).

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer, ExchangeKind};

use crate::config::Settings;

pub const BUILD_ROUTING_KEY: &str = "build.request";

#[derive(Debug, Clone)]
pub struct Topology {
    /// Direct exchange producers publish build requests to.
    pub exchange: String,
    pub build_queue: String,
    /// (queue name, delay) per retry tier, tier 1 first.
    pub retry_queues: Vec<(String, Duration)>,
    pub dead_queue: String,
    /// Where the broker dead-letters a build request it gave up on (`amqp.delivery_limit`
    /// deliveries without an outcome); the worker turns each into `build.failed`.
    pub dead_lettered_queue: String,
    /// Topic exchange for notifications.
    pub events_exchange: String,
    /// Fanout exchange for commands every replica hears (cancel a running build).
    pub control_exchange: String,
    pub delivery_limit: u32,
}

impl Topology {
    pub fn from_settings(settings: &Settings) -> Self {
        let prefix = &settings.amqp.prefix;
        Self {
            exchange: prefix.clone(),
            build_queue: format!("{prefix}.builds"),
            retry_queues: settings
                .retry
                .delays_ms
                .iter()
                .enumerate()
                .map(|(i, ms)| {
                    (
                        format!("{prefix}.retry.{}", i + 1),
                        Duration::from_millis(*ms),
                    )
                })
                .collect(),
            dead_queue: format!("{prefix}.dead"),
            dead_lettered_queue: format!("{prefix}.dead-lettered"),
            events_exchange: format!("{prefix}.events"),
            control_exchange: format!("{prefix}.control"),
            delivery_limit: settings.amqp.delivery_limit,
        }
    }

    /// The queue of retry tier `tier` (1-based, as `worker::RetryPolicy` picks it); the last
    /// tier for one past the end.
    pub fn retry_queue(&self, tier: usize) -> &str {
        let index = tier.clamp(1, self.retry_queues.len().max(1)) - 1;
        self.retry_queues
            .get(index)
            .map_or(self.dead_queue.as_str(), |(name, _)| name.as_str())
    }

    /// Declares every exchange and queue on channels of its own (a queue whose arguments differ
    /// closes the channel it was declared on).
    pub async fn declare(&self, connection: &Connection) -> lapin::Result<()> {
        let mut channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in [
            (&self.exchange, ExchangeKind::Direct),
            (&self.events_exchange, ExchangeKind::Topic),
            (&self.control_exchange, ExchangeKind::Fanout),
        ] {
            channel
                .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
                .await?;
        }
        let queues = [
            &self.dead_queue,
            &self.dead_lettered_queue,
            &self.build_queue,
        ]
        .into_iter()
        .chain(self.retry_queues.iter().map(|(name, _)| name));
        for name in queues {
            channel = declare_queue(connection, channel, name).await?;
        }
        channel
            .queue_bind(
                self.build_queue.as_str().into(),
                self.exchange.as_str().into(),
                BUILD_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // Best effort: the connection's other channels go on either way.
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }
}

impl Topology {
    /// Every event, on a private queue that lives as long as `channel`'s connection.
    pub async fn subscribe_events(&self, channel: &Channel) -> lapin::Result<Consumer> {
        subscribe(channel, &self.events_exchange, "#").await
    }

    /// Every control command, on a private queue of this replica.
    pub async fn subscribe_control(&self, channel: &Channel) -> lapin::Result<Consumer> {
        subscribe(channel, &self.control_exchange, "").await
    }
}

async fn subscribe(channel: &Channel, exchange: &str, key: &str) -> lapin::Result<Consumer> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Declares a durable quorum queue with no other argument. One declared by an older version with
/// TTL, dead-letter or delivery-limit arguments answers PRECONDITION_FAILED (and closes
/// `channel`): it is then checked passively on a new channel and used as it is, with a warning
/// that says how to migrate it. Returns the channel to go on with.
async fn declare_queue(
    connection: &Connection,
    channel: Channel,
    name: &str,
) -> lapin::Result<Channel> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    match channel.queue_declare(name.into(), durable, quorum()).await {
        Ok(_) => Ok(channel),
        Err(e) if precondition_failed(&e) => {
            tracing::warn!(
                queue = name,
                "queue {name} carries arguments from an older image-builder (TTL, dead-lettering \
                 or delivery limit), which take precedence over the policies this version \
                 applies: changes of retry.delays_ms or amqp.delivery_limit do not reach it. It \
                 is used as it is. To migrate it, once it is empty: `rabbitmqctl delete_queue \
                 {name} --if-empty`, then start a replica (it declares the queue anew)"
            );
            let channel = connection.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            channel
                .queue_declare(name.into(), passive, FieldTable::default())
                .await?;
            Ok(channel)
        }
        Err(e) => Err(e),
    }
}

fn precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    )
}
