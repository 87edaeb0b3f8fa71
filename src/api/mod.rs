//! The HTTP API of DESIGN.md ("Records and HTTP API"): build records, logs, cancel and rebuild,
//! image lookup, GitHub webhooks, metrics and health. One port; bearer keys except where noted.

mod artifacts;
mod auth;
mod broker;
mod builds;
mod catalog;
mod error;
mod health;
mod scope;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

pub use auth::{generate_key, hash_key};
pub use broker::Broker;
pub use error::ApiError;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::ports::ImageRegistry;
use crate::request::RequestPolicy;
use crate::store::BuildStore;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: BuildStore,
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
    /// Where artifacts are read from (`registry.host`), chosen by the composition root.
    pub registry: Arc<dyn ImageRegistry>,
    /// Ends log follows, so a graceful shutdown does not wait on them.
    pub shutdown: CancellationToken,
    keys: Arc<auth::ApiKeys>,
    policy: Arc<RequestPolicy>,
    /// GitHub `owner/name` (lowercase) -> the platform user its pushes build for.
    github_repos: Arc<BTreeMap<String, String>>,
}

impl AppState {
    pub fn new(
        settings: Arc<Settings>,
        store: BuildStore,
        broker: Broker,
        metrics: Arc<Metrics>,
        registry: Arc<dyn ImageRegistry>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            shutdown,
            keys: Arc::new(auth::ApiKeys::new(settings.api.key_scopes()?)),
            github_repos: Arc::new(settings.webhooks.github_repos()?),
            policy: Arc::new(RequestPolicy {
                max_body_bytes: settings.request.max_body_bytes,
                allowed_schemes: settings.request.allowed_schemes.clone(),
            }),
            settings,
            store,
            broker,
            metrics,
            registry,
        })
    }
}

pub fn router(state: AppState) -> Router {
    let with_key = Router::new()
        .route("/v1/builds", post(builds::submit).get(builds::list))
        .route(
            "/v1/builds/{id}",
            get(builds::details).delete(builds::delete),
        )
        .route("/v1/builds/{id}/logs", get(builds::logs))
        .route("/v1/builds/{id}/cancel", post(builds::cancel))
        .route("/v1/builds/{id}/rebuild", post(builds::rebuild))
        .route("/v1/builds/{id}/artifacts", get(artifacts::list))
        .route("/v1/builds/{id}/artifacts/{name}", get(artifacts::download))
        .route("/v1/artifacts", get(artifacts::latest))
        .route("/v1/images", get(catalog::image))
        .route("/v1/repos", get(catalog::repos))
        .route("/v1/repos/{*name_and_versions}", get(catalog::versions))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        // The request validator names the field of an oversize body; this only stops abuse.
        .layer(DefaultBodyLimit::max(
            state.settings.request.max_body_bytes.saturating_mul(4),
        ));
    // Authenticated by their own HMAC, or open (probes and scrapers).
    let open = Router::new()
        .route(
            "/v1/webhooks/github",
            // Bounded before the signature is computed over it.
            post(webhook::github).layer(DefaultBodyLimit::max(
                state.settings.webhooks.max_body_bytes,
            )),
        )
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    with_key
        .merge(open)
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

/// Probes and metrics only: what an orchestrator asks a worker that serves no API.
pub fn probes_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

/// What a process serves over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// The whole API on `api.listen`.
    Api,
    /// /healthz, /readyz and /metrics on `api.probes_listen` (a worker alone).
    Probes,
}

/// Serves `what` until `shutdown`.
pub async fn serve(
    what: Serving,
    settings: Arc<Settings>,
    store: BuildStore,
    metrics: Arc<Metrics>,
    registry: Arc<dyn ImageRegistry>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let broker = Broker::start(settings.clone(), shutdown.clone());
    let state = AppState::new(
        settings.clone(),
        store,
        broker,
        metrics,
        registry,
        shutdown.clone(),
    )?;
    let (listen, make): (&str, fn(AppState) -> Router) = match what {
        Serving::Api => (&settings.api.listen, router),
        Serving::Probes => (&settings.api.probes_listen, probes_router),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {listen}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "{what:?} listening");
    axum::serve(listener, make(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    tracing::info!("{what:?} stopped");
    Ok(())
}
