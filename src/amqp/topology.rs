//! Exchanges and queues, all derived from one prefix, declared idempotently by every replica.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer, ExchangeKind};

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

    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.events_exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.control_exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;

        declare_queue(channel, &self.dead_queue, quorum()).await?;

        let mut builds = quorum();
        builds.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit.into()),
        );
        builds.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        builds.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.dead_queue.as_str().into()),
        );
        declare_queue(channel, &self.build_queue, builds).await?;
        channel
            .queue_bind(
                self.build_queue.as_str().into(),
                self.exchange.as_str().into(),
                BUILD_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        for (name, delay) in &self.retry_queues {
            let mut args = quorum();
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(self.exchange.as_str().into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(BUILD_ROUTING_KEY.into()),
            );
            declare_queue(channel, name, args).await?;
        }
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

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), opts, args)
        .await
        .map(|_| ())
}
