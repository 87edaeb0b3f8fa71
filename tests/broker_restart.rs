//! RabbitMQ restarted while requests are queued: every request still completes, exactly once.
//!
//! Its own test binary: cargo runs test binaries one after another, so restarting the shared
//! broker here cannot disturb the tests in `tests/integration`.

#[path = "integration/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use image_builder::events::Event;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use support::{GitServer, RepoFixture, Stack, Worker, unique};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

fn restart_broker() -> Instant {
    rabbitmqctl(&["stop_app"]);
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup", "--timeout", "60"]);
    Instant::now()
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_queued_across_a_broker_restart_all_complete_once() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/restart");
    repo.commit(
        &[(
            "Dockerfile",
            "FROM localhost/busybox:latest\nARG N\nRUN sleep 2 && echo \"build $N\"\n",
        )],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    // A durable events queue of the test's own: the test's listener is cut by the restart too.
    let events_queue = format!("{}.test-events", stack.prefix);
    let settings = stack.settings.clone();
    let setup = image_builder::amqp::connect(&settings.amqp.url, "test setup")
        .await
        .expect("connect");
    let channel = setup.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            events_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare events queue");
    channel
        .queue_bind(
            events_queue.as_str().into(),
            stack.topology.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind events queue");

    let worker = Worker::spawn(&stack, &git, &[("IMAGE_BUILDER__AMQP__PREFETCH", "1")]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = unique(&format!("restart{i}-"));
        stack
            .publish_json(&json!({
                "id": id, "repo": "acme/restart", "user_id": "restart",
                "image": unique("img"), "build_args": {"N": id},
            }))
            .await;
        ids.push(id);
    }
    stack
        .event_where(
            0,
            |e| matches!(e, Event::Started(_)),
            Duration::from_secs(60),
        )
        .await
        .expect("a build starts before the restart");

    let back = restart_broker();
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.log().matches("consuming").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "worker did not reconnect:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "worker reconnected {} ms after the broker was back",
        back.elapsed().as_millis()
    );

    // Read every event from the durable queue until each request has its outcome, then a bit more.
    let conn = image_builder::amqp::connect(&settings.amqp.url, "test events")
        .await
        .expect("reconnect");
    let channel = conn.create_channel().await.expect("channel");
    let mut terminal: HashMap<String, Vec<Event>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut quiet_until: Option<Instant> = None;
    loop {
        let got = channel
            .basic_get(
                events_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get");
        match got {
            Some(message) => {
                let event: Event =
                    serde_json::from_slice(&message.delivery.data).expect("event JSON");
                if event.is_terminal() {
                    terminal
                        .entry(event.build().request_id.clone())
                        .or_default()
                        .push(event);
                }
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        let all_done = ids.iter().all(|id| terminal.contains_key(id));
        if all_done && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_secs(3));
        }
        if quiet_until.is_some_and(|q| Instant::now() > q) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all requests completed: {terminal:?}\n{}",
            worker.log()
        );
    }
    let log = worker.log();
    for line in log.lines().filter(|l| {
        l.contains("already published")
            || l.contains("failed to publish")
            || l.contains("lost the broker")
    }) {
        println!("worker: {line}");
    }
    for id in &ids {
        let events = &terminal[id];
        assert_eq!(events.len(), 1, "request {id}: {events:?}");
        assert!(matches!(events[0], Event::ImageUpdated(_)), "{events:?}");
    }
    let _ = channel
        .queue_delete(events_queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    worker.stop().await;
    // The test's own connection died with the restart: clean up on a fresh one.
    stack.reconnect().await;
    stack.cleanup().await;
}
