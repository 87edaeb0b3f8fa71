//! Kept trees claimed while their build's commit is still being fetched: checking a kept tree's
//! seal walks the whole tree (~6 ms for 2,000 files), which then overlaps the fetch's network
//! wait instead of following it. A claim the build never uses (its answer was cached, or it
//! failed before its checkout) is kept again when the build lets go of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use super::kept_trees::{Claimed, KeptTrees};

type Pending = Arc<Mutex<HashMap<PathBuf, JoinHandle<Option<Claimed>>>>>;

/// Claims in progress or done, by the scratch dir of the build they are for.
#[derive(Default)]
pub(super) struct EarlyClaims {
    pending: Pending,
}

/// Held with the build's source: dropping it forgets the build's claim, and an unused claimed
/// tree is kept again (`Claimed`'s drop, when its claim is done).
pub(super) struct ClaimGuard {
    pending: Pending,
    build: PathBuf,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&self.build);
        }
    }
}

impl EarlyClaims {
    /// Starts claiming `key`'s kept tree for the build whose scratch dir is `build`.
    pub(super) fn start(&self, kept: &KeptTrees, key: String, build: &Path) -> ClaimGuard {
        let kept = kept.clone();
        let claiming = tokio::task::spawn_blocking(move || kept.claim(&key));
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(build.to_owned(), claiming);
        }
        ClaimGuard {
            pending: self.pending.clone(),
            build: build.to_owned(),
        }
    }

    /// What the claim started for `build` came to; None when none was started (or it failed).
    pub(super) async fn finish(&self, build: &Path) -> Option<Claimed> {
        let claiming = self.pending.lock().ok()?.remove(build)?;
        claiming.await.ok().flatten()
    }

    #[cfg(test)]
    fn is_done(&self, build: &Path) -> bool {
        let pending = self.pending.lock().expect("lock");
        pending.get(build).is_some_and(JoinHandle::is_finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept_tree(kept: &KeptTrees, root: &Path, key: &str) {
        let dir = root.join(format!("build-{key}"));
        std::fs::create_dir_all(dir.join("src")).expect("dir");
        std::fs::write(dir.join("src/a.txt"), "a\n").expect("write");
        kept.keep(key, "c1", &dir);
    }

    #[tokio::test]
    async fn a_claim_is_finished_once_and_an_unused_one_is_kept_again() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kept = KeptTrees::new(tmp.path().join("kept"), 4, 1 << 20);
        kept_tree(&kept, tmp.path(), "repo");
        let claims = EarlyClaims::default();
        let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));

        let guard = claims.start(&kept, "repo".into(), &one);
        let claimed = claims.finish(&one).await.expect("claimed");
        assert!(claims.finish(&one).await.is_none(), "finished once");
        let dest = tmp.path().join("dest");
        let taken = claimed.move_to(&dest).expect("taken");
        assert_eq!(taken.commit, "c1");
        assert!(dest.join("src/a.txt").exists());
        drop(guard);
        assert!(kept.claim("repo").is_none(), "the tree went to the build");

        // A claim finished but not used: the tree is kept again.
        kept_tree(&kept, tmp.path(), "repo");
        let guard = claims.start(&kept, "repo".into(), &two);
        drop(claims.finish(&two).await.expect("claimed"));
        drop(guard);
        let again = kept.claim("repo").expect("kept again");

        // A build that never checks out: its guard forgets the claim, and the tree is kept
        // again once the claim is done.
        drop(again);
        let three = tmp.path().join("three");
        let guard = claims.start(&kept, "repo".into(), &three);
        for _ in 0..5_000 {
            if claims.is_done(&three) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        drop(guard);
        assert!(claims.finish(&three).await.is_none(), "forgotten");
        let taken = kept
            .take("repo", &tmp.path().join("d3"))
            .expect("kept again");
        assert_eq!(taken.commit, "c1");
    }
}
