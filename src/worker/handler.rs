//! One delivery: parse, build, then publish the outcome (event, retry or dead message) with
//! confirms, and only then ack. Any publish failure leaves the delivery unacked for redelivery.

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::policy::{Disposition, decide};
use super::recent::RecentOutcomes;
use crate::amqp::{MessageMeta, PublisherSlot, Topology};
use crate::build_log::BuildLog;
use crate::error::{BuildError, Fault};
use crate::events::{BuildFailed, BuildRef, BuildRetrying, BuildStarted, Event};
use crate::pipeline::{self, Environment, Job};
use crate::redact::Redactor;
use crate::request::{BuildRequest, RequestId, RequestPolicy, RequestSummary};

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
}

impl Shared {
    async fn event(&self, event: &Event) -> Result<(), Requeue> {
        self.publishers
            .reliably(&self.hard_stop, |p| async move { p.event(event).await })
            .await
            .map_err(Requeue::Publish)
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
    let build_id = meta
        .build_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
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
        process(&shared, &delivery.data, &meta, build_id)
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

async fn process(
    shared: &Shared,
    body: &[u8],
    meta: &MessageMeta,
    build_id: String,
) -> Result<(), Requeue> {
    let env = &shared.env;
    let hard_stop = &shared.hard_stop;
    let settings = &env.settings;
    let fallback_id = meta
        .request_id
        .as_deref()
        .and_then(|id| RequestId::parse(id).ok());
    let request = match BuildRequest::parse(body, &shared.policy, fallback_id) {
        Ok(request) => request,
        Err(rejection) => {
            tracing::warn!(field = %rejection.field, "rejected: {rejection}");
            let summary = RequestSummary::sniff(body);
            let event = Event::Rejected(BuildFailed {
                build: BuildRef {
                    build_id,
                    request_id: summary
                        .request_id
                        .or(meta.request_id.clone())
                        .unwrap_or_default(),
                    user_id: summary.user_id,
                    repo: summary.repo,
                    git_ref: summary.git_ref,
                },
                attempts: meta.attempt,
                fault: Fault::Rejected,
                reason: rejection.to_string(),
                field: Some(rejection.field),
                log_tail: Vec::new(),
            });
            return shared.event(&event).await;
        }
    };
    tracing::Span::current().record("request_id", request.id.as_str());
    let job = Job {
        request,
        build_id,
        attempt: meta.attempt,
    };
    let redactor = secrets_of(&job, env);
    let log = BuildLog::new(redactor.clone());

    shared
        .event(&Event::Started(BuildStarted {
            build: job.build_ref(None),
            attempt: job.attempt,
            host: env.host.clone(),
        }))
        .await?;
    tracing::info!(repo = %job.request.repo.display(), "build started");

    let error = match pipeline::run(env, &job, &log, hard_stop).await {
        Ok(updated) => {
            tracing::info!(image = %updated.image, digest = %updated.digest, ms = updated.duration_ms, "image pushed");
            return shared.event(&Event::ImageUpdated(updated)).await;
        }
        Err(error) => error,
    };
    if matches!(error, BuildError::Cancelled) && hard_stop.is_cancelled() {
        return Err(Requeue::Shutdown);
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
            log_tail: log.tail(settings.build.log_tail_lines),
        })
    };
    let next_meta = |attempt| MessageMeta {
        attempt,
        request_id: Some(job.request.id.as_str().to_owned()),
        build_id: Some(job.build_id.clone()),
        last_error: Some(reason.clone()),
    };
    let topology = &shared.topology;
    match decide(fault, job.attempt, &settings.retry) {
        Disposition::Done => shared.event(&failed(job.attempt)).await,
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
                .await
        }
        Disposition::Dead => {
            shared
                .to_queue(&topology.dead_queue, body, &next_meta(job.attempt))
                .await?;
            shared.event(&failed(job.attempt)).await
        }
    }
}
/// Everything that must never be shown: the token, build arg values, the registry password.
fn secrets_of(job: &Job, env: &Environment) -> Redactor {
    use secrecy::ExposeSecret;
    let mut secrets: Vec<String> = job.request.build_args.values().map(str::to_owned).collect();
    if let Some(token) = &job.request.token {
        secrets.push(token.expose_secret().to_owned());
    }
    secrets.push(env.settings.registry.password.expose_secret().to_owned());
    Redactor::new(secrets)
}
