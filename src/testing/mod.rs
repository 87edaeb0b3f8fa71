//! In-process fakes of the build ports, for fast tests of the pipeline and the worker without
//! git, podman, a registry or a broker. Test-only (`cfg(test)`).

mod engine;
mod registry;
mod source;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

pub use engine::FakeEngine;
pub use registry::FakeRegistry;
pub use source::FakeSource;

use crate::config::ConnectorSettings;
use crate::error::StoreError;
use crate::events::BaseImage;
use crate::ports::{Environment, PipelineSettings, RecordedImages};

/// The registry host fake images are named under.
pub const REGISTRY_HOST: &str = "registry.test";

/// Digests trusted as this service's own builds (the store's role, without a database), with
/// the base images recorded for them.
#[derive(Default)]
pub struct RecordedDigests(
    Mutex<HashSet<(String, String)>>,
    Mutex<HashMap<(String, String), Vec<BaseImage>>>,
);

impl RecordedDigests {
    pub fn trust(&self, image: &str, digest: &str) {
        if let Ok(mut set) = self.0.lock() {
            set.insert((image.to_owned(), digest.to_owned()));
        }
    }

    /// Trusts `image@digest` as built on `bases`.
    pub fn trust_on(&self, image: &str, digest: &str, bases: Vec<BaseImage>) {
        self.trust(image, digest);
        if let Ok(mut map) = self.1.lock() {
            map.insert((image.to_owned(), digest.to_owned()), bases);
        }
    }
}

#[async_trait]
impl RecordedImages for RecordedDigests {
    async fn recorded(&self, image: &str, digest: &str) -> Result<bool, StoreError> {
        Ok(self
            .0
            .lock()
            .is_ok_and(|set| set.contains(&(image.to_owned(), digest.to_owned()))))
    }

    async fn recorded_bases(
        &self,
        image: &str,
        digest: &str,
    ) -> Result<Vec<BaseImage>, StoreError> {
        Ok(self
            .1
            .lock()
            .ok()
            .and_then(|map| map.get(&(image.to_owned(), digest.to_owned())).cloned())
            .unwrap_or_default())
    }
}

/// What the pipeline reads from settings, for a build under `work_dir`: the `github`
/// connector, one minute per build, no incremental rebuilds.
pub fn pipeline_settings(work_dir: &Path) -> PipelineSettings {
    PipelineSettings {
        work_dir: work_dir.to_owned(),
        build_timeout: Duration::from_secs(60),
        registry_host: REGISTRY_HOST.into(),
        connectors: BTreeMap::from([(
            "github".to_owned(),
            ConnectorSettings {
                base_url: "https://git.test".into(),
                username: "x-access-token".into(),
            },
        )]),
        incremental: false,
        artifact_max_bytes: 1 << 20,
    }
}

/// An environment of fakes with `slots` build slots.
pub fn environment(
    work_dir: &Path,
    source: Arc<FakeSource>,
    engine: Arc<FakeEngine>,
    registry: Arc<FakeRegistry>,
    recorded: Arc<dyn RecordedImages>,
    slots: usize,
) -> Environment {
    Environment {
        settings: Arc::new(pipeline_settings(work_dir)),
        source,
        engine,
        registry,
        recorded_images: recorded,
        build_slots: Arc::new(Semaphore::new(slots)),
    }
}
