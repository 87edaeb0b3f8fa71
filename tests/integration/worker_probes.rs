//! `image-builder worker` alone answers an orchestrator's probes on `api.probes_listen` and
//! nothing else there; without the setting it serves no HTTP at all.

use crate::support::{GitServer, Stack, Worker};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_answers_probes_only_where_asked() {
    let git = GitServer::start().await;
    let stack = Stack::new().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let worker = Worker::spawn(
        &stack,
        &git,
        &[("IMAGE_BUILDER__API__PROBES_LISTEN", &listen)],
    )
    .await;
    let client = reqwest::Client::new();
    let base = format!("http://{listen}");
    let mut ready = None;
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            ready = Some(r.status());
            if r.status().is_success() {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready.map(|s| s.as_u16()), Some(200), "{}", worker.log());
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert!(
        metrics
            .text()
            .await
            .expect("body")
            .contains("image_builder_")
    );
    // The API is not served by a worker: no builds, no webhooks.
    for path in ["/v1/builds", "/v1/webhooks/github"] {
        let r = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect(path);
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    worker.stop().await;

    // Without the setting: the worker process listens on no TCP port at all.
    let quiet = Worker::spawn(&stack, &git, &[]).await;
    let listening = std::process::Command::new("ss")
        .args(["-Hltnp"])
        .output()
        .expect("ss runs");
    let mine = format!("pid={},", quiet.pid());
    let lines = String::from_utf8_lossy(&listening.stdout);
    assert!(
        !lines.lines().any(|l| l.contains(&mine)),
        "a worker without api.probes_listen listens: {lines}"
    );
    quiet.stop().await;
    stack.cleanup().await;
}
