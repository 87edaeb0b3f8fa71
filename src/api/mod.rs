//! The HTTP API of DESIGN.md ("Records and HTTP API"): build records, logs, cancel and rebuild,
//! image lookup, GitHub and GitLab webhooks, metrics and health. One port; bearer keys except where noted.

mod artifacts;
mod auth;
mod base_updates;
mod broker;
mod builds;
mod catalog;
mod console;
mod error;
mod health;
pub mod openapi;
mod params;
mod registry_browser;
mod registry_events;
mod scope;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{generate_key, hash_key};
pub use broker::Broker;
pub use error::ApiError;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::ports::{ImageRegistry, RegistryHosts};
use crate::request::RequestPolicy;
use crate::store::BuildStore;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: BuildStore,
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
    /// Where artifacts are read from (`registry.host`), chosen by the composition root.
    /// Also what `/v1/registry` lists.
    pub registry: Arc<dyn ImageRegistry>,
    /// Where base images' tags are resolved (`base_updates`).
    pub base_registries: Arc<dyn RegistryHosts>,
    /// Ends log follows, so a graceful shutdown does not wait on them.
    pub shutdown: CancellationToken,
    keys: Arc<auth::ApiKeys>,
    policy: Arc<RequestPolicy>,
    /// GitHub `owner/name` (lowercase) -> the platform user its pushes build for.
    github_repos: Arc<BTreeMap<String, String>>,
    /// GitLab `group/.../name` (lowercase) -> the platform user its pushes build for.
    gitlab_repos: Arc<BTreeMap<String, String>>,
}

impl AppState {
    pub fn new(
        settings: Arc<Settings>,
        store: BuildStore,
        broker: Broker,
        metrics: Arc<Metrics>,
        registry: Arc<dyn ImageRegistry>,
        base_registries: Arc<dyn RegistryHosts>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            shutdown,
            keys: Arc::new(auth::ApiKeys::new(settings.api.key_scopes()?)),
            github_repos: Arc::new(settings.webhooks.github_repos()?),
            gitlab_repos: Arc::new(settings.webhooks.gitlab_repos()?),
            policy: Arc::new(RequestPolicy {
                max_body_bytes: settings.request.max_body_bytes,
                allowed_schemes: settings.request.allowed_schemes.clone(),
            }),
            settings,
            store,
            broker,
            metrics,
            registry,
            base_registries,
        })
    }
}

/// The routes that need a key, each registered with its OpenAPI operation.
fn keyed_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(builds::submit, builds::list))
        .routes(routes!(builds::details, builds::delete))
        .routes(routes!(builds::logs))
        .routes(routes!(builds::cancel))
        .routes(routes!(builds::rebuild))
        .routes(routes!(artifacts::list))
        .routes(routes!(artifacts::download))
        .routes(routes!(artifacts::latest))
        .routes(routes!(catalog::image))
        .routes(routes!(catalog::repos))
        // A repository name holds slashes: a wildcard axum route, documented in `ApiDoc` as
        // /v1/repos/{name}/versions.
        .route("/v1/repos/{*name_and_versions}", get(catalog::versions))
        .routes(routes!(registry_browser::repositories))
        // Documented in `ApiDoc` as /v1/registry/repositories/{name}/tags.
        .route(
            "/v1/registry/repositories/{*name_and_tags}",
            get(registry_browser::tags),
        )
}

/// Authenticated by their own signature or token: bounded before that is checked.
fn webhook_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(webhooks::github::receive))
        .routes(routes!(webhooks::gitlab::receive))
        .routes(routes!(registry_events::receive))
}

/// What an orchestrator and a scraper ask for.
fn probe_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::metrics))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
}

/// Open to probes, scrapers and readers of the contract.
fn open_routes() -> OpenApiRouter<AppState> {
    probe_routes()
        .routes(routes!(openapi::document))
        .routes(routes!(openapi::reference))
        .routes(routes!(console::index))
}

/// The OpenAPI document of every route `router` serves (built from the same route lists).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi())
        .merge(keyed_routes())
        .merge(webhook_routes())
        .merge(open_routes())
        .into_openapi()
}

pub fn router(state: AppState) -> Router {
    let with_key = keyed_routes()
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        // The request validator names the field of an oversize body; this only stops abuse.
        .layer(DefaultBodyLimit::max(
            state.settings.request.max_body_bytes.saturating_mul(4),
        ));
    let webhooks = webhook_routes().layer(DefaultBodyLimit::max(
        state.settings.webhooks.max_body_bytes,
    ));
    let (router, _) = with_key
        .merge(webhooks)
        .merge(open_routes())
        .split_for_parts();
    router
        .merge(console::assets())
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

/// Probes and metrics only: what an orchestrator asks a worker that serves no API.
pub fn probes_router(state: AppState) -> Router {
    let (router, _) = probe_routes().split_for_parts();
    router
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
    base_registries: Arc<dyn RegistryHosts>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let broker = Broker::start(settings.clone(), shutdown.clone());
    let state = AppState::new(
        settings.clone(),
        store,
        broker,
        metrics,
        registry,
        base_registries,
        shutdown.clone(),
    )?;
    // Beside the API, which publishes the rebuilds: every API replica polls, the store decides.
    if what == Serving::Api && settings.bases.poll_interval_ms > 0 {
        tokio::spawn(base_updates::poll(state.clone(), shutdown.clone()));
    }
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
