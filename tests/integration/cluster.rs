//! Failover on a 3-node RabbitMQ cluster (`scripts/services.sh cluster up`, which this test runs:
//! it is idempotent and puts back a node a failed run left stopped). Three worker replicas with
//! `amqp.urls` lose the node that leads the build queue while 50 requests are in flight: every
//! request still succeeds once, every replica reconnects to another node.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use image_builder::amqp::Topology;
use image_builder::events::Event;
use image_builder::percent::encode_component;
use image_builder::store::{BuildState, BuildStore};
use serde_json::{Value, json};

use crate::support::api::postgres_database;
use crate::support::{Api, GitServer, RepoFixture, Stack, Worker, unique};

const REQUESTS: usize = 50;
/// All 50 cheap builds on 3 replicas of 2 slots, on a shared 2-core machine.
const ALL_DONE: Duration = Duration::from_secs(600);
const QUIET: Duration = Duration::from_secs(3);
const RECONNECT: Duration = Duration::from_secs(60);

/// One node of the test cluster (scripts/rabbitmq-cluster.sh).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Node(u16);

const NODES: [Node; 3] = [Node(1), Node(2), Node(3)];

impl Node {
    fn name(self) -> String {
        format!("ib{}@localhost", self.0)
    }

    fn port(self) -> u16 {
        5680 + self.0
    }

    fn amqp_url(self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port())
    }

    fn management_url(self) -> String {
        format!("http://127.0.0.1:{}", 15680 + self.0)
    }

    /// `rabbitmqctl` on this node (the packaged wrapper runs it as `rabbitmq`, with its cookie).
    fn ctl(self, command: &str) -> std::process::Output {
        std::process::Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.name(), command])
            .output()
            .expect("rabbitmqctl runs")
    }
}

/// Starts the node's application again when dropped (a failing test included), so reruns and
/// other tests find the whole cluster.
struct Restart(Node);

impl Drop for Restart {
    fn drop(&mut self) {
        let out = self.0.ctl("start_app");
        if !out.status.success() {
            eprintln!(
                "could not restart {}: {}",
                self.0.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

async fn cluster_up() {
    let out = tokio::process::Command::new("scripts/services.sh")
        .args(["cluster", "up"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .expect("scripts/services.sh runs");
    assert!(
        out.status.success(),
        "scripts/services.sh cluster up failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node leading `queue` (a quorum queue), as `via`'s management API sees it.
async fn leader_of(queue: &str, via: Node) -> Node {
    let url = format!(
        "{}/api/queues/%2F/{}",
        via.management_url(),
        encode_component(queue)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer: Option<Value> = match reqwest::Client::new()
            .get(&url)
            .basic_auth("guest", Some("guest"))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => response.json().await.ok(),
            _ => None,
        };
        let leader = answer
            .as_ref()
            .and_then(|q| q["leader"].as_str())
            .and_then(|name| NODES.into_iter().find(|n| n.name() == name));
        if let Some(leader) = leader {
            let members = answer.as_ref().map(|q| q["members"].clone());
            eprintln!("{queue}: leader {}, members {members:?}", leader.name());
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "no leader for {queue} on {}: {answer:?}",
            via.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The seconds `who` (`worker`, `API`) logged for its reconnect, once it has.
fn reconnect_secs(log: &str, who: &str) -> Option<f64> {
    let rest = log
        .split(&format!("{who}: reconnected to the broker after "))
        .nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The broker of the worker's last "connected to the broker" line (`127.0.0.1:5682`).
fn last_broker(log: &str) -> Option<String> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("connected to the broker") && !l.contains("reconnected"))?;
    let rest = line.split("broker=").nth(1)?;
    rest.split_whitespace().next().map(str::to_owned)
}

/// What each replica logged about `id`, and its last lines: why a request has no outcome.
fn traces(workers: &[&Worker], id: &str) -> String {
    let mut out = String::new();
    for (i, worker) in workers.iter().enumerate() {
        let log = worker.log();
        let lines: Vec<&str> = log.lines().collect();
        let about: Vec<&str> = lines.iter().copied().filter(|l| l.contains(id)).collect();
        let tail = lines
            .get(lines.len().saturating_sub(30)..)
            .unwrap_or_default();
        out.push_str(&format!(
            "----- replica {i}, lines about {id}:\n{}\n----- its last lines:\n{}\n",
            about.join("\n"),
            tail.join("\n")
        ));
    }
    out
}

/// The drill: 3 replicas on the cluster, 50 requests in flight, the node leading the build
/// queue stops. 0 lost, 0 duplicate `image.updated`, every replica reconnected elsewhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_losing_the_build_queue_leader_loses_and_duplicates_nothing() {
    cluster_up().await;
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/cluster");
    // No RUN step: each build is a cheap image of its own name.
    repo.commit(
        &[("Dockerfile", "FROM localhost/busybox:latest\nARG N\n")],
        "cheap",
    );
    repo.push();

    // The topology is declared through ib1 first, to learn which node leads the build queue;
    // this test's own connection (events, publishing) then goes to another node, which stays up.
    let mut settings = Stack::settings();
    settings.amqp.url = NODES[0].amqp_url().into();
    let topology = Topology::from_settings(&settings);
    let first = image_builder::amqp::connect(&settings.amqp.url, "test declare")
        .await
        .expect("cluster node ib1 (scripts/services.sh cluster up)");
    topology.declare(&first).await.expect("declare topology");
    let _ = first.close(200, "declared".into()).await;
    let leader = leader_of(&topology.build_queue, NODES[0]).await;
    let survivors: Vec<Node> = NODES.into_iter().filter(|n| *n != leader).collect();
    let (a, b) = (survivors[0], survivors[1]);
    settings.amqp.url = a.amqp_url().into();
    settings.amqp.management_url = a.management_url();
    let mut stack = Stack::with_settings(settings).await;

    // Every replica starts on the leader, so every one of them must fail over; after it, the
    // orders differ so the replicas spread over the other two nodes. `amqp.url` points nowhere:
    // `amqp.urls` must take precedence.
    // The third replica also serves the API (`run`), which must fail over too.
    let orders = [[leader, a, b], [leader, b, a], [leader, a, b]];
    let store_url = postgres_database().await;
    let mut workers = Vec::new();
    let mut api = None;
    for (i, order) in orders.into_iter().enumerate() {
        let urls: Vec<String> = order.iter().map(|n| n.amqp_url()).collect();
        let apis: Vec<String> = order.iter().map(|n| n.management_url()).collect();
        let (urls, apis) = (urls.join(","), apis.join(","));
        let env = [
            ("IMAGE_BUILDER__STORE__URL", store_url.as_str()),
            ("IMAGE_BUILDER__STORE__POLL_MS", "300"),
            (
                "IMAGE_BUILDER__AMQP__URL",
                "amqp://guest:guest@127.0.0.1:1/%2f",
            ),
            ("IMAGE_BUILDER__AMQP__URLS", urls.as_str()),
            ("IMAGE_BUILDER__AMQP__MANAGEMENT_URLS", apis.as_str()),
        ];
        if i < 2 {
            workers.push(Worker::spawn(&stack, &git, &env).await);
        } else {
            api = Some(Api::spawn(&stack, &git, &env).await);
        }
    }
    let api = api.expect("the API replica");
    let replicas: Vec<&Worker> = workers.iter().chain([&api.worker]).collect();
    for worker in &replicas {
        let log = worker.log();
        let port = leader.port();
        assert_eq!(
            last_broker(&log).as_deref(),
            Some(format!("127.0.0.1:{port}").as_str()),
            "{log}"
        );
    }

    let user = unique("u");
    let mut ids = Vec::new();
    for i in 0..REQUESTS {
        let id = unique(&format!("cl{i}-"));
        let body = json!({"id": id, "repo": "acme/cluster", "user_id": user,
            "image": unique("img"), "build_args": {"N": id}});
        stack.publish_json(&body).await;
        ids.push(id);
    }
    // Mid-load: builds run on the replicas, most requests still wait in the queue.
    let mut started = BTreeSet::new();
    while started.len() < 6 {
        let from = stack.seen.len();
        let Some(Event::Started(s)) = stack
            .event_where(from, |e| matches!(e, Event::Started(_)), ALL_DONE)
            .await
        else {
            panic!("builds did not start:\n{}", replicas[0].log());
        };
        started.insert(s.build.request_id);
    }

    let leader = leader_of(&stack.topology.build_queue, a).await;
    let stopped_at = Instant::now();
    let restart = Restart(leader);
    let out = leader.ctl("stop_app");
    assert!(
        out.status.success(),
        "stop_app on {}: {}",
        leader.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let store = BuildStore::connect(&store_url).await.expect("store");
    let mut done_at_stop = 0;
    for id in &ids {
        if store.state(id).await.expect("read") == Some(BuildState::Succeeded) {
            done_at_stop += 1;
        }
    }
    eprintln!(
        "stopped {} (rabbitmqctl stop_app took {:.1} s) with {done_at_stop} of {REQUESTS} \
         requests succeeded",
        leader.name(),
        stopped_at.elapsed().as_secs_f64()
    );
    assert!(done_at_stop < REQUESTS, "the load was over before the stop");

    // Every replica reconnects, to another node.
    for (i, worker) in replicas.iter().enumerate() {
        while reconnect_secs(&worker.log(), "worker").is_none() {
            assert!(
                stopped_at.elapsed() < RECONNECT,
                "replica {i} did not reconnect within {RECONNECT:?}:\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = worker.log();
        let broker = last_broker(&log).unwrap_or_default();
        assert!(
            survivors
                .iter()
                .any(|n| broker == format!("127.0.0.1:{}", n.port())),
            "replica {i} reconnected to {broker:?}, not to a surviving node:\n{log}"
        );
        // The replica's own figure: from the lost session to consuming on the next node.
        eprintln!(
            "replica {i}: reconnected to {broker} {:.3} s after it lost the broker",
            reconnect_secs(&log, "worker").unwrap_or_default()
        );
    }
    while reconnect_secs(&api.worker.log(), "API").is_none() {
        assert!(
            stopped_at.elapsed() < RECONNECT,
            "the API did not reconnect within {RECONNECT:?}:\n{}",
            api.worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "API: reconnected {:.3} s after it lost the broker",
        reconnect_secs(&api.worker.log(), "API").unwrap_or_default()
    );
    // The API publishes through its new node: one more request, submitted after the stop.
    let id = unique("cl-api-");
    let (status, body) = api
        .post_json(
            "/v1/builds",
            &json!({"id": id, "repo": "acme/cluster", "user_id": user,
                "image": unique("img"), "build_args": {"N": id}}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    ids.push(id);

    // 0 lost: every request ends image.updated, and succeeded in the shared store.
    let deadline = Instant::now() + ALL_DONE;
    for id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(outcome) = stack
            .terminal_where(|e| &e.build().request_id == id, left)
            .await
        else {
            panic!(
                "{id}: no outcome within {ALL_DONE:?}\n{}",
                traces(&replicas, id)
            );
        };
        assert!(
            matches!(outcome, Event::ImageUpdated(_)),
            "{id}: {outcome:?}"
        );
    }
    eprintln!(
        "all {} succeeded {:.1} s after the stop",
        ids.len(),
        stopped_at.elapsed().as_secs_f64()
    );
    // 0 duplicates: one success event per request, a quiet while after the last.
    stack.settle("", QUIET).await;
    for id in &ids {
        let terminal: Vec<&Event> = stack
            .seen
            .iter()
            .filter(|e| &e.build().request_id == id && e.is_terminal())
            .collect();
        assert_eq!(terminal.len(), 1, "{id}: {terminal:?}");
    }
    for id in &ids {
        assert_eq!(
            store.state(id).await.expect("read"),
            Some(BuildState::Succeeded),
            "{id}"
        );
    }

    for worker in workers {
        worker.shutdown().await;
    }
    api.worker.shutdown().await;
    assert_eq!(stack.ready_count(&stack.topology.build_queue).await, 0);
    // The node back first: deleting quorum queues while a member is down can wait on it.
    drop(restart);
    stack.cleanup().await;
}

/// The first broker that answers is used, whichever place it has in the list, after a lost
/// session too (on the single node of `scripts/services.sh up`; no cluster needed).
#[tokio::test]
async fn a_broker_that_does_not_answer_is_skipped() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let settings = Stack::settings();
    let brokers = image_builder::amqp::Brokers::new(vec![
        format!("amqp://guest:guest@127.0.0.1:{closed}/%2f").into(),
        settings.amqp.url.clone(),
    ]);
    let first = brokers
        .connect("test skip")
        .await
        .expect("the second answers");
    assert!(first.status().connected());
    let _ = first.close(200, "done".into()).await;
    // Lost on the second: the round starts with the first again, which still does not answer.
    brokers.lost();
    let again = brokers
        .connect("test skip")
        .await
        .expect("the second again");
    let _ = again.close(200, "done".into()).await;
}
