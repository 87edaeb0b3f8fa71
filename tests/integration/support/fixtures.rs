//! Git repositories for tests, made with the git CLI and pushed into the test git server's root.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct RepoFixture {
    work: tempfile::TempDir,
}

impl RepoFixture {
    /// A bare repository `<root>/<owner/name>.git` with a work tree to commit from.
    pub fn create(root: &Path, repo: &str) -> Self {
        let bare: PathBuf = root.join(format!("{repo}.git"));
        std::fs::create_dir_all(&bare).expect("bare dir");
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        let work = tempfile::tempdir().expect("work tree");
        git(work.path(), &["init", "-q", "-b", "main"]);
        git(
            work.path(),
            &["remote", "add", "origin", bare.to_str().expect("utf8 path")],
        );
        Self { work }
    }

    /// Writes files (path, content) and commits them; returns the commit SHA.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            let file = self.work.path().join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).expect("dirs");
            }
            std::fs::write(&file, content).expect("write file");
        }
        git(self.work.path(), &["add", "-A"]);
        git(self.work.path(), &["commit", "-q", "-m", message]);
        self.head()
    }

    /// Removes a file from the next commit.
    pub fn remove(&self, path: &str) {
        git(self.work.path(), &["rm", "-q", path]);
    }

    /// Puts a symlink `path` -> `target` into the next commit.
    pub fn symlink(&self, path: &str, target: &str) {
        let link = self.work.path().join(path);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).expect("dirs");
        }
        std::os::unix::fs::symlink(target, link).expect("symlink");
    }

    /// Replaces `path` (a file or a whole folder) with a symlink to `target` in the next commit.
    pub fn replace_with_symlink(&self, path: &str, target: &str) {
        git(self.work.path(), &["rm", "-rq", path]);
        let link = self.work.path().join(path);
        if link.exists() {
            std::fs::remove_dir_all(&link).expect("remove what git left");
        }
        self.symlink(path, target);
    }

    /// The work tree: tests change it directly (deletions, modes, symlinks) before `commit`,
    /// which stages everything.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    pub fn head(&self) -> String {
        git(self.work.path(), &["rev-parse", "HEAD"])
            .trim()
            .to_owned()
    }

    pub fn checkout_new_branch(&self, name: &str) {
        git(self.work.path(), &["checkout", "-q", "-b", name]);
    }

    pub fn checkout(&self, name: &str) {
        git(self.work.path(), &["checkout", "-q", name]);
    }

    /// An annotated tag at HEAD (so resolving it has to peel the tag object).
    pub fn tag(&self, name: &str) {
        git(self.work.path(), &["tag", "-a", name, "-m", name]);
    }

    pub fn push(&self) {
        git(self.work.path(), &["push", "-q", "--all", "origin"]);
        git(self.work.path(), &["push", "-q", "--tags", "origin"]);
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Dockerfile on the locally seeded base image with a RUN step.
pub const DOCKERFILE_WITH_RUN: &str = "FROM localhost/busybox:latest\n\
RUN echo built > /built.txt && cat /built.txt\n\
COPY . /app\n";
