//! A local directory as a repository: its files, as they are now (committed or not, ignored by
//! git or not: a build context is what `docker build DIR` would see), committed into a bare
//! repository that the git adapter then fetches like any other. The directory is only read;
//! nothing is written into it.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use git2::{IndexAddOption, Repository, Signature, Time};
use sha2::{Digest, Sha256};

/// A directory's files as a commit, in a repository kept for that directory only.
pub struct Snapshot {
    pub repo: PathBuf,
    pub commit: String,
    /// Held while the build reads the repository: another snapshot of the same directory
    /// waits instead of rewriting it underneath.
    _lock: File,
}

/// The branch the snapshot is on: the repository's default branch, so its image is tagged
/// `latest` and `local` besides the commit.
pub const SNAPSHOT_BRANCH: &str = "local";

/// Commits the files of `dir` into a bare repository under `root`, at a path that depends on
/// the directory only (so the remote, and with it the image's build key, is the same each
/// time), rewritten from scratch each time. The commit is a function of the files only (fixed
/// author and time), so an unchanged directory gives the same commit and is answered from
/// the registry.
pub fn snapshot_dir(dir: &Path, root: &Path) -> anyhow::Result<Snapshot> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot read the directory {}", dir.display()))?;
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let name: String = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("app")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(|c| matches!(c, '-' | '.' | '_'));
    let name = if name.is_empty() { "app" } else { name };
    // Absolute: the repository is fetched through a file:// URL (`data_dir` may be relative).
    let root =
        std::path::absolute(root).with_context(|| format!("cannot resolve {}", root.display()))?;
    let place = hex::encode(Sha256::digest(dir.as_os_str().as_bytes()));
    let home = root.join(&place[..16]);
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(home.join("lock"))
        .context("cannot open the snapshot lock")?;
    lock.lock().context("cannot lock the snapshot")?;
    let bare = home.join(format!("{name}.git"));
    if bare.exists() {
        std::fs::remove_dir_all(&bare)
            .with_context(|| format!("cannot clear the old snapshot {}", bare.display()))?;
    }
    let repo = Repository::init_bare(&bare).context("cannot create the snapshot repository")?;
    // The index lives in the throwaway repository; `false`: no gitlink is written into `dir`.
    repo.set_workdir(&dir, false)
        .context("cannot read the directory as a work tree")?;
    let mut index = repo.index().context("cannot open the snapshot index")?;
    // FORCE: files git ignores are part of the build context too (.dockerignore decides).
    index
        .add_all(
            ["*"].iter(),
            IndexAddOption::DEFAULT | IndexAddOption::FORCE,
            None,
        )
        .with_context(|| format!("cannot read the files of {}", dir.display()))?;
    let tree_id = index
        .write_tree()
        .context("cannot write the snapshot tree")?;
    let tree = repo
        .find_tree(tree_id)
        .context("cannot read the snapshot tree")?;
    let who = Signature::new("image-builder", "image-builder@localhost", &Time::new(0, 0))
        .context("cannot sign the snapshot")?;
    let commit = repo
        .commit(
            None,
            &who,
            &who,
            "snapshot of a local directory",
            &tree,
            &[],
        )
        .context("cannot commit the snapshot")?;
    let branch = format!("refs/heads/{SNAPSHOT_BRANCH}");
    repo.reference(&branch, commit, true, "snapshot")
        .context("cannot name the snapshot branch")?;
    repo.set_head(&branch)
        .context("cannot point HEAD at the snapshot")?;
    Ok(Snapshot {
        repo: bare,
        commit: commit.to_string(),
        _lock: lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_holds_the_files_as_they_are_and_depends_on_them_only() {
        let dir = tempfile::tempdir().expect("dir");
        let app = dir.path().join("My App");
        std::fs::create_dir_all(app.join("src")).expect("dirs");
        std::fs::write(app.join("Dockerfile"), "FROM scratch\n").expect("write");
        std::fs::write(app.join("src/main.txt"), "hello").expect("write");
        // Ignored by git, still part of a build context.
        std::fs::write(app.join(".gitignore"), "out/\n").expect("write");
        std::fs::create_dir_all(app.join("out")).expect("dirs");
        std::fs::write(app.join("out/bin"), "built").expect("write");

        let root = tempfile::tempdir().expect("root");
        let first = snapshot_dir(&app, root.path()).expect("snapshot");
        let (bare, commit) = (first.repo.clone(), first.commit.clone());
        drop(first);
        assert_eq!(
            bare.file_name().and_then(|n| n.to_str()),
            Some("my-app.git")
        );
        let repo = Repository::open_bare(&bare).expect("bare");
        let tree = repo
            .find_commit(git2::Oid::from_str(&commit).expect("oid"))
            .expect("commit")
            .tree()
            .expect("tree");
        for path in ["Dockerfile", "src/main.txt", "out/bin", ".gitignore"] {
            assert!(tree.get_path(Path::new(path)).is_ok(), "{path} is missing");
        }
        assert!(
            !app.join(".git").exists(),
            "nothing is written into the directory"
        );
        let head = repo.head().expect("head");
        assert_eq!(head.shorthand().ok(), Some(SNAPSHOT_BRANCH));

        let again = snapshot_dir(&app, root.path()).expect("snapshot");
        assert_eq!(again.commit, commit, "the same files give the same commit");
        assert_eq!(again.repo, bare, "in the same place: the same remote");
        drop(again);
        std::fs::write(app.join("src/main.txt"), "changed").expect("write");
        let changed = snapshot_dir(&app, root.path()).expect("snapshot");
        assert_ne!(changed.commit, commit);
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).expect("dirs");
        std::fs::write(other.join("Dockerfile"), "FROM scratch\n").expect("write");
        let elsewhere = snapshot_dir(&other, root.path()).expect("snapshot");
        assert_ne!(elsewhere.repo.parent(), changed.repo.parent());
        assert!(elsewhere.repo.is_absolute());
    }
}
