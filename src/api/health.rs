//! Probes and the Prometheus scrape endpoint: no API key (they reveal no build data).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use crate::metrics::QueueLabels;

/// The process is up.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// The broker and the store are reachable: this replica can take and record work.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let broker = state.broker.is_connected();
    let store = tokio::time::timeout(Duration::from_secs(2), state.store.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let status = if broker && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"broker": broker, "store": store})))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Queue depth as seen now; a scrape never waits long on the broker.
    if let Ok(Ok(depths)) =
        tokio::time::timeout(Duration::from_secs(2), state.broker.queue_depths()).await
    {
        for (queue, depth) in depths {
            state
                .metrics
                .queue_depth
                .get_or_create(&QueueLabels { queue })
                .set(i64::from(depth));
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
