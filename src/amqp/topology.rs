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
/// The header the affinity exchange hashes: the request's repository.
pub const AFFINITY_HEADER: &str = "x-affinity";

/// Cache affinity (`amqp.affinity_fallback_ms` > 0). Producers publish to a consistent-hash
/// exchange that hashes the repository over one queue per replica, so a repository's builds
/// land where its mirror and layers are warm. Nothing waits on a replica for long or is lost
/// with it: each affinity queue's policy expires a message after `fallback` into the shared
/// build queue, which every replica also consumes. A request without the header, or sent while
/// no replica is bound, goes to the shared queue through the exchange's alternate exchange.
#[derive(Debug, Clone)]
pub struct Affinity {
    /// The `x-consistent-hash` exchange (broker plugin rabbitmq_consistent_hash_exchange).
    pub exchange: String,
    /// This replica's queue, `<exchange>.<replica>`.
    pub queue: String,
    pub fallback: Duration,
}

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
    pub affinity: Option<Affinity>,
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
            affinity: (settings.amqp.affinity_fallback_ms > 0).then(|| Affinity {
                exchange: format!("{prefix}.affinity"),
                queue: format!("{prefix}.affinity.{}", replica_name(&settings.amqp.replica)),
                fallback: Duration::from_millis(settings.amqp.affinity_fallback_ms),
            }),
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
        if let Some(affinity) = &self.affinity {
            let mut args = FieldTable::default();
            args.insert(
                "hash-header".into(),
                AMQPValue::LongString(AFFINITY_HEADER.into()),
            );
            args.insert(
                "alternate-exchange".into(),
                AMQPValue::LongString(self.exchange.as_str().into()),
            );
            let kind = ExchangeKind::Custom("x-consistent-hash".into());
            channel
                .exchange_declare(affinity.exchange.as_str().into(), kind, durable, args)
                .await
                .inspect_err(|_| {
                    tracing::error!(
                        "declaring the affinity exchange {} failed: amqp.affinity_fallback_ms \
                         needs the broker plugin rabbitmq_consistent_hash_exchange \
                         (`rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`)",
                        affinity.exchange
                    );
                })?;
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
    /// Whether the broker moved this delivery here from an affinity queue (its fallback). It may
    /// have been delivered there to a replica that died while building it, which only a
    /// redelivery may take over (`BuildStore::start`): the caller counts it as one. By name,
    /// whatever this replica's own `amqp.affinity_fallback_ms`.
    pub fn fell_back(&self, props: &lapin::BasicProperties) -> bool {
        let from = format!("{}.affinity.", self.exchange);
        props.headers().as_ref().is_some_and(|headers| {
            match headers
                .inner()
                .get(&lapin::types::ShortString::from("x-first-death-queue"))
            {
                Some(AMQPValue::LongString(queue)) => queue.as_bytes().starts_with(from.as_bytes()),
                Some(AMQPValue::ShortString(queue)) => queue.as_str().starts_with(&from),
                _ => false,
            }
        })
    }

    /// This replica's affinity queue, declared and bound (weight 1) to the affinity exchange.
    /// Only workers call this: the API and `submit` publish to the exchange and consume nothing.
    pub async fn declare_affinity_queue(&self, connection: &Connection) -> lapin::Result<()> {
        let Some(affinity) = &self.affinity else {
            return Ok(());
        };
        let channel = connection.create_channel().await?;
        let channel = declare_queue(connection, channel, &affinity.queue).await?;
        channel
            .queue_bind(
                affinity.queue.as_str().into(),
                affinity.exchange.as_str().into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Takes this replica's affinity queue off the exchange (a graceful stop): new requests hash
    /// to the other replicas, and what the queue still holds expires into the shared queue.
    pub async fn unbind_affinity_queue(&self, channel: &Channel) -> lapin::Result<()> {
        let Some(affinity) = &self.affinity else {
            return Ok(());
        };
        channel
            .queue_unbind(
                affinity.queue.as_str().into(),
                affinity.exchange.as_str().into(),
                "1".into(),
                FieldTable::default(),
            )
            .await
    }

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

/// `configured`, else the host name with anything but `A-Za-z0-9-_.` replaced (it names a queue).
fn replica_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "-_.".contains(c) {
            true => c,
            false => '-',
        })
        .take(100)
        .collect();
    match name.is_empty() {
        true => "unnamed".to_owned(),
        false => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_is_off_at_0_and_names_a_queue_per_replica() {
        let mut settings = Settings::for_env("local").expect("local config");
        settings.amqp.prefix = "ib.x".into();
        assert!(Topology::from_settings(&settings).affinity.is_none());
        settings.amqp.affinity_fallback_ms = 1500;
        settings.amqp.replica = "worker-2".into();
        let affinity = Topology::from_settings(&settings).affinity.expect("on");
        assert_eq!(affinity.exchange, "ib.x.affinity");
        assert_eq!(affinity.queue, "ib.x.affinity.worker-2");
        assert_eq!(affinity.fallback, Duration::from_millis(1500));
        settings.amqp.replica.clear();
        let unnamed = Topology::from_settings(&settings).affinity.expect("on");
        let host = unnamed.queue.trim_start_matches("ib.x.affinity.");
        assert!(
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }

    #[test]
    fn a_request_fell_back_when_it_first_died_in_an_affinity_queue() {
        let mut settings = Settings::for_env("local").expect("local config");
        settings.amqp.prefix = "ib.x".into();
        let topology = Topology::from_settings(&settings);
        let died_in = |queue: &str| {
            let mut headers = FieldTable::default();
            headers.insert(
                "x-first-death-queue".into(),
                AMQPValue::LongString(queue.into()),
            );
            lapin::BasicProperties::default().with_headers(headers)
        };
        assert!(topology.fell_back(&died_in("ib.x.affinity.w1")));
        assert!(!topology.fell_back(&died_in("ib.x.retry.1")));
        assert!(!topology.fell_back(&died_in("ib.y.affinity.w1")));
        assert!(!topology.fell_back(&lapin::BasicProperties::default()));
    }
}
