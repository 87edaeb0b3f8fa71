//! One delivery: parse it, build it, and turn what happened into an `Outcome`, which
//! `outcome::settle` publishes (confirmed) before it acks. Any publish failure leaves the
//! delivery for redelivery.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::lease_watch::{self, Stopped};
use super::outbox::{DeliveryAcker, Outbox};
use super::outcome::{Outcome, Parked, Requeue, settle};
use super::panics;
use super::policy::{Disposition, RetryPolicy, dead_message};
use super::recent::RecentOutcomes;
use super::running::RunningBuilds;
use crate::amqp::{MessageMeta, Topology};
use crate::build_log::BuildLog;
use crate::config::Settings;
use crate::error::{BuildError, Fault, cause_chain};
use crate::events::{BuildCancelled, BuildFailed, BuildRef, BuildRetrying, BuildStarted, Event};
use crate::metrics::Metrics;
use crate::pipeline::{self, Job};
use crate::ports::Environment;
use crate::request::{BuildRequest, Rejection, RequestId, RequestPolicy, RequestSummary};
use crate::store::{BuildStore, Lease, NewBuild, Start};

/// What every delivery handler shares.
pub struct Shared {
    pub env: Arc<Environment>,
    pub topology: Arc<Topology>,
    pub outbox: Arc<dyn Outbox>,
    pub recent: RecentOutcomes,
    /// What a request may contain, from config.
    pub requests: RequestPolicy,
    pub retry: RetryPolicy,
    /// Cancelled when the shutdown grace period is over: running builds stop and are requeued.
    pub hard_stop: CancellationToken,
    /// The build store (records, states, logs). A store failure is logged and never fails or
    /// blocks a build.
    pub store: BuildStore,
    /// This replica's name, reported in events and records.
    pub host: String,
    pub log_tail_lines: usize,
    /// Redacted from every log line and reason, like the request's own secrets.
    pub registry_password: SecretString,
    pub running: RunningBuilds,
    pub metrics: Arc<Metrics>,
    /// How long a build's lease on its id lasts unrenewed (`store.lease_secs`).
    pub lease_ttl: Duration,
    /// Lease renewal, stored-cancel and outcome polling interval (`store.poll_ms`).
    pub poll: Duration,
}

impl Shared {
    pub fn new(
        settings: &Settings,
        env: Arc<Environment>,
        store: BuildStore,
        metrics: Arc<Metrics>,
        outbox: Arc<dyn Outbox>,
        hard_stop: CancellationToken,
    ) -> Self {
        Self {
            env,
            topology: Arc::new(Topology::from_settings(settings)),
            outbox,
            recent: RecentOutcomes::new(10_000),
            requests: RequestPolicy {
                max_body_bytes: settings.request.max_body_bytes,
                allowed_schemes: settings.request.allowed_schemes.clone(),
            },
            retry: RetryPolicy::new(&settings.retry),
            hard_stop,
            store,
            host: host_name(),
            log_tail_lines: settings.build.log_tail_lines,
            registry_password: settings.registry.password.clone(),
            running: RunningBuilds::default(),
            metrics,
            lease_ttl: Duration::from_secs(settings.store.lease_secs),
            poll: Duration::from_millis(settings.store.poll_ms),
        }
    }
}

/// A delivery as the handler needs it, whatever carried it.
pub struct Incoming {
    pub body: Vec<u8>,
    pub meta: MessageMeta,
    pub redelivered: bool,
}

impl Incoming {
    /// A broker delivery as the handlers take it, and the acker that settles it.
    pub fn from_delivery(delivery: lapin::message::Delivery) -> (Self, lapin::Acker) {
        let incoming = Self {
            meta: MessageMeta::from_properties(&delivery.properties),
            body: delivery.data,
            redelivered: delivery.redelivered,
        };
        (incoming, delivery.acker)
    }
}

pub async fn handle(shared: Arc<Shared>, delivery: lapin::message::Delivery) {
    let fell_back = shared.topology.fell_back(&delivery.properties);
    let (mut incoming, acker) = Incoming::from_delivery(delivery);
    incoming.redelivered |= fell_back;
    handle_caught(&shared, incoming, &acker).await;
}

/// `handle_message`, with a panic outside the build itself (a build's own panic is a service
/// fault inside it) answered by a nack: the broker redelivers, and its delivery limit
/// (`amqp.delivery_limit`, a policy) dead-letters a message that keeps panicking (`dead_lettered`).
pub async fn handle_caught(shared: &Shared, incoming: Incoming, acker: &dyn DeliveryAcker) {
    if let Err(panic) = panics::caught(handle_message(shared, incoming, acker)).await {
        shared.metrics.panics.inc();
        tracing::error!("handling a delivery panicked, requeueing it: {panic}");
        if let Err(e) = acker.requeue().await {
            tracing::warn!("failed to requeue the delivery after a panic: {e:#}");
        }
    }
}

/// Decides the delivery's outcome and settles it (publish, record, count, ack).
pub async fn handle_message(shared: &Shared, incoming: Incoming, acker: &dyn DeliveryAcker) {
    let meta = &incoming.meta;
    let assigned = assigned_build_id(meta, &incoming.body);
    let build_id = assigned
        .as_ref()
        .map_or_else(|_| uuid::Uuid::new_v4().to_string(), Clone::clone);
    let span = tracing::info_span!(
        "build",
        %build_id,
        request_id = tracing::field::Empty,
        attempt = meta.attempt
    );
    let key = RecentOutcomes::key(&incoming.body, meta.attempt);
    let _claim = shared.recent.claim(key).await;
    // Only a redelivery can be a copy of a message whose outcome is out: an identical fresh
    // message is a new request and gets built.
    let (outcome, lease) = if incoming.redelivered && shared.recent.contains(&key) {
        span.in_scope(|| tracing::info!("outcome already published; acking the redelivery"));
        (Outcome::AlreadySettled, None)
    } else {
        outcome_of(shared, &incoming, build_id.clone(), assigned.err())
            .instrument(span.clone())
            .await
    };
    let settling = settle(shared, key, outcome, acker).instrument(span.clone());
    let requeued = match &lease {
        // The outcome may wait for the broker: the lease holds until it is recorded.
        Some(lease) => tokio::select! {
            requeued = settling => requeued,
            never = lease_watch::keep(&shared.store, &build_id, lease, shared.poll) => match never {},
        },
        None => settling.await,
    };
    if let (true, Some(lease)) = (requeued, lease) {
        // No outcome: its redelivery may start at once, here or on another replica.
        if let Err(e) = shared.store.release(&build_id, &lease).await {
            span.in_scope(|| tracing::warn!("failed to release the lease: {}", cause_chain(&e)));
        }
    }
}

/// The build id of a delivery: the id the worker put in `x-build-id` for a retry, else the
/// request id, so a request submitted twice is one build (and one record); a fresh uuid for a
/// body without one. Headers come from producers too: an invalid one is a rejection naming it.
pub(super) fn assigned_build_id(meta: &MessageMeta, body: &[u8]) -> Result<String, Rejection> {
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

/// The delivery's outcome, and the lease on its build when this delivery took it.
async fn outcome_of(
    shared: &Shared,
    incoming: &Incoming,
    build_id: String,
    bad_header: Option<Rejection>,
) -> (Outcome, Option<Lease>) {
    if let Some(rejection) = bad_header {
        return (rejected(incoming, build_id, rejection), None);
    }
    let job = match job_of(shared, incoming, build_id.clone()) {
        Ok(job) => job,
        Err(rejection) => return (rejected(incoming, build_id, rejection), None),
    };
    tracing::Span::current().record("request_id", job.request.id.as_str());
    let record = record_of(&job);
    let lease = Lease::new(&shared.host, shared.lease_ttl);
    let started = started_event(shared, &job);
    let mut waiting = false;
    loop {
        match shared
            .store
            .start(
                &record,
                job.attempt,
                incoming.redelivered,
                &lease,
                Some(&started),
            )
            .await
        {
            Ok(Start::Held) => {
                // Another replica builds it now: its outcome is this delivery's outcome too.
                if !std::mem::replace(&mut waiting, true) {
                    tracing::info!("another replica holds this build; waiting for its outcome");
                }
                tokio::select! {
                    () = tokio::time::sleep(shared.poll) => continue,
                    () = shared.hard_stop.cancelled() => {
                        return (Outcome::Requeue(Requeue::Shutdown), None);
                    }
                }
            }
            Ok(Start::Run) => break,
            Ok(Start::Skip(state)) => {
                // The same request again: a redelivery, a re-publish, or a build cancelled while
                // queued. Its recorded outcome stands (GET /v1/builds/{id}); no second build or event.
                tracing::info!(
                    state = state.as_str(),
                    "build already {}; acking",
                    state.as_str()
                );
                return (Outcome::AlreadySettled, None);
            }
            Ok(Start::CancelRequested) => {
                tracing::info!("cancelled through the API before this replica started it");
                let cancelled = Outcome::Cancelled {
                    event: BuildCancelled {
                        build: job.build_ref(None),
                        attempts: job.attempt,
                        was_running: false,
                        log_tail: Vec::new(),
                    },
                    seconds: 0.0,
                };
                return (cancelled, None);
            }
            Ok(Start::Foreign) => {
                let rejection = Rejection::new(
                    "id",
                    "belongs to a different request (another repository, ref, user or \
                     configuration); send a new id",
                );
                return (rejected(incoming, job.build_id, rejection), None);
            }
            Err(e) if waiting => {
                // Another replica had it a moment ago: never build beside it, ask again.
                tracing::warn!("build store unavailable while waiting: {}", cause_chain(&e));
                tokio::select! {
                    () = tokio::time::sleep(shared.poll) => {}
                    () = shared.hard_stop.cancelled() => {
                        return (Outcome::Requeue(Requeue::Shutdown), None);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    "build store unavailable, building without a record: {}",
                    cause_chain(&e)
                );
                return (build(shared, &job, &incoming.body, None).await, None);
            }
        }
    }
    (
        build(shared, &job, &incoming.body, Some(&lease)).await,
        Some(lease),
    )
}

/// The delivery's request, parsed, as a job of this attempt.
pub(super) fn job_of(
    shared: &Shared,
    incoming: &Incoming,
    build_id: String,
) -> Result<Job, Rejection> {
    let meta = &incoming.meta;
    let fallback_id = meta
        .request_id
        .as_deref()
        .or(Some(build_id.as_str()))
        .and_then(|id| RequestId::parse(id).ok());
    let request = BuildRequest::parse(&incoming.body, &shared.requests, fallback_id)?;
    Ok(Job {
        request,
        build_id,
        attempt: meta.attempt,
    })
}

/// The job's record as first written.
pub(super) fn record_of(job: &Job) -> NewBuild {
    NewBuild::of_request(&job.build_id, &job.request, None)
}

/// Runs the build, announcing it while it runs, and says how it ended.
async fn build(shared: &Shared, job: &Job, body: &[u8], lease: Option<&Lease>) -> Outcome {
    let redactor = job.redactor(&shared.registry_password);
    let writer = shared.store.log_writer(&job.build_id);
    let log = BuildLog::with_sink(redactor.clone(), writer.sender());
    let started_event = started_event(shared, job);
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
    let stopped = OnceLock::new();
    let running = shared
        .running
        .register(&job.build_id, shared.hard_stop.child_token());
    let work = async {
        tokio::join!(shared.outbox.event(&started_event), async {
            // A panic is a service fault of this attempt: retried, and dead after max_attempts.
            panics::caught(pipeline::run(&shared.env, job, &log, &running.token))
                .await
                .unwrap_or_else(|panic| {
                    shared.metrics.panics.inc();
                    Err(BuildError::Internal(anyhow::anyhow!(
                        "the build panicked (a bug of image-builder): {panic}"
                    )))
                })
        })
    };
    // Renewed until `build.started` is confirmed too: a build that ends while the broker is
    // away keeps its lease, so nobody else takes the build over meanwhile.
    let watch = async {
        match lease {
            Some(lease) => {
                let (store, id) = (&shared.store, job.build_id.as_str());
                lease_watch::watch(store, id, lease, shared.poll, &running.token, &stopped).await
            }
            None => std::future::pending().await,
        }
    };
    let (announced, result) = tokio::select! {
        done = work => done,
        never = watch => match never {},
    };
    drop(running);
    shared.metrics.running.dec();
    if let Err(e) = announced {
        return Outcome::Requeue(Requeue::Publish(e));
    }
    // Every line is stored before the final state, so a follower of the log sees all of it.
    log.detach_sink();
    writer.finish().await;
    let seconds = started.elapsed().as_secs_f64();

    match result {
        Ok(updated) => {
            tracing::info!(image = %updated.image, digest = %updated.digest, ms = updated.duration_ms, "image pushed");
            Outcome::Pushed {
                updated,
                attempt: job.attempt,
                seconds,
            }
        }
        Err(BuildError::Cancelled) if shared.hard_stop.is_cancelled() => {
            Outcome::Requeue(Requeue::Shutdown)
        }
        Err(BuildError::Cancelled) if stopped.get() == Some(&Stopped::LeaseLost) => {
            Outcome::Requeue(Requeue::LeaseLost)
        }
        Err(BuildError::Cancelled) => {
            tracing::info!("build cancelled on request");
            Outcome::Cancelled {
                event: BuildCancelled {
                    build: job.build_ref(None),
                    attempts: job.attempt,
                    was_running: true,
                    log_tail: log.tail(shared.log_tail_lines),
                },
                seconds,
            }
        }
        Err(error) => {
            let failure = Failure {
                error: &error,
                reason: redactor.redact(&error.chain()).into_owned(),
                log_tail: log.tail(shared.log_tail_lines),
                seconds,
            };
            failed(shared, job, body, failure)
        }
    }
}

/// `build.started` of this attempt on this replica.
fn started_event(shared: &Shared, job: &Job) -> Event {
    Event::Started(BuildStarted {
        build: job.build_ref(None),
        attempt: job.attempt,
        host: shared.host.clone(),
    })
}

struct Failure<'a> {
    error: &'a BuildError,
    /// The whole cause chain, redacted.
    reason: String,
    log_tail: Vec<String>,
    seconds: f64,
}

/// A failed build: final, parked in a retry tier, or dead, as the retry policy decides.
fn failed(shared: &Shared, job: &Job, body: &[u8], failure: Failure<'_>) -> Outcome {
    let Failure {
        error,
        reason,
        log_tail,
        seconds,
    } = failure;
    let fault = error.classify();
    tracing::warn!(fault = ?fault, kind = error.metric_label(), "build failed: {reason}");
    let parked_meta = |attempt| MessageMeta {
        attempt,
        request_id: Some(job.request.id.as_str().to_owned()),
        build_id: Some(job.build_id.clone()),
        last_error: Some(reason.clone()),
    };
    let event = |reason: String| BuildFailed {
        build: job.build_ref(None),
        attempts: job.attempt,
        fault,
        reason,
        field: match error {
            BuildError::Rejected(r) => Some(r.field.clone()),
            _ => None,
        },
        log_tail,
    };
    match shared.retry.decide(fault, job.attempt) {
        Disposition::Done => Outcome::Failed {
            event: event(reason),
            dead: None,
            seconds,
        },
        Disposition::Retry {
            next_attempt,
            tier,
            delay,
        } => Outcome::Retrying {
            parked: Parked {
                queue: shared.topology.retry_queue(tier).to_owned(),
                body: body.to_vec(),
                meta: parked_meta(next_attempt),
            },
            event: BuildRetrying {
                build: job.build_ref(None),
                attempt: job.attempt,
                next_attempt,
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                reason,
            },
        },
        Disposition::Dead => Outcome::Failed {
            // Without the token and build arg values, unlike a retry (see `dead_message`).
            dead: Some(Parked {
                queue: shared.topology.dead_queue.clone(),
                body: dead_message(&job.request, &job.build_id, job.attempt, &reason),
                meta: parked_meta(job.attempt),
            }),
            event: event(reason),
            seconds,
        },
    }
}

/// An invalid request: one `build.rejected` naming the field, a failed record, never a build.
fn rejected(incoming: &Incoming, build_id: String, rejection: Rejection) -> Outcome {
    tracing::warn!(field = %rejection.field, "rejected: {rejection}");
    let meta = &incoming.meta;
    let summary = RequestSummary::sniff(&incoming.body);
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
    let record = NewBuild {
        id: build.build_id.clone(),
        request_id: build.request_id.clone(),
        user_id: build.user_id.clone(),
        repo: build.repo.clone(),
        git_ref: build.git_ref.clone(),
        // Only what the sniffer could read safely: never the body, which may hold a token.
        request: serde_json::to_value(&summary).unwrap_or_default(),
        rebuild_of: None,
        fingerprint: None,
    };
    Outcome::Rejected {
        event: BuildFailed {
            build,
            attempts: meta.attempt,
            fault: Fault::Rejected,
            reason: rejection.to_string(),
            field: Some(rejection.field.clone()),
            log_tail: Vec::new(),
        },
        record,
    }
}

/// This replica's name in events: host and pid, since replicas may share a host.
fn host_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}:{}", std::process::id())
}
