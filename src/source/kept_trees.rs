//! Checkouts kept between builds, one per mirror: the repository's next build takes its tree and
//! writes only the files its commit changed (a one-file change writes one file, not the 2,000 of
//! a fresh checkout).
//!
//! Taking and keeping are renames within the work dir, so two builds (or replicas sharing the
//! dir) never hold one tree, and a killed worker leaves a kept tree or a build's, never half of
//! one. A tree is sealed when kept: the change time, size and mode of every entry beneath it,
//! which nothing can set back. A taken tree whose seal no longer matches was written to after it
//! was kept (nothing the worker runs should, a writable bind is refused) and is not used.

use std::path::{Path, PathBuf};

use super::seal::Seal;

/// Where the trees are kept: `<root>/<key>@<commit>/{tree,seal}`.
#[derive(Debug, Clone)]
pub struct KeptTrees {
    root: PathBuf,
    /// How many trees are kept at most, and how many bytes they may hold together; the least
    /// recently kept go first. 0 trees: none is kept.
    max: usize,
    max_bytes: u64,
}

/// A tree taken for a build: it holds `commit`, sealed as it was kept.
pub(super) struct Taken {
    pub commit: String,
    pub seal: Seal,
}

/// A kept tree claimed for a build and found sealed, not yet moved into the build's work dir
/// (`move_to`). Claimed early, while the commit is fetched; kept again when dropped unused.
pub(super) struct Claimed {
    /// The claimed entry (`tree` and `seal` beneath it), under a pending name.
    dir: PathBuf,
    /// Where it was kept, and goes back to when unused.
    kept_as: PathBuf,
    commit: String,
    seal: Option<Seal>,
}

impl Claimed {
    /// Moves the tree to `dest` (which must not exist yet).
    pub(super) fn move_to(mut self, dest: &Path) -> Option<Taken> {
        let seal = self.seal.take()?;
        let moved = std::fs::rename(self.dir.join(TREE), dest).is_ok();
        let _ = std::fs::remove_dir_all(&self.dir);
        moved.then(|| Taken {
            commit: self.commit.clone(),
            seal,
        })
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if self.seal.is_some() && std::fs::rename(&self.dir, &self.kept_as).is_err() {
            // A newer tree was kept meanwhile: this one stays pending, and `trim` removes it.
            tracing::debug!("a claimed tree was not kept again: another took its place");
        }
    }
}

/// A build's tree moved out of its work dir, on its way to being kept.
pub(super) struct Staged {
    dir: PathBuf,
    seal: String,
}

const TREE: &str = "tree";
const SEAL: &str = "seal";
/// The tree's size in bytes (its files' lengths), beside its seal.
const SIZE: &str = "size";
/// Names of entries on their way out (or in): never taken.
const PENDING: &str = ".pending-";

impl KeptTrees {
    pub fn new(root: PathBuf, max: usize, max_bytes: u64) -> Self {
        Self {
            root,
            max,
            max_bytes,
        }
    }

    /// Keeps nothing.
    pub fn none() -> Self {
        Self {
            root: PathBuf::new(),
            max: 0,
            max_bytes: 0,
        }
    }

    /// Moves the kept tree of `key` to `dest` (which must not exist yet) if its seal still
    /// holds. None when there is none, another build took it first, or it was touched.
    pub(super) fn take(&self, key: &str, dest: &Path) -> Option<Taken> {
        self.claim(key)?.move_to(dest)
    }

    /// Claims the kept tree of `key` if its seal still holds (a tree that was touched is
    /// removed). None when there is none, or another build claimed it first.
    pub(super) fn claim(&self, key: &str) -> Option<Claimed> {
        if self.max == 0 {
            return None;
        }
        let prefix = format!("{key}@");
        for entry in std::fs::read_dir(&self.root).ok()?.flatten() {
            let name = entry.file_name();
            let Some(commit) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let commit = commit.to_owned();
            let claimed = self.pending();
            // The rename is the claim: whoever renames it first has it.
            if std::fs::rename(entry.path(), &claimed).is_err() {
                continue;
            }
            // Pending entries are trimmed by age: this one is new, whenever it was kept.
            let _ = std::fs::File::open(&claimed)
                .and_then(|dir| dir.set_modified(std::time::SystemTime::now()));
            let kept_seal = std::fs::read_to_string(claimed.join(SEAL)).ok();
            let seal = Seal::of(&claimed.join(TREE));
            if let (Some(kept_seal), Some(seal)) = (kept_seal, seal)
                && seal.digest() == kept_seal
            {
                return Some(Claimed {
                    dir: claimed,
                    kept_as: entry.path(),
                    commit,
                    seal: Some(seal),
                });
            }
            tracing::warn!(
                "the kept checkout {} changed after it was kept: checked out afresh",
                name.to_string_lossy()
            );
            let _ = std::fs::remove_dir_all(&claimed);
            return None;
        }
        None
    }

    /// Moves `dir`, a checkout sealed as `seal` when it was written, out of its build's work
    /// dir, if it still matches its seal. Quick (a rename); `publish` does the rest.
    pub(super) fn stage(&self, dir: &Path, seal: &str) -> Option<Staged> {
        if self.max == 0 || std::fs::create_dir_all(&self.root).is_err() {
            return None;
        }
        let staging = self.pending();
        if std::fs::create_dir(&staging).is_err()
            || std::fs::rename(dir, staging.join(TREE)).is_err()
        {
            let _ = std::fs::remove_dir_all(&staging);
            return None;
        }
        Some(Staged {
            dir: staging,
            seal: seal.to_owned(),
        })
    }

    /// Keeps the staged tree as `key`'s, a checkout of `commit` (replacing the one kept
    /// before), if nothing wrote to it since it was sealed: the build ran on it.
    pub(super) fn publish(&self, staged: Staged, key: &str, commit: &str) {
        let Staged { dir, seal } = staged;
        let size = match Seal::of(&dir.join(TREE)) {
            Some(now) if now.digest() == seal => Some(now.bytes()),
            _ => {
                tracing::warn!("a build's checkout changed while it ran: not kept");
                None
            }
        };
        let written = size.is_some_and(|size| {
            size <= self.max_bytes
                && std::fs::write(dir.join(SEAL), &seal).is_ok()
                && std::fs::write(dir.join(SIZE), size.to_string()).is_ok()
        });
        if !written {
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        let prefix = format!("{key}@");
        let older: Vec<PathBuf> = self
            .entries()
            .into_iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(name, _)| self.root.join(name))
            .collect();
        for path in older {
            self.remove(&path);
        }
        if std::fs::rename(&dir, self.root.join(format!("{key}@{commit}"))).is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        self.trim();
    }

    #[cfg(test)]
    pub(super) fn keep(&self, key: &str, commit: &str, dir: &Path) {
        let Some(seal) = Seal::of(dir) else {
            return;
        };
        if let Some(staged) = self.stage(dir, &seal.digest()) {
            self.publish(staged, key, commit);
        }
    }

    /// The kept trees beyond `max` go, least recently kept first; so do pending entries a
    /// killed worker left (older than a minute).
    fn trim(&self) {
        let mut kept: Vec<(String, std::time::SystemTime)> = Vec::new();
        for (name, modified) in self.entries() {
            if name.starts_with(PENDING) {
                let stale = modified
                    .elapsed()
                    .is_ok_and(|age| age > std::time::Duration::from_secs(60));
                if stale {
                    self.remove(&self.root.join(&name));
                }
            } else {
                kept.push((name, modified));
            }
        }
        kept.sort_by_key(|k| std::cmp::Reverse(k.1));
        let mut bytes = 0u64;
        for (n, (name, _)) in kept.into_iter().enumerate() {
            let path = self.root.join(&name);
            let size = std::fs::read_to_string(path.join(SIZE))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            bytes = bytes.saturating_add(size);
            if n >= self.max || bytes > self.max_bytes {
                self.remove(&path);
            }
        }
    }

    /// Entry names with their modification times.
    fn entries(&self) -> Vec<(String, std::time::SystemTime)> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let modified = e.metadata().ok()?.modified().ok()?;
                Some((name, modified))
            })
            .collect()
    }

    /// Claims `path` by a rename first, so that no build takes it half removed.
    fn remove(&self, path: &Path) {
        let claimed = self.pending();
        if std::fs::rename(path, &claimed).is_ok() {
            let _ = std::fs::remove_dir_all(&claimed);
        }
    }

    fn pending(&self) -> PathBuf {
        self.root
            .join(format!("{PENDING}{}", uuid::Uuid::new_v4().simple()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("src")).expect("dir");
        std::fs::write(dir.join("src/a.txt"), "a\n").expect("write");
        std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").expect("write");
        dir
    }

    #[test]
    fn a_kept_tree_is_taken_once_with_its_commit() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kept = KeptTrees::new(tmp.path().join("kept"), 4, 1 << 20);
        let dir = tree(tmp.path(), "build1");
        kept.keep("repo", "c1", &dir);
        assert!(!dir.exists(), "moved, not copied");
        let dest = tmp.path().join("build2");
        let taken = kept.take("repo", &dest).expect("taken");
        assert_eq!(taken.commit, "c1");
        assert_eq!(
            std::fs::read_to_string(dest.join("src/a.txt")).expect("read"),
            "a\n"
        );
        assert!(kept.take("repo", &tmp.path().join("build3")).is_none());
        assert!(kept.take("other", &tmp.path().join("build4")).is_none());
    }

    #[test]
    fn a_tree_written_to_after_it_was_kept_is_not_taken() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kept = KeptTrees::new(tmp.path().join("kept"), 4, 1 << 20);
        type Touch = fn(&Path);
        let cases: [(&str, Touch); 4] = [
            ("rewritten", |t| {
                std::fs::write(t.join("src/a.txt"), "b\n").expect("write")
            }),
            ("added", |t| {
                std::fs::write(t.join("src/new"), "").expect("write")
            }),
            ("chmod", |t| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    t.join("Dockerfile"),
                    std::fs::Permissions::from_mode(0o755),
                )
                .expect("chmod")
            }),
            ("removed", |t| {
                std::fs::remove_file(t.join("Dockerfile")).expect("rm")
            }),
        ];
        for (name, touch) in cases {
            kept.keep(name, "c1", &tree(tmp.path(), name));
            let stored = tmp
                .path()
                .join("kept")
                .join(format!("{name}@c1"))
                .join(TREE);
            touch(&stored);
            let dest = tmp.path().join(format!("{name}-dest"));
            assert!(kept.take(name, &dest).is_none(), "{name} was taken");
            assert!(!dest.exists(), "{name}: the touched tree is removed");
        }
    }

    #[test]
    fn a_tree_written_to_while_its_build_ran_is_not_kept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kept = KeptTrees::new(tmp.path().join("kept"), 4, 1 << 20);
        let dir = tree(tmp.path(), "b");
        let seal = Seal::of(&dir).expect("sealed").digest();
        std::fs::write(dir.join("src/a.txt"), "written by the build\n").expect("write");
        let staged = kept.stage(&dir, &seal).expect("staged");
        kept.publish(staged, "repo", "c1");
        assert!(kept.take("repo", &tmp.path().join("d")).is_none());
        assert!(kept.entries().is_empty(), "{:?}", kept.entries());
    }

    #[test]
    fn keeping_replaces_the_older_tree_and_the_bound_holds() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kept = KeptTrees::new(tmp.path().join("kept"), 2, 1 << 20);
        kept.keep("repo", "c1", &tree(tmp.path(), "b1"));
        kept.keep("repo", "c2", &tree(tmp.path(), "b2"));
        let taken = kept.take("repo", &tmp.path().join("d1")).expect("taken");
        assert_eq!(taken.commit, "c2");
        for (n, key) in ["x", "y", "z"].into_iter().enumerate() {
            kept.keep(key, "c", &tree(tmp.path(), &format!("t{n}")));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let names: Vec<String> = kept.entries().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(!names.contains(&"x@c".to_owned()), "{names:?}");
    }

    #[test]
    fn trees_past_the_byte_bound_go_least_recently_kept_first() {
        let tmp = tempfile::tempdir().expect("tmp");
        // Each test tree holds 15 bytes: room for two.
        let kept = KeptTrees::new(tmp.path().join("kept"), 8, 40);
        for (n, key) in ["x", "y", "z"].into_iter().enumerate() {
            kept.keep(key, "c", &tree(tmp.path(), &format!("t{n}")));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut names: Vec<String> = kept.entries().into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names, ["y@c", "z@c"]);
        // One tree alone past the bound is not kept at all.
        let small = KeptTrees::new(tmp.path().join("small"), 8, 10);
        small.keep("x", "c", &tree(tmp.path(), "big"));
        assert!(small.entries().is_empty());
    }

    #[test]
    fn keeping_nothing_leaves_the_tree_to_its_build() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kept = KeptTrees::none();
        let dir = tree(tmp.path(), "b");
        kept.keep("repo", "c1", &dir);
        assert!(dir.exists());
        assert!(kept.take("repo", &tmp.path().join("d")).is_none());
    }
}
