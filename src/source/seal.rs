//! A checkout's seal: the change time, size, mode and inode of every entry beneath its
//! directory (not the directory itself, whose change time a rename moves), which nothing can
//! set back. A kept tree is used again only while its seal holds (`kept_trees`).
//!
//! A seal remembers its entries, so that after a kept tree is brought to a new commit only the
//! paths written or removed (and their parent directories) are looked at again, not the whole
//! tree.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seal {
    /// Path beneath the directory, its components joined by NUL (which sorts before any byte
    /// of a name, so the order is the paths' component order, compared as plain bytes) ->
    /// (its sealed line, its bytes when a file).
    entries: BTreeMap<Vec<u8>, (String, u64)>,
}

impl Seal {
    /// Every entry beneath `dir`; None when it cannot be read whole.
    pub(super) fn of(dir: &Path) -> Option<Self> {
        let mut seal = Self {
            entries: BTreeMap::new(),
        };
        seal.walk(dir, &[]).ok()?;
        Some(seal)
    }

    /// The seal as written beside a kept tree.
    pub(super) fn digest(&self) -> String {
        let mut hash = Sha256::new();
        for (key, (line, _)) in &self.entries {
            hash.update(slashed(key));
            hash.update(b"\0");
            hash.update(line.as_bytes());
            hash.update(b"\n");
        }
        hex::encode(hash.finalize())
    }

    /// The files' bytes.
    pub(super) fn bytes(&self) -> u64 {
        self.entries.values().map(|(_, bytes)| bytes).sum()
    }

    /// Seals `paths` (relative to `dir`) and each of their parent directories again, as they
    /// are now: what writing or removing those files can have changed. A path that is gone
    /// leaves the seal.
    pub(super) fn reseal(&mut self, dir: &Path, paths: &[String]) -> std::io::Result<()> {
        for path in paths {
            for rel in Path::new(path).ancestors() {
                if rel.as_os_str().is_empty() {
                    break;
                }
                let key = keyed(rel.as_os_str().as_bytes());
                match std::fs::symlink_metadata(dir.join(rel)) {
                    Ok(meta) => {
                        self.entries.insert(key, sealed(&meta));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.entries.remove(&key);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// The entries beneath `dir`/`rel` (`rel` a key).
    fn walk(&mut self, dir: &Path, rel: &[u8]) -> std::io::Result<()> {
        let here = dir.join(OsStr::from_bytes(&slashed(rel)));
        for entry in std::fs::read_dir(here)? {
            let entry = entry?;
            // Stat'ed through the open directory (not the whole path again), never following
            // a link: a link is sealed as itself.
            let meta = entry.metadata()?;
            let mut key = rel.to_vec();
            if !key.is_empty() {
                key.push(0);
            }
            key.extend_from_slice(entry.file_name().as_bytes());
            if meta.is_dir() {
                self.walk(dir, &key)?;
            }
            self.entries.insert(key, sealed(&meta));
        }
        Ok(())
    }
}

/// A relative path as a key: `/` becomes NUL.
fn keyed(path: &[u8]) -> Vec<u8> {
    path.iter()
        .map(|&b| if b == b'/' { 0 } else { b })
        .collect()
}

/// A key as the relative path it is.
fn slashed(key: &[u8]) -> Vec<u8> {
    key.iter().map(|&b| if b == 0 { b'/' } else { b }).collect()
}

fn sealed(meta: &std::fs::Metadata) -> (String, u64) {
    let line = format!(
        "{} {} {} {} {}",
        meta.ctime(),
        meta.ctime_nsec(),
        meta.size(),
        meta.mode(),
        meta.ino()
    );
    (line, if meta.is_dir() { 0 } else { meta.size() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("src/deep")).expect("dirs");
        std::fs::write(root.join("src/a.txt"), "a\n").expect("write");
        std::fs::write(root.join("src/deep/b.txt"), "bb\n").expect("write");
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").expect("write");
    }

    #[test]
    fn resealing_the_changed_paths_equals_sealing_the_whole_tree_again() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        tree(dir);
        let mut seal = Seal::of(dir).expect("sealed");
        assert_eq!(seal.bytes(), 2 + 3 + 13);
        // Rewritten, added under a new directory, removed with its emptied directory.
        std::fs::remove_file(dir.join("src/a.txt")).expect("rm");
        std::fs::write(dir.join("src/a.txt"), "changed\n").expect("write");
        std::fs::create_dir_all(dir.join("new/dir")).expect("dirs");
        std::fs::write(dir.join("new/dir/c.txt"), "c").expect("write");
        std::fs::remove_file(dir.join("src/deep/b.txt")).expect("rm");
        std::fs::remove_dir(dir.join("src/deep")).expect("rmdir");
        let before = seal.digest();
        let changed = ["src/a.txt", "new/dir/c.txt", "src/deep/b.txt"].map(str::to_owned);
        seal.reseal(dir, &changed).expect("resealed");
        let whole = Seal::of(dir).expect("sealed");
        assert_eq!(seal, whole);
        assert_ne!(before, whole.digest());
        assert_eq!(seal.bytes(), 8 + 1 + 13);
    }

    /// The seal as kept trees were sealed before entries were keyed by bytes: whole paths,
    /// ordered by component. Trees kept then must still be taken.
    fn path_ordered_digest(dir: &Path) -> String {
        fn walk(dir: &Path, rel: &Path, out: &mut BTreeMap<std::path::PathBuf, String>) {
            for entry in std::fs::read_dir(dir.join(rel)).expect("dir") {
                let path = rel.join(entry.expect("entry").file_name());
                let meta = std::fs::symlink_metadata(dir.join(&path)).expect("meta");
                out.insert(path.clone(), sealed(&meta).0);
                if meta.is_dir() {
                    walk(dir, &path, out);
                }
            }
        }
        let mut entries = BTreeMap::new();
        walk(dir, Path::new(""), &mut entries);
        let mut hash = Sha256::new();
        for (path, line) in entries {
            hash.update(path.as_os_str().as_encoded_bytes());
            hash.update(b"\0");
            hash.update(line.as_bytes());
            hash.update(b"\n");
        }
        hex::encode(hash.finalize())
    }

    #[test]
    fn the_digest_is_the_one_kept_trees_were_sealed_with() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        tree(dir);
        // Names whose byte order differs from their component order.
        for name in ["a.b", "a-", "a0", "src.txt", "src-1"] {
            std::fs::write(dir.join(name), name).expect("write");
        }
        std::fs::create_dir_all(dir.join("a/b")).expect("dirs");
        std::fs::write(dir.join("a/b/c"), "c").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).expect("symlink");
        assert_eq!(
            Seal::of(dir).expect("sealed").digest(),
            path_ordered_digest(dir)
        );
    }

    #[test]
    fn a_change_outside_the_resealed_paths_breaks_the_seal() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        tree(dir);
        let mut seal = Seal::of(dir).expect("sealed");
        std::fs::write(dir.join("src/a.txt"), "changed\n").expect("write");
        std::fs::write(dir.join("Dockerfile"), "FROM other\n").expect("write");
        seal.reseal(dir, &["src/a.txt".to_owned()])
            .expect("resealed");
        assert_ne!(seal.digest(), Seal::of(dir).expect("sealed").digest());
    }
}
