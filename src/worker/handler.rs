//! One delivery: parse, build, then publish the outcome (event, retry or dead message) with
//! confirms, and only then ack. Any publish failure leaves the delivery unacked for redelivery.

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::policy::{Disposition, dead_message, decide};
use super::recent::RecentOutcomes;
use super::running::RunningBuilds;
use crate::amqp::{MessageMeta, PublisherSlot, Topology};
use crate::build_log::BuildLog;
use crate::config::Settings;
use crate::error::{BuildError, Fault};
use crate::events::{BuildCancelled, BuildFailed, BuildRef, BuildRetrying, BuildStarted, Event};
use crate::metrics::Metrics;
use crate::pipeline::{self, Job};
use crate::ports::Environment;
use crate::redact::Redactor;
use crate::request::{BuildRequest, Rejection, RequestId, RequestPolicy, RequestSummary};
use crate::store::{BuildState, BuildStore, Claim, NewBuild, Start};

/// What every delivery handler shares.
pub struct Shared {
    pub env: Arc<Environment>,
    pub topology: Arc<Topology>,
    pub publishers: PublisherSlot,
    pub recent: RecentOutcomes,
    /// What a request may contain, from config.
    pub policy: RequestPolicy,
    /// Cancelled when the shutdown grace period is over: running builds stop and are requeued.
    pub hard_stop: CancellationToken,
    /// The build store (records, states, logs). A store failure is logged and never fails or
    /// blocks a build.
    pub store: BuildStore,
    /// This replica's name, reported in events and records.
    pub host: String,
    pub settings: Arc<Settings>,
    pub running: RunningBuilds,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    async fn event(&self, event: &Event) -> Result<(), Requeue> {
        self.publishers
            .reliably(&self.hard_stop, |p| async move { p.event(event).await })
            .await
            .map_err(Requeue::Publish)
    }

    /// Logs, and otherwise ignores, a failed write to the build store.
    fn recorded(&self, what: &str, result: anyhow::Result<()>) {
        if let Err(e) = result {
            tracing::warn!("failed to record {what} in the build store: {e:#}");
        }
    }

    async fn to_queue(&self, queue: &str, body: &[u8], meta: &MessageMeta) -> Result<(), Requeue> {
        self.publishers
            .reliably(&self.hard_stop, |p| async move {
                p.to_queue(queue, body, meta.to_headers()).await
            })
            .await
            .map_err(Requeue::Publish)
    }
}

/// Why a delivery goes back to the queue unfinished.
enum Requeue {
    /// The broker did not confirm an outcome message before the worker had to stop.
    Publish(anyhow::Error),
    /// The worker is shutting down and the build was stopped.
    Shutdown,
}

pub async fn handle(shared: Arc<Shared>, delivery: Delivery) {
    let meta = MessageMeta::from_properties(&delivery.properties);
    let assigned = assigned_build_id(&meta, &delivery.data);
    let build_id = assigned
        .as_ref()
        .map_or_else(|_| uuid::Uuid::new_v4().to_string(), Clone::clone);
    let span = tracing::info_span!(
        "build",
        %build_id,
        request_id = tracing::field::Empty,
        attempt = meta.attempt
    );
    let key = RecentOutcomes::key(&delivery.data, meta.attempt);
    let _claim = shared.recent.claim(key).await;
    // Only a redelivery can be a copy of a message whose outcome is out: an identical fresh
    // message is a new request and gets built.
    let outcome = if delivery.redelivered && shared.recent.contains(&key) {
        span.in_scope(|| tracing::info!("outcome already published; acking the redelivery"));
        Ok(())
    } else {
        let bad_header = assigned.err();
        let redelivered = delivery.redelivered;
        process(
            &shared,
            &delivery.data,
            &meta,
            build_id,
            redelivered,
            bad_header,
        )
        .instrument(span.clone())
        .await
    };
    let _enter = span.enter();
    let settled = match outcome {
        Ok(()) => {
            // Before the ack: if the ack is lost with the connection, the redelivery finds this.
            shared.recent.insert(key);
            delivery.acker.ack(BasicAckOptions::default()).await
        }
        Err(requeue) => {
            match &requeue {
                Requeue::Publish(e) => {
                    tracing::error!("failed to publish the outcome, requeueing: {e:#}")
                }
                Requeue::Shutdown => tracing::warn!("stopped by shutdown mid-build, requeueing"),
            }
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(e) = settled {
        // The channel is gone; the broker redelivers the message (see `RecentOutcomes`).
        tracing::warn!("failed to settle the delivery: {e}");
    }
}

/// The build id of a delivery: the id the worker put in `x-build-id` for a retry, else the
/// request id, so a request submitted twice is one build (and one record); a fresh uuid for a
/// body without one. Headers come from producers too: an invalid one is a rejection naming it.
fn assigned_build_id(meta: &MessageMeta, body: &[u8]) -> Result<String, Rejection> {
    for (field, value) in [
        ("x-build-id", &meta.build_id),
        ("x-request-id", &meta.request_id),
    ] {
        if let Some(raw) = value {
            RequestId::parse(raw).map_err(|reason| Rejection::new(field, reason))?;
        }
    }
    Ok(meta
        .build_id
        .clone()
        .or_else(|| {
            RequestSummary::sniff(body)
                .request_id
                .filter(|id| RequestId::parse(id).is_ok())
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()))
}

async fn process(
    shared: &Shared,
    body: &[u8],
    meta: &MessageMeta,
    build_id: String,
    redelivered: bool,
    bad_header: Option<Rejection>,
) -> Result<(), Requeue> {
    let env = &shared.env;
    if let Some(rejection) = bad_header {
        return reject(shared, body, meta, build_id, rejection).await;
    }
    let fallback_id = meta
        .request_id
        .as_deref()
        .or(Some(build_id.as_str()))
        .and_then(|id| RequestId::parse(id).ok());
    let request = match BuildRequest::parse(body, &shared.policy, fallback_id) {
        Ok(request) => request,
        Err(rejection) => return reject(shared, body, meta, build_id, rejection).await,
    };
    tracing::Span::current().record("request_id", request.id.as_str());
    let job = Job {
        request,
        build_id,
        attempt: meta.attempt,
    };
    let record = NewBuild {
        id: job.build_id.clone(),
        request_id: job.request.id.as_str().to_owned(),
        user_id: Some(job.request.user_id.as_str().to_owned()),
        repo: Some(job.request.repo.display()),
        git_ref: job.request.git_ref.as_ref().map(|r| r.as_str().to_owned()),
        request: job.request.public_view(),
        rebuild_of: None,
        fingerprint: Some(job.request.fingerprint()),
    };
    match shared
        .store
        .start(&record, job.attempt, &shared.host, redelivered)
        .await
    {
        Ok(Start::Run) => {}
        Ok(Start::Skip(state)) => {
            // The same request again: a redelivery, a re-publish, or a build cancelled while
            // queued. Its recorded outcome stands (GET /v1/builds/{id}); no second build or event.
            tracing::info!(
                state = state.as_str(),
                "build already {}; acking",
                state.as_str()
            );
            return Ok(());
        }
        Ok(Start::Foreign) => {
            let rejection = Rejection::new(
                "id",
                "belongs to a different request (another repository, ref, user or \
                 configuration); send a new id",
            );
            return reject(shared, body, meta, job.build_id, rejection).await;
        }
        Err(e) => tracing::warn!("build store unavailable, building without a record: {e:#}"),
    }

    let redactor = secrets_of(&job, &shared.settings);
    let writer = shared.store.log_writer(&job.build_id);
    let log = BuildLog::with_sink(redactor.clone(), writer.sender());
    let started_event = Event::Started(BuildStarted {
        build: job.build_ref(None),
        attempt: job.attempt,
        host: shared.host.clone(),
    });
    tracing::info!(repo = %job.request.repo.display(), "build started");
    if job.attempt > 1 {
        log.push(&format!(
            "--- attempt {} on {} ---",
            job.attempt, shared.host
        ));
    }

    let started = std::time::Instant::now();
    shared.metrics.running.inc();
    // `build.started` is confirmed while the build runs, not before: one broker round trip less
    // on a cached answer. It still precedes the outcome, which is published after both.
    let (announced, result) = tokio::join!(shared.event(&started_event), async {
        let running = shared
            .running
            .register(&job.build_id, shared.hard_stop.child_token());
        pipeline::run(env, &job, &log, &running.token).await
    });
    shared.metrics.running.dec();
    announced?;
    // Every line is stored before the final state, so a follower of the log sees all of it.
    log.detach_sink();
    writer.finish().await;
    let seconds = Some(started.elapsed().as_secs_f64());

    let error = match result {
        Ok(updated) => {
            tracing::info!(image = %updated.image, digest = %updated.digest, ms = updated.duration_ms, "image pushed");
            shared.event(&Event::ImageUpdated(updated.clone())).await?;
            shared.recorded(
                "success",
                shared
                    .store
                    .succeeded(&job.build_id, job.attempt, &updated)
                    .await,
            );
            shared
                .metrics
                .finished("succeeded", "", updated.cached, seconds);
            return Ok(());
        }
        Err(error) => error,
    };
    if matches!(error, BuildError::Cancelled) {
        if shared.hard_stop.is_cancelled() {
            return Err(Requeue::Shutdown);
        }
        tracing::info!("build cancelled on request");
        shared
            .event(&Event::Cancelled(BuildCancelled {
                build: job.build_ref(None),
                attempts: job.attempt,
                was_running: true,
                log_tail: log.tail(shared.settings.build.log_tail_lines),
            }))
            .await?;
        shared.recorded(
            "a cancellation",
            shared.store.cancelled(&job.build_id, job.attempt).await,
        );
        shared.metrics.finished("cancelled", "", false, seconds);
        return Ok(());
    }
    let fault = error.classify();
    let reason = redactor.redact(&error.chain()).into_owned();
    tracing::warn!(fault = ?fault, kind = error.metric_label(), "build failed: {reason}");
    let failed = |attempts| {
        Event::Failed(BuildFailed {
            build: job.build_ref(None),
            attempts,
            fault,
            reason: reason.clone(),
            field: match &error {
                BuildError::Rejected(r) => Some(r.field.clone()),
                _ => None,
            },
            log_tail: log.tail(shared.settings.build.log_tail_lines),
        })
    };
    let next_meta = |attempt| MessageMeta {
        attempt,
        request_id: Some(job.request.id.as_str().to_owned()),
        build_id: Some(job.build_id.clone()),
        last_error: Some(reason.clone()),
    };
    let topology = &shared.topology;
    let fault_name = fault.as_str();
    match decide(fault, job.attempt, &shared.settings.retry) {
        Disposition::Done => shared.event(&failed(job.attempt)).await?,
        Disposition::Retry { next_attempt } => {
            let (queue, delay) = topology.retry_queue(job.attempt);
            shared
                .to_queue(queue, body, &next_meta(next_attempt))
                .await?;
            shared
                .event(&Event::Retrying(BuildRetrying {
                    build: job.build_ref(None),
                    attempt: job.attempt,
                    next_attempt,
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    reason: reason.clone(),
                }))
                .await?;
            shared.recorded(
                "a retry",
                shared
                    .store
                    .retrying(&job.build_id, job.attempt, &reason)
                    .await,
            );
            shared.metrics.retries.inc();
            return Ok(());
        }
        Disposition::Dead => {
            // Without the token and build arg values, unlike a retry (see `dead_message`).
            let dead = dead_message(&job.request, &job.build_id, job.attempt, &reason);
            shared
                .to_queue(&topology.dead_queue, &dead, &next_meta(job.attempt))
                .await?;
            shared.event(&failed(job.attempt)).await?;
        }
    }
    shared.recorded(
        "a failure",
        shared
            .store
            .failed(&job.build_id, job.attempt, fault_name, &reason)
            .await,
    );
    shared
        .metrics
        .finished("failed", fault_name, false, seconds);
    Ok(())
}

/// An invalid request: one `build.rejected` naming the field, a failed record, never a build.
async fn reject(
    shared: &Shared,
    body: &[u8],
    meta: &MessageMeta,
    build_id: String,
    rejection: Rejection,
) -> Result<(), Requeue> {
    tracing::warn!(field = %rejection.field, "rejected: {rejection}");
    let summary = RequestSummary::sniff(body);
    let build = BuildRef {
        build_id,
        request_id: summary
            .request_id
            .clone()
            .or(meta
                .request_id
                .clone()
                .filter(|id| RequestId::parse(id).is_ok()))
            .unwrap_or_default(),
        user_id: summary.user_id.clone(),
        repo: summary.repo.clone(),
        git_ref: summary.git_ref.clone(),
    };
    let event = Event::Rejected(BuildFailed {
        build: build.clone(),
        attempts: meta.attempt,
        fault: Fault::Rejected,
        reason: rejection.to_string(),
        field: Some(rejection.field.clone()),
        log_tail: Vec::new(),
    });
    shared.event(&event).await?;
    let record = NewBuild {
        id: build.build_id.clone(),
        request_id: build.request_id,
        user_id: build.user_id,
        repo: build.repo,
        git_ref: build.git_ref,
        // Only what the sniffer could read safely: never the body, which may hold a token.
        request: serde_json::to_value(&summary).unwrap_or_default(),
        rebuild_of: None,
        fingerprint: None,
    };
    let store = &shared.store;
    let result = async {
        // An id already taken keeps its record: a rejection never overwrites another build.
        if store.create(&record, BuildState::Queued).await? != Claim::New {
            return Ok(());
        }
        store
            .failed(
                &record.id,
                meta.attempt,
                Fault::Rejected.as_str(),
                &rejection.to_string(),
            )
            .await
    }
    .await;
    shared.recorded("a rejection", result);
    shared.metrics.finished("rejected", "rejected", false, None);
    Ok(())
}

/// Everything that must never be shown: the token, build arg values, the registry password.
fn secrets_of(job: &Job, settings: &Settings) -> Redactor {
    use secrecy::ExposeSecret;
    let mut secrets: Vec<String> = job.request.build_args.values().map(str::to_owned).collect();
    if let Some(token) = &job.request.token {
        secrets.push(token.expose_secret().to_owned());
    }
    secrets.push(settings.registry.password.expose_secret().to_owned());
    Redactor::new(secrets)
}
