//! The source port: which remote to fetch (from the request and connector config), and the
//! trait that resolves a ref and checks a commit out.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use secrecy::SecretString;
use url::Url;

use super::BuildCtx;
use crate::config::ConnectorSettings;
use crate::error::BuildError;
use crate::request::{BuildRequest, GitRef, RefKind, Rejection, RepoSpec};

/// What to fetch. `remote` never carries credentials; the token goes through git2 callbacks.
#[derive(Clone)]
pub struct SourceSpec {
    pub remote: Url,
    pub username: String,
    pub token: Option<SecretString>,
    pub git_ref: Option<GitRef>,
    /// How `git_ref` is read (a tag only, the newest release...).
    pub ref_kind: RefKind,
}

/// The commit a ref resolved to and how it was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub commit: String,
    /// Branch or tag name (or the SHA itself when a SHA was requested).
    pub ref_name: String,
    pub is_default_branch: bool,
    /// The commit's committer time (seconds since the epoch): the modification time of files
    /// in layers the worker writes itself, so one commit always gives the same bytes.
    pub committed_at: i64,
    /// Keeps what later calls for this commit read (the git adapter's mirror) from being removed
    /// while this value lives: the pipeline holds it until the build ends.
    pub hold: SourceHold,
}

/// An adapter's claim on what a resolved commit needs, released when the last clone is
/// dropped. Not part of the value: two checkouts of one commit are equal whatever they hold.
#[derive(Clone, Default)]
pub struct SourceHold(Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>);

impl SourceHold {
    pub fn new(guard: impl std::any::Any + Send + Sync) -> Self {
        Self(Some(std::sync::Arc::new(guard)))
    }
}

impl std::fmt::Debug for SourceHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SourceHold(held)"
        } else {
            "SourceHold(none)"
        })
    }
}

impl PartialEq for SourceHold {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SourceHold {}

#[async_trait]
pub trait SourceFetcher: Send + Sync {
    /// Fetches `spec.remote` (incrementally) and resolves the requested ref to a commit.
    async fn resolve(&self, spec: &SourceSpec, ctx: &BuildCtx) -> Result<Checkout, BuildError>;

    /// As `resolve`, sending `fetching` the commit the ref names when the mirror lacks it,
    /// before fetching it: what depends on the commit alone can run beside the fetch. Nothing
    /// is sent by default (nor when no fetch is needed).
    async fn resolve_telling(
        &self,
        spec: &SourceSpec,
        ctx: &BuildCtx,
        fetching: tokio::sync::oneshot::Sender<String>,
    ) -> Result<Checkout, BuildError> {
        drop(fetching);
        self.resolve(spec, ctx).await
    }

    /// Paths (from the repository root) that differ between two commits of the mirror, or None
    /// when either commit is not there (or a path is not UTF-8). A mirror fetched shallow is
    /// deepened first when `from` is not in it (so `ctx` bounds a fetch).
    async fn changed_paths(
        &self,
        spec: &SourceSpec,
        from: &str,
        to: &str,
        ctx: &BuildCtx,
    ) -> Result<Option<Vec<String>>, BuildError>;

    /// Writes the tree of `commit` (already fetched by `resolve`) into `dest`.
    async fn checkout(
        &self,
        spec: &SourceSpec,
        commit: &str,
        dest: &Path,
        ctx: &BuildCtx,
    ) -> Result<(), BuildError>;

    /// `dir`, the checkout of `commit` a build succeeded with, may serve the repository's next
    /// build (which then writes only what changed). By default it goes with the work dir.
    fn keep_checkout(&self, _spec: &SourceSpec, _commit: &str, _dir: &Path) {}
}

impl SourceSpec {
    /// Turns the request's repo + connector into a fetchable URL and credential user name.
    pub fn for_request(
        req: &BuildRequest,
        connectors: &BTreeMap<String, ConnectorSettings>,
    ) -> Result<Self, BuildError> {
        let name = req.connector.as_str();
        let connector = connectors.get(name).ok_or_else(|| {
            Rejection::new(
                "connector",
                format!("connector {name} is not configured here"),
            )
        })?;
        let remote = match &req.repo {
            RepoSpec::Url(url) => url.clone(),
            RepoSpec::Path(path) => {
                let base = connector.base_url.trim_end_matches('/');
                if base.is_empty() {
                    return Err(Rejection::new(
                        "repo",
                        format!("connector {name} has no base URL configured; send a full URL"),
                    )
                    .into());
                }
                Url::parse(&format!("{base}/{path}.git")).map_err(|e| {
                    BuildError::Internal(anyhow::anyhow!(
                        "failed to build a URL from connectors.{name}.base_url: {e}"
                    ))
                })?
            }
        };
        Ok(Self {
            remote,
            username: connector.username.clone(),
            token: req.token.clone(),
            git_ref: req.git_ref.clone(),
            ref_kind: req.ref_kind,
        })
    }
}
