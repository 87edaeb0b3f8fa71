//! An engine that "builds" instantly and "pushes" a small manifest into a `FakeRegistry`.
//! It can fail or panic the next builds, or hold a build until it is cancelled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::FakeRegistry;
use crate::error::BuildError;
use crate::events::BaseImage;
use crate::ports::{BuildCtx, BuildSpec, Built, ImageEngine, Manifest, content_digest};

pub struct FakeEngine {
    registry: Arc<FakeRegistry>,
    pub builds: AtomicUsize,
    /// Returned by the next builds, first in first out.
    failures: Mutex<VecDeque<BuildError>>,
    /// While set, a build waits for its cancel signal (and then reports `Cancelled`).
    hold: AtomicBool,
    /// Notified when a build starts.
    pub started: Notify,
    /// The next this many builds panic (a bug in an adapter).
    panics: AtomicUsize,
    /// What every build reports it was built on.
    bases: Mutex<Vec<BaseImage>>,
    /// The `refresh_bases` of every build, in order.
    pub refreshed: Mutex<Vec<Vec<String>>>,
}

impl FakeEngine {
    pub fn new(registry: Arc<FakeRegistry>) -> Self {
        Self {
            registry,
            builds: AtomicUsize::new(0),
            failures: Mutex::new(VecDeque::new()),
            hold: AtomicBool::new(false),
            started: Notify::new(),
            panics: AtomicUsize::new(0),
            bases: Mutex::new(Vec::new()),
            refreshed: Mutex::new(Vec::new()),
        }
    }

    pub fn build_on(&self, bases: Vec<BaseImage>) {
        if let Ok(mut held) = self.bases.lock() {
            *held = bases;
        }
    }

    pub fn fail_next_build(&self, error: BuildError) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.push_back(error);
        }
    }

    pub fn panic_next_build(&self) {
        self.panics.fetch_add(1, Ordering::SeqCst);
    }

    pub fn hold_builds_until_cancelled(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    pub fn build_count(&self) -> usize {
        self.builds.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ImageEngine for FakeEngine {
    async fn build_and_push(
        &self,
        spec: &BuildSpec,
        tag: &str,
        ctx: &BuildCtx,
    ) -> Result<Built, BuildError> {
        let bases = self.build(spec, ctx).await?;
        let digest = self.push(spec, tag).await?;
        Ok(Built { bases, digest })
    }
}

impl FakeEngine {
    async fn build(&self, spec: &BuildSpec, ctx: &BuildCtx) -> Result<Vec<BaseImage>, BuildError> {
        self.builds.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut refreshed) = self.refreshed.lock() {
            refreshed.push(spec.refresh_bases.clone());
        }
        self.started.notify_one();
        let panic = self
            .panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if panic.is_ok() {
            panic!("the fake engine was told to panic");
        }
        if self.hold.load(Ordering::SeqCst) {
            ctx.cancel.cancelled().await;
            return Err(BuildError::Cancelled);
        }
        match self.failures.lock().ok().and_then(|mut f| f.pop_front()) {
            Some(error) => Err(error),
            None => Ok(self.bases.lock().map(|b| b.clone()).unwrap_or_default()),
        }
    }

    async fn push(&self, spec: &BuildSpec, tag: &str) -> Result<String, BuildError> {
        // Content that differs per build configuration and commit, like a real image's.
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "labels": spec.labels,
            "key": spec.key_tag,
        }))
        .map_err(|e| BuildError::Internal(e.into()))?;
        let manifest = Manifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: content_digest(&bytes),
            bytes,
        };
        let repository = spec
            .image
            .split_once('/')
            .map_or(spec.image.as_str(), |(_, path)| path);
        use crate::ports::ImageRegistry;
        self.registry.tag(repository, tag, &manifest).await?;
        Ok(manifest.digest)
    }
}
