//! The composition root: the one place that picks concrete adapters (git mirrors, podman or
//! docker, the registry client, the SQL store) and wires them into the pipeline's
//! `Environment`. Everything below sees only the ports; tests build their own `Environment`
//! from fakes (`testing`).

pub mod local_build;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::{EngineKind, Settings};
use crate::engine::{DockerEngine, Podman};
use crate::metrics::Metrics;
use crate::ports::{Environment, ImageEngine, ImageRegistry, PipelineSettings, RegistryHosts};
use crate::registry::RegistryClient;
use crate::source::{ExtraRoots, GitMirrors, KeptTrees, NetworkPolicy};
use crate::store::BuildStore;

/// The adapters a worker builds with, as `settings` choose them.
pub fn environment(
    settings: &Settings,
    store: &BuildStore,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Environment> {
    let engine: Arc<dyn ImageEngine> = match settings.build.engine {
        EngineKind::Podman => Arc::new(Podman::new(settings)?),
        EngineKind::Docker => Arc::new(DockerEngine::new(&settings.build, &settings.registry)),
    };
    Ok(Environment {
        settings: Arc::new(PipelineSettings::from_settings(settings)),
        source: Arc::new(
            GitMirrors::new(
                settings.cache_dir(),
                settings.git_cache_max_mb.saturating_mul(1024 * 1024),
                &settings.build.limits,
                NetworkPolicy::allowing(settings.request.allowed_networks.0.clone()),
            )
            .trusting(git_roots(settings)?)
            .counting(metrics.clone())
            .keeping(KeptTrees::new(
                settings.kept_checkouts_dir(),
                settings.kept_checkouts,
                settings.kept_checkouts_max_mb.saturating_mul(1024 * 1024),
            )),
        ),
        engine,
        registry: registry(settings),
        recorded_images: Arc::new(store.clone()),
        build_slots: Arc::new(Semaphore::new(usize::from(settings.amqp.prefetch.max(1)))),
    })
}

/// The registry images are pushed to: the pipeline's, and the API's for artifacts.
pub fn registry(settings: &Settings) -> Arc<dyn ImageRegistry> {
    Arc::new(RegistryClient::new(&settings.registry))
}

/// Clients of the registries base images come from: the product's own registry with its
/// login, any other anonymously (plain HTTP where `base_images.registries` says insecure), one
/// client per host so its tokens are reused.
pub fn registry_hosts(settings: &Settings) -> Arc<dyn RegistryHosts> {
    Arc::new(BaseRegistryHosts {
        own: settings.registry.host.clone(),
        own_client: registry(settings),
        insecure: settings
            .base_images
            .registries
            .iter()
            .filter(|entry| entry.insecure)
            .map(|entry| {
                entry
                    .prefix
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .chain(
                settings
                    .registry
                    .insecure
                    .then(|| settings.registry.host.clone()),
            )
            .collect(),
        clients: std::sync::Mutex::new(std::collections::HashMap::new()),
    })
}

struct BaseRegistryHosts {
    own: String,
    own_client: Arc<dyn ImageRegistry>,
    insecure: Vec<String>,
    clients: std::sync::Mutex<std::collections::HashMap<String, Arc<dyn ImageRegistry>>>,
}

impl RegistryHosts for BaseRegistryHosts {
    fn for_host(&self, host: &str) -> Arc<dyn ImageRegistry> {
        if host == self.own {
            return self.own_client.clone();
        }
        // A panic elsewhere while holding the map left it whole: keep using it.
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry(host.to_owned())
            .or_insert_with(|| {
                Arc::new(RegistryClient::new(&crate::config::RegistrySettings {
                    host: host.to_owned(),
                    insecure: self.insecure.iter().any(|h| h == host),
                    username: String::new(),
                    password: secrecy::SecretString::from(String::new()),
                }))
            })
            .clone()
    }
}

/// The certificates of `request.git_ca_file`, read at start (none when it is empty).
fn git_roots(settings: &Settings) -> anyhow::Result<ExtraRoots> {
    let file = &settings.request.git_ca_file;
    if file.as_os_str().is_empty() {
        return Ok(ExtraRoots::default());
    }
    ExtraRoots::from_pem_file(file).map_err(anyhow::Error::msg)
}

/// Process-wide preparation before a worker's first build: git's stall timeout, a warning per
/// loosened sandbox setting, and the cgroups a crashed predecessor left behind.
pub fn prepare_build_host(settings: &Settings) {
    crate::source::configure_git_timeouts(settings.build.limits.git_stall());
    for warning in settings.sandbox_warnings() {
        tracing::warn!("sandbox loosened: {warning}");
    }
    let isolated = settings.build.isolation == crate::config::Isolation::Oci
        && settings.build.network == crate::config::BuildNetwork::Isolated;
    if settings.build.engine == EngineKind::Podman && isolated {
        let build = &settings.build;
        if let Some(why) = crate::engine::build_network_fence_missing(&build.bridge, &build.subnet)
        {
            tracing::warn!(
                "sandbox loosened: {why}: builds may reach this host and have no egress \
                 (run scripts/sandbox-firewall.sh apply)"
            );
        }
    }
    if settings.build.engine == EngineKind::Podman {
        // Older than any build can run, with a margin for its push.
        crate::engine::remove_stale_cgroups(settings.build_timeout() + Duration::from_secs(600));
    }
}
