//! The remote's ref listing, and one bounded fetch into a mirror. While data flows, the transfer callbacks stop it on cancel,
//! at the build's deadline and past `build.limits.fetch_mb`; a host that goes silent is cut off
//! by the pinned transports (https, git://) or libgit2's socket timeout (http, set once at start
//! by `configure_timeouts`), both `build.limits.git_stall_secs`. An aborted fetch leaves the mirror as it was: libgit2 deletes the
//! partial pack and moves no ref.

use std::cell::RefCell;
use std::sync::{Arc, Once};
use std::time::Duration;

use git2::{
    AutotagOption, ConfigLevel, Cred, CredentialType, Direction, ErrorClass, ErrorCode,
    FetchOptions, FetchPrune, ProxyOptions, RemoteCallbacks, RemoteRedirect, Repository,
};
use secrecy::ExposeSecret;

use super::GitLimits;
use super::credentials::{AuthSeen, Token};
use super::egress::{CONNECT_TIMEOUT, Route};
use super::refs::Listing;
use super::stop::Stop;
use crate::error::{BuildError, GitError};
use crate::ports::SourceSpec;

const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// libgit2's depth for "all of the history" (`GIT_FETCH_DEPTH_UNSHALLOW`).
const UNSHALLOW: i32 = i32::MAX;

/// What one fetch asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FetchPlan {
    /// One ref (`refs/heads/main`) into the same name, or every branch and tag.
    refname: Option<String>,
    depth: Depth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Depth {
    /// Only the wanted commit: its tree, none of its history.
    Tip,
    /// The wanted commit and its history down to the commits the mirror's refs name, which
    /// become the mirror's shallow boundary. For the usual push, which extends a ref the mirror
    /// holds, this is the same few objects as `Tip` in one request instead of two: libgit2
    /// spends a round of its own on a depth. A pack of more than `max_objects` (a rewritten
    /// history brings all of it) is refused. Only the listing's connection fetches so (`list`),
    /// and whatever fails there is fetched again on a connection of its own, the tip alone.
    OntoTips { max_objects: u32 },
    /// As deep as the history the mirror already has (all of it, unless it is shallow).
    AsIs,
    /// All of the history: a shallow mirror is made whole.
    Whole,
}

impl FetchPlan {
    /// The ref a request resolved to in the listing; a mirror that holds no history yet (or
    /// only tips) gets just the tip, when the remote can send that (`shallow`: libgit2's
    /// file:// transport cannot). `onto_tips`: a shallow mirror that holds the ref may take it
    /// as `Depth::OntoTips` (for a fetch over the listing's connection, see `list`).
    pub(super) fn one_ref(
        refname: &str,
        mirror: &Repository,
        shallow: bool,
        onto_tips: bool,
    ) -> Self {
        let no_refs = mirror
            .references()
            .map_or(true, |mut refs| refs.next().is_none());
        let depth = if !shallow || !(mirror.is_shallow() || no_refs) {
            Depth::AsIs
        } else if let Some(max_objects) = onto_tips
            .then(|| tip_fetch_bound(mirror, refname))
            .flatten()
        {
            Depth::OntoTips { max_objects }
        } else {
            Depth::Tip
        };
        Self {
            refname: Some(refname.to_owned()),
            depth,
        }
    }

    /// Every branch and tag with their history: a commit that no ref is known to name could
    /// be anywhere in it.
    pub(super) fn everything() -> Self {
        Self {
            refname: None,
            depth: Depth::Whole,
        }
    }

    /// The whole history of one ref (a shallow mirror lacks an earlier commit of it).
    pub(super) fn deepen(refname: &str) -> Self {
        Self {
            refname: Some(refname.to_owned()),
            depth: Depth::Whole,
        }
    }
}

/// How many objects a fetch of `refname`'s next commit alone could bring at most, judged by
/// the commit the mirror holds for it: every object of its tree, twice over, and some slack.
/// A huge tree is counted up to `COUNTED` entries only, so the count stays cheap (a push
/// never brings that many). None when the mirror has no such ref (or no whole tree of it).
fn tip_fetch_bound(mirror: &Repository, refname: &str) -> Option<u32> {
    const SLACK: u32 = 256;
    const COUNTED: u32 = 50_000;
    let tree = mirror
        .find_reference(refname)
        .ok()?
        .peel_to_commit()
        .ok()?
        .tree()
        .ok()?;
    let mut objects: u32 = 1;
    let walked = tree.walk(git2::TreeWalkMode::PreOrder, |_, _| {
        objects = objects.saturating_add(1);
        if objects < COUNTED {
            git2::TreeWalkResult::Ok
        } else {
            git2::TreeWalkResult::Abort
        }
    });
    if walked.is_err() && objects < COUNTED {
        return None;
    }
    Some(objects.saturating_mul(2).saturating_add(SLACK))
}

/// What the mirror needs before `plan`'s fetch.
fn prepare(repo: &Repository, plan: &FetchPlan) -> Result<(), BuildError> {
    match plan.depth {
        Depth::OntoTips { .. } => mark_tips_shallow(repo),
        Depth::Tip | Depth::AsIs | Depth::Whole => Ok(()),
    }
}

/// Makes the commits the mirror's refs name its shallow boundary (`Depth::OntoTips`): libgit2
/// then offers the server those commits alone, and one request settles the fetch (it offers
/// its history in rounds of 20). Commits past the boundary stay in the mirror; only its
/// history walk stops there. Written under the mirror's exclusive lock, replacing the file
/// whole (libgit2 rereads it by content before each fetch).
fn mark_tips_shallow(repo: &Repository) -> Result<(), BuildError> {
    let mut tips: Vec<String> = repo
        .references()
        .map_err(GitError::git("list the mirror's refs"))?
        .flatten()
        .filter_map(|r| r.peel_to_commit().ok().map(|c| c.id().to_string()))
        .collect();
    tips.sort_unstable();
    tips.dedup();
    let mut text = tips.join("\n");
    text.push('\n');
    let path = repo.path().join("shallow");
    let written = path.with_extension("new");
    std::fs::write(&written, text)
        .and_then(|()| std::fs::rename(&written, &path))
        .map_err(GitError::io("write the mirror's shallow boundary"))?;
    Ok(())
}

/// Fetches what `plan` asks for along `route`; returns the remote's default branch
/// (`refs/heads/...`).
pub(super) fn fetch(
    repo: &Repository,
    spec: &SourceSpec,
    plan: &FetchPlan,
    limits: &GitLimits,
    stop: &Stop,
    route: &Route,
) -> Result<Option<String>, BuildError> {
    let mut remote = repo
        .remote_anonymous(route.fetch_url.as_str())
        .map_err(GitError::git("set up the remote"))?;
    // Offered to the URL libgit2 was given: for an http remote the relay's (which forwards
    // only to the checked remote host), otherwise the remote itself.
    let token = Arc::new(Token::new(spec, &route.fetch_url));
    // Why a callback aborted the fetch, if one did.
    let aborted: RefCell<Option<BuildError>> = RefCell::new(None);
    prepare(repo, plan)?;
    let (mut opts, refspecs) = fetch_options(repo, spec, plan, limits, stop, &token, &aborted);
    // The transport libgit2 creates on this thread connects to the checked addresses.
    let entered = route.enter(&token);
    let fetched = remote.fetch(&refspecs, Some(&mut opts), None);
    drop(entered);
    if let Err(err) = fetched {
        return Err(failure(err, &aborted, &token, route, stop, limits, spec));
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

/// The options and refspecs of one fetch: bounded by `limits` and `stop` (a callback that
/// aborts says why in `aborted`), offering `token`.
fn fetch_options<'a>(
    repo: &Repository,
    spec: &'a SourceSpec,
    plan: &FetchPlan,
    limits: &'a GitLimits,
    stop: &'a Stop,
    token: &'a Token,
    aborted: &'a RefCell<Option<BuildError>>,
) -> (FetchOptions<'a>, Vec<String>) {
    let mut callbacks = offering(token);
    let max_bytes = limits.fetch_bytes();
    let max_objects = match plan.depth {
        Depth::OntoTips { max_objects } => usize::try_from(max_objects).unwrap_or(usize::MAX),
        _ => usize::MAX,
    };
    callbacks.transfer_progress(move |progress| {
        // Known from the pack's header, before its objects come: no reason to record, the
        // caller fetches the tip alone.
        if progress.total_objects() > max_objects {
            return false;
        }
        let received = u64::try_from(progress.received_bytes()).unwrap_or(u64::MAX);
        let too_big = (received > max_bytes).then(|| {
            BuildError::LimitExceeded(format!(
                "{} sent more than build.limits.fetch_mb = {}",
                spec.remote, limits.fetch_mb
            ))
        });
        keep_going(aborted, stop.stopped().or(too_big))
    });
    // A host may send progress messages only, forever: that is no reason to outlive the build.
    callbacks.sideband_progress(move |_| keep_going(aborted, stop.stopped()));
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks)
        .prune(FetchPrune::On)
        .update_fetchhead(false);
    let refspecs: Vec<String> = match &plan.refname {
        Some(refname) => {
            // The ref was resolved from the listing: other tags are not needed.
            opts.download_tags(AutotagOption::None);
            vec![format!("+{refname}:{refname}")]
        }
        None => {
            opts.download_tags(AutotagOption::All);
            REFSPECS.map(str::to_owned).to_vec()
        }
    };
    match plan.depth {
        Depth::Tip => {
            opts.depth(1);
        }
        Depth::Whole if repo.is_shallow() => {
            opts.depth(UNSHALLOW);
        }
        Depth::Whole | Depth::AsIs | Depth::OntoTips { .. } => {}
    }
    // No proxy from the environment or git config, and no redirect around the relay (the
    // pinned transports follow only those that stay on the checked host).
    opts.proxy_options(ProxyOptions::new())
        .follow_redirects(RemoteRedirect::None);
    (opts, refspecs)
}

/// The remote's refs and default branch, from one connection (for http, one request). When
/// `then` answers with a plan (and a guard held until it is done: the mirror's lock), that
/// fetch goes over the same connection: a ref that moved costs no second listing. `repo` is
/// the mirror: its config keeps libgit2 from following redirects, which would go around the
/// relay (see `forbid_redirects`).
pub(super) fn list<G>(
    repo: &Repository,
    spec: &SourceSpec,
    limits: &GitLimits,
    stop: &Stop,
    route: &Route,
    then: impl FnOnce(&Repository, &Listing) -> Result<Option<(FetchPlan, G)>, BuildError>,
) -> Result<(Listing, bool), BuildError> {
    let mut remote = repo
        .remote_anonymous(route.fetch_url.as_str())
        .map_err(GitError::git("set up the remote"))?;
    let token = Arc::new(Token::new(spec, &route.fetch_url));
    let aborted = RefCell::new(None);
    let entered = route.enter(&token);
    let connected = remote.connect_auth(
        Direction::Fetch,
        Some(offering(&token)),
        Some(ProxyOptions::new()),
    );
    let mut connection =
        connected.map_err(|err| failure(err, &aborted, &token, route, stop, limits, spec))?;
    let listed = (|| {
        let mut listing = Listing {
            head: connection
                .default_branch()
                .ok()
                .and_then(|b| b.as_str().ok().map(str::to_owned)),
            ..Listing::default()
        };
        for head in connection.list()? {
            listing.refs.insert(head.name().to_owned(), head.oid());
        }
        Ok(listing)
    })();
    let listing =
        listed.map_err(|err| failure(err, &aborted, &token, route, stop, limits, spec))?;
    let Some((plan, _guard)) = then(repo, &listing)? else {
        // Dropping the connection disconnects (for git://, a flush; for http, nothing).
        return Ok((listing, false));
    };
    prepare(repo, &plan)?;
    let (mut opts, refspecs) = fetch_options(repo, spec, &plan, limits, stop, &token, &aborted);
    // Connected already: libgit2 fetches over this connection.
    let fetched = connection.remote().fetch(&refspecs, Some(&mut opts), None);
    drop(connection);
    drop(entered);
    if let Err(err) = fetched {
        if let Some(why) = route
            .refused()
            .or_else(|| aborted.take())
            .or_else(|| stop.stopped())
        {
            return Err(why);
        }
        // The ref may have moved since it was listed (a server may refuse a want that is no
        // longer a tip), or a fetch onto the mirror's tips was refused (too much history): the
        // caller fetches again on a connection of its own, the tip alone.
        tracing::info!(
            "fetching over the listing's connection failed: {}",
            err.message()
        );
        return Ok((listing, false));
    }
    if let Some(branch) = &listing.head {
        let _ = repo.set_head(branch);
    }
    Ok((listing, true))
}

/// Keeps libgit2 from following http redirects when it only lists (`connect` has no option
/// for it; the fetch sets it in its options). Written once, when the mirror is created.
pub(super) fn forbid_redirects(repo: &Repository) -> Result<(), BuildError> {
    let mut config = repo
        .config()
        .map_err(GitError::git("open the mirror's config"))?;
    config
        .set_bool(REDIRECTS_KEY, false)
        .map_err(GitError::git("write the mirror's config"))?;
    Ok(())
}

/// Whether `forbid_redirects` was done.
pub(super) fn redirects_forbidden(repo: &Repository) -> bool {
    let Ok(config) = repo.config() else {
        return false;
    };
    let local = config.open_level(ConfigLevel::Local);
    local.and_then(|c| c.get_bool(REDIRECTS_KEY)) == Ok(false)
}

const REDIRECTS_KEY: &str = "http.followRedirects";

/// Callbacks that offer `token` when libgit2's http transport asks (the pinned https
/// transport asks `token` itself).
fn offering(token: &Token) -> RemoteCallbacks<'_> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(|url, _user_from_url, allowed| {
        let plaintext = allowed.contains(CredentialType::USER_PASS_PLAINTEXT);
        let (user, secret) = token.ask(url, plaintext).map_err(git2::Error::from_str)?;
        Cred::userpass_plaintext(user, secret.expose_secret())
    });
    callbacks
}

/// Why talking to the remote failed: the relay's refusal, a stop, or libgit2's error mapped.
fn failure(
    err: git2::Error,
    aborted: &RefCell<Option<BuildError>>,
    token: &Token,
    route: &Route,
    stop: &Stop,
    limits: &GitLimits,
    spec: &SourceSpec,
) -> BuildError {
    if let Some(why) = route.refused() {
        return why;
    }
    if let Some(why) = aborted.take().or_else(|| stop.stopped()) {
        return why;
    }
    fetch_error(err, token.seen(), limits, spec)
}

/// Records why the fetch must stop (the first reason wins) and tells libgit2 whether to go on.
fn keep_going(aborted: &RefCell<Option<BuildError>>, stop: Option<BuildError>) -> bool {
    let Some(why) = stop else { return true };
    aborted.borrow_mut().get_or_insert(why);
    false
}

/// Maps a failed fetch to whose fault it is. The URL is in the message (it has no credentials).
fn fetch_error(
    err: git2::Error,
    seen: AuthSeen,
    limits: &GitLimits,
    spec: &SourceSpec,
) -> BuildError {
    let url = &spec.remote;
    let msg = err.message().to_ascii_lowercase();
    match seen {
        AuthSeen::NoToken => {
            return BuildError::AuthRefused(format!(
                "{url} needs credentials and the request has no token"
            ));
        }
        AuthSeen::Refused => {
            return BuildError::AuthRefused(format!("{url} refused the token"));
        }
        AuthSeen::OtherHost => {
            return BuildError::AuthRefused(format!(
                "{url} redirected to another host, which asked for credentials; the token is \
                 only offered to {}",
                origin(&spec.remote)
            ));
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
    // libgit2's socket timeout: "could not read from socket: timed out" (connecting is "failed
    // to connect ...", also "timed out", but bounded by CONNECT_TIMEOUT).
    if msg.contains("timed out") && !msg.contains("connect") {
        let secs = limits.stall_secs;
        return BuildError::GitUnavailable(format!(
            "{url} sent nothing for {secs} s (build.limits.git_stall_secs = {secs})"
        ));
    }
    match err.class() {
        ErrorClass::Net | ErrorClass::Os | ErrorClass::Ssl | ErrorClass::Http => {
            BuildError::GitUnavailable(format!("{url}: {}", err.message()))
        }
        _ => GitError::Git {
            what: format!("fetch {url}"),
            source: err,
        }
        .into(),
    }
}

/// `scheme://host:port` of a URL, for messages.
fn origin(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// Sets libgit2's socket timeouts, which are process-wide: a read or write that waits longer
/// than `stall` fails (http reads through libgit2's socket stream; https and git:// go through
/// the pinned transports, which bound each fetch themselves). Only the first call in a process
/// takes effect.
#[allow(unsafe_code)]
pub(super) fn configure_timeouts(stall: Duration) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let millis = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1);
        let (connect, stall) = (millis(CONNECT_TIMEOUT.min(stall)), millis(stall));
        // SAFETY: libgit2 global options, written once; every caller returns only after the
        // write, and callers do so before their git2 work (the worker at start).
        let result = unsafe {
            git2::opts::set_server_connect_timeout_in_milliseconds(connect)
                .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(stall))
        };
        if let Err(e) = result {
            tracing::warn!("failed to set git network timeouts: {e}");
        }
    });
}
