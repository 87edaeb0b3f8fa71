//! The wrapper against real processes (and a real `podman build`).

use std::time::Duration;

use super::*;
use crate::build_log::MAX_LINE;
use crate::redact::Redactor;

fn log() -> BuildLog {
    BuildLog::new(Redactor::default())
}

fn sh(script: &str, timeout: Duration) -> Invocation {
    Invocation::new("sh", timeout).args(["-c", script])
}

/// Live processes whose command line contains `marker` (a zombie's is empty).
fn processes_with(marker: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(marker))
        .collect()
}

/// Polls until no process carries `marker`; panics naming the survivors after a generous bound.
async fn assert_all_gone(marker: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[tokio::test]
async fn output_lands_in_the_log_and_env_reaches_the_child() {
    let log = log();
    let inv = sh(
        "echo out; echo err >&2; echo \"$X\"",
        Duration::from_secs(5),
    )
    .env("X", "from-env");
    run(inv, &log, &CancellationToken::new())
        .await
        .expect("runs");
    let mut lines = log.tail(10);
    lines.sort();
    assert_eq!(lines, vec!["err", "from-env", "out"]);
}

#[tokio::test]
async fn missing_program_says_not_installed() {
    let inv = Invocation::new("no-such-tool-xyz", Duration::from_secs(1));
    let err = run(inv, &log(), &CancellationToken::new())
        .await
        .expect_err("fails");
    assert_eq!(
        err.to_string(),
        "no-such-tool-xyz is not installed (or not on PATH)"
    );
}

#[tokio::test]
async fn failure_reports_the_status() {
    let err = run(
        sh("exit 3", Duration::from_secs(5)),
        &log(),
        &CancellationToken::new(),
    )
    .await
    .expect_err("fails");
    assert!(err.to_string().starts_with("sh exited with"), "{err}");
}

#[tokio::test]
async fn timeout_kills_the_whole_tree_even_a_new_session() {
    let marker = format!("ib-tree-{}", uuid::Uuid::new_v4().simple());
    // One grandchild in the program's group, one that left it (as runc's RUN step does).
    let script = format!(
        "sh -c 'sleep 300; : {marker}' & setsid sh -c 'sleep 300; : {marker}' & \
         echo started; wait"
    );
    let log = log();
    let err = run(
        sh(&script, Duration::from_secs(2)),
        &log,
        &CancellationToken::new(),
    )
    .await
    .expect_err("times out");
    assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
    assert_eq!(log.tail(1), vec!["started"]);
    assert_all_gone(&marker).await;
}

#[tokio::test]
async fn cancel_kills_the_whole_tree() {
    let marker = format!("ib-cancel-{}", uuid::Uuid::new_v4().simple());
    let script = format!("setsid sh -c 'sleep 300; : {marker}' & wait");
    let cancel = CancellationToken::new();
    let cancelling = cancel.clone();
    let watcher = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while processes_with(&marker).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancelling.cancel();
    };
    let log = log();
    let (result, ()) = tokio::join!(
        run(sh(&script, Duration::from_secs(300)), &log, &cancel),
        watcher
    );
    let err = result.expect_err("cancelled");
    assert!(matches!(err, ProcessError::Cancelled { .. }), "{err}");
    assert_all_gone(&marker).await;
}

#[tokio::test]
async fn an_over_long_line_is_cut_and_marked() {
    let log = log();
    let script = "head -c 100000 /dev/zero | tr '\\0' a; echo; echo next";
    run(
        sh(script, Duration::from_secs(10)),
        &log,
        &CancellationToken::new(),
    )
    .await
    .expect("runs");
    let lines = log.tail(10);
    assert_eq!(lines.len(), 2, "{:?}", lines.iter().map(String::len));
    let (shown, mark) = lines[0].split_at(MAX_LINE);
    assert!(shown.bytes().all(|b| b == b'a'));
    assert_eq!(mark, " [line truncated: 91808 more bytes]");
    assert_eq!(lines[1], "next");
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_output_without_newlines_stays_bounded_and_the_call_returns() {
    let log = log();
    let err = run(
        Invocation::new("cat", Duration::from_secs(3)).arg("/dev/zero"),
        &log,
        &CancellationToken::new(),
    )
    .await
    .expect_err("times out");
    assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
    let lines = log.tail(10);
    assert_eq!(lines.len(), 1, "one (endless) line");
    assert!(lines[0].len() < MAX_LINE + 64, "{}", lines[0].len());
    assert!(
        lines[0].contains("[line truncated: "),
        "{}",
        &lines[0][MAX_LINE..]
    );
    // Unbounded reading reaches gigabytes in these seconds; the whole test binary needs far less.
    let peak = peak_rss_kib();
    assert!(peak < 512 * 1024, "peak RSS {peak} KiB");
}

#[tokio::test]
async fn a_secret_split_across_reads_is_still_redacted() {
    let log = BuildLog::new(Redactor::new(["s3cr3t-token"]));
    let script = "printf 'using s3cr'; sleep 0.3; printf '3t-token here\\n'";
    run(
        sh(script, Duration::from_secs(10)),
        &log,
        &CancellationToken::new(),
    )
    .await
    .expect("runs");
    assert_eq!(log.tail(10), vec!["using [REDACTED] here"]);
}

#[tokio::test]
async fn children_get_an_empty_environment_plus_the_allowlist() {
    let log = log();
    let inv = Invocation::new("env", Duration::from_secs(5)).env("BUILD_ARG_VALUE", "v");
    run(inv, &log, &CancellationToken::new())
        .await
        .expect("runs");
    let keys: Vec<String> = log
        .tail(1000)
        .iter()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        .collect();
    assert!(keys.contains(&"BUILD_ARG_VALUE".to_owned()), "{keys:?}");
    assert!(keys.contains(&"PATH".to_owned()), "{keys:?}");
    for key in &keys {
        assert!(
            key == "BUILD_ARG_VALUE" || command::passed_on(key),
            "{key} reached the child: {keys:?}"
        );
    }
    // The test runner's own environment is not empty of other things (cargo sets CARGO_*).
    assert!(std::env::vars().any(|(k, _)| !command::passed_on(&k)));
}

/// Run by `the_workers_settings_never_reach_a_child` in a copy of this binary whose
/// environment holds worker settings; prints what its child saw.
#[tokio::test]
#[ignore = "run by the_workers_settings_never_reach_a_child"]
async fn child_env_probe() {
    let log = log();
    run(
        Invocation::new("env", Duration::from_secs(5)),
        &log,
        &CancellationToken::new(),
    )
    .await
    .expect("runs");
    for line in log.tail(1000) {
        println!("CHILD-ENV {line}");
    }
}

#[test]
fn the_workers_settings_never_reach_a_child() {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["process::tests::child_env_probe", "--exact", "--ignored"])
        .args(["--nocapture", "--test-threads=1"])
        .env("IMAGE_BUILDER__REGISTRY__PASSWORD", "probe-password-xyz")
        .env("IMAGE_BUILDER__DATABASE__URL", "postgres://u:pw@h/db")
        .output()
        .expect("probe runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let seen: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CHILD-ENV "))
        .collect();
    assert!(seen.iter().any(|l| l.starts_with("PATH=")), "{stdout}");
    assert!(!stdout.contains("probe-password-xyz"), "{stdout}");
    assert!(
        !seen.iter().any(|l| l.starts_with("IMAGE_BUILDER")),
        "{seen:?}"
    );
}

/// The child is forked on the spawner thread: the thread that asked can exit (as tokio's
/// blocking threads do when idle) without the child's parent-death signal firing.
#[tokio::test(flavor = "multi_thread")]
async fn a_child_outlives_the_thread_that_started_it() {
    let log = log();
    let runtime = tokio::runtime::Handle::current();
    let (started, finish) = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut running = Box::pin(async move {
                let inv = sh("sleep 1; echo survived", Duration::from_secs(30));
                run(inv, &log, &CancellationToken::new()).await
            });
            // Polled here until the child exists, then handed over; this thread then ends.
            let polled = runtime.block_on(async {
                tokio::select! {
                    biased;
                    r = &mut running => Some(r),
                    _ = tokio::time::sleep(Duration::from_millis(300)) => None,
                }
            });
            (polled, running)
        })
        .join()
        .expect("thread")
    };
    assert!(started.is_none(), "finished before the thread ended");
    finish.await.expect("the child survived its thread");
    assert_eq!(log.tail(1), vec!["survived"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_podman_build_printing_an_endless_line_ends_at_its_timeout() {
    let marker = format!("ib-zero-{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().expect("context");
    let dockerfile = format!("FROM localhost/busybox:latest\nRUN cat /dev/zero; echo {marker}\n");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    let inv = Invocation::new("podman", Duration::from_secs(15))
        .args(["build", "--isolation", "oci", "--runtime", "runc"])
        .arg(dir.path());
    let log = log();
    let watcher = async {
        // The RUN step ran (its shell carries the marker) before the timeout: it is what ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while processes_with(&marker).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        !processes_with(&marker).is_empty()
    };
    let never = CancellationToken::new();
    let (result, ran) = tokio::join!(run(inv, &log, &never), watcher);
    let err = result.expect_err("times out");
    assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
    assert!(ran, "the RUN step never started: {:?}", log.tail(20));
    assert_all_gone(&marker).await;
    let dir_name = dir.path().to_string_lossy().into_owned();
    assert_all_gone(&dir_name).await;
    assert!(
        log.tail(50).iter().any(|l| l.contains("[line truncated: ")),
        "{:?}",
        log.tail(5)
    );
    let peak = peak_rss_kib();
    assert!(peak < 512 * 1024, "peak RSS {peak} KiB");
}
