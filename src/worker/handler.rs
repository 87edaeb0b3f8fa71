//! One delivery: parse, build, then publish the outcome (event, retry or dead message) with
//! confirms, and only then ack. Any publish failure leaves the delivery unacked for redelivery.

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::policy::{Disposition, decide};
use crate::amqp::{MessageMeta, Publisher};
use crate::build_log::BuildLog;
use crate::error::{BuildError, Fault};
use crate::events::{BuildFailed, BuildRef, BuildRetrying, BuildStarted, Event};
use crate::pipeline::{self, Environment, Job};
use crate::redact::Redactor;
use crate::request::{BuildRequest, RequestId, RequestPolicy, RequestSummary};

/// Why a delivery goes back to the queue unfinished.
enum Requeue {
    /// The broker did not confirm an outcome message.
    Publish(anyhow::Error),
    /// The worker is shutting down and the build was stopped.
    Shutdown,
}

pub async fn handle(
    env: Arc<Environment>,
    publisher: Publisher,
    delivery: Delivery,
    hard_stop: CancellationToken,
) {
    let meta = MessageMeta::from_properties(&delivery.properties);
    let build_id = meta
        .build_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!("build", %build_id, request_id = tracing::field::Empty, attempt = meta.attempt);
    let outcome = process(
        &env,
        &publisher,
        &delivery.data,
        &meta,
        build_id,
        &hard_stop,
    )
    .instrument(span.clone())
    .await;
    let _enter = span.enter();
    let settled = match outcome {
        Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
        Err(requeue) => {
            match &requeue {
                Requeue::Publish(e) => {
                    tracing::error!("failed to publish the outcome, requeueing: {e:#}")
                }
                Requeue::Shutdown => tracing::warn!("shutting down mid-build, requeueing"),
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
        // The channel is gone; the broker redelivers the message to another consumer.
        tracing::warn!("failed to settle the delivery: {e}");
    }
}

async fn process(
    env: &Environment,
    publisher: &Publisher,
    body: &[u8],
    meta: &MessageMeta,
    build_id: String,
    hard_stop: &CancellationToken,
) -> Result<(), Requeue> {
    let settings = &env.settings;
    let policy = RequestPolicy {
        max_body_bytes: settings.request.max_body_bytes,
        allowed_schemes: settings.request.allowed_schemes.clone(),
    };
    let fallback_id = meta
        .request_id
        .as_deref()
        .and_then(|id| RequestId::parse(id).ok());
    let request = match BuildRequest::parse(body, &policy, fallback_id) {
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
            return publisher.event(&event).await.map_err(Requeue::Publish);
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

    publisher
        .event(&Event::Started(BuildStarted {
            build: job.build_ref(None),
            attempt: job.attempt,
            host: env.host.clone(),
        }))
        .await
        .map_err(Requeue::Publish)?;
    tracing::info!(repo = %job.request.repo.display(), "build started");

    let error = match pipeline::run(env, &job, &log, hard_stop).await {
        Ok(updated) => {
            tracing::info!(image = %updated.image, digest = %updated.digest, ms = updated.duration_ms, "image pushed");
            return publisher
                .event(&Event::ImageUpdated(updated))
                .await
                .map_err(Requeue::Publish);
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
    let topology = publisher.topology();
    match decide(fault, job.attempt, &settings.retry) {
        Disposition::Done => publisher.event(&failed(job.attempt)).await,
        Disposition::Retry { next_attempt } => {
            let (queue, delay) = topology.retry_queue(job.attempt);
            publisher
                .to_queue(queue, body, next_meta(next_attempt).to_headers())
                .await?;
            publisher
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
            publisher
                .to_queue(
                    &topology.dead_queue,
                    body,
                    next_meta(job.attempt).to_headers(),
                )
                .await?;
            publisher.event(&failed(job.attempt)).await
        }
    }
    .map_err(Requeue::Publish)
}

impl From<anyhow::Error> for Requeue {
    fn from(e: anyhow::Error) -> Self {
        Self::Publish(e)
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
