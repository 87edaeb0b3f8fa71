//! A source that "fetches" one fixed commit and checks out a few files.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use crate::error::BuildError;
use crate::ports::{BuildCtx, Checkout, SourceFetcher, SourceSpec};

pub struct FakeSource {
    checkout: Checkout,
    files: Vec<(String, String)>,
    /// Returned by the next calls of `resolve`, first in first out.
    failures: Mutex<VecDeque<BuildError>>,
    pub checkouts: AtomicUsize,
    /// Told by `resolve_telling` as the commit it fetches (the mirror "lacks" it).
    pub fetching: Mutex<Option<String>>,
}

impl FakeSource {
    /// `main` at `commit`, the default branch, with a one-line Dockerfile.
    pub fn new(commit: &str) -> Self {
        Self {
            checkout: Checkout {
                commit: commit.to_owned(),
                ref_name: "main".into(),
                is_default_branch: true,
                committed_at: 1_700_000_000,
                hold: Default::default(),
            },
            files: vec![("Dockerfile".into(), "FROM scratch\n".into())],
            failures: Mutex::new(VecDeque::new()),
            checkouts: AtomicUsize::new(0),
            fetching: Mutex::new(None),
        }
    }

    pub fn fail_next_resolve(&self, error: BuildError) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.push_back(error);
        }
    }
}

#[async_trait]
impl SourceFetcher for FakeSource {
    async fn resolve(&self, _spec: &SourceSpec, _ctx: &BuildCtx) -> Result<Checkout, BuildError> {
        if let Some(error) = self.failures.lock().ok().and_then(|mut f| f.pop_front()) {
            return Err(error);
        }
        Ok(self.checkout.clone())
    }

    async fn resolve_telling(
        &self,
        spec: &SourceSpec,
        ctx: &BuildCtx,
        fetching: tokio::sync::oneshot::Sender<String>,
    ) -> Result<Checkout, BuildError> {
        let told = self.fetching.lock().ok().and_then(|f| f.clone());
        if let Some(commit) = told {
            let _ = fetching.send(commit);
            // The "fetch": whatever was started beside it gets to run.
            tokio::task::yield_now().await;
        }
        self.resolve(spec, ctx).await
    }

    async fn changed_paths(
        &self,
        _spec: &SourceSpec,
        _from: &str,
        _to: &str,
        _ctx: &BuildCtx,
    ) -> Result<Option<Vec<String>>, BuildError> {
        Ok(None)
    }

    async fn checkout(
        &self,
        _spec: &SourceSpec,
        _commit: &str,
        dest: &Path,
        _ctx: &BuildCtx,
    ) -> Result<(), BuildError> {
        self.checkouts.fetch_add(1, Ordering::SeqCst);
        std::fs::create_dir_all(dest).map_err(|e| BuildError::Internal(e.into()))?;
        for (path, text) in &self.files {
            std::fs::write(dest.join(path), text).map_err(|e| BuildError::Internal(e.into()))?;
        }
        Ok(())
    }
}
