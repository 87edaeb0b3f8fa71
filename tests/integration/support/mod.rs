//! Test harness: each test gets its own broker names (a random prefix), its own worker process
//! with its own data dir, its own git server and image namespace, so tests run side by side.
// Shared by two test binaries (integration, broker_restart), each using only part of it.
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod fixtures;
pub mod git_server;
pub mod hostile_repos;
pub mod image_blobs;
pub mod image_tree;
pub mod management;
pub mod registry;
pub mod secrets;
pub mod tls_git;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use image_builder::amqp::{MessageMeta, Publisher, Topology};
use image_builder::config::Settings;
use image_builder::events::Event;
use lapin::options::{
    BasicAckOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use serde_json::Value;

pub use api::Api;
pub use fixtures::{DOCKERFILE_WITH_RUN, RepoFixture};
pub use git_server::GitServer;
pub use registry::TestRegistry;
pub use secrets::{assert_secret_absent, encoded_forms};

pub const REGISTRY: &str = "127.0.0.1:5000";
const SERVICES_HINT: &str = "start the services with `scripts/services.sh up` (or `make services`)";

fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A short random name part.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &id[..10])
}

/// Fails loudly (with how to fix it) when a service the tests need is down.
/// How long the broker may take to declare a test's topology.
const BROKER_SETUP: Duration = Duration::from_secs(30);

async fn require_services(settings: &Settings) {
    if let Err(e) = image_builder::amqp::connect(&settings.amqp.url, "test probe").await {
        panic!("RabbitMQ is not reachable ({e}); {SERVICES_HINT}");
    }
    let registry = reqwest::get(format!("http://{REGISTRY}/v2/")).await;
    assert!(
        registry.is_ok_and(|r| r.status().is_success()),
        "the registry on {REGISTRY} is not reachable; {SERVICES_HINT}"
    );
    let base = std::process::Command::new("podman")
        .args(["image", "exists", "localhost/busybox:latest"])
        .status();
    assert!(
        base.is_ok_and(|s| s.success()),
        "podman or the seeded base image is missing; {SERVICES_HINT}"
    );
}

/// One test's private slice of the broker plus everything it saw.
pub struct Stack {
    pub prefix: String,
    pub settings: Settings,
    pub topology: Arc<Topology>,
    connection: lapin::Connection,
    publisher: Publisher,
    events: lapin::Consumer,
    /// Every event body received so far, raw, for secret scans.
    pub raw_events: Vec<Vec<u8>>,
    pub seen: Vec<Event>,
}

impl Stack {
    pub async fn new() -> Self {
        Self::with_settings(Self::settings()).await
    }

    /// The settings of a new stack: the built-in `local` ones with a fresh prefix.
    pub fn settings() -> Settings {
        let mut settings = Settings::for_env("local").expect("built-in local config loads");
        settings.amqp.prefix = unique("ibt-");
        settings.retry.delays_ms = vec![300, 600];
        settings
    }

    /// A stack on `settings` (its prefix, and its broker: `amqp.url` for this stack's own
    /// connection, `amqp.management_url` for clean-up).
    pub async fn with_settings(settings: Settings) -> Self {
        let prefix = settings.amqp.prefix.clone();
        require_services(&settings).await;
        let topology = Arc::new(Topology::from_settings(&settings));
        let connection = image_builder::amqp::connect(&settings.amqp.url, "test")
            .await
            .expect("broker connection");
        // Bounded: a wedged broker (seen once: classic declares never answered) must fail the
        // test with its cause, not hang the suite.
        let set_up = async {
            topology.declare(&connection).await?;
            let channel = connection.create_channel().await?;
            let events = topology.subscribe_events(&channel).await?;
            let publisher = Publisher::open(&connection, topology.clone()).await?;
            anyhow::Ok((events, publisher))
        };
        let (events, publisher) = match tokio::time::timeout(BROKER_SETUP, set_up).await {
            Ok(set_up) => set_up.expect("declare the topology, subscribe to events, publisher"),
            Err(_) => panic!(
                "RabbitMQ accepted a connection but did not declare this test's queues within \
                 {BROKER_SETUP:?}: the broker is wedged, not the code; {SERVICES_HINT}"
            ),
        };
        Self {
            prefix,
            settings,
            topology,
            connection,
            publisher,
            events,
            raw_events: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Publishes a raw body as a build request (exactly as a producer would).
    pub async fn publish(&self, body: &[u8]) {
        let meta = MessageMeta {
            attempt: 1,
            ..MessageMeta::default()
        };
        self.publisher
            .request(body, meta.to_headers())
            .await
            .expect("publish request");
    }

    pub async fn publish_json(&self, body: &Value) {
        self.publish(body.to_string().as_bytes()).await;
    }

    async fn next_event(&mut self, deadline: Instant) -> Option<Event> {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, self.events.next())
            .await
            .ok()??;
        let delivery = delivery.expect("event delivery");
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack event");
        self.raw_events.push(delivery.data.clone());
        let event: Event = serde_json::from_slice(&delivery.data).expect("event JSON parses");
        self.seen.push(event.clone());
        Some(event)
    }

    /// Waits for the terminal event of `request_id`.
    pub async fn outcome(&mut self, request_id: &str, timeout: Duration) -> Event {
        self.terminal_where(|e| e.build().request_id == request_id, timeout)
            .await
            .unwrap_or_else(|| panic!("no outcome for {request_id} within {timeout:?}"))
    }

    /// Waits for the first terminal event matching `pred` (already seen ones count).
    pub async fn terminal_where(
        &mut self,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        self.event_where(0, |e| e.is_terminal() && pred(e), timeout)
            .await
    }

    /// Waits for the first event matching `pred` among those from index `from` of `seen` on.
    pub async fn event_where(
        &mut self,
        from: usize,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        if let Some(found) = self.seen.iter().skip(from).find(|e| pred(e)) {
            return Some(found.clone());
        }
        let deadline = Instant::now() + timeout;
        while let Some(event) = self.next_event(deadline).await {
            if pred(&event) {
                return Some(event);
            }
        }
        None
    }

    /// Collects events for `quiet` more time (to catch duplicates) and returns all for `request_id`.
    pub async fn settle(&mut self, request_id: &str, quiet: Duration) -> Vec<Event> {
        let deadline = Instant::now() + quiet;
        while self.next_event(deadline).await.is_some() {}
        self.seen
            .iter()
            .filter(|e| e.build().request_id == request_id)
            .cloned()
            .collect()
    }

    /// A channel of this test's own broker connection.
    pub async fn channel(&self) -> lapin::Channel {
        self.connection.create_channel().await.expect("channel")
    }

    /// Messages ready in `queue` (unacked ones are not counted: stop the workers first).
    pub async fn ready_count(&self, queue: &str) -> u32 {
        self.inspect_queue(queue).await.message_count()
    }

    /// Consumers attached to `queue` now.
    pub async fn consumer_count(&self, queue: &str) -> u32 {
        self.inspect_queue(queue).await.consumer_count()
    }

    /// A passive declare of `queue`: its counts as the broker sees them now.
    async fn inspect_queue(&self, queue: &str) -> lapin::Queue {
        let channel = self.connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = channel.close(200, "done".into()).await;
        declared
    }

    /// Takes every message from the dead queue: (body, attempt and last error from the headers).
    pub async fn drain_dead(&self) -> Vec<(Vec<u8>, MessageMeta)> {
        let channel = self.connection.create_channel().await.expect("channel");
        let mut out = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.topology.dead_queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            let meta = MessageMeta::from_properties(&message.delivery.properties);
            out.push((message.delivery.data.clone(), meta));
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    /// A fresh broker connection for clean-up after the old one was cut (broker restart).
    pub async fn reconnect(&mut self) {
        self.connection = image_builder::amqp::connect(&self.settings.amqp.url, "test")
            .await
            .expect("broker connection");
    }

    /// The policies workers apply on this stack's queues, by name (one per queue, up to 8 tiers).
    pub fn policy_names(&self) -> Vec<String> {
        let mut names = vec![self.topology.build_queue.clone()];
        names.extend((1..=8).map(|n| format!("{}.retry.{n}", self.prefix)));
        names
    }

    /// Deletes this test's queues, exchanges and policies.
    pub async fn cleanup(mut self) {
        const CLEANUP_STEP: Duration = Duration::from_secs(20);
        if !self.connection.status().connected() {
            // Cut (a broker restart, a missed heartbeat on a loaded machine): clean up anyway.
            eprintln!("the test's broker connection was closed; reconnecting to clean up");
            self.reconnect().await;
        }
        let channel = self.connection.create_channel().await.expect("channel");
        let mut queues = vec![
            self.topology.build_queue.clone(),
            self.topology.dead_queue.clone(),
            self.topology.dead_lettered_queue.clone(),
        ];
        queues.extend(self.topology.retry_queues.iter().map(|(q, _)| q.clone()));
        // Best effort, and bounded: a broker that does not answer a delete (a cluster member
        // still recovering) must not hang the test after its checks passed.
        for queue in queues {
            let _ = tokio::time::timeout(
                CLEANUP_STEP,
                channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
            )
            .await;
        }
        let policies: Vec<String> = self.policy_names();
        if let Ok(management) = image_builder::amqp::Management::new(
            &self.settings.amqp.management_url,
            &self.settings.amqp.url,
        ) {
            let _ = management.remove(&policies).await;
        }
        for exchange in [&self.topology.exchange, &self.topology.events_exchange] {
            let _ = tokio::time::timeout(
                CLEANUP_STEP,
                channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
            )
            .await;
        }
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// A worker process (the real binary) on a stack's names, with its own data dir and log file.
pub struct Worker {
    child: tokio::process::Child,
    pub log_path: PathBuf,
    pub data_dir: tempfile::TempDir,
}

impl Worker {
    pub async fn spawn(stack: &Stack, git: &GitServer, extra_env: &[(&str, &str)]) -> Self {
        Self::start("worker", stack, git, extra_env).await
    }

    /// `subcommand` is `worker` or `run` (worker + API).
    pub async fn start(
        subcommand: &str,
        stack: &Stack,
        git: &GitServer,
        extra_env: &[(&str, &str)],
    ) -> Self {
        Self::launch(&[], subcommand, stack, git, extra_env).await
    }

    /// A worker that is PID 1 of a new PID namespace, as a container's entry point is. `pid()`
    /// is then the `unshare` outside it.
    pub async fn spawn_as_pid1(stack: &Stack, git: &GitServer, extra_env: &[(&str, &str)]) -> Self {
        let unshare = [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--",
        ];
        Self::launch(&unshare, "worker", stack, git, extra_env).await
    }

    /// Runs the worker binary through `launcher` (a command line it is appended to), if any.
    async fn launch(
        launcher: &[&str],
        subcommand: &str,
        stack: &Stack,
        git: &GitServer,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let data_dir = tempfile::tempdir().expect("data dir");
        let log_path = data_dir.path().join("worker.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let delays: Vec<String> = stack
            .settings
            .retry
            .delays_ms
            .iter()
            .map(u64::to_string)
            .collect();
        let binary = env!("CARGO_BIN_EXE_image-builder");
        let mut cmd = match launcher.split_first() {
            Some((program, args)) => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => tokio::process::Command::new(binary),
        };
        cmd.arg(subcommand)
            .current_dir(project_dir())
            .env("IMAGE_BUILDER_ENV", "local")
            .env("IMAGE_BUILDER__AMQP__PREFIX", &stack.prefix)
            .env("IMAGE_BUILDER__DATA_DIR", data_dir.path().join("data"))
            .env("IMAGE_BUILDER__CONNECTORS__GITHUB__BASE_URL", &git.base_url)
            .env("IMAGE_BUILDER__RETRY__DELAYS_MS", delays.join(","))
            // Debug level includes every line of build output: the strictest test of redaction.
            .env("IMAGE_BUILDER__LOG__LEVEL", "info,image_builder=debug")
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .kill_on_drop(true);
        for (key, value) in extra_env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().expect("worker binary starts");
        let worker = Self {
            child,
            log_path,
            data_dir,
        };
        worker.wait_until_consuming().await;
        worker
    }

    async fn wait_until_consuming(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.log().contains("consuming") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("worker did not start consuming:\n{}", self.log());
    }

    /// Lossy: a hostile request may put non-UTF-8 bytes in the log, which must not blank it.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM and wait for a clean exit: acks in flight reach the broker first.
    pub async fn shutdown(mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let code = self.wait_exit(Duration::from_secs(60)).await;
        assert_eq!(code, Some(0), "worker exit:\n{}", self.log());
    }

    pub fn pid(&self) -> i32 {
        self.child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .expect("worker is running")
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal worker");
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("worker did not exit within {timeout:?}:\n{}", self.log()))
            .expect("wait for worker");
        status.code()
    }
}

/// The digest the shared registry reports for `name:tag`, and the image config's labels.
pub async fn registry_image(name: &str, tag: &str) -> (String, serde_json::Map<String, Value>) {
    registry_image_at(REGISTRY, name, tag).await
}

pub async fn registry_image_at(
    registry: &str,
    name: &str,
    tag: &str,
) -> (String, serde_json::Map<String, Value>) {
    let client = reqwest::Client::new();
    let manifest = client
        .get(format!("http://{registry}/v2/{name}/manifests/{tag}"))
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .expect("registry answers");
    assert!(
        manifest.status().is_success(),
        "{name}:{tag} is not in the registry"
    );
    let digest = manifest
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .expect("registry digest header")
        .to_owned();
    let body: Value = manifest.json().await.expect("manifest JSON");
    let config_digest = body["config"]["digest"].as_str().expect("config digest");
    let config: Value = client
        .get(format!("http://{registry}/v2/{name}/blobs/{config_digest}"))
        .send()
        .await
        .expect("config blob")
        .json()
        .await
        .expect("config JSON");
    let labels = config["config"]["Labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    (digest, labels)
}

/// The `image.updated` an outcome must be.
pub fn expect_image(event: image_builder::events::Event) -> image_builder::events::ImageUpdated {
    match event {
        image_builder::events::Event::ImageUpdated(updated) => updated,
        other => panic!("expected image.updated, got {other:?}"),
    }
}

/// The `build.failed` an outcome must be.
pub fn expect_failed(event: image_builder::events::Event) -> image_builder::events::BuildFailed {
    match event {
        image_builder::events::Event::Failed(failed) => failed,
        other => panic!("expected build.failed, got {other:?}"),
    }
}
