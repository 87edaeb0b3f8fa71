//! The adapters one build runs against, chosen by the composition root (`startup`) and shared by
//! every build: the pipeline sees them only as these traits, so tests swap in fakes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{ImageEngine, ImageRegistry, RecordedImages, SourceFetcher};
use crate::config::{ConnectorSettings, Settings};
use crate::error::BuildError;

/// The part of `Settings` the pipeline reads.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Per-build work dirs (checkout and scratch files) are made here and always removed.
    pub work_dir: PathBuf,
    pub build_timeout: Duration,
    /// The registry host images are named under (`host/user/name`).
    pub registry_host: String,
    /// Base URLs and user names of the connectors a request may name.
    pub connectors: BTreeMap<String, ConnectorSettings>,
    /// Edit the previous image in the registry when only the final COPY steps' files changed.
    pub incremental: bool,
    /// `artifacts.max_bytes`: bound of one exported artifact (uncompressed tar).
    pub artifact_max_bytes: u64,
}

impl PipelineSettings {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            work_dir: settings.work_dir(),
            build_timeout: settings.build_timeout(),
            registry_host: settings.registry.host.clone(),
            connectors: settings.connectors.clone(),
            incremental: settings.build.incremental,
            artifact_max_bytes: settings.artifacts.max_bytes,
        }
    }
}

/// External clients, built once at start and shared by every build.
#[derive(Clone)]
pub struct Environment {
    pub settings: Arc<PipelineSettings>,
    pub source: Arc<dyn SourceFetcher>,
    pub engine: Arc<dyn ImageEngine>,
    /// The OCI registry images are pushed to and looked up in.
    pub registry: Arc<dyn ImageRegistry>,
    /// This service's record of what it pushed: a registry tag is trusted only through it.
    pub recorded_images: Arc<dyn RecordedImages>,
    /// Build slots (`amqp.prefetch`): checkout, build and push wait for one; a cached answer
    /// needs none.
    pub build_slots: Arc<Semaphore>,
}

/// Whether `digest` is one of this service's recorded successes for `image`.
pub async fn recorded(env: &Environment, image: &str, digest: &str) -> Result<bool, BuildError> {
    Ok(env.recorded_images.recorded(image, digest).await?)
}
