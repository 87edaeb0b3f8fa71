//! The docker engine (bollard, Docker Engine API) end to end. These hosts run no dockerd, so each
//! test starts podman's Docker-compatible service on a socket of its own. Its /build endpoint
//! ignores the isolation setting and so cannot run RUN steps here (crun cannot set up cgroups
//! on these kernels): the Dockerfiles below only COPY.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image_builder::error::Fault;
use image_builder::events::{BuildFailed, Event, ImageUpdated};
use serde_json::json;

use crate::support::{
    GitServer, RepoFixture, Stack, Worker, assert_secret_absent, registry_image, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const PODMAN_HINT: &str = "the docker engine tests need podman (`apt-get install -y podman`, or \
                           `scripts/services.sh up`, which also seeds localhost/busybox)";

/// `podman system service` on `<tempdir>/podman.sock`, killed on drop. Its registries.conf
/// marks the test registry insecure: the compat push API has no TLS switch of its own.
struct PodmanService {
    child: Child,
    dir: tempfile::TempDir,
    /// `unix://<socket>`, as `build.docker_host` takes it.
    host: String,
}

impl PodmanService {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("service dir");
        let conf = dir.path().join("registries.conf");
        std::fs::write(
            &conf,
            "[[registry]]\nlocation = \"127.0.0.1:5000\"\ninsecure = true\n",
        )
        .expect("registries.conf");
        let socket = dir.path().join("podman.sock");
        let log = std::fs::File::create(dir.path().join("service.log")).expect("service log");
        let host = format!("unix://{}", socket.display());
        let child = Command::new("podman")
            .args(["system", "service", "--time=0", &host])
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("podman does not start ({e}); {PODMAN_HINT}"));
        let service = Self { child, dir, host };
        service.wait_until_listening(&socket).await;
        service
    }

    async fn wait_until_listening(&self, socket: &PathBuf) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "podman's API service did not listen on {} within 20 s; {PODMAN_HINT}\n{}",
            socket.display(),
            std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
        );
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn image_exists(name: &str) -> bool {
    Command::new("podman")
        .args(["image", "exists", name])
        .status()
        .unwrap_or_else(|e| panic!("podman does not run ({e}); {PODMAN_HINT}"))
        .success()
}

fn expect_image(event: Event, worker: &Worker) -> ImageUpdated {
    match event {
        Event::ImageUpdated(updated) => updated,
        other => panic!("expected image.updated, got {other:?}\n{}", worker.log()),
    }
}

fn expect_failed(event: Event, worker: &Worker) -> BuildFailed {
    match event {
        Event::Failed(failed) | Event::Rejected(failed) => failed,
        other => panic!("expected build.failed, got {other:?}\n{}", worker.log()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_engine_builds_pushes_and_reports_user_faults() {
    let service = PodmanService::start().await;
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/engine-api");
    let commit = repo.commit(
        &[
            (
                "Dockerfile",
                "FROM localhost/busybox:latest\nARG GREETING\nCOPY hello.txt /hello.txt\n",
            ),
            ("hello.txt", "hello\n"),
            (
                "broken/Dockerfile",
                "FROM localhost/busybox:latest\nCOPY missing.txt /missing.txt\n",
            ),
            // The docker CLI leaves out what .dockerignore excludes; so does this engine, so
            // the daemon never gets the .env and the COPY fails as it does with `docker build`.
            ("ignored/.dockerignore", "# local secrets\n.env\n"),
            ("ignored/.env", "PASSWORD=hunter2\n"),
            (
                "ignored/Dockerfile",
                "FROM localhost/busybox:latest\nCOPY .env /e\n",
            ),
        ],
        "docker engine app",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__BUILD__ENGINE", "docker"),
            ("IMAGE_BUILDER__BUILD__DOCKER_HOST", &service.host),
            // bollard logs request URLs at debug, a build's with its build args: debug for
            // every target proves the cap in telemetry holds.
            ("IMAGE_BUILDER__LOG__LEVEL", "debug"),
        ],
    )
    .await;
    let user = unique("u");
    // Alphanumeric, so it would show verbatim in a URL-encoded query.
    let secret = unique("argvalue");

    stack
        .publish_json(&json!({"id": "ok", "repo": "acme/engine-api", "user_id": user, "build_args": {"GREETING": secret}}))
        .await;
    let updated = expect_image(stack.outcome("ok", BUILD_TIMEOUT).await, &worker);
    assert!(!updated.cached);
    let (digest, labels) = registry_image(&format!("{user}/engine-api"), "latest").await;
    assert_eq!(
        digest, updated.digest,
        "the digest reported is the registry's"
    );
    assert_eq!(labels["org.opencontainers.image.revision"], commit.as_str());
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.ends_with("/acme/engine-api.git")),
        "{labels:?}"
    );
    let log = worker.log();
    assert!(
        log.contains(&format!("with the docker daemon at {}", service.host)),
        "{log}"
    );
    // The local names are gone once pushed.
    let build_id = &updated.build.build_id;
    assert!(!image_exists(&format!(
        "localhost/image-builder/build:{build_id}"
    )));
    assert!(!image_exists(&format!(
        "127.0.0.1:5000/{user}/engine-api:{}",
        &commit[..12]
    )));

    stack
        .publish_json(&json!({"id": "broken", "repo": "acme/engine-api", "user_id": user, "context": "broken"}))
        .await;
    let failed = expect_failed(stack.outcome("broken", BUILD_TIMEOUT).await, &worker);
    assert_eq!(failed.fault, Fault::User, "{failed:?}");
    assert_eq!(failed.attempts, 1, "user faults are not retried");
    assert!(
        failed.reason.contains("COPY missing.txt"),
        "{}",
        failed.reason
    );

    stack
        .publish_json(&json!({"id": "ignored", "repo": "acme/engine-api", "user_id": user, "context": "ignored"}))
        .await;
    let failed = expect_failed(stack.outcome("ignored", BUILD_TIMEOUT).await, &worker);
    assert_eq!(failed.fault, Fault::User, "{failed:?}");
    assert!(failed.reason.contains(".env"), "{}", failed.reason);

    stack
        .publish_json(&json!({"id": "multi", "repo": "acme/engine-api", "user_id": user, "platforms": ["linux/amd64", "linux/arm64"]}))
        .await;
    let rejected = expect_failed(stack.outcome("multi", BUILD_TIMEOUT).await, &worker);
    assert_eq!(rejected.fault, Fault::Rejected, "{rejected:?}");
    assert_eq!(rejected.field.as_deref(), Some("platforms"));
    assert!(
        rejected.reason.contains("one platform"),
        "{}",
        rejected.reason
    );

    assert_secret_absent(&secret, &worker, &stack);
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_docker_daemon_is_a_service_fault_naming_the_host() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/no-daemon");
    repo.commit(&[("Dockerfile", "FROM localhost/busybox:latest\n")], "one");
    repo.push();
    let nowhere = tempfile::tempdir().expect("tempdir");
    let host = format!("unix://{}/docker.sock", nowhere.path().display());
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__BUILD__ENGINE", "docker"),
            ("IMAGE_BUILDER__BUILD__DOCKER_HOST", &host),
            ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    let id = unique("nodaemon-");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/no-daemon", "user_id": unique("u")}))
        .await;
    let failed = expect_failed(stack.outcome(&id, BUILD_TIMEOUT).await, &worker);
    assert_eq!(failed.fault, Fault::Service, "{failed:?}");
    assert_eq!(failed.attempts, 2, "retried up to max_attempts");
    assert!(
        failed.reason.contains(&format!("docker daemon at {host}")),
        "{}",
        failed.reason
    );
    let retried = stack.seen.iter().find_map(|e| match e {
        Event::Retrying(r) if r.build.request_id == id => Some(r.reason.clone()),
        _ => None,
    });
    assert!(
        retried.is_some_and(|reason| reason.contains(&host)),
        "the first attempt was retried, naming the host: {:?}",
        stack.seen
    );
    assert_eq!(
        stack.drain_dead().await.len(),
        1,
        "parked in the dead queue"
    );
    worker.stop().await;
    stack.cleanup().await;
}

/// Serves one endless body, ten bytes at a time: an `ADD` of it keeps a build busy without RUN.
async fn trickling_server() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind trickle server");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n";
                if conn.write_all(head).await.is_err() {
                    return;
                }
                while conn.write_all(b"xxxxxxxxxx").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
    });
    (format!("http://{addr}/slow"), task)
}

#[tokio::test(flavor = "multi_thread")]
async fn build_timeout_through_the_docker_engine_is_a_service_fault() {
    let service = PodmanService::start().await;
    let (url, server) = trickling_server().await;
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/engine-slow");
    repo.commit(
        &[(
            "Dockerfile",
            &format!("FROM localhost/busybox:latest\nADD {url} /slow\n"),
        )],
        "slow",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__BUILD__ENGINE", "docker"),
            ("IMAGE_BUILDER__BUILD__DOCKER_HOST", &service.host),
            ("IMAGE_BUILDER__BUILD__TIMEOUT_SECS", "4"),
            ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let started = Instant::now();
    stack
        .publish_json(&json!({"id": "slow", "repo": "acme/engine-slow", "user_id": unique("u")}))
        .await;
    let failed = expect_failed(stack.outcome("slow", BUILD_TIMEOUT).await, &worker);
    assert_eq!(failed.fault, Fault::Service, "{failed:?}");
    assert!(failed.reason.contains("timed out"), "{}", failed.reason);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the deadline ended the build: {:?}",
        started.elapsed()
    );
    // podman's compat build outlives the dropped request (it keeps downloading) until the
    // trickling connections close, when this test's runtime ends; its ADD then fails.
    server.abort();
    worker.stop().await;
    stack.cleanup().await;
}
