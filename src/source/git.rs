//! git2 adapter: one bare mirror per remote in the cache dir. A ref is resolved from the remote's
//! ref listing (one round trip); the mirror is fetched under a file lock (safe across builds and
//! replicas sharing the dir) only when it lacks that commit -- the first time just the commit
//! (shallow), later what a push added onto the mirror's tips (one request; `fetch::Depth`),
//! deepened when an incremental diff needs an earlier one. Then one commit is checked
//! out, after measuring what it would write: into the repository's kept tree when there is one
//! (`kept_trees`), writing only what changed since its commit.

use std::fs::File;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use git2::{Delta, FileMode, Oid, Repository, Tree, build::CheckoutBuilder};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::GitLimits;
use super::checkout_size::{self, CheckoutBounds, MAX_CHECKOUT_ENTRIES};
use super::early_claims::EarlyClaims;
use super::egress::{self, ExtraRoots, NetworkPolicy, Route};
use super::fetch::FetchPlan;
use super::kept_trees::KeptTrees;
use super::refs::{Listing, Refs, Wanted};
use super::seal::Seal;
use super::stop::Stop;
use crate::error::{BuildError, GitError};
use crate::fresh::FreshGates;
use crate::metrics::Metrics;
use crate::now_and_then::NowAndThen;
use crate::ports::{BuildCtx, Checkout, SourceFetcher, SourceHold, SourceSpec};

pub struct GitMirrors {
    cache_dir: PathBuf,
    max_bytes: u64,
    limits: GitLimits,
    /// Where fetches may connect (`request.allowed_networks`).
    policy: NetworkPolicy,
    /// Trusted for https hosts besides the system's roots (`request.git_ca_file`).
    roots: ExtraRoots,
    /// Concurrent lookups of one remote (with the same credentials) share fresh listings...
    listings: FreshGates<(Listing, bool)>,
    /// ...and fresh fetches of the same refs into one mirror.
    fetches: FreshGates<()>,
    /// Sizing the cache walks it: not more often than this.
    eviction: NowAndThen,
    /// Counts mirrors over the cache bound, when given.
    metrics: Option<std::sync::Arc<Metrics>>,
    /// Checkouts kept for the repositories' next builds.
    kept: KeptTrees,
    /// Kept trees claimed while their builds fetch.
    claims: EarlyClaims,
}

const EVICTION_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl GitMirrors {
    /// `limits` bound each fetch and checkout. The stall bound itself is process-wide: see
    /// `configure_git_timeouts`, which must be given the same `stall_secs`. Fetches connect
    /// only where `policy` allows; https hosts are verified against the system's roots.
    pub fn new(
        cache_dir: PathBuf,
        max_bytes: u64,
        limits: impl Into<GitLimits>,
        policy: NetworkPolicy,
    ) -> Self {
        // Before any fetch: libgit2 does not lock its transport list against registration.
        egress::install();
        Self {
            cache_dir,
            max_bytes,
            limits: limits.into(),
            policy,
            roots: ExtraRoots::default(),
            listings: FreshGates::default(),
            fetches: FreshGates::default(),
            eviction: NowAndThen::new(EVICTION_EVERY),
            metrics: None,
            kept: KeptTrees::none(),
            claims: EarlyClaims::default(),
        }
    }

    /// Keeps builds' checkouts in `kept` for their repositories' next builds.
    pub fn keeping(mut self, kept: KeptTrees) -> Self {
        self.kept = kept;
        self
    }

    /// Counts builds refused for a mirror over the cache bound in `metrics`.
    pub fn counting(mut self, metrics: std::sync::Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A mirror alone over the bound would be evicted after every build and fetched whole again
    /// (or, before builds held their mirror, evicted between resolve and checkout): refused as
    /// a service fault naming the setting instead.
    async fn ensure_fits_cache(&self, mirror: &Path, spec: &SourceSpec) -> Result<(), BuildError> {
        let path = mirror.to_owned();
        let size = blocking(move || Ok(super::eviction::dir_size(&path))).await?;
        if size <= self.max_bytes {
            return Ok(());
        }
        if let Some(metrics) = &self.metrics {
            metrics.mirror_over_cache_bound.inc();
        }
        let mib = |bytes: u64| bytes.div_ceil(1024 * 1024);
        Err(BuildError::Internal(anyhow::anyhow!(
            "the git mirror of {} is {} MiB, more than the whole cache may hold \
             (git_cache_max_mb = {}): raise git_cache_max_mb",
            spec.remote,
            mib(size),
            mib(self.max_bytes)
        )))
    }

    /// Also trusts `roots` for https hosts (an internal CA).
    pub fn trusting(mut self, roots: ExtraRoots) -> Self {
        self.roots = roots;
        self
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
        self.resolve_and_tell(spec, ctx, None).await
    }

    async fn resolve_telling(
        &self,
        spec: &SourceSpec,
        ctx: &BuildCtx,
        fetching: tokio::sync::oneshot::Sender<String>,
    ) -> Result<Checkout, BuildError> {
        self.resolve_and_tell(spec, ctx, Some(fetching)).await
    }

    async fn changed_paths(
        &self,
        spec: &SourceSpec,
        from: &str,
        to: &str,
        ctx: &BuildCtx,
    ) -> Result<Option<Vec<String>>, BuildError> {
        let mirror = self.mirror_path(spec);
        let (from, to) = (from.to_owned(), to.to_owned());
        let diff = {
            let (mirror, from, to) = (mirror.clone(), from.clone(), to.clone());
            blocking(move || diff_commits(&mirror, &from, &to)).await?
        };
        let Diff::Shallow = diff else {
            return Ok(diff.paths());
        };
        // A shallow mirror lacks the earlier commit: its history is fetched rather than the
        // warm rebuild degraded to a full one.
        let wanted = Wanted {
            git_ref: spec.git_ref.clone(),
            kind: spec.ref_kind,
            default_branch: None,
        };
        let stop = Stop::new(&ctx.cancel, ctx.deadline);
        let refname = {
            let (mirror, stop) = (mirror.clone(), stop.clone());
            blocking(move || mirror_refname(&mirror, wanted, &stop)).await?
        };
        ctx.log.push(&format!(
            "commit {from} is not in the shallow mirror: fetching the history of {}",
            refname.as_deref().unwrap_or("every branch and tag")
        ));
        let key = format!("{}|whole", refname.as_deref().unwrap_or("*"));
        let plan = move |_: &Repository| match &refname {
            Some(refname) => FetchPlan::deepen(refname),
            None => FetchPlan::everything(),
        };
        self.fetch(&mirror, spec, &key, plan, &stop, ctx).await?;
        self.ensure_fits_cache(&mirror, spec).await?;
        let diff = blocking(move || diff_commits(&mirror, &from, &to)).await?;
        Ok(diff.paths())
    }

    async fn checkout(
        &self,
        spec: &SourceSpec,
        commit: &str,
        dest: &Path,
        ctx: &BuildCtx,
    ) -> Result<(), BuildError> {
        let mirror = self.mirror_path(spec);
        let commit = commit.to_owned();
        let dest = dest.to_owned();
        let bounds = CheckoutBounds {
            checkout_mb: self.limits.checkout_mb,
            max_entries: MAX_CHECKOUT_ENTRIES,
        };
        let stop = Stop::new(&ctx.cancel, ctx.deadline);
        let kept = self.kept.clone();
        let claimed = self.claims.finish(&ctx.scratch_dir).await;
        blocking(move || {
            let taken = match claimed {
                Some(claimed) => claimed.move_to(&dest),
                None => kept.take(&mirror_key(&mirror), &dest),
            };
            let updated = taken.and_then(|taken| {
                match update_kept(&mirror, &taken.commit, &commit, &dest, &bounds, &stop) {
                    Ok(changed) => {
                        tracing::info!(
                            "checkout: the kept tree of {} brought to {commit} ({} \
                             file(s) written, {} removed)",
                            taken.commit,
                            changed.written,
                            changed.removed
                        );
                        // Only what was written or removed is sealed again.
                        let mut seal = taken.seal;
                        Some(seal.reseal(&dest, &changed.paths).ok().map(|()| seal))
                    }
                    Err(why) => {
                        tracing::info!("checked out afresh: {why}");
                        let _ = std::fs::remove_dir_all(&dest);
                        None
                    }
                }
            });
            let seal = match updated {
                Some(resealed) => resealed.or_else(|| Seal::of(&dest)),
                None => {
                    checkout_commit(&mirror, &commit, &dest, &bounds, &stop)?;
                    Seal::of(&dest)
                }
            };
            // Sealed before the build runs: only a tree nothing wrote to since is kept.
            if let Some(seal) = seal {
                let _ = std::fs::write(seal_path(&dest), seal.digest());
            }
            Ok(())
        })
        .await
    }

    fn keep_checkout(&self, spec: &SourceSpec, commit: &str, dir: &Path) {
        let Ok(seal) = std::fs::read_to_string(seal_path(dir)) else {
            return;
        };
        let Some(staged) = self.kept.stage(dir, &seal) else {
            return;
        };
        let (kept, key, commit) = (
            self.kept.clone(),
            mirror_key(&self.mirror_path(spec)),
            commit.to_owned(),
        );
        tokio::task::spawn_blocking(move || kept.publish(staged, &key, &commit));
    }
}

/// Where a checkout's seal is written: beside it, in the build's work dir.
fn seal_path(dest: &Path) -> PathBuf {
    dest.with_extension("seal")
}

/// A kept tree's key: its mirror's directory name.
fn mirror_key(mirror: &Path) -> String {
    mirror
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl GitMirrors {
    /// `resolve`, telling `tell` (when given) the commit it is about to fetch.
    async fn resolve_and_tell(
        &self,
        spec: &SourceSpec,
        ctx: &BuildCtx,
        mut tell: Option<tokio::sync::oneshot::Sender<String>>,
    ) -> Result<Checkout, BuildError> {
        let mirror = self.mirror_path(spec);
        ctx.log.push(&format!("fetching {}", spec.remote));
        // The blocking fetch stops by itself on cancel and at the deadline: dropping the
        // future awaiting it (below, or the pipeline's timeout) would not.
        let stop = Stop::new(&ctx.cancel, ctx.deadline);
        // Held before the fetch and until the build drops the checkout: eviction cannot remove
        // the mirror between this fetch and the checkout (or the incremental diff) that read it.
        let hold = {
            let (mirror, stop) = (mirror.clone(), stop.clone());
            blocking(move || {
                let hold = super::eviction::hold(&mirror, &stop)?;
                prepare_mirror(&mirror, &stop)?;
                Ok(hold)
            })
            .await?
        };
        // One listing round trip says which commit the ref names; most answers stop there. A
        // commit the mirror lacks is fetched over the same connection.
        let (fetching, mut fetch_started) = tokio::sync::oneshot::channel();
        let listed = self.listing(&mirror, spec, &stop, ctx, fetching);
        tokio::pin!(listed);
        let mut claim = None;
        let mut hearing = true;
        let (listing, fetched) = loop {
            tokio::select! {
                listed = &mut listed => break listed?,
                started = &mut fetch_started, if hearing => {
                    hearing = false;
                    if let Ok(oid) = started {
                        claim = Some(self.claim_early(&mirror, ctx));
                        if let Some(tell) = tell.take() {
                            let _ = tell.send(oid.to_string());
                        }
                    }
                }
            }
        };
        if fetched {
            self.ensure_fits_cache(&mirror, spec).await?;
        }
        let wanted = Wanted {
            git_ref: spec.git_ref.clone(),
            kind: spec.ref_kind,
            default_branch: listing.head.clone(),
        };
        let listed = super::refs::resolve(&listing, &wanted)?;
        let oid = listed.oid;
        let found = {
            let (mirror, stop) = (mirror.clone(), stop.clone());
            blocking(move || committed_at(&mirror, oid, &stop)).await?
        };
        let (commit, committed_at) = match found {
            Some(at) => {
                ctx.log.push(&if fetched {
                    format!("{oid} fetched over the listing's connection")
                } else {
                    format!("{oid} is in the mirror already: no fetch")
                });
                (oid, at)
            }
            None => {
                // The listing was another lookup's (shared), or fetching over it failed: the
                // tip alone, as a fetch onto the mirror's tips may be what failed.
                claim = claim.or_else(|| Some(self.claim_early(&mirror, ctx)));
                if let Some(tell) = tell.take() {
                    let _ = tell.send(oid.to_string());
                }
                let target = listed.refname.clone();
                let shallow = spec.remote.scheme() != "file";
                let plan = move |repo: &Repository| match &target {
                    Some(refname) => FetchPlan::one_ref(refname, repo, shallow, false),
                    None => FetchPlan::everything(),
                };
                let key = listed.refname.as_deref().unwrap_or("*").to_owned();
                self.fetch(&mirror, spec, &key, plan, &stop, ctx).await?;
                self.ensure_fits_cache(&mirror, spec).await?;
                let (mirror, stop) = (mirror.clone(), stop.clone());
                let refname = listed.refname.clone();
                blocking(move || fetched_commit(&mirror, oid, refname.as_deref(), &stop)).await?
            }
        };
        let resolved = Checkout {
            commit: commit.to_string(),
            ref_name: listed.name,
            is_default_branch: listed.is_default_branch,
            committed_at,
            hold: SourceHold::new((hold, claim)),
        };
        self.evict_now_and_then();
        ctx.log
            .push(&format!("{} is {}", resolved.ref_name, resolved.commit));
        Ok(resolved)
    }

    /// The remote's refs, from a listing that started after this call (shared with identical
    /// lookups in flight), and whether it fetched: when the mirror lacks the commit the request
    /// names, the listing's connection fetches it (`fetching` hears of it first).
    async fn listing(
        &self,
        mirror: &Path,
        spec: &SourceSpec,
        stop: &Stop,
        ctx: &BuildCtx,
        fetching: tokio::sync::oneshot::Sender<Oid>,
    ) -> Result<(Listing, bool), BuildError> {
        let list = {
            let (mirror, spec, limits, stop) =
                (mirror.to_owned(), spec.clone(), self.limits, stop.clone());
            let (policy, roots) = (self.policy.clone(), self.roots.clone());
            move || async move {
                let route = open_route(&policy, &roots, &spec, &limits, &stop).await?;
                blocking(move || {
                    let repo =
                        Repository::open_bare(&mirror).map_err(GitError::git("open the mirror"))?;
                    let then = |repo: &Repository, listing: &Listing| {
                        fetch_if_missing(&mirror, &spec, repo, listing, &stop, fetching)
                    };
                    super::fetch::list(&repo, &spec, &limits, &stop, &route, then)
                })
                .await
            }
        };
        let key = gate_key(mirror, spec);
        tokio::select! {
            listed = self.listings.fresh(&key, list) => listed,
            _ = ctx.cancel.cancelled() => Err(BuildError::Cancelled),
        }
    }

    /// Claims the mirror's kept tree for this build while its commit is fetched: a commit to
    /// fetch is most likely one to build, and checking the tree's seal then overlaps the
    /// network wait.
    fn claim_early(&self, mirror: &Path, ctx: &BuildCtx) -> super::early_claims::ClaimGuard {
        self.claims
            .start(&self.kept, mirror_key(mirror), &ctx.scratch_dir)
    }

    /// Fetches into the mirror what `plan` (decided under the mirror's lock) asks for; fetches
    /// with the same `target` in flight are shared.
    async fn fetch(
        &self,
        mirror: &Path,
        spec: &SourceSpec,
        target: &str,
        plan: impl FnOnce(&Repository) -> FetchPlan + Send + 'static,
        stop: &Stop,
        ctx: &BuildCtx,
    ) -> Result<(), BuildError> {
        let fetch = {
            let (mirror, spec, limits, stop) =
                (mirror.to_owned(), spec.clone(), self.limits, stop.clone());
            let (policy, roots) = (self.policy.clone(), self.roots.clone());
            move || async move {
                // Opened per fetch, dropped (relay closed) when the fetch returns.
                let route = open_route(&policy, &roots, &spec, &limits, &stop).await?;
                blocking(move || fetch_mirror(&mirror, &spec, plan, &limits, &stop, &route)).await
            }
        };
        let key = format!("{}|{target}", gate_key(mirror, spec));
        tokio::select! {
            fetched = self.fetches.fresh(&key, fetch) => fetched,
            _ = ctx.cancel.cancelled() => Err(BuildError::Cancelled),
        }
    }
}

async fn open_route(
    policy: &NetworkPolicy,
    roots: &ExtraRoots,
    spec: &SourceSpec,
    limits: &GitLimits,
    stop: &Stop,
) -> Result<Route, BuildError> {
    let stall = std::time::Duration::from_secs(limits.stall_secs);
    Route::open(policy, roots, &spec.remote, stop, stall).await
}

/// git2 is blocking: run it off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BuildError::Internal(anyhow::anyhow!("git task failed: {e}")))?
}

/// Opens the mirror's lock file: exclusive while fetching (refs change), shared while checking
/// out (objects are only ever added), so replicas sharing the cache dir do not trip each other.
fn lock_mirror(mirror: &Path, exclusive: bool, stop: &Stop) -> Result<File, BuildError> {
    if let Some(parent) = mirror.parent() {
        std::fs::create_dir_all(parent).map_err(GitError::io("create the git cache dir"))?;
    }
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(mirror.with_extension("lock"))
        .map_err(GitError::io("open the mirror lock"))?;
    stop.lock(&lock, exclusive)?;
    super::eviction::touch(&lock);
    Ok(lock)
}

/// The mirror under a shared lock: reads only (resolve, diff, checkout) while no fetch runs.
fn open_for_reading(mirror: &Path, stop: &Stop) -> Result<(File, Repository), BuildError> {
    let lock = lock_mirror(mirror, false, stop)?;
    let repo = Repository::open_bare(mirror).map_err(GitError::git("open the mirror"))?;
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

/// Creates the mirror on first use, set up so that listing it follows no redirect; takes the
/// exclusive lock only then.
fn prepare_mirror(mirror: &Path, stop: &Stop) -> Result<(), BuildError> {
    let ready = |repo: &Repository| super::fetch::redirects_forbidden(repo);
    if Repository::open_bare(mirror).is_ok_and(|repo| ready(&repo)) {
        return Ok(());
    }
    let _lock = lock_mirror(mirror, true, stop)?;
    let repo = match Repository::open_bare(mirror) {
        Ok(repo) => repo,
        Err(_) => Repository::init_bare(mirror).map_err(GitError::git("create the mirror"))?,
    };
    if !ready(&repo) {
        super::fetch::forbid_redirects(&repo)?;
    }
    Ok(())
}

/// Fetches what `plan` asks for into the mirror, under its exclusive lock.
fn fetch_mirror(
    mirror: &Path,
    spec: &SourceSpec,
    plan: impl FnOnce(&Repository) -> FetchPlan,
    limits: &GitLimits,
    stop: &Stop,
    route: &Route,
) -> Result<(), BuildError> {
    let _lock = lock_mirror(mirror, true, stop)?;
    let repo = Repository::open_bare(mirror).map_err(GitError::git("open the mirror"))?;
    let plan = plan(&repo);
    super::fetch::fetch(&repo, spec, &plan, limits, stop, route).map(drop)
}

/// The fetch a listing calls for: of the commit the request names, when the mirror lacks it,
/// with the mirror's exclusive lock to hold until the fetch is done. `fetching` hears of it
/// before the lock is waited for.
fn fetch_if_missing(
    mirror: &Path,
    spec: &SourceSpec,
    repo: &Repository,
    listing: &Listing,
    stop: &Stop,
    fetching: tokio::sync::oneshot::Sender<Oid>,
) -> Result<Option<(FetchPlan, File)>, BuildError> {
    let wanted = Wanted {
        git_ref: spec.git_ref.clone(),
        kind: spec.ref_kind,
        default_branch: listing.head.clone(),
    };
    // A ref the listing lacks is reported by the caller, which resolves it again.
    let Ok(listed) = super::refs::resolve(listing, &wanted) else {
        return Ok(None);
    };
    if committed_at(mirror, listed.oid, stop)?.is_some() {
        return Ok(None);
    }
    let _ = fetching.send(listed.oid);
    let lock = lock_mirror(mirror, true, stop)?;
    // Another fetch may have brought it while this one waited for the lock.
    if repo.find_commit(listed.oid).is_ok() {
        return Ok(None);
    }
    let plan = match &listed.refname {
        Some(refname) => FetchPlan::one_ref(refname, repo, spec.remote.scheme() != "file", true),
        None => FetchPlan::everything(),
    };
    Ok(Some((plan, lock)))
}

/// The committer time of `oid` when the mirror has that commit. Shared lock: another fetch
/// may only add commits and move refs forward, never make this read see a half-written ref.
fn committed_at(mirror: &Path, oid: Oid, stop: &Stop) -> Result<Option<i64>, BuildError> {
    let (_lock, repo) = open_for_reading(mirror, stop)?;
    Ok(repo
        .find_commit(oid)
        .ok()
        .map(|commit| commit.committer().when().seconds()))
}

/// The commit a fetch brought for the listed `oid`: that one, or what `refname` names now when
/// the ref moved between the listing and the fetch.
fn fetched_commit(
    mirror: &Path,
    oid: Oid,
    refname: Option<&str>,
    stop: &Stop,
) -> Result<(Oid, i64), BuildError> {
    let (_lock, repo) = open_for_reading(mirror, stop)?;
    let moved = refname.and_then(|name| repo.commit_of(name));
    let commit = repo
        .find_commit(oid)
        .or_else(|e| moved.map_or(Err(e), |now| repo.find_commit(now)))
        .map_err(|_| match refname {
            Some(name) => BuildError::RefNotFound(format!("{name} is gone from the repository")),
            None => BuildError::RefNotFound(format!("commit {oid} is not in the repository")),
        })?;
    Ok((commit.id(), commit.committer().when().seconds()))
}

/// The ref the request names in the mirror (as its last fetch left it), for deepening it.
fn mirror_refname(
    mirror: &Path,
    mut wanted: Wanted,
    stop: &Stop,
) -> Result<Option<String>, BuildError> {
    let (_lock, repo) = open_for_reading(mirror, stop)?;
    wanted.default_branch = repo
        .find_reference("HEAD")
        .ok()
        .and_then(|head| head.symbolic_target().ok().flatten().map(str::to_owned));
    Ok(super::refs::resolve(&repo, &wanted)
        .ok()
        .and_then(|resolved| resolved.refname))
}

/// Writes the tree of `commit` into `dest`, after making sure it fits `bounds` (nothing is
/// written when it does not).
fn checkout_commit(
    mirror: &Path,
    commit: &str,
    dest: &Path,
    bounds: &CheckoutBounds,
    stop: &Stop,
) -> Result<(), BuildError> {
    let (_lock, repo) = open_for_reading(mirror, stop)?;
    let oid = Oid::from_str(commit).map_err(GitError::git("parse the commit id"))?;
    let commit = repo
        .find_commit(oid)
        .map_err(GitError::git("read the commit"))?;
    let tree = commit.tree().map_err(GitError::git("read the tree"))?;
    checkout_size::ensure_fits(&repo, &tree, bounds)?;
    std::fs::create_dir_all(dest).map_err(GitError::io("create the work dir"))?;
    let mut opts = CheckoutBuilder::new();
    // No index update: the mirror's index is one file, and libgit2 locks it to update it, so
    // concurrent checkouts of one mirror would fail with "the index is locked".
    // No filters: the files are written exactly as measured (an `ident` attribute alone
    // turns each 4-byte "$Id$" into 47 bytes).
    opts.target_dir(dest)
        .force()
        .recreate_missing(true)
        .update_index(false)
        .disable_filters(true);
    repo.checkout_tree(tree.as_object(), Some(&mut opts))
        .map_err(GitError::git("check out the commit"))?;
    Ok(())
}

/// What bringing a kept tree to another commit wrote and removed.
#[derive(Debug)]
struct Changed {
    written: usize,
    removed: usize,
    /// The paths written or removed.
    paths: Vec<String>,
}

/// Turns `dest`, a kept tree of commit `from`, into a checkout of `to`: the files that changed
/// are removed and written again, nothing else is touched. Only plain files may have changed
/// (a symlink, submodule or type change is left to a fresh checkout, as is anything unexpected).
fn update_kept(
    mirror: &Path,
    from: &str,
    to: &str,
    dest: &Path,
    bounds: &CheckoutBounds,
    stop: &Stop,
) -> Result<Changed, String> {
    let (_lock, repo) = open_for_reading(mirror, stop).map_err(|e| e.to_string())?;
    let tree_of = |sha: &str| -> Result<Tree<'_>, String> {
        Oid::from_str(sha)
            .and_then(|oid| repo.find_commit(oid))
            .and_then(|commit| commit.tree())
            .map_err(|e| format!("commit {sha}: {e}"))
    };
    let (old, new) = (tree_of(from)?, tree_of(to)?);
    checkout_size::ensure_fits(&repo, &new, bounds).map_err(|e| e.to_string())?;
    let diff = repo
        .diff_tree_to_tree(Some(&old), Some(&new), None)
        .map_err(|e| format!("comparing {from} and {to}: {e}"))?;
    let plain = |mode: FileMode| {
        matches!(
            mode,
            FileMode::Blob | FileMode::BlobExecutable | FileMode::Unreadable
        )
    };
    let (mut written, mut removed) = (Vec::new(), Vec::new());
    for delta in diff.deltas() {
        let (old_file, new_file) = (delta.old_file(), delta.new_file());
        if !plain(old_file.mode()) || !plain(new_file.mode()) {
            return Err("a symlink, submodule or type changed".into());
        }
        let path = new_file
            .path()
            .or(old_file.path())
            .and_then(Path::to_str)
            .filter(|p| {
                p.split('/')
                    .all(|part| !matches!(part, "" | "." | ".." | ".git"))
            })
            .ok_or("a changed path is not plain UTF-8")?;
        match delta.status() {
            Delta::Deleted => {
                remove_with_empty_parents(dest, path)?;
                removed.push(path.to_owned());
            }
            Delta::Added | Delta::Modified => {
                // Written anew, so that the mode is the blob's as in a fresh checkout.
                if dest.join(path).symlink_metadata().is_ok() {
                    std::fs::remove_file(dest.join(path)).map_err(|e| format!("{path}: {e}"))?;
                }
                written.push(path.to_owned());
            }
            other => return Err(format!("{path} is {other:?}")),
        }
    }
    let changed = |written: Vec<String>, removed: Vec<String>| Changed {
        written: written.len(),
        removed: removed.len(),
        paths: written.into_iter().chain(removed).collect(),
    };
    if written.is_empty() {
        return Ok(changed(written, removed));
    }
    let mut opts = CheckoutBuilder::new();
    opts.target_dir(dest)
        .force()
        .recreate_missing(true)
        .update_index(false)
        .disable_filters(true)
        .disable_pathspec_match(true);
    for path in &written {
        opts.path(path);
    }
    repo.checkout_tree(new.as_object(), Some(&mut opts))
        .map_err(|e| format!("writing the changed files: {e}"))?;
    Ok(changed(written, removed))
}

/// Removes the file at `path` beneath `dest`, then each parent directory left empty (a fresh
/// checkout has no empty directories).
fn remove_with_empty_parents(dest: &Path, path: &str) -> Result<(), String> {
    let file = dest.join(path);
    if !file.symlink_metadata().is_ok_and(|m| m.is_file()) {
        return Err(format!("{path} is not the file the kept commit has"));
    }
    std::fs::remove_file(&file).map_err(|e| format!("{path}: {e}"))?;
    let mut dir = Path::new(path).parent();
    while let Some(rel) = dir.filter(|d| !d.as_os_str().is_empty()) {
        // Fails on a directory that still has entries: it stays.
        if std::fs::remove_dir(dest.join(rel)).is_err() {
            break;
        }
        dir = rel.parent();
    }
    Ok(())
}

/// What comparing two commits of a mirror came to.
#[derive(Debug, PartialEq, Eq)]
enum Diff {
    /// The changed paths, sorted.
    Paths(Vec<String>),
    /// A commit is not in the mirror, which is shallow: fetching its history may bring it.
    Shallow,
    /// A commit is not in the (whole) mirror, or a path is not UTF-8.
    Unknown,
}

impl Diff {
    fn paths(self) -> Option<Vec<String>> {
        match self {
            Diff::Paths(paths) => Some(paths),
            Diff::Shallow | Diff::Unknown => None,
        }
    }
}

fn diff_commits(mirror: &Path, from: &str, to: &str) -> Result<Diff, BuildError> {
    let (_lock, repo) = open_for_reading(mirror, &Stop::never())?;
    let commit = |sha: &str| {
        Oid::from_str(sha)
            .ok()
            .and_then(|o| repo.find_commit(o).ok())
    };
    let (Some(old), Some(new)) = (commit(from), commit(to)) else {
        return Ok(if repo.is_shallow() {
            Diff::Shallow
        } else {
            Diff::Unknown
        });
    };
    let old = old.tree().map_err(GitError::git("read a tree"))?;
    let new = new.tree().map_err(GitError::git("read a tree"))?;
    let diff = repo
        .diff_tree_to_tree(Some(&old), Some(&new), None)
        .map_err(GitError::git("compare two commits"))?;
    let mut paths = Vec::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            let Some(path) = file.path() else { continue };
            let Some(path) = path.to_str() else {
                return Ok(Diff::Unknown);
            };
            paths.push(path.to_owned());
        }
    }
    paths.sort();
    paths.dedup();
    Ok(Diff::Paths(paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare mirror at `mirror` with one commit of `files` small files; returns the commit.
    fn mirror_with_commit(mirror: &Path, files: usize) -> String {
        let repo = Repository::init_bare(mirror).expect("bare repo");
        let mut tree = repo.treebuilder(None).expect("treebuilder");
        for i in 0..files {
            let blob = repo.blob(format!("file {i}\n").as_bytes()).expect("blob");
            tree.insert(format!("f{i}.txt"), blob, 0o100644)
                .expect("insert");
        }
        let tree = repo.find_tree(tree.write().expect("tree")).expect("tree");
        let who = git2::Signature::now("t", "t@example.invalid").expect("signature");
        repo.commit(None, &who, &who, "one", &tree, &[])
            .expect("commit")
            .to_string()
    }

    /// A commit of `parent`'s tree with `changes` applied: (path, Some((content, mode))) upserts,
    /// (path, None) removes.
    fn commit_changes(
        repo: &Repository,
        parent: Option<&str>,
        changes: &[(&str, Option<(&str, i32)>)],
    ) -> String {
        let parent = parent.map(|p| repo.find_commit(Oid::from_str(p).expect("oid")).expect("c"));
        let base = match &parent {
            Some(c) => c.tree().expect("tree"),
            None => repo
                .find_tree(repo.treebuilder(None).expect("tb").write().expect("empty"))
                .expect("tree"),
        };
        let mut update = git2::build::TreeUpdateBuilder::new();
        for (path, change) in changes {
            match change {
                Some((content, mode)) => {
                    let blob = repo.blob(content.as_bytes()).expect("blob");
                    let mode = match mode {
                        0o100755 => FileMode::BlobExecutable,
                        0o120000 => FileMode::Link,
                        _ => FileMode::Blob,
                    };
                    update.upsert(*path, blob, mode);
                }
                None => {
                    update.remove(*path);
                }
            }
        }
        let tree = repo
            .find_tree(update.create_updated(repo, &base).expect("update"))
            .expect("tree");
        let who = git2::Signature::now("t", "t@example.invalid").expect("signature");
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        repo.commit(None, &who, &who, "c", &tree, &parents)
            .expect("commit")
            .to_string()
    }

    /// Every entry beneath `dir`: path, mode, content (a link's target).
    fn listing(dir: &Path) -> Vec<(String, u32, String)> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in std::fs::read_dir(dir.join(&rel)).expect("read_dir") {
                let path = rel.join(entry.expect("entry").file_name());
                let meta = std::fs::symlink_metadata(dir.join(&path)).expect("meta");
                let content = if meta.is_file() {
                    std::fs::read_to_string(dir.join(&path)).expect("read")
                } else if meta.is_symlink() {
                    std::fs::read_link(dir.join(&path))
                        .expect("link")
                        .display()
                        .to_string()
                } else {
                    stack.push(path.clone());
                    String::new()
                };
                let name = path.display().to_string();
                out.push((name, meta.permissions().mode(), content));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_kept_tree_updated_to_a_commit_equals_a_fresh_checkout_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mirror = dir.path().join("m.git");
        let repo = Repository::init_bare(&mirror).expect("bare repo");
        let one = commit_changes(
            &repo,
            None,
            &[
                ("a.txt", Some(("a\n", 0o100644))),
                ("gone/only.txt", Some(("only\n", 0o100644))),
                ("keep/b.txt", Some(("b\n", 0o100644))),
                ("keep/c.txt", Some(("c\n", 0o100644))),
                ("run.sh", Some(("echo\n", 0o100644))),
                ("star[*].txt", Some(("glob\n", 0o100644))),
            ],
        );
        let two = commit_changes(
            &repo,
            Some(&one),
            &[
                ("a.txt", Some(("a2\n", 0o100644))),
                ("gone/only.txt", None),
                ("keep/c.txt", None),
                ("new/deep/d.txt", Some(("d\n", 0o100644))),
                ("run.sh", Some(("echo\n", 0o100755))),
                ("star[*].txt", Some(("glob 2\n", 0o100644))),
            ],
        );
        let bounds = CheckoutBounds {
            checkout_mb: 1,
            max_entries: 1000,
        };
        let stop = Stop::never();
        let (kept, fresh) = (dir.path().join("kept"), dir.path().join("fresh"));
        checkout_commit(&mirror, &one, &kept, &bounds, &stop).expect("checkout one");
        let mut seal = Seal::of(&kept).expect("sealed");
        let changed = update_kept(&mirror, &one, &two, &kept, &bounds, &stop).expect("updated");
        checkout_commit(&mirror, &two, &fresh, &bounds, &stop).expect("checkout two");
        assert_eq!(listing(&kept), listing(&fresh));
        assert!(!kept.join("gone").exists(), "an emptied directory goes");
        assert_eq!((changed.written, changed.removed), (4, 2));
        // Sealing what the update wrote and removed seals the tree as a whole walk does.
        seal.reseal(&kept, &changed.paths).expect("resealed");
        assert_eq!(seal, Seal::of(&kept).expect("sealed"));

        // A symlink is left to a fresh checkout.
        let three = commit_changes(&repo, Some(&two), &[("link", Some(("/etc", 0o120000)))]);
        let why = update_kept(&mirror, &two, &three, &kept, &bounds, &stop)
            .expect_err("a symlink is not updated in place");
        assert!(why.contains("symlink"), "{why}");
    }

    #[test]
    fn eviction_racing_a_checkout_leaves_a_held_mirror_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).expect("cache dir");
        let mirror = cache.join("m.git");
        let commit = mirror_with_commit(&mirror, 200);
        // As `resolve` leaves it: the build holds the mirror, no fetch lock is held.
        let hold = super::super::eviction::hold(&mirror, &Stop::never()).expect("hold");
        let bounds = CheckoutBounds {
            checkout_mb: 1,
            max_entries: 1000,
        };
        // The race as it was: an eviction (bound 0: every mirror is over it) between resolve
        // and checkout, when no fetch or read lock is held.
        assert_eq!(super::super::eviction::evict(&cache, 0), 0);
        // And evictions running all the while checkouts run and between them.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let evictions: Vec<_> = (0..2)
            .map(|_| {
                let (cache, done) = (cache.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut removed = 0;
                    while !done.load(std::sync::atomic::Ordering::SeqCst) {
                        removed += super::super::eviction::evict(&cache, 0);
                    }
                    removed
                })
            })
            .collect();
        for i in 0..10 {
            let dest = dir.path().join(format!("out{i}"));
            checkout_commit(&mirror, &commit, &dest, &bounds, &Stop::never())
                .expect("the held mirror is still there");
            assert!(dest.join("f199.txt").is_file());
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let removed: usize = evictions
            .into_iter()
            .map(|t| t.join().expect("eviction thread"))
            .sum();
        assert_eq!(removed, 0, "a held mirror is never evicted");
        assert!(mirror.is_dir());

        drop(hold);
        assert_eq!(
            super::super::eviction::evict(&cache, 0),
            1,
            "released: it goes"
        );
        assert!(!mirror.exists());
        // A build that takes the hold after eviction gets a fresh (re-fetched) mirror.
        let _hold = super::super::eviction::hold(&mirror, &Stop::never()).expect("hold again");
    }

    #[tokio::test]
    async fn a_mirror_over_the_cache_bound_is_a_named_service_fault_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mirror = dir.path().join("m.git");
        mirror_with_commit(&mirror, 20);
        let metrics = Metrics::new();
        let limits = GitLimits {
            checkout_mb: 1,
            fetch_mb: 1,
            stall_secs: 1,
        };
        let mirrors = GitMirrors::new(
            dir.path().to_owned(),
            1024,
            limits,
            NetworkPolicy::allowing(Vec::new()),
        )
        .counting(metrics.clone());
        let spec = SourceSpec {
            remote: url::Url::parse("https://git.example.invalid/acme/app.git").expect("url"),
            username: "git".into(),
            token: None,
            git_ref: None,
            ref_kind: Default::default(),
        };
        let err = mirrors
            .ensure_fits_cache(&mirror, &spec)
            .await
            .expect_err("over 1 KiB");
        assert_eq!(err.classify(), crate::error::Fault::Service);
        let reason = err.chain();
        assert!(
            reason.contains("git_cache_max_mb") && reason.contains("acme/app.git"),
            "{reason}"
        );
        assert_eq!(metrics.mirror_over_cache_bound.get(), 1);
    }

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
                let bounds = CheckoutBounds {
                    checkout_mb: 1,
                    max_entries: 100,
                };
                std::thread::spawn(move || {
                    checkout_commit(&mirror, &commit, &dest, &bounds, &Stop::never()).map(|()| dest)
                })
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
