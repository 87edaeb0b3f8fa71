//! Keeps the mirror cache under its size bound: least recently used mirrors go first, and a
//! mirror in use is never removed: neither while a fetch or read holds its lock, nor while a
//! build holds it (`MirrorHold`, from resolve until the build ends), here or on another replica.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::stop::Stop;
use crate::error::{BuildError, GitError};

/// A build's claim on its mirror: a shared lock on `<mirror>.use`, which eviction must take
/// exclusively. It is not the fetch lock (`<mirror>.lock`), so a build that holds its mirror
/// while it waits for a slot or runs does not block fetches of the same repository.
pub(super) struct MirrorHold {
    _file: File,
}

/// Takes the hold, waiting (until `stop`) while an eviction of this mirror finishes.
pub(super) fn hold(mirror: &Path, stop: &Stop) -> Result<MirrorHold, BuildError> {
    if let Some(parent) = mirror.parent() {
        std::fs::create_dir_all(parent).map_err(GitError::io("create the git cache dir"))?;
    }
    let file = use_file(mirror).map_err(GitError::io("open the mirror's in-use lock"))?;
    stop.lock(&file, false)?;
    Ok(MirrorHold { _file: file })
}

fn use_file(mirror: &Path) -> std::io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(mirror.with_extension("use"))
}

/// Marks a mirror as used now (its lock file's mtime is the LRU clock).
pub(super) fn touch(lock: &File) {
    let _ = lock.set_modified(SystemTime::now());
}

/// Removes least recently used mirrors until the cache is at most `max_bytes`.
/// Returns the number of mirrors removed.
pub(super) fn evict(cache_dir: &Path, max_bytes: u64) -> usize {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return 0;
    };
    let mut mirrors: Vec<(SystemTime, u64, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "git") && p.is_dir())
        .map(|p| {
            let used = std::fs::metadata(p.with_extension("lock"))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (used, dir_size(&p), p)
        })
        .collect();
    let mut total: u64 = mirrors.iter().map(|(_, size, _)| size).sum();
    mirrors.sort_by_key(|(used, _, _)| *used);
    let mut removed = 0;
    for (_, size, path) in mirrors {
        if total <= max_bytes {
            break;
        }
        let Ok(lock) = File::options()
            .write(true)
            .open(path.with_extension("lock"))
        else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // being fetched or read
        }
        let Ok(in_use) = use_file(&path) else {
            continue;
        };
        if in_use.try_lock().is_err() {
            continue; // held by a build between resolve and its end
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            total = total.saturating_sub(size);
            removed += 1;
            tracing::info!(mirror = %path.display(), bytes = size, "evicted a git mirror");
        }
    }
    removed
}

/// Bytes of the files under `dir` (a mirror).
pub(super) fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(dir: &Path, name: &str, bytes: usize, age_secs: u64) -> PathBuf {
        let path = dir.join(format!("{name}.git"));
        std::fs::create_dir_all(&path).expect("mirror dir");
        std::fs::write(path.join("pack"), vec![0u8; bytes]).expect("pack");
        let lock = File::create(path.with_extension("lock")).expect("lock");
        let when = SystemTime::now() - std::time::Duration::from_secs(age_secs);
        lock.set_modified(when).expect("mtime");
        path
    }

    #[test]
    fn oldest_unlocked_mirrors_go_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let oldest = mirror(dir.path(), "a", 1000, 300);
        let busy = mirror(dir.path(), "b", 1000, 200);
        let newest = mirror(dir.path(), "c", 1000, 10);
        let held = File::options()
            .write(true)
            .open(busy.with_extension("lock"))
            .expect("open");
        held.lock().expect("lock");
        assert_eq!(evict(dir.path(), 2500), 1);
        assert!(!oldest.exists(), "least recently used goes first");
        assert!(busy.exists() && newest.exists());
        // Over the bound again: the busy one is skipped, the next one goes.
        assert_eq!(evict(dir.path(), 1500), 1);
        assert!(busy.exists(), "a locked mirror stays");
        assert!(!newest.exists());
        // Still over, but the only mirror left is in use.
        assert_eq!(evict(dir.path(), 500), 0);
        assert!(busy.exists());
    }
}
