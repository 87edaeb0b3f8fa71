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
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// The broker and the store are reachable: this replica can take and record work.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Broker and store reachable"),
        (status = 503, description = "Not ready: which one is not")))]
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

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
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
