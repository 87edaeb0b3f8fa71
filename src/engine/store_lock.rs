//! Builds and the layer-cache prune take turns on the host's podman image store.
//!
//! podman 4.3 (buildah before 1.43, issue #5674) lists the store's images and then looks up
//! each one's top layer while it searches its layer cache; an image removed in between fails
//! the whole build with "checking if cached image exists from a previous build: getting top
//! layer info: layer not known". The larger the store, the longer that walk and the wider the
//! window. Every worker on a host shares one store, so the lock is a host-wide flock: builds
//! hold it shared, a prune holds it exclusively and therefore never overlaps a build of any
//! worker on the host. A process that dies releases its flock with it.
//!
//! Names need a turn of their own: podman 4.3's `untag` reads an image's names and writes them
//! back without the one removed, so name changes racing on one image resurrect each other's
//! names (seen: 30 concurrent untags of one image left 29 names). A single-platform build is
//! therefore never named (it is pushed by id); the manifest lists of multi-platform builds, which
//! equal builds could make equal, are removed under the exclusive names lock.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LOCK_FILE: &str = "/run/image-builder/podman-store.lock";
const NAMES_LOCK_FILE: &str = "/run/image-builder/podman-names.lock";

/// How often a waiting holder looks again: flock has no async wait, and a blocking one could
/// not be cancelled.
const POLL: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub(super) struct StoreLock {
    path: PathBuf,
}

/// A held turn; released when dropped. Empty when the lock file could not be opened.
pub(super) struct StoreTurn {
    _held: Option<Flock<File>>,
}

static WARNED: AtomicBool = AtomicBool::new(false);

impl StoreLock {
    pub(super) fn host() -> Self {
        Self {
            path: PathBuf::from(LOCK_FILE),
        }
    }

    /// The host's lock on image names (see the module's comment).
    pub(super) fn names() -> Self {
        Self {
            path: PathBuf::from(NAMES_LOCK_FILE),
        }
    }

    #[cfg(test)]
    fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// A build's turn: waits only while a prune runs. None when cancelled while waiting.
    pub(super) async fn shared(&self, cancel: &CancellationToken) -> Option<StoreTurn> {
        self.wait(FlockArg::LockSharedNonblock, None, cancel).await
    }

    /// A prune's turn, if the store is free of builds within `within`.
    pub(super) async fn exclusive(&self, within: Duration) -> Option<StoreTurn> {
        let never = CancellationToken::new();
        self.wait(FlockArg::LockExclusiveNonblock, Some(within), &never)
            .await
    }

    async fn wait(
        &self,
        how: FlockArg,
        within: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Option<StoreTurn> {
        let deadline = within.map(|w| Instant::now() + w);
        loop {
            match self.try_take(how) {
                Attempt::Taken(turn) => return Some(turn),
                // Unlocked beats unusable: the build still runs, and its retry covers the race.
                Attempt::Unavailable(why) => {
                    if !WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "builds and the layer cache prune run without the store lock: {why}"
                        );
                    }
                    return Some(StoreTurn { _held: None });
                }
                Attempt::Busy => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    fn try_take(&self, how: FlockArg) -> Attempt {
        if let Some(dir) = self.path.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            return Attempt::Unavailable(format!("{}: {e}", dir.display()));
        }
        let file = match File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(e) => return Attempt::Unavailable(format!("{}: {e}", self.path.display())),
        };
        match Flock::lock(file, how) {
            Ok(lock) => Attempt::Taken(StoreTurn { _held: Some(lock) }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Attempt::Busy,
            Err((_, e)) => Attempt::Unavailable(format!("{}: {e}", self.path.display())),
        }
    }
}

enum Attempt {
    Taken(StoreTurn),
    Busy,
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn builds_share_and_a_prune_waits_for_none_of_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = StoreLock::at(dir.path().join("store.lock"));
        let cancel = CancellationToken::new();
        let one = lock.shared(&cancel).await.expect("first build");
        let two = lock.shared(&cancel).await.expect("second build");
        assert!(
            lock.exclusive(Duration::from_millis(250)).await.is_none(),
            "a prune ran beside builds"
        );
        drop(one);
        drop(two);
        let prune = lock
            .exclusive(Duration::from_millis(250))
            .await
            .expect("a quiet store is pruned");

        // A build waits while the prune runs, and a cancel ends the wait.
        let waiting = tokio::spawn({
            let (lock, cancel) = (lock.clone(), cancel.clone());
            async move { lock.shared(&cancel).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!waiting.is_finished(), "a build started during a prune");
        cancel.cancel();
        assert!(
            !waiting.await.expect("join"),
            "a cancelled wait took a turn"
        );
        drop(prune);
        assert!(lock.shared(&CancellationToken::new()).await.is_some());
    }
}
