//! Build requests the broker dead-lettered: delivered `amqp.delivery_limit` times without an
//! outcome (replicas crashing or stopped mid-build, a panic outside the build). The broker moves
//! them to `<prefix>.dead-lettered` (the build queue's policy); here each one ends as a failed
//! build: parked in the dead queue without its secrets, `build.failed`, a failed record. A build
//! that is final already, or that a replica still holds a live lease on, keeps its outcome.

use std::sync::Arc;

use tracing::Instrument;

use super::handler::{Incoming, Shared, assigned_build_id, job_of, record_of};
use super::outbox::DeliveryAcker;
use super::outcome::{Outcome, Parked, settle};
use super::policy::dead_message;
use super::recent::RecentOutcomes;
use crate::amqp::MessageMeta;
use crate::error::{Fault, cause_chain};
use crate::events::{BuildFailed, BuildRef};
use crate::request::RequestSummary;
use crate::store::Claim;

pub async fn handle(shared: Arc<Shared>, delivery: lapin::message::Delivery) {
    let (incoming, acker) = Incoming::from_delivery(delivery);
    settle_dead_lettered(&shared, incoming, &acker).await;
}

pub async fn settle_dead_lettered(shared: &Shared, incoming: Incoming, acker: &dyn DeliveryAcker) {
    let meta = &incoming.meta;
    let build_id = assigned_build_id(meta, &incoming.body)
        .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!("dead-lettered", %build_id);
    let key = RecentOutcomes::key(&incoming.body, meta.attempt);
    async {
        let outcome = match shared.store.settled_or_held(&build_id).await {
            Ok(true) => {
                tracing::info!("dead-lettered by the broker, but its outcome is out or on its way");
                Outcome::AlreadySettled
            }
            Ok(false) => failed(shared, &incoming, build_id).await,
            Err(e) => {
                tracing::warn!("build store unavailable: {}", cause_chain(&e));
                failed(shared, &incoming, build_id).await
            }
        };
        settle(shared, key, outcome, acker).await;
    }
    .instrument(span)
    .await;
}

async fn failed(shared: &Shared, incoming: &Incoming, build_id: String) -> Outcome {
    let attempts = incoming.meta.attempt;
    let reason = format!(
        "the broker gave up on it after amqp.delivery_limit = {} deliveries without an outcome \
         (replicas stopped or crashed while handling it)",
        shared.topology.delivery_limit
    );
    tracing::warn!("build failed: {reason}");
    let summary = RequestSummary::sniff(&incoming.body);
    let (build, dead_body) = match job_of(shared, incoming, build_id.clone()) {
        Ok(job) => {
            match shared
                .store
                .create(&record_of(&job), crate::store::BuildState::Queued)
                .await
            {
                Ok(Claim::Foreign) => tracing::warn!("its id belongs to another request's record"),
                Ok(_) => {}
                Err(e) => tracing::warn!("failed to record it: {}", cause_chain(&e)),
            }
            let body = dead_message(&job.request, &build_id, attempts, &reason);
            (job.build_ref(None), body)
        }
        // Never the body itself, which may hold a token: only what the sniffer reads safely.
        Err(_) => (
            BuildRef {
                build_id: build_id.clone(),
                request_id: summary.request_id.clone().unwrap_or_default(),
                user_id: summary.user_id.clone(),
                repo: summary.repo.clone(),
                git_ref: summary.git_ref.clone(),
            },
            serde_json::to_vec(&summary).unwrap_or_default(),
        ),
    };
    Outcome::Failed {
        dead: Some(Parked {
            queue: shared.topology.dead_queue.clone(),
            body: dead_body,
            meta: MessageMeta {
                attempt: attempts,
                request_id: Some(build.request_id.clone()).filter(|id| !id.is_empty()),
                build_id: Some(build_id),
                last_error: Some(reason.clone()),
            },
        }),
        event: BuildFailed {
            build,
            attempts,
            fault: Fault::Service,
            reason,
            field: None,
            log_tail: Vec::new(),
        },
        seconds: 0.0,
    }
}
