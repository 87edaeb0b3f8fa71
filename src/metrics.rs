//! Prometheus metrics of this process: build outcomes, durations, retries, running builds and the
//! queue depth last seen. Exposed on `GET /metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// succeeded | failed | rejected | cancelled
    pub outcome: String,
    /// For succeeded: "true" when answered from the registry without building.
    pub cached: String,
    /// For failed: user | service.
    pub fault: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    /// The event name (`image.updated`...).
    pub event: String,
    /// delivered | failed
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: String,
}

pub struct Metrics {
    registry: Registry,
    pub builds: Family<OutcomeLabels, Counter>,
    pub duration: Histogram,
    pub retries: Counter,
    pub running: Gauge,
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// Panics caught while handling a delivery (each a bug; the replica carries on).
    pub panics: Counter,
    /// Builds refused because their repository's mirror alone is larger than the cache bound.
    pub mirror_over_cache_bound: Counter,
    /// Webhook POSTs by event and result (`notify`).
    pub notification_attempts: Family<NotificationLabels, Counter>,
    /// Notifications dropped undelivered after `notify.give_up_after_secs`, by event.
    pub notifications_given_up: Family<EventLabels, Counter>,
    /// Notifications waiting in the outbox, as this process last counted them (the store is
    /// shared: every replica reports the same fleet-wide number).
    pub notifications_pending: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("image_builder");
        let builds = Family::<OutcomeLabels, Counter>::default();
        registry.register("builds", "Finished builds by outcome", builds.clone());
        // 50 ms .. ~27 min.
        let duration = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        registry.register(
            "build_duration_seconds",
            "Time from a worker taking a build to its outcome",
            duration.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "retries",
            "Builds sent to a retry tier after a service fault",
            retries.clone(),
        );
        let running = Gauge::default();
        registry.register("builds_running", "Builds running now", running.clone());
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Ready messages in a queue, as last seen by this process",
            queue_depth.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "panics",
            "Panics caught while handling a delivery; the delivery was retried or requeued",
            panics.clone(),
        );
        let mirror_over_cache_bound = Counter::default();
        registry.register(
            "mirror_over_cache_bound",
            "Builds failed because their repository's mirror alone exceeds git_cache_max_mb",
            mirror_over_cache_bound.clone(),
        );
        let notification_attempts = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "notification_attempts",
            "Webhook notification POSTs by event and result (delivered: a 2xx answer)",
            notification_attempts.clone(),
        );
        let notifications_given_up = Family::<EventLabels, Counter>::default();
        registry.register(
            "notifications_given_up",
            "Webhook notifications dropped undelivered after notify.give_up_after_secs",
            notifications_given_up.clone(),
        );
        let notifications_pending = Gauge::default();
        registry.register(
            "notifications_pending",
            "Webhook notifications waiting in the outbox (the whole fleet's, from the shared store)",
            notifications_pending.clone(),
        );
        Arc::new(Self {
            registry,
            builds,
            duration,
            retries,
            running,
            queue_depth,
            panics,
            mirror_over_cache_bound,
            notification_attempts,
            notifications_given_up,
            notifications_pending,
        })
    }

    pub fn finished(&self, outcome: &str, fault: &str, cached: bool, seconds: Option<f64>) {
        self.builds
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
                cached: cached.to_string(),
                fault: fault.to_owned(),
            })
            .inc();
        if let Some(seconds) = seconds {
            self.duration.observe(seconds);
        }
    }

    /// One webhook POST's result (`delivered` or `failed`).
    pub fn notification_attempt(&self, event: &str, delivered: bool) {
        let result = if delivered { "delivered" } else { "failed" };
        self.notification_attempts
            .get_or_create(&NotificationLabels {
                event: event.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn notification_given_up(&self, event: &str) {
        self.notifications_given_up
            .get_or_create(&EventLabels {
                event: event.to_owned(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("failed to encode metrics: {e}");
        }
        out
    }
}
