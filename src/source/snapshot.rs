//! A local directory as a repository: its files, as they are now (committed or not, ignored by
//! git or not: a build context is what `docker build DIR` would see), committed into a
//! throwaway bare repository that the git adapter then fetches like any other. The directory is
//! only read; nothing is written into it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use git2::{IndexAddOption, Repository, Signature, Time};

/// The branch the snapshot is on: the repository's default branch, so its image is tagged
/// `latest` and `local` besides the commit.
pub const SNAPSHOT_BRANCH: &str = "local";

/// Commits the files of `dir` into a new bare repository under `into`, named after the
/// directory. The commit is a function of the files only (fixed author and time), so an
/// unchanged directory gives the same commit and is answered from the registry.
pub fn snapshot_dir(dir: &Path, into: &Path) -> anyhow::Result<(PathBuf, String)> {
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
    let bare = into.join(format!("{name}.git"));
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
    Ok((bare, commit.to_string()))
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

        let (one, two) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let (bare, commit) = snapshot_dir(&app, one.path()).expect("snapshot");
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

        let (_, again) = snapshot_dir(&app, two.path()).expect("snapshot");
        assert_eq!(again, commit, "the same files give the same commit");
        std::fs::write(app.join("src/main.txt"), "changed").expect("write");
        let three = tempfile::tempdir().expect("c");
        let (_, changed) = snapshot_dir(&app, three.path()).expect("snapshot");
        assert_ne!(changed, commit);
    }
}
