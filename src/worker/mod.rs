//! The worker daemon: connect (and reconnect) to the broker, declare the topology, consume build
//! requests with prefetch = build slots, and drain in-flight builds on shutdown.

mod dead_lettered;
mod handler;
mod lease_watch;
mod outbox;
mod outcome;
mod panics;
mod policy;
mod recent;
mod running;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use policy::{Disposition, RetryPolicy};

use crate::amqp::{
    self, Control, Publisher, PublisherSlotSetter, SessionEnd, Topology, publisher_slot,
};
use crate::config::Settings;
use crate::error::cause_chain;
use crate::metrics::Metrics;
use crate::ports::Environment;
use crate::store::BuildStore;

/// Runs until `shutdown` is cancelled, then stops consuming, lets in-flight builds finish within
/// the grace period, stops (and requeues) the rest, and returns.
pub async fn run(
    settings: Arc<Settings>,
    env: Arc<Environment>,
    store: BuildStore,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match store.void_own_leases().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            builds = n,
            "leases of this replica's previous process voided"
        ),
        Err(e) => tracing::warn!("failed to void old leases: {}", cause_chain(&e)),
    }
    let tracker = TaskTracker::new();
    let (slot, publishers) = publisher_slot();
    let hard_stop = CancellationToken::new();
    let outbox = Arc::new(outbox::BrokerOutbox {
        publishers,
        stop: hard_stop.clone(),
    });
    let shared = Arc::new(handler::Shared::new(
        &settings, env, store, metrics, outbox, hard_stop,
    ));
    let topology = shared.topology.clone();

    let (shared_ref, settings_ref) = (&shared, &*settings);
    let (tracker_ref, shutdown_ref, slot_ref) = (&tracker, &shutdown, &slot);
    let policies = AtomicBool::new(false);
    let brokers = amqp::Brokers::from_settings(&settings.amqp);
    let brokers_ref = &brokers;
    amqp::keep_session(
        "worker",
        &shutdown,
        || open_session(settings_ref, brokers_ref, &topology, &policies),
        |session: Session| async move {
            slot_ref.set(Some(session.publisher.clone()));
            let consumed = consume(
                session,
                shared_ref,
                settings_ref,
                tracker_ref,
                shutdown_ref,
                slot_ref,
            )
            .await;
            slot_ref.set(None);
            match consumed {
                Ok(()) => SessionEnd::Shutdown,
                Err(e) => {
                    brokers_ref.lost();
                    SessionEnd::Lost(e)
                }
            }
        },
    )
    .await;

    drain(&tracker, &settings, &shared.hard_stop).await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Waits for in-flight builds; past the grace period, stops them (their requests are requeued).
async fn drain(tracker: &TaskTracker, settings: &Settings, hard_stop: &CancellationToken) {
    tracker.close();
    let grace = Duration::from_secs(settings.amqp.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            in_flight = tracker.len(),
            "grace period over: stopping the remaining builds"
        );
        hard_stop.cancel();
        tracker.wait().await;
    }
}

struct Session {
    connection: lapin::Connection,
    publisher: Publisher,
    consumer: lapin::Consumer,
    channel: lapin::Channel,
    /// Cancel commands for whichever replica runs the build.
    control: lapin::Consumer,
    /// Build requests the broker dead-lettered (delivery limit).
    dead_lettered: lapin::Consumer,
    /// This replica's affinity queue (`amqp.affinity_fallback_ms`), on a channel of its own.
    affinity: Option<(lapin::Channel, lapin::Consumer)>,
}

/// One try at a consuming session: connection, topology (and, once per process, its policies),
/// prefetch, publisher, consumers.
async fn open_session(
    settings: &Settings,
    brokers: &amqp::Brokers,
    topology: &Arc<Topology>,
    policies: &AtomicBool,
) -> anyhow::Result<Session> {
    let connection = brokers.connect("image-builder worker").await?;
    brokers
        .set_up(set_up_session(
            settings, brokers, topology, policies, connection,
        ))
        .await
}

/// The session's declares, policies and consumers on a connection just made.
async fn set_up_session(
    settings: &Settings,
    brokers: &amqp::Brokers,
    topology: &Arc<Topology>,
    policies: &AtomicBool,
    connection: lapin::Connection,
) -> anyhow::Result<Session> {
    topology.declare(&connection).await?;
    if !policies.load(Ordering::Acquire) {
        apply_policies(settings, brokers, topology).await?;
        policies.store(true, Ordering::Release);
    }
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(
            settings
                .amqp
                .prefetch
                .saturating_add(settings.amqp.lookahead),
            BasicQosOptions::default(),
        )
        .await?;
    let publisher = Publisher::open(&connection, topology.clone()).await?;
    let consumer = consumer_of(&channel, &topology.build_queue).await?;
    let control = topology
        .subscribe_control(&connection.create_channel().await?)
        .await?;
    let dead_lettered = consumer_of(&channel, &topology.dead_lettered_queue).await?;
    let affinity = match &topology.affinity {
        Some(affinity) => {
            topology.declare_affinity_queue(&connection).await?;
            // Its own prefetch (per consumer): at most `prefetch` requests wait here for a slot
            // beyond what the shared queue gives; the rest wait in the queue, at most the
            // fallback, and then go to whichever replica is free.
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(settings.amqp.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = consumer_of(&channel, &affinity.queue).await?;
            Some((channel, consumer))
        }
        None => None,
    };
    tracing::info!(
        queue = %topology.build_queue,
        affinity_queue = topology.affinity.as_ref().map(|a| a.queue.as_str()),
        slots = settings.amqp.prefetch,
        lookahead = settings.amqp.lookahead,
        "consuming"
    );
    Ok(Session {
        connection,
        publisher,
        consumer,
        channel,
        control,
        dead_lettered,
        affinity,
    })
}

/// A consumer of `queue` on `channel`, with the defaults every queue of the worker uses.
async fn consumer_of(channel: &lapin::Channel, queue: &str) -> lapin::Result<lapin::Consumer> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// This replica's retry delays and delivery limit, as policies. Once per process, not per
/// session: after a broker restart an old replica must not put back values a newer one set.
async fn apply_policies(
    settings: &Settings,
    brokers: &amqp::Brokers,
    topology: &Topology,
) -> anyhow::Result<()> {
    let apis = settings.amqp.management_apis();
    let Some(credentials) = brokers.first().filter(|_| !apis.is_empty()) else {
        tracing::warn!(
            "amqp.management_url and amqp.management_urls are empty: this replica applies no \
             queue policies; without them retry tiers hold messages forever (README: Queue \
             policies)"
        );
        return Ok(());
    };
    let policies = topology.policies();
    let api = amqp::apply_through_any(&apis, credentials, &policies).await?;
    tracing::info!(
        api,
        policies = policies.len(),
        delays_ms = ?settings.retry.delays_ms,
        delivery_limit = settings.amqp.delivery_limit,
        "queue policies applied"
    );
    Ok(())
}

/// Consumes until shutdown (Ok) or until the connection is lost (Err).
async fn consume(
    mut session: Session,
    shared: &Arc<handler::Shared>,
    settings: &Settings,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    slot: &PublisherSlotSetter,
) -> anyhow::Result<()> {
    loop {
        let preferred = async {
            match &mut session.affinity {
                Some((_, consumer)) => consumer.next().await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            next = session.consumer.next() => next,
            next = preferred => next,
            dead = session.dead_lettered.next() => {
                match dead {
                    Some(Ok(delivery)) => {
                        tracker.spawn(dead_lettered::handle(shared.clone(), delivery));
                    }
                    Some(Err(e)) => anyhow::bail!("dead-letter consumer failed: {e}"),
                    None => anyhow::bail!("the broker closed the dead-letter consumer"),
                }
                continue;
            }
            command = session.control.next() => {
                match command {
                    Some(Ok(delivery)) => on_control(shared, &delivery).await,
                    Some(Err(e)) => anyhow::bail!("control consumer failed: {e}"),
                    None => anyhow::bail!("the broker closed the control consumer"),
                }
                continue;
            }
            _ = shutdown.cancelled() => {
                let tag = session.consumer.tag();
                if let Err(e) = session.channel.basic_cancel(tag, BasicCancelOptions::default()).await {
                    tracing::warn!("failed to cancel the consumer: {e}");
                }
                if let Some((channel, consumer)) = &session.affinity {
                    leave_affinity(&shared.topology, channel, consumer).await;
                }
                // Keep the connection open while builds finish: they still ack on it.
                drain(tracker, settings, &shared.hard_stop).await;
                slot.set(None);
                let _ = session.connection.close(200, "worker shutting down".into()).await;
                return Ok(());
            }
        };
        match next {
            Some(Ok(delivery)) => {
                tracker.spawn(handler::handle(shared.clone(), delivery));
            }
            Some(Err(e)) => anyhow::bail!("consumer failed: {e}"),
            None => anyhow::bail!("the broker closed the consumer"),
        }
    }
}

/// A graceful stop: no new requests hash to this replica, and it takes none it holds not yet.
async fn leave_affinity(topology: &Topology, channel: &lapin::Channel, consumer: &lapin::Consumer) {
    if let Err(e) = topology.unbind_affinity_queue(channel).await {
        tracing::warn!("failed to unbind the affinity queue: {e}");
    }
    if let Err(e) = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
    {
        tracing::warn!("failed to cancel the affinity consumer: {e}");
    }
}

async fn on_control(shared: &handler::Shared, delivery: &lapin::message::Delivery) {
    match Control::parse(&delivery.data) {
        Some(Control::Cancel { build_id }) => {
            if shared.running.cancel(&build_id) {
                tracing::info!(%build_id, "cancelling the build on request");
            }
        }
        None => tracing::warn!("ignoring an unreadable control message"),
    }
    if let Err(e) = delivery
        .acker
        .ack(lapin::options::BasicAckOptions::default())
        .await
    {
        tracing::warn!("failed to ack a control message: {e}");
    }
}
