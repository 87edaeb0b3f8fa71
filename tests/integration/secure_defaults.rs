//! The installed binary with nothing configured: it starts from any directory with the built-in
//! safe defaults, refuses the published dev key outside `local`, and `config check` names typos.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::unique;

const BINARY: &str = env!("CARGO_BIN_EXE_image-builder");
const DEV_KEY_HASH: &str = "ed5a18fb8f807f996d649e379d3f35f39c543a91bdbf88c492f2ebd10d4df86c";

/// The binary in an empty directory with an empty environment but `PATH` (podman) and `vars`.
fn bare(dir: &std::path::Path, args: &[&str], vars: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BINARY);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .kill_on_drop(true);
    for (key, value) in vars {
        cmd.env(key, value);
    }
    cmd
}

fn free_listen() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

#[tokio::test]
async fn an_unconfigured_binary_serves_with_safe_defaults_from_an_empty_directory() {
    let dir = tempfile::tempdir().expect("empty dir");
    let data = dir.path().join("data");
    let listen = free_listen();
    let prefix = unique("ibt-bare-");
    let log_path = dir.path().join("out.log");
    let log = std::fs::File::create(&log_path).expect("log");
    // Only what must differ from a real host's defaults to share this one: where data goes, a
    // queue prefix and a port of its own. The broker and registry are the defaults' 127.0.0.1.
    let mut child = bare(
        dir.path(),
        &["run"],
        &[
            (
                "IMAGE_BUILDER__DATA_DIR",
                data.to_str().expect("utf-8 path"),
            ),
            ("IMAGE_BUILDER__AMQP__PREFIX", &prefix),
            ("IMAGE_BUILDER__API__LISTEN", &listen),
        ],
    )
    .stdout(log.try_clone().expect("fd"))
    .stderr(log)
    .spawn()
    .expect("binary starts");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let client = reqwest::Client::new();
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("exited with {status}:\n{}", read_log());
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", read_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = client.get(format!("{base}/healthz")).send().await;
    assert_eq!(health.expect("healthz answers").status(), StatusCode::OK);
    // No key is accepted until one is configured: the published one neither.
    for key in ["local-dev-key", "anything"] {
        let answer = client
            .get(format!("{base}/v1/builds"))
            .bearer_auth(key)
            .send()
            .await
            .expect("API answers");
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "key {key}");
    }
    // Ready means the API serves; the worker's consumer starts beside it, so wait for its line.
    while !read_log().contains("consuming") {
        assert!(
            Instant::now() < deadline,
            "the worker never consumed:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = read_log();
    assert!(
        !log.contains("security relaxed"),
        "nothing is relaxed by default:\n{log}"
    );
    assert!(
        std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .all(|e| ["data", "out.log"].contains(&e.file_name().to_str().unwrap_or(""))),
        "nothing but data_dir and the log is written to the working directory"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[tokio::test]
async fn the_published_dev_key_stops_a_non_local_start_naming_it() {
    let dir = tempfile::tempdir().expect("empty dir");
    let output = bare(
        dir.path(),
        &["worker"],
        &[("IMAGE_BUILDER__API__KEY_HASHES", DEV_KEY_HASH)],
    )
    .stdin(Stdio::null())
    .output()
    .await
    .expect("binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("api.key_hashes holds the published key `local-dev-key`")
            && stderr.contains("security.allow_published_dev_key"),
        "{stderr}"
    );

    // Explicitly local, the same key is the demo's: config check accepts it with one warning.
    let output = bare(
        dir.path(),
        &["config", "check"],
        &[("IMAGE_BUILDER_ENV", "local")],
    )
    .output()
    .await
    .expect("binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(
        stdout
            .matches("warning: security relaxed: api.keys holds the published key")
            .count(),
        1,
        "{stdout}"
    );
}

#[tokio::test]
async fn config_check_fails_on_a_typo_naming_the_key_and_masks_secrets() {
    let dir = tempfile::tempdir().expect("empty dir");
    let file = dir.path().join("ib.toml");
    std::fs::write(&file, "[registry]\nhots = \"registry.example.com\"\n").expect("written");
    let output = bare(
        dir.path(),
        &["config", "check", "--config", file.to_str().expect("utf-8")],
        &[
            ("IMAGE_BUILDER__REGISTRY__PASSWORD", "hunter2-secret"),
            ("IMAGE_BUILDER__API__MAX_PAEG", "10"),
        ],
    )
    .output()
    .await
    .expect("binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("unknown setting `registry.hots` (from file ")
            && stdout.contains("did you mean `registry.host`?"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unknown setting `api.max_paeg` (from env IMAGE_BUILDER__API__MAX_PAEG)")
            && stdout.contains("did you mean `api.max_page`?"),
        "{stdout}"
    );
    assert!(
        stdout.contains("# env IMAGE_BUILDER__REGISTRY__PASSWORD"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("hunter2"),
        "a secret was printed: {stdout}"
    );

    // The same typo stops the worker before it connects to anything.
    let output = bare(
        dir.path(),
        &["worker"],
        &[("IMAGE_BUILDER__API__MAX_PAEG", "10")],
    )
    .output()
    .await
    .expect("binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`api.max_paeg`"), "{stderr}");
}
