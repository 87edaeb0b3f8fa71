//! `RUN --mount=type=cache` directories: one set per user and repository, bounded, and nowhere
//! else.
//!
//! buildah 1.28 mounts a cache at `$TMPDIR/buildah-cache/<id>`, the id joined without
//! confinement: an id with `..` (written out, from an `ARG`, or in a base image's `ONBUILD`
//! trigger) mounts any directory of the host into a step (seen: the host's /etc read from a
//! build). And one such directory served every build on the host, so one tenant could seed the
//! package cache another tenant's build trusts. Hence:
//! - every mount is checked before podman runs, the Dockerfile's steps and the triggers of
//!   every base image alike (`refusal`, `trigger_refusal`);
//! - each build gets a TMPDIR of its own whose `buildah-cache` is the directory of its scope (its
//!   user and repository: `BuildSpec::cache_scope`);
//! - a scope's directory past `build.limits.cache_mounts_mb` is emptied before its next build
//!   (a cache may be lost, never shared), and what a build writes there counts against its disk
//!   limit (`Sandbox::watch`).

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::dockerfile::{Dockerfile, Mount, MountKind, Step};
use crate::error::BuildError;

/// Why `dockerfile` must not be built, if a `RUN --mount` of it could reach outside its
/// tenant's cache.
pub(super) fn refusal(dockerfile: &Dockerfile) -> Option<String> {
    dockerfile
        .stages
        .iter()
        .flat_map(|s| &s.steps)
        .find_map(step_refusal)
}

/// Why base image `image` must not be built on, if one of its `ONBUILD` triggers (which run at
/// its `FROM` in this build) mounts outside its tenant's cache, or cannot be read to tell.
pub(super) fn trigger_refusal(image: &str, triggers: &[String]) -> Option<String> {
    triggers.iter().find_map(|trigger| {
        // A trigger is one instruction; as the only step of a stage it parses like any other.
        let why = match Dockerfile::parse(&format!("FROM scratch\n{trigger}\n")) {
            Ok(parsed) => refusal(&parsed)?,
            Err(why) => format!("cannot be read ({why})"),
        };
        Some(format!("base image {image} has an ONBUILD trigger: {why}"))
    })
}

fn step_refusal(step: &Step) -> Option<String> {
    step.flags
        .iter()
        .filter(|f| f.name == "mount")
        .find_map(|flag| {
            let value = flag.value.as_deref().unwrap_or("");
            let why = match Mount::parse(value) {
                Err(why) => format!("is not understood ({why})"),
                Ok(mount) => mount_refusal(&mount)?,
            };
            Some(format!("{} --mount={value} {why}", step.shown()))
        })
}

fn mount_refusal(mount: &Mount) -> Option<String> {
    // podman 4.3 writes a step's changes to a writable bind back into the checkout (BuildKit
    // discards them): past the build's disk bound, and into the tree later steps and the
    // incremental path read.
    if mount.kind == MountKind::Bind && mount.writable {
        return Some(
            "is a writable bind, whose writes podman would keep in the checkout (BuildKit \
             discards them); drop rw, or COPY the files and write to the copy"
                .into(),
        );
    }
    if mount.kind != MountKind::Cache {
        return None;
    }
    let id = mount.id.as_deref().unwrap_or("");
    if id.contains('$') {
        return Some("names its cache id with a variable; write the id out".into());
    }
    if id.split('/').any(|part| part == "..") {
        return Some("has a cache id with `..`; an id is a name, not a path".into());
    }
    None
}

/// Where tenants' cache directories live and how large one may grow.
#[derive(Debug, Clone)]
pub(super) struct CacheMounts {
    root: PathBuf,
    bound_bytes: u64,
}

/// One build's view: its TMPDIR (for podman) and its tenant's directory, held shared until
/// dropped so that no other build empties it meanwhile.
pub(super) struct TenantCache {
    pub tmpdir: PathBuf,
    pub dir: PathBuf,
    _held: Option<Flock<File>>,
}

impl CacheMounts {
    pub(super) fn new(root: PathBuf, bound_mb: u64) -> Self {
        Self {
            root,
            bound_bytes: bound_mb.saturating_mul(1024 * 1024),
        }
    }

    /// Prepares `<scratch>/tmp` as the build's TMPDIR, its `buildah-cache` the tenant's own
    /// directory (emptied first when past the bound and no other build of the tenant runs).
    pub(super) async fn prepare(
        &self,
        scope: &str,
        scratch: &Path,
    ) -> Result<TenantCache, BuildError> {
        let this = self.clone();
        let (scope, scratch) = (scope.to_owned(), scratch.to_owned());
        tokio::task::spawn_blocking(move || this.prepare_now(&scope, &scratch))
            .await
            .map_err(|e| internal(format!("cache mount task failed: {e}")))?
    }

    fn prepare_now(&self, scope: &str, scratch: &Path) -> Result<TenantCache, BuildError> {
        // A hash: user ids and repository URLs are the requester's text, never a path.
        let key = hex::encode(&Sha256::digest(scope.as_bytes())[..12]);
        let dir = self.root.join(&key);
        std::fs::create_dir_all(&dir)
            .map_err(|e| internal(format!("failed to create {}: {e}", dir.display())))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(format!("{key}.lock")))
            .map_err(|e| internal(format!("failed to open the cache mount lock: {e}")))?;
        let lock = match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
            Ok(alone) => {
                if super::disk_watch::allocated(&dir) > self.bound_bytes {
                    tracing::info!("emptying the cache mounts of scope {key}: past their bound");
                    empty(&dir)?;
                }
                alone
                    .unlock()
                    .map_err(|(_, e)| internal(format!("cache mount lock: {e}")))?
            }
            // Another build of this scope runs: it keeps its cache as it is.
            Err((lock, _)) => lock,
        };
        let held = Flock::lock(lock, FlockArg::LockShared)
            .map_err(|(_, e)| internal(format!("cache mount lock: {e}")))?;
        let tmpdir = scratch.join("tmp");
        std::fs::create_dir_all(&tmpdir)
            .map_err(|e| internal(format!("failed to create {}: {e}", tmpdir.display())))?;
        let link = tmpdir.join("buildah-cache");
        // An earlier engine run of this build left its link (the worker made the final COPYs
        // and could not after all): the same scope, linked again.
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&link)
                .map_err(|e| internal(format!("failed to replace the cache mounts link: {e}")))?;
        }
        std::os::unix::fs::symlink(&dir, &link)
            .map_err(|e| internal(format!("failed to link the tenant's cache mounts: {e}")))?;
        Ok(TenantCache {
            tmpdir,
            dir,
            _held: Some(held),
        })
    }
}

fn empty(dir: &Path) -> Result<(), BuildError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| internal(format!("failed to read {}: {e}", dir.display())))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        removed.map_err(|e| internal(format!("failed to remove {}: {e}", path.display())))?;
    }
    Ok(())
}

fn internal(message: String) -> BuildError {
    BuildError::Internal(anyhow::anyhow!(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> Option<String> {
        refusal(&Dockerfile::parse(text).expect("parses"))
    }

    #[test]
    fn cache_ids_that_climb_or_vary_are_refused() {
        for text in [
            "FROM a\nRUN --mount=type=cache,id=x/../../../../etc,target=/h cat /h/hostname\n",
            "FROM a\nARG P=../../etc\nRUN --mount=type=cache,id=$P,target=/h true\n",
            "FROM a\nRUN --mount=type=cache,target=/h,id=.. true\n",
            "FROM a\nRUN --mount=$M true\n",
            "FROM a\nRUN --mount=type=cache,\"id=../x\",target=/h true\n",
        ] {
            let why = refused(text).unwrap_or_else(|| panic!("not refused: {text}"));
            assert!(why.contains("RUN (line"), "{why}");
        }
    }

    #[test]
    fn writable_binds_are_refused_naming_the_step() {
        for text in [
            "FROM a\nRUN --mount=type=bind,source=.,target=/ctx,rw touch /ctx/x\n",
            "FROM a\nRUN --mount=target=/ctx,readwrite=true true\n",
            "FROM a\nFROM b\nRUN --mount=type=bind,from=0,target=/s,ro=false true\n",
        ] {
            let why = refused(text).unwrap_or_else(|| panic!("not refused: {text}"));
            assert!(
                why.contains("RUN (line") && why.contains("writable bind"),
                "{why}"
            );
        }
        assert_eq!(
            refused("FROM a\nRUN --mount=type=bind,target=/ctx,rw=false true\n"),
            None
        );
    }

    #[test]
    fn ordinary_mounts_pass() {
        let text = "FROM a\nRUN --mount=type=cache,target=/root/.npm \\\n  \
                    --mount=type=cache,id=apt-lib,target=/var/lib/apt,sharing=locked \\\n  \
                    --mount=type=bind,source=b.txt,target=/b --mount=type=secret,id=npmrc \
                    true\nRUN --mount=type=cache,id=/root/.cache,target=/c true\n";
        assert_eq!(refused(text), None);
        assert_eq!(refused("FROM a\nRUN true\n"), None);
    }

    #[test]
    fn a_base_images_triggers_are_checked_like_steps() {
        let triggers = vec![
            "COPY . /app".to_owned(),
            "RUN --mount=type=cache,id=x/../../../../etc,target=/h cat /h/hostname".to_owned(),
        ];
        let why = trigger_refusal("r.io/base:1", &triggers).expect("refused");
        assert!(
            why.starts_with("base image r.io/base:1 has an ONBUILD trigger: RUN"),
            "{why}"
        );
        assert_eq!(trigger_refusal("b", &triggers[..1]), None);
    }

    #[test]
    fn tenants_get_their_own_directory_and_a_grown_one_is_emptied() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = CacheMounts::new(root.path().join("cm"), 1);
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let first = cache.prepare_now("alice", a.path()).expect("prepared");
        let other = cache.prepare_now("../bob", b.path()).expect("prepared");
        assert_ne!(first.dir, other.dir);
        assert!(other.dir.starts_with(root.path().join("cm")));
        let link = std::fs::read_link(first.tmpdir.join("buildah-cache")).expect("link");
        assert_eq!(link, first.dir);
        std::fs::write(first.dir.join("big"), vec![7u8; 2 * 1024 * 1024]).expect("write");
        drop(first);
        let again = tempfile::tempdir().expect("again");
        let next = cache.prepare_now("alice", again.path()).expect("prepared");
        assert!(!next.dir.join("big").exists(), "past the bound: emptied");
    }

    #[test]
    fn a_cache_in_use_by_another_build_is_not_emptied() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = CacheMounts::new(root.path().join("cm"), 1);
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let running = cache.prepare_now("alice", a.path()).expect("prepared");
        std::fs::write(running.dir.join("big"), vec![7u8; 2 * 1024 * 1024]).expect("write");
        let _second = cache.prepare_now("alice", b.path()).expect("prepared");
        assert!(running.dir.join("big").exists(), "kept while in use");
    }
}
