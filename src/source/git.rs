//! git2 adapter: one bare mirror per remote in the cache dir, fetched incrementally under a file
//! lock (safe across builds and replicas sharing the dir), then one commit checked out.

use std::cell::Cell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use async_trait::async_trait;
use git2::{
    AutotagOption, Cred, CredentialType, ErrorClass, ErrorCode, FetchOptions, FetchPrune, Oid,
    RemoteCallbacks, Repository, build::CheckoutBuilder,
};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Checkout, SourceFetcher, SourceSpec};
use crate::error::BuildError;
use crate::fresh::FreshGates;
use crate::now_and_then::NowAndThen;
use crate::pipeline::BuildCtx;
use crate::request::GitRef;

const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

pub struct GitMirrors {
    cache_dir: PathBuf,
    max_bytes: u64,
    /// Concurrent requests for one mirror (and credentials) share fresh fetches.
    gates: FreshGates<Option<String>>,
    /// Sizing the cache walks it: not more often than this.
    eviction: NowAndThen,
}

const EVICTION_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl GitMirrors {
    pub fn new(cache_dir: PathBuf, max_bytes: u64) -> Self {
        Self {
            cache_dir,
            max_bytes,
            gates: FreshGates::default(),
            eviction: NowAndThen::new(EVICTION_EVERY),
        }
    }

    /// Runs eviction off the async threads, at most once per `EVICTION_EVERY`.
    fn evict_now_and_then(&self) {
        if !self.eviction.due() {
            return;
        }
        let dir = self.cache_dir.clone();
        let max = self.max_bytes;
        tokio::task::spawn_blocking(move || super::eviction::evict(&dir, max));
    }

    /// Mirror directory: a hash of the URL (unique) plus the repo name (readable).
    fn mirror_path(&self, spec: &SourceSpec) -> PathBuf {
        let hash = hex::encode(Sha256::digest(spec.remote.as_str().as_bytes()));
        let name: String = spec
            .remote
            .path()
            .trim_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("repo")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .take(40)
            .collect();
        self.cache_dir.join(format!("{}-{name}.git", &hash[..16]))
    }
}

#[async_trait]
impl SourceFetcher for GitMirrors {
    async fn resolve(&self, spec: &SourceSpec, ctx: &BuildCtx) -> Result<Checkout, BuildError> {
        let mirror = self.mirror_path(spec);
        ctx.log.push(&format!("fetching {}", spec.remote));
        let fetch = {
            let (mirror, spec, cancel) = (mirror.clone(), spec.clone(), ctx.cancel.clone());
            || blocking(move || fetch_mirror(&mirror, &spec, &cancel))
        };
        let key = gate_key(&mirror, spec);
        let default_branch = tokio::select! {
            fetched = self.gates.fresh(&key, fetch) => fetched?,
            _ = ctx.cancel.cancelled() => return Err(BuildError::Cancelled),
        };
        let git_ref = spec.git_ref.clone();
        let resolved =
            blocking(move || resolve_in_mirror(&mirror, git_ref.as_ref(), default_branch)).await?;
        self.evict_now_and_then();
        ctx.log
            .push(&format!("{} is {}", resolved.ref_name, resolved.commit));
        Ok(resolved)
    }

    async fn changed_paths(
        &self,
        spec: &SourceSpec,
        from: &str,
        to: &str,
    ) -> Result<Option<Vec<String>>, BuildError> {
        let mirror = self.mirror_path(spec);
        let (from, to) = (from.to_owned(), to.to_owned());
        blocking(move || diff_commits(&mirror, &from, &to)).await
    }

    async fn checkout(
        &self,
        spec: &SourceSpec,
        commit: &str,
        dest: &Path,
        _ctx: &BuildCtx,
    ) -> Result<(), BuildError> {
        let mirror = self.mirror_path(spec);
        let commit = commit.to_owned();
        let dest = dest.to_owned();
        blocking(move || checkout_commit(&mirror, &commit, &dest)).await
    }
}

/// git2 is blocking: run it off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BuildError::Internal(anyhow::anyhow!("git task failed: {e}")))?
}

fn internal(what: &str, e: &dyn std::fmt::Display) -> BuildError {
    BuildError::Internal(anyhow::anyhow!("failed to {what}: {e}"))
}

/// Opens the mirror's lock file: exclusive while fetching (refs change), shared while checking
/// out (objects are only ever added), so replicas sharing the cache dir do not trip each other.
fn lock_mirror(mirror: &Path, exclusive: bool) -> Result<File, BuildError> {
    if let Some(parent) = mirror.parent() {
        std::fs::create_dir_all(parent).map_err(|e| internal("create the git cache dir", &e))?;
    }
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(mirror.with_extension("lock"))
        .map_err(|e| internal("open the mirror lock", &e))?;
    let locked = if exclusive {
        lock.lock()
    } else {
        lock.lock_shared()
    };
    locked.map_err(|e| internal("lock the mirror", &e))?;
    super::eviction::touch(&lock);
    Ok(lock)
}

/// The mirror under a shared lock: reads only (resolve, diff, checkout) while no fetch runs.
fn open_for_reading(mirror: &Path) -> Result<(File, Repository), BuildError> {
    let lock = lock_mirror(mirror, false)?;
    let repo = Repository::open_bare(mirror).map_err(|e| internal("open the mirror", &e))?;
    Ok((lock, repo))
}

/// Which fetches a request may share: same mirror, same credentials. Only a digest is kept.
fn gate_key(mirror: &Path, spec: &SourceSpec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(mirror.as_os_str().as_encoded_bytes());
    hasher.update([0]);
    hasher.update(spec.username.as_bytes());
    hasher.update([0]);
    if let Some(token) = &spec.token {
        hasher.update(token.expose_secret().as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Fetches the remote into the mirror (created on first use); returns its default branch.
fn fetch_mirror(
    mirror: &Path,
    spec: &SourceSpec,
    cancel: &CancellationToken,
) -> Result<Option<String>, BuildError> {
    let _lock = lock_mirror(mirror, true)?;
    let repo = match Repository::open_bare(mirror) {
        Ok(repo) => repo,
        Err(_) => Repository::init_bare(mirror).map_err(|e| internal("create the mirror", &e))?,
    };
    fetch(&repo, spec, cancel)
}

/// Resolves a ref in a freshly fetched mirror. Shared lock: another fetch may only add commits
/// and move refs forward, never make this read see a half-written ref.
fn resolve_in_mirror(
    mirror: &Path,
    git_ref: Option<&GitRef>,
    default_branch: Option<String>,
) -> Result<Checkout, BuildError> {
    let (_lock, repo) = open_for_reading(mirror)?;
    let (oid, ref_name, is_default_branch) = resolve(&repo, git_ref, default_branch.as_deref())?;
    let committed_at = repo
        .find_commit(oid)
        .map_err(|e| internal("read the commit", &e))?
        .committer()
        .when()
        .seconds();
    Ok(Checkout {
        commit: oid.to_string(),
        ref_name,
        is_default_branch,
        committed_at,
    })
}

fn checkout_commit(mirror: &Path, commit: &str, dest: &Path) -> Result<(), BuildError> {
    let (_lock, repo) = open_for_reading(mirror)?;
    let oid = Oid::from_str(commit).map_err(|e| internal("parse the commit id", &e))?;
    let commit = repo
        .find_commit(oid)
        .map_err(|e| internal("read the commit", &e))?;
    let tree = commit.tree().map_err(|e| internal("read the tree", &e))?;
    std::fs::create_dir_all(dest).map_err(|e| internal("create the work dir", &e))?;
    let mut opts = CheckoutBuilder::new();
    // No index update: the mirror's index is one file, and libgit2 locks it to update it, so
    // concurrent checkouts of one mirror would fail with "the index is locked".
    opts.target_dir(dest)
        .force()
        .recreate_missing(true)
        .update_index(false);
    repo.checkout_tree(tree.as_object(), Some(&mut opts))
        .map_err(|e| internal("check out the commit", &e))
}

fn diff_commits(mirror: &Path, from: &str, to: &str) -> Result<Option<Vec<String>>, BuildError> {
    let (_lock, repo) = open_for_reading(mirror)?;
    let commit = |sha: &str| {
        Oid::from_str(sha)
            .ok()
            .and_then(|o| repo.find_commit(o).ok())
    };
    let (Some(old), Some(new)) = (commit(from), commit(to)) else {
        return Ok(None);
    };
    let old = old.tree().map_err(|e| internal("read a tree", &e))?;
    let new = new.tree().map_err(|e| internal("read a tree", &e))?;
    let diff = repo
        .diff_tree_to_tree(Some(&old), Some(&new), None)
        .map_err(|e| internal("compare two commits", &e))?;
    let mut paths = Vec::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            let Some(path) = file.path() else { continue };
            let Some(path) = path.to_str() else {
                return Ok(None);
            };
            paths.push(path.to_owned());
        }
    }
    paths.sort();
    paths.dedup();
    Ok(Some(paths))
}

/// What the credential callback saw, to tell "no token" from "token refused" afterwards.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthSeen {
    NotAsked,
    Asked,
    NoToken,
    Refused,
}

/// Fetches all branches and tags; returns the remote's default branch (`refs/heads/...`).
fn fetch(
    repo: &Repository,
    spec: &SourceSpec,
    cancel: &CancellationToken,
) -> Result<Option<String>, BuildError> {
    let mut remote = repo
        .remote_anonymous(spec.remote.as_str())
        .map_err(|e| BuildError::Internal(anyhow::anyhow!("failed to set up the remote: {e}")))?;
    let seen = Rc::new(Cell::new(AuthSeen::NotAsked));
    let mut callbacks = RemoteCallbacks::new();
    let seen_cb = seen.clone();
    let token = spec.token.clone();
    let username = spec.username.clone();
    callbacks.credentials(move |_url, _user_from_url, allowed| {
        if seen_cb.get() == AuthSeen::Asked {
            // libgit2 asks again when the first answer was refused: do not loop.
            seen_cb.set(AuthSeen::Refused);
            return Err(git2::Error::from_str("the git host refused the token"));
        }
        let Some(token) = token.as_ref() else {
            seen_cb.set(AuthSeen::NoToken);
            return Err(git2::Error::from_str(
                "the git host asks for credentials and the request has no token",
            ));
        };
        if !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            seen_cb.set(AuthSeen::Refused);
            return Err(git2::Error::from_str(
                "the git host wants a credential type other than a token",
            ));
        }
        seen_cb.set(AuthSeen::Asked);
        Cred::userpass_plaintext(&username, token.expose_secret())
    });
    let cancel_cb = cancel.clone();
    callbacks.transfer_progress(move |_| !cancel_cb.is_cancelled());
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks)
        .prune(FetchPrune::On)
        .download_tags(AutotagOption::All)
        .update_fetchhead(false);
    if let Err(err) = remote.fetch(&REFSPECS, Some(&mut opts), None) {
        return Err(fetch_error(&err, seen.get(), cancel, spec));
    }
    // Available after the fetch has disconnected.
    let default = remote
        .default_branch()
        .ok()
        .and_then(|b| b.as_str().ok().map(str::to_owned));
    if let Some(branch) = &default {
        let _ = repo.set_head(branch);
    }
    Ok(default)
}

/// Maps a failed fetch to whose fault it is. The URL is in the message (it has no credentials).
fn fetch_error(
    err: &git2::Error,
    seen: AuthSeen,
    cancel: &CancellationToken,
    spec: &SourceSpec,
) -> BuildError {
    let url = &spec.remote;
    let msg = err.message().to_ascii_lowercase();
    if cancel.is_cancelled() {
        return BuildError::Cancelled;
    }
    match seen {
        AuthSeen::NoToken => {
            return BuildError::AuthRefused(format!(
                "{url} needs credentials and the request has no token"
            ));
        }
        AuthSeen::Refused => {
            return BuildError::AuthRefused(format!("{url} refused the token"));
        }
        AuthSeen::NotAsked | AuthSeen::Asked => {}
    }
    if err.code() == ErrorCode::Auth || msg.contains("401") || msg.contains("403") {
        return BuildError::AuthRefused(format!("{url}: {}", err.message()));
    }
    if msg.contains("404")
        || msg.contains("not found")
        || msg.contains("not exported")
        || msg.contains("does not appear to be a git repository")
    {
        return BuildError::RepoNotFound(format!("{url}: {}", err.message()));
    }
    match err.class() {
        ErrorClass::Net | ErrorClass::Os | ErrorClass::Ssl | ErrorClass::Http => {
            BuildError::GitUnavailable(format!("{url}: {}", err.message()))
        }
        _ => BuildError::Internal(anyhow::anyhow!("failed to fetch {url}: {}", err.message())),
    }
}

/// Finds the commit for a ref: the default branch when absent, then SHA, branch, tag.
fn resolve(
    repo: &Repository,
    git_ref: Option<&GitRef>,
    default_branch: Option<&str>,
) -> Result<(Oid, String, bool), BuildError> {
    let not_found = |what: &str| BuildError::RefNotFound(what.to_owned());
    let Some(git_ref) = git_ref else {
        let branch = default_branch
            .ok_or_else(|| not_found("the repository has no default branch (is it empty?)"))?;
        let oid = peel(repo, branch).ok_or_else(|| not_found(branch))?;
        let name = branch.strip_prefix("refs/heads/").unwrap_or(branch);
        return Ok((oid, name.to_owned(), true));
    };
    let raw = git_ref.as_str();
    if git_ref.is_full_sha() {
        let oid = Oid::from_str(raw).map_err(|_| not_found(raw))?;
        repo.find_commit(oid)
            .map_err(|_| not_found(&format!("commit {raw} is not in the repository")))?;
        return Ok((oid, raw.to_owned(), false));
    }
    let candidates = [
        format!("refs/heads/{raw}"),
        format!("refs/tags/{raw}"),
        raw.to_owned(),
    ];
    for candidate in candidates.iter().filter(|c| c.starts_with("refs/")) {
        if let Some(oid) = peel(repo, candidate) {
            let name = candidate
                .strip_prefix("refs/heads/")
                .or_else(|| candidate.strip_prefix("refs/tags/"))
                .unwrap_or(candidate);
            let is_default = default_branch == Some(candidate.as_str());
            return Ok((oid, name.to_owned(), is_default));
        }
    }
    Err(not_found(&format!("no branch or tag named {raw}")))
}

fn peel(repo: &Repository, refname: &str) -> Option<Oid> {
    let reference = repo.find_reference(refname).ok()?;
    reference.peel_to_commit().ok().map(|c| c.id())
}

#[allow(unsafe_code)]
pub(super) fn configure_timeouts() {
    // SAFETY: libgit2 global options; called once at start, before any git2 work on other threads.
    let result = unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(15_000)
            .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(120_000))
    };
    if let Err(e) = result {
        tracing::warn!("failed to set git network timeouts: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_checkouts_of_one_mirror_all_succeed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mirror = dir.path().join("m.git");
        let repo = Repository::init_bare(&mirror).expect("bare repo");
        let mut tree = repo.treebuilder(None).expect("treebuilder");
        for i in 0..50 {
            let blob = repo.blob(format!("file {i}\n").as_bytes()).expect("blob");
            tree.insert(format!("f{i}.txt"), blob, 0o100644)
                .expect("insert");
        }
        let tree = repo.find_tree(tree.write().expect("tree")).expect("tree");
        let who = git2::Signature::now("t", "t@example.invalid").expect("signature");
        let commit = repo
            .commit(None, &who, &who, "one", &tree, &[])
            .expect("commit")
            .to_string();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (mirror, commit) = (mirror.clone(), commit.clone());
                let dest = dir.path().join(format!("out{i}"));
                std::thread::spawn(move || checkout_commit(&mirror, &commit, &dest).map(|()| dest))
            })
            .collect();
        for thread in threads {
            let dest = thread.join().expect("thread").expect("checkout succeeds");
            assert_eq!(
                std::fs::read_to_string(dest.join("f7.txt")).expect("file"),
                "file 7\n"
            );
        }
        assert!(
            !mirror.join("index").exists(),
            "the mirror's index is never written"
        );
    }
}
