//! The composition root: the one place that picks concrete adapters (git mirrors, podman or
//! docker, the registry client, the SQL store) and wires them into the pipeline's
//! `Environment`. Everything below sees only the ports; tests build their own `Environment`
//! from fakes (`testing`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::{EngineKind, Settings};
use crate::engine::{DockerEngine, Podman};
use crate::ports::{Environment, ImageEngine, PipelineSettings};
use crate::registry::RegistryClient;
use crate::source::{GitMirrors, NetworkPolicy};
use crate::store::BuildStore;

/// The adapters a worker builds with, as `settings` choose them.
pub fn environment(settings: &Settings, store: &BuildStore) -> anyhow::Result<Environment> {
    let engine: Arc<dyn ImageEngine> = match settings.build.engine {
        EngineKind::Podman => Arc::new(Podman::new(&settings.build, &settings.registry)),
        EngineKind::Docker => Arc::new(DockerEngine::new(&settings.build, &settings.registry)),
    };
    Ok(Environment {
        settings: Arc::new(PipelineSettings::from_settings(settings)),
        source: Arc::new(GitMirrors::new(
            settings.cache_dir(),
            settings.git_cache_max_mb.saturating_mul(1024 * 1024),
            &settings.build.limits,
            NetworkPolicy::allowing(settings.request.allowed_networks.0.clone()),
        )),
        engine,
        registry: Arc::new(RegistryClient::new(&settings.registry)),
        recorded_images: Arc::new(store.clone()),
        build_slots: Arc::new(Semaphore::new(usize::from(settings.amqp.prefetch.max(1)))),
    })
}

/// Process-wide preparation before a worker's first build: git's stall timeout, a warning per
/// loosened sandbox setting, and the cgroups a crashed predecessor left behind.
pub fn prepare_build_host(settings: &Settings) {
    crate::source::configure_git_timeouts(settings.build.limits.git_stall());
    for warning in settings.sandbox_warnings() {
        tracing::warn!("sandbox loosened: {warning}");
    }
    if settings.build.engine == EngineKind::Podman {
        // Older than any build can run, with a margin for its push.
        crate::engine::remove_stale_cgroups(settings.build_timeout() + Duration::from_secs(600));
    }
}
