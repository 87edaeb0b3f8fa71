//! How a delivery ended, as a value, and the one place that acts on it (`settle`): publish its
//! messages (each confirmed by the broker), record it, count it, and only then ack. When a
//! publish is given up the delivery is requeued instead: at-least-once, nothing lost.

use super::handler::Shared;
use super::outbox::DeliveryAcker;
use super::recent::Key;
use crate::amqp::MessageMeta;
use crate::error::{StoreError, cause_chain};
use crate::events::{BuildCancelled, BuildFailed, BuildRetrying, Event, ImageUpdated};
use crate::metrics::Metrics;
use crate::store::{BuildState, BuildStore, Claim, NewBuild};

pub enum Outcome {
    /// The outcome is out already (a redelivery, or a build whose record is final): ack only.
    AlreadySettled,
    /// Back to the queue unfinished.
    Requeue(Requeue),
    /// An invalid request: `build.rejected` and a failed record, never a build.
    Rejected {
        event: BuildFailed,
        record: NewBuild,
    },
    Pushed {
        updated: ImageUpdated,
        attempt: u32,
        seconds: f64,
    },
    Cancelled {
        event: BuildCancelled,
        seconds: f64,
    },
    /// Parked in a retry tier; the attempt after comes back from there.
    Retrying {
        event: BuildRetrying,
        parked: Parked,
    },
    /// Final failure; `dead` when it used up its attempts.
    Failed {
        event: BuildFailed,
        dead: Option<Parked>,
        seconds: f64,
    },
}

/// A request parked in a queue (a retry tier or the dead queue) with its next headers.
pub struct Parked {
    pub queue: String,
    pub body: Vec<u8>,
    pub meta: MessageMeta,
}

/// Why a delivery goes back to the queue unfinished.
pub enum Requeue {
    /// The broker did not confirm an outcome message before the worker had to stop.
    Publish(anyhow::Error),
    /// The worker is shutting down and the build was stopped.
    Shutdown,
    /// The build's lease lapsed or was taken over: stopped so it never runs twice at once.
    LeaseLost,
}

impl Outcome {
    /// What to publish: a parked request (if any), then the event that announces the outcome.
    fn messages(&self) -> Option<(Option<&Parked>, Event)> {
        Some(match self {
            Self::AlreadySettled | Self::Requeue(_) => return None,
            Self::Rejected { event, .. } => (None, Event::Rejected(event.clone())),
            Self::Pushed { updated, .. } => (None, Event::ImageUpdated(updated.clone())),
            Self::Cancelled { event, .. } => (None, Event::Cancelled(event.clone())),
            Self::Retrying { event, parked } => (Some(parked), Event::Retrying(event.clone())),
            Self::Failed { event, dead, .. } => (dead.as_ref(), Event::Failed(event.clone())),
        })
    }

    /// Writes the outcome to the build store, and in the same transaction the notifications of
    /// its event (`notify.webhooks`). A failed write is logged and changes nothing else: the
    /// events are the contract, the record follows them.
    async fn record(&self, store: &BuildStore) {
        let announced = self.messages().map(|(_, event)| event);
        let announced = announced.as_ref();
        let (what, result) = match self {
            Self::AlreadySettled | Self::Requeue(_) => return,
            Self::Rejected { event, record } => (
                "a rejection",
                record_rejection(store, event, record, announced).await,
            ),
            Self::Pushed {
                updated, attempt, ..
            } => (
                "success",
                store
                    .succeeded(&updated.build.build_id, *attempt, updated, announced)
                    .await,
            ),
            Self::Cancelled { event, .. } => (
                "a cancellation",
                store
                    .cancelled(&event.build.build_id, event.attempts, announced)
                    .await,
            ),
            Self::Retrying { event, .. } => (
                "a retry",
                store
                    .retrying(
                        &event.build.build_id,
                        event.attempt,
                        &event.reason,
                        announced,
                    )
                    .await,
            ),
            Self::Failed { event, .. } => (
                "a failure",
                store
                    .failed(
                        &event.build.build_id,
                        event.attempts,
                        event.fault.as_str(),
                        &event.reason,
                        announced,
                    )
                    .await,
            ),
        };
        if let Err(e) = result {
            tracing::warn!(
                "failed to record {what} in the build store: {}",
                cause_chain(&e)
            );
        }
    }

    fn count(&self, metrics: &Metrics) {
        match self {
            Self::AlreadySettled | Self::Requeue(_) => {}
            Self::Rejected { .. } => metrics.finished("rejected", "rejected", false, None),
            Self::Pushed {
                updated, seconds, ..
            } => metrics.finished("succeeded", "", updated.cached, Some(*seconds)),
            Self::Cancelled { seconds, .. } => {
                metrics.finished("cancelled", "", false, Some(*seconds))
            }
            Self::Retrying { .. } => {
                metrics.retries.inc();
            }
            Self::Failed { event, seconds, .. } => {
                metrics.finished("failed", event.fault.as_str(), false, Some(*seconds))
            }
        }
    }
}

/// An id already taken keeps its record: a rejection never overwrites another build. Its
/// `build.rejected` is published all the same, so its notifications are written on their own.
async fn record_rejection(
    store: &BuildStore,
    event: &BuildFailed,
    record: &NewBuild,
    announced: Option<&Event>,
) -> Result<(), StoreError> {
    if store.create(record, BuildState::Queued).await? != Claim::New {
        return match announced {
            Some(announced) => store.announce(announced).await,
            None => Ok(()),
        };
    }
    store
        .failed(
            &record.id,
            event.attempts,
            event.fault.as_str(),
            &event.reason,
            announced,
        )
        .await
}

/// Publishes, records, counts, then acks; requeues when a publish is given up. Returns whether
/// the delivery went back to the queue without an outcome.
pub async fn settle(
    shared: &Shared,
    key: Key,
    outcome: Outcome,
    acker: &dyn DeliveryAcker,
) -> bool {
    let mut requeued = true;
    let settled = match outcome {
        Outcome::Requeue(Requeue::Shutdown) => {
            tracing::warn!("stopped by shutdown mid-build, requeueing");
            acker.requeue().await
        }
        Outcome::Requeue(Requeue::LeaseLost) => {
            tracing::warn!("stopped: the build's lease was lost, requeueing");
            acker.requeue().await
        }
        Outcome::Requeue(Requeue::Publish(e)) => {
            tracing::error!("failed to publish the outcome, requeueing: {e:#}");
            acker.requeue().await
        }
        outcome => match publish(shared, &outcome).await {
            Ok(()) => {
                outcome.record(&shared.store).await;
                outcome.count(&shared.metrics);
                // Before the ack: if the ack is lost with the connection, the redelivery finds
                // this.
                shared.recent.insert(key);
                requeued = false;
                acker.ack().await
            }
            Err(e) => {
                tracing::error!("failed to publish the outcome, requeueing: {e:#}");
                acker.requeue().await
            }
        },
    };
    if let Err(e) = settled {
        // The channel is gone; the broker redelivers the message (see `RecentOutcomes`).
        tracing::warn!("failed to settle the delivery: {e:#}");
    }
    requeued
}

async fn publish(shared: &Shared, outcome: &Outcome) -> anyhow::Result<()> {
    let Some((parked, event)) = outcome.messages() else {
        return Ok(());
    };
    if let Some(parked) = parked {
        shared
            .outbox
            .to_queue(&parked.queue, &parked.body, &parked.meta)
            .await?;
    }
    shared.outbox.event(&event).await
}
