//! https and git:// remotes connect to exactly the address the policy checked. The policy's
//! resolver is replaced so that "localhost" is 127.0.0.3, where the git host listens, while
//! the system's resolver says 127.0.0.1 / ::1, where listeners on the same port count what
//! reaches them: nothing may. TLS names the URL's host (SNI, certificate), and the host's
//! certificate comes from a test CA given as `request.git_ca_file` would.
//! Only 127.0.0.0/8 and ::1 are ever connected to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use image_builder::error::BuildError;
use image_builder::ports::{SourceFetcher, SourceSpec};
use image_builder::source::{ExtraRoots, GitLimits, GitMirrors, Lookup, NetworkPolicy};
use tokio::net::TcpListener;

use crate::egress::ctx_for;
use crate::support::git_server::git_daemon;
use crate::support::tls_git::{Tally, TestCa, TlsGitHost};
use crate::support::{GitServer, RepoFixture};

/// Bounds each fetch, so one that never returns fails the test instead of hanging the run.
const OUTER: Duration = Duration::from_secs(120);
const STALL_SECS: u64 = 3;
const PINNED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Resolves every name to `ips` (on the asked port).
fn lookup(ips: &[Ipv4Addr]) -> Lookup {
    let ips = ips.to_vec();
    Arc::new(move |_, port| {
        Ok(ips
            .iter()
            .map(|ip| SocketAddr::new(IpAddr::V4(*ip), port))
            .collect())
    })
}

fn mirrors(dir: &std::path::Path, policy: NetworkPolicy) -> GitMirrors {
    let limits = GitLimits {
        checkout_mb: 64,
        fetch_mb: 64,
        stall_secs: STALL_SECS,
    };
    GitMirrors::new(dir.join("cache"), u64::MAX, limits, policy)
}

fn spec(url: &str, token: Option<&str>) -> SourceSpec {
    SourceSpec {
        remote: url::Url::parse(url).expect("url"),
        username: "test".into(),
        token: token.map(|t| t.to_owned().into()),
        git_ref: None,
        ref_kind: Default::default(),
    }
}

/// A listener on 127.0.0.3 and, on the same port, listeners counting connections on
/// 127.0.0.1 and ::1 (where the system's resolver sends "localhost").
async fn pinned_and_decoys() -> (TcpListener, Vec<Tally>) {
    for _ in 0..20 {
        let pinned = TcpListener::bind((PINNED, 0))
            .await
            .expect("bind 127.0.0.3");
        let port = pinned.local_addr().expect("addr").port();
        let Ok(v4) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await else {
            continue;
        };
        let mut decoys = vec![Tally::start(v4)];
        if let Ok(v6) = TcpListener::bind(("::1", port)).await {
            decoys.push(Tally::start(v6));
        }
        return (pinned, decoys);
    }
    panic!("no port free on both 127.0.0.3 and 127.0.0.1");
}

fn assert_untouched(decoys: &[Tally]) {
    for decoy in decoys {
        assert_eq!(decoy.connections(), 0, "a connection went around the check");
    }
}

/// A git server with `repo` (one commit) behind TLS on 127.0.0.3 for "localhost".
struct Host {
    git: GitServer,
    fixture: RepoFixture,
    ca: TestCa,
    tls: TlsGitHost,
    decoys: Vec<Tally>,
}

impl Host {
    async fn start(repo: &str, names: &[&str]) -> Self {
        let git = GitServer::start().await;
        let fixture = RepoFixture::create(git.root.path(), repo);
        fixture.commit(&[("README", "hi\n")], "first");
        fixture.push();
        let ca = TestCa::new();
        let (listener, decoys) = pinned_and_decoys().await;
        let backend = git.base_url.trim_start_matches("http://").to_owned();
        let tls = TlsGitHost::start(listener, &ca, names, backend).await;
        Self {
            git,
            fixture,
            ca,
            tls,
            decoys,
        }
    }

    fn url(&self, repo: &str) -> String {
        format!("https://localhost:{}/{repo}.git", self.tls.addr.port())
    }

    fn roots(&self) -> ExtraRoots {
        ExtraRoots::from_pem_file(&self.ca.pem_file()).expect("test CA")
    }

    /// Loopback allowed, "localhost" resolving to 127.0.0.3, the test CA trusted.
    fn mirrors(&self, dir: &std::path::Path) -> GitMirrors {
        let policy = crate::git_limits::loopback().resolving_with(lookup(&[PINNED]));
        mirrors(dir, policy).trusting(self.roots())
    }
}

async fn fetch(
    mirrors: &GitMirrors,
    spec: &SourceSpec,
    dir: &std::path::Path,
    time: Duration,
) -> Result<String, BuildError> {
    let ctx = ctx_for(dir, time);
    tokio::time::timeout(OUTER, mirrors.resolve(spec, &ctx))
        .await
        .expect("the fetch returned")
        .map(|checkout| checkout.commit)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_fetch_reaches_only_the_checked_address_and_tls_names_the_urls_host() {
    let host = Host::start("acme/pinned", &["localhost"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = host.mirrors(dir.path());
    let spec = spec(&host.url("acme/pinned"), None);

    let first = fetch(&mirrors, &spec, dir.path(), OUTER).await;
    assert_eq!(first.expect("fetch"), host.fixture.head());
    // Again, incrementally, after a push.
    let second = host.fixture.commit(&[("b.txt", "b\n")], "second");
    host.fixture.push();
    let again = fetch(&mirrors, &spec, dir.path(), OUTER).await;
    assert_eq!(again.expect("second fetch"), second);

    assert!(host.tls.connections() > 0, "nothing reached 127.0.0.3");
    let names = host.tls.server_names();
    assert!(
        names.iter().all(|n| n.as_deref() == Some("localhost")),
        "every handshake names the URL's host: {names:?}"
    );
    assert_untouched(&host.decoys);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_https_repo_gets_the_token_and_refusals_are_told_apart() {
    let host = Host::start("acme/private", &["localhost"]).await;
    host.git.make_private("acme/private", "s3cret-token");
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = host.mirrors(dir.path());
    let url = host.url("acme/private");

    let with_token = fetch(
        &mirrors,
        &spec(&url, Some("s3cret-token")),
        dir.path(),
        OUTER,
    )
    .await;
    assert_eq!(with_token.expect("fetch"), host.fixture.head());

    let without = fetch(&mirrors, &spec(&url, None), dir.path(), OUTER).await;
    assert!(
        matches!(&without, Err(BuildError::AuthRefused(m)) if m.contains("has no token")),
        "{without:?}"
    );
    let wrong = fetch(&mirrors, &spec(&url, Some("wrong")), dir.path(), OUTER).await;
    assert!(
        matches!(&wrong, Err(BuildError::AuthRefused(m)) if m.contains("refused the token")),
        "{wrong:?}"
    );
    assert_untouched(&host.decoys);
}

/// libgit2 1.9's own https waited forever when a certificate was refused behind a proxy; this
/// transport fails such a fetch at once.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_or_misnamed_certificate_fails_the_fetch() {
    let host = Host::start("acme/cert", &["localhost"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = spec(&host.url("acme/cert"), None);

    let policy = crate::git_limits::loopback().resolving_with(lookup(&[PINNED]));
    let untrusting = mirrors(dir.path(), policy);
    let untrusted = fetch(&untrusting, &spec, dir.path(), OUTER).await;
    assert!(
        matches!(&untrusted, Err(BuildError::GitUnavailable(m)) if m.contains("certificate")),
        "{untrusted:?}"
    );

    let misnamed = Host::start("acme/cert", &["git.other.test"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = self::spec(&misnamed.url("acme/cert"), None);
    let wrong_name = fetch(&misnamed.mirrors(dir.path()), &spec, dir.path(), OUTER).await;
    assert!(
        matches!(&wrong_name, Err(BuildError::GitUnavailable(m)) if m.contains("certificate")),
        "{wrong_name:?}"
    );
    assert_untouched(&host.decoys);
    assert_untouched(&misnamed.decoys);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_https_host_is_cut_at_the_stall_bound_and_at_the_deadline() {
    let host = Host::start("acme/silent", &["localhost"]).await;
    host.tls.silent.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = host.mirrors(dir.path());
    let spec = spec(&host.url("acme/silent"), None);

    let started = Instant::now();
    let stalled = fetch(&mirrors, &spec, dir.path(), OUTER).await;
    assert!(
        matches!(&stalled, Err(BuildError::GitUnavailable(m)) if m.contains("build.limits.git_stall_secs")),
        "{stalled:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(STALL_SECS),
        "cut before the bound"
    );

    // A deadline before the stall bound wins.
    let late = fetch(&mirrors, &spec, dir.path(), Duration::from_secs(1)).await;
    assert!(matches!(late, Err(BuildError::TimedOut(_))), "{late:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_resolving_to_a_disallowed_network_is_refused_before_any_connection() {
    // 127.0.0.3 is allowed, 127.0.0.4 is not; the name resolves to both.
    let allowed = TcpListener::bind((PINNED, 0))
        .await
        .expect("bind 127.0.0.3");
    let port = allowed.local_addr().expect("addr").port();
    let refused_ip = Ipv4Addr::new(127, 0, 0, 4);
    let refused = TcpListener::bind((refused_ip, port))
        .await
        .expect("bind 127.0.0.4");
    let tallies = [Tally::start(allowed), Tally::start(refused)];
    let policy = NetworkPolicy::allowing(vec!["127.0.0.3/32".parse().expect("cidr")])
        .resolving_with(lookup(&[PINNED, refused_ip]));
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path(), policy);

    for scheme in ["https", "git"] {
        let url = format!("{scheme}://git.example.test:{port}/acme/x.git");
        let result = fetch(&mirrors, &spec(&url, None), dir.path(), OUTER).await;
        let Err(BuildError::Rejected(rejection)) = &result else {
            panic!("{url}: expected a refusal, got {result:?}");
        };
        assert_eq!(rejection.field, "repo", "{rejection:?}");
        for part in [
            "git.example.test",
            "127.0.0.4",
            "a loopback address",
            "request.allowed_networks",
        ] {
            assert!(rejection.reason.contains(part), "{part}: {rejection:?}");
        }
    }
    assert_untouched(&tallies);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_daemon_fetch_reaches_only_the_checked_address() {
    let git = GitServer::start().await;
    let fixture = RepoFixture::create(git.root.path(), "acme/daemon");
    fixture.commit(&[("README", "hi\n")], "first");
    fixture.push();
    let (listener, decoys) = pinned_and_decoys().await;
    let port = listener.local_addr().expect("addr").port();
    // git daemon takes the port over (a gap of a few milliseconds).
    drop(listener);
    let _daemon = git_daemon(git.root.path(), &PINNED.to_string(), port).await;
    let policy = crate::git_limits::loopback().resolving_with(lookup(&[PINNED]));
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path(), policy);
    let spec = spec(&format!("git://localhost:{port}/acme/daemon.git"), None);

    let fetched = fetch(&mirrors, &spec, dir.path(), OUTER).await;
    assert_eq!(fetched.expect("fetch"), fixture.head());
    assert_untouched(&decoys);
}
