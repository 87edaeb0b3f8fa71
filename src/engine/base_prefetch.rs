//! Base images pulled while the source is fetched. A build's bases are known only once its
//! Dockerfile is checked out, but a repository's next build almost always starts from the bases
//! of its last one: those are recorded per cache scope (user and repository) and, when missing
//! from the local store, pulled as the next build of the scope starts, beside its fetch. The
//! build's own check of a base waits for a pull of it in flight instead of starting another.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::build_log::BuildLog;
use crate::error::cause_chain;
use crate::process::{self, Invocation};
use crate::redact::Redactor;

/// At most this many bases are recorded for a scope (a Dockerfile names few).
const MAX_RECORDED: usize = 16;

/// A base seen in the local store is not looked for again for this long: every request
/// (cached answers too) starts a prefetch, and a podman process per request would cost cached
/// answers their speed. A base removed meanwhile is pulled by the build, as without prefetch.
const SEEN_FOR: Duration = Duration::from_secs(600);

pub(super) struct BasePrefetch {
    /// One file per scope: the bases of its last build, one per line.
    dir: PathBuf,
    /// Per base name: held while a prefetch pulls it.
    pulling: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    /// Per base name: when it was last known to be in the local store.
    seen: Arc<Mutex<HashMap<String, Instant>>>,
}

/// One base to pull: whether it is there, and the pull.
pub(super) struct Pull {
    pub base: String,
    pub exists: Invocation,
    pub pull: Invocation,
}

impl BasePrefetch {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            pulling: Mutex::new(HashMap::new()),
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn path(&self, scope: &str) -> PathBuf {
        self.dir.join(hex::encode(Sha256::digest(scope.as_bytes())))
    }

    /// The bases the last build of `scope` used (none when it has not built here).
    pub(super) fn recorded(&self, scope: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(scope))
            .map(|text| {
                text.lines()
                    .filter(|l| !l.is_empty())
                    .take(MAX_RECORDED)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records a finished build's bases for the next build of `scope`. A failure to record
    /// costs the next build its head start, nothing else.
    pub(super) fn record(&self, scope: &str, bases: &[String]) {
        let text: String = bases
            .iter()
            .take(MAX_RECORDED)
            .map(|b| format!("{b}\n"))
            .collect();
        let write = std::fs::create_dir_all(&self.dir).and_then(|()| {
            let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            std::fs::write(tmp.path(), text)?;
            tmp.persist(self.path(scope)).map(drop).map_err(|e| e.error)
        });
        if let Err(e) = write {
            tracing::warn!("failed to record the build's base images: {e}");
        }
    }

    fn lock_of(&self, base: &str) -> Arc<AsyncMutex<()>> {
        let mut pulling = self
            .pulling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pulling.entry(base.to_owned()).or_default().clone()
    }

    /// Waits for a prefetch of `base` in flight, if there is one.
    pub(super) async fn settled(&self, base: &str) {
        drop(self.lock_of(base).lock().await);
    }

    /// Whether `base` was in the local store within `SEEN_FOR`.
    pub(super) fn recently_seen(&self, base: &str) -> bool {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.get(base).is_some_and(|at| at.elapsed() < SEEN_FOR)
    }

    /// Pulls, in a task of their own, the bases of `pulls` that the local store lacks and that
    /// no other prefetch is pulling. Not tied to the build: a cached answer returns without
    /// waiting, and what was pulled serves the next build.
    pub(super) fn start(&self, pulls: Vec<Pull>, log: BuildLog) {
        let held: Vec<(Pull, OwnedMutexGuard<()>)> = pulls
            .into_iter()
            .filter(|p| !self.recently_seen(&p.base))
            .filter_map(|p| {
                let guard = self.lock_of(&p.base).try_lock_owned().ok()?;
                Some((p, guard))
            })
            .collect();
        if held.is_empty() {
            return;
        }
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let never = CancellationToken::new();
            for (Pull { base, exists, pull }, _guard) in held {
                let quiet = BuildLog::new(Redactor::default());
                if process::run(exists, &quiet, &never).await.is_ok() {
                    seen_now(&seen, &base);
                    continue;
                }
                log.push(&format!(
                    "pulling base image {base} while the source is fetched (the last build of this repository used it)"
                ));
                match process::run(pull, &quiet, &never).await {
                    Ok(()) => seen_now(&seen, &base),
                    // The build pulls it again and reports its own failure.
                    Err(e) => {
                        tracing::info!("failed to prefetch base image {base}: {}", cause_chain(&e))
                    }
                }
            }
        });
    }
}

fn seen_now(seen: &Mutex<HashMap<String, Instant>>, base: &str) {
    let mut seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    seen.insert(base.to_owned(), Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scopes_bases_are_recorded_apart_from_other_scopes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefetch = BasePrefetch::new(dir.path().join("bases"));
        assert!(prefetch.recorded("u\0https://a").is_empty());
        let bases = vec!["debian:bookworm".to_owned(), "busybox".to_owned()];
        prefetch.record("u\0https://a", &bases);
        assert_eq!(prefetch.recorded("u\0https://a"), bases);
        assert!(prefetch.recorded("v\0https://a").is_empty());
        prefetch.record("u\0https://a", &bases[1..]);
        assert_eq!(
            prefetch.recorded("u\0https://a"),
            vec!["busybox".to_owned()]
        );
        // Only a look at the local store counts as seeing a base.
        assert!(!prefetch.recently_seen("busybox"));
        seen_now(&prefetch.seen, "busybox");
        assert!(prefetch.recently_seen("busybox"));
        assert!(!prefetch.recently_seen("alpine"));
    }
}
