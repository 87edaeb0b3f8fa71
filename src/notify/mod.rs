//! Notifications over HTTP: the deliverer of the build store's notification outbox. Every
//! process that records events (worker, serve, run) runs one when `notify.webhooks` is set. It
//! claims due rows (several replicas never hold the same row at once), POSTs each to its webhook
//! signed (`sign`), deletes it on a 2xx answer, and otherwise tries again later (`schedule`) until
//! `notify.give_up_after_secs` has passed since the event was recorded: then the row is dropped,
//! counted and logged. At least once: a receiver may get an event twice (a claim that lapsed
//! mid-POST, an answer lost), always under the same `Idempotency-Key`.

mod schedule;
pub mod sign;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

pub use schedule::{Next, Schedule};

use crate::config::{Settings, Webhook};
use crate::error::cause_chain;
use crate::metrics::Metrics;
use crate::store::{BuildStore, Notification};

/// Rows claimed at a time, and POSTs in flight at once.
const BATCH: u32 = 32;
const IN_FLIGHT: usize = 8;

pub struct Deliverer {
    store: BuildStore,
    metrics: Arc<Metrics>,
    /// By `Webhook::id`, the name rows carry.
    webhooks: HashMap<String, Webhook>,
    client: reqwest::Client,
    schedule: Schedule,
    timeout: Duration,
    poll: Duration,
}

impl Deliverer {
    /// None when no webhook is configured (no row is ever written then).
    pub fn new(
        settings: &Settings,
        store: BuildStore,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Self>> {
        let notify = &settings.notify;
        if notify.webhooks.0.is_empty() {
            return Ok(None);
        }
        let timeout = Duration::from_secs(notify.timeout_secs);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would turn the POST into a GET elsewhere: a 3xx is a failed attempt.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("image-builder/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(Self {
            store,
            metrics,
            webhooks: notify
                .webhooks
                .0
                .iter()
                .map(|h| (h.id(), h.clone()))
                .collect(),
            client,
            schedule: Schedule::new(notify),
            timeout,
            poll: Duration::from_millis(notify.poll_ms),
        }))
    }

    /// How long a claim holds: one POST's bound, twice, so a slow answer is never sent twice
    /// because the claim lapsed while it was on its way.
    fn claim_ttl(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(5)
    }

    /// Delivers until `stop` is cancelled. What is in flight then is given back unfinished (its
    /// rows stay in the outbox, due at once for the next deliverer).
    pub async fn run(self, stop: CancellationToken) {
        match self.store.void_own_notification_claims().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                notifications = n,
                "claims of this replica's previous process voided"
            ),
            Err(e) => tracing::warn!(
                "failed to void old notification claims: {}",
                cause_chain(&e)
            ),
        }
        tracing::info!(webhooks = self.webhooks.len(), "delivering notifications");
        let recorded = self.store.notifications_recorded();
        loop {
            let token = uuid::Uuid::new_v4().to_string();
            let claimed = self
                .store
                .claim_notifications(&token, self.claim_ttl(), BATCH)
                .await;
            let more = match claimed {
                Ok(rows) => {
                    let full = rows.len() == usize::try_from(BATCH).unwrap_or(usize::MAX);
                    let delivering = futures_util::stream::iter(rows)
                        .map(|row| self.deliver(row, &token))
                        .buffer_unordered(IN_FLIGHT)
                        .collect::<()>();
                    tokio::select! {
                        () = delivering => {}
                        () = stop.cancelled() => {
                            if let Err(e) = self.store.release_notifications(&token).await {
                                tracing::warn!("failed to release notifications: {}", cause_chain(&e));
                            }
                            return;
                        }
                    }
                    full
                }
                Err(e) => {
                    tracing::warn!("notification outbox unavailable: {}", cause_chain(&e));
                    false
                }
            };
            if more {
                continue;
            }
            // What is left after this round: a backlog or a receiver down shows here first.
            if let Ok(pending) = self.store.pending_notifications().await {
                self.metrics.notifications_pending.set(pending);
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                () = recorded.notified() => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn deliver(&self, row: Notification, token: &str) {
        let result = match self.webhooks.get(&row.target) {
            Some(hook) => self.post(hook, &row).await,
            // Written by a replica with another notify.webhooks, or before this one was removed:
            // left for a replica that has it, given up in the end like any failure.
            None => Err("no webhook with this id in this replica's notify.webhooks".to_owned()),
        };
        let place = self
            .webhooks
            .get(&row.target)
            .map_or_else(|| row.target.clone(), Webhook::place);
        self.metrics
            .notification_attempt(&row.event, result.is_ok());
        let settled = match result {
            Ok(()) => self.store.notification_done(&row.id, token).await,
            Err(error) => {
                let failures = u32::try_from(row.attempts.saturating_add(1)).unwrap_or(u32::MAX);
                let now = now_millis();
                match self.schedule.after_failure(row.created_at, now, failures) {
                    Next::RetryAt(at) => {
                        tracing::info!(
                            event = %row.event, event_id = %row.event_id, build_id = %row.build_id,
                            webhook = %place, attempt = failures, retry_in_ms = at - now,
                            "notification not delivered, will retry: {error}"
                        );
                        self.store
                            .notification_failed(&row.id, token, at, &error)
                            .await
                    }
                    Next::GiveUp => {
                        self.metrics.notification_given_up(&row.event);
                        tracing::warn!(
                            event = %row.event, event_id = %row.event_id, build_id = %row.build_id,
                            webhook = %place, attempts = failures,
                            "gave up on a notification after notify.give_up_after_secs = {}: {error}",
                            self.schedule.give_up_after.as_secs()
                        );
                        self.store.notification_done(&row.id, token).await
                    }
                }
            }
        };
        if let Err(e) = settled {
            // The claim lapses and the row is tried again: at least once.
            tracing::warn!(event_id = %row.event_id, "failed to settle a notification: {}", cause_chain(&e));
        }
    }

    /// One POST; Err says why it failed without the URL (it may hold a token) or any body.
    async fn post(&self, hook: &Webhook, row: &Notification) -> Result<(), String> {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = sign::signature(
            hook.secret.expose_secret().as_bytes(),
            timestamp,
            row.body.as_bytes(),
        );
        let sent = self
            .client
            .post(hook.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(sign::IDEMPOTENCY_KEY, &row.event_id)
            .header(sign::EVENT, &row.event)
            .header(sign::TIMESTAMP, timestamp.to_string())
            .header(sign::SIGNATURE, signature)
            .header(sign::RETRIES, row.attempts.to_string())
            .body(row.body.clone())
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => Err(format!("the webhook answered {}", answer.status())),
            Err(e) => Err(format!("the POST failed: {}", post_error(&e))),
        }
    }
}

fn now_millis() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// What went wrong, in words that never contain the URL.
fn post_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "no answer within notify.timeout_secs"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_request() || e.is_body() {
        "the request could not be sent"
    } else {
        "the connection failed"
    }
}

/// Starts the deliverer when webhooks are configured; it stops when `stop` is cancelled.
pub fn spawn(
    settings: &Settings,
    store: BuildStore,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    Ok(
        Deliverer::new(settings, store, metrics)?
            .map(|deliverer| tokio::spawn(deliverer.run(stop))),
    )
}

#[cfg(test)]
mod tests {
    use crate::config::notify::EVENT_NAMES;
    use crate::events::{BuildCancelled, BuildFailed, BuildRef, BuildRetrying, BuildStarted};
    use crate::events::{Event, ImageUpdated};

    /// `notify.webhooks[].events` accepts exactly the names events are published under.
    #[test]
    fn the_configurable_event_names_are_the_published_ones() {
        let build = BuildRef {
            build_id: "b".into(),
            request_id: "r".into(),
            user_id: None,
            repo: None,
            git_ref: None,
        };
        let failed = BuildFailed {
            build: build.clone(),
            attempts: 1,
            fault: crate::error::Fault::Service,
            reason: String::new(),
            field: None,
            log_tail: Vec::new(),
        };
        let events = [
            Event::Started(BuildStarted {
                build: build.clone(),
                attempt: 1,
                host: String::new(),
            }),
            Event::Retrying(BuildRetrying {
                build: build.clone(),
                attempt: 1,
                next_attempt: 2,
                delay_ms: 0,
                reason: String::new(),
            }),
            Event::ImageUpdated(ImageUpdated {
                build: build.clone(),
                commit: String::new(),
                image: String::new(),
                tags: Vec::new(),
                digest: String::new(),
                platforms: Vec::new(),
                cached: false,
                duration_ms: 0,
                finished_at: time::OffsetDateTime::UNIX_EPOCH,
                how: Default::default(),
                why: String::new(),
                bases: Vec::new(),
                artifacts: Vec::new(),
            }),
            Event::Failed(failed.clone()),
            Event::Rejected(failed),
            Event::Cancelled(BuildCancelled {
                build,
                attempts: 1,
                was_running: false,
                log_tail: Vec::new(),
            }),
        ];
        // Fails to compile when an event is added: add it above too.
        for event in &events {
            match event {
                Event::Started(_)
                | Event::Retrying(_)
                | Event::ImageUpdated(_)
                | Event::Failed(_)
                | Event::Rejected(_)
                | Event::Cancelled(_) => {}
            }
        }
        let mut names: Vec<&str> = events.iter().map(Event::routing_key).collect();
        let mut known = EVENT_NAMES.to_vec();
        names.sort_unstable();
        known.sort_unstable();
        assert_eq!(names, known);
    }
}
