//! What a build leaves behind: nothing when the worker is killed, no zombie when the worker is
//! PID 1, and neither memory nor time beyond its bounds when it prints without end.

use std::time::{Duration, Instant};

use image_builder::events::Event;
use nix::sys::signal::Signal;
use serde_json::json;

use crate::support::{DOCKERFILE_WITH_RUN, GitServer, RepoFixture, Stack, Worker, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the kernel and the wrappers get to end what a build ran (they take well under a
/// second; this bound only keeps a failure from hanging the suite).
const GONE_WITHIN: Duration = Duration::from_secs(60);

/// A `sleep` no other process on this machine runs.
fn unique_sleep() -> String {
    let id = uuid::Uuid::new_v4();
    let random = u32::from_le_bytes(id.as_bytes()[..4].try_into().expect("4 bytes"));
    format!("sleep {}", 3_000_000 + random % 900_000)
}

struct Proc {
    pid: i32,
    ppid: i32,
    state: char,
    cmdline: String,
}

/// Every process on the host, as /proc shows it now.
fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name is in parentheses and may hold spaces: read after the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let mut fields = rest.split(' ');
            let state = fields.next()?.chars().next()?;
            let ppid = fields.next()?.parse().ok()?;
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            Some(Proc {
                pid,
                ppid,
                state,
                cmdline,
            })
        })
        .collect()
}

fn running_with(marker: &str) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|p| p.cmdline.contains(marker))
        .collect()
}

async fn wait_for_process(marker: &str, worker: &Worker) -> Vec<Proc> {
    let deadline = Instant::now() + BUILD_TIMEOUT;
    loop {
        let found = running_with(marker);
        if !found.is_empty() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no process ran `{marker}`; log:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until `left()` is empty; panics with what is left after `GONE_WITHIN`.
async fn until_none<T: std::fmt::Debug>(what: &str, left: impl Fn() -> Vec<T>) {
    let deadline = Instant::now() + GONE_WITHIN;
    loop {
        let now = left();
        if now.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what} remain: {now:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn repo_with(git: &GitServer, name: &str, dockerfile: &str) {
    let repo = RepoFixture::create(git.root.path(), name);
    repo.commit(&[("Dockerfile", dockerfile)], "one");
    repo.push();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_with_sigkill_leaves_nothing_building() {
    let git = GitServer::start().await;
    let sleep = unique_sleep();
    let dockerfile = format!("FROM localhost/busybox:latest\nRUN {sleep}\n");
    repo_with(&git, "acme/killed", &dockerfile);
    let stack = Stack::new().await;
    // A bridge and subnet of this test's own: the address the killed build held is the first
    // one, and no other test's build takes it over.
    let net = [
        ("IMAGE_BUILDER__BUILD__BRIDGE", "ibtest1"),
        ("IMAGE_BUILDER__BUILD__SUBNET", "10.231.255.8/29"),
    ];
    let netns = std::path::Path::new("/run/netns").join("ib0ae7ff0a"); // 10.231.255.10
    let mut worker = Worker::spawn(&stack, &git, &net).await;
    let data_dir = worker.data_dir.path().to_string_lossy().into_owned();
    stack
        .publish_json(&json!({"id": unique("killed-"), "repo": "acme/killed", "user_id": "u1"}))
        .await;
    wait_for_process(&sleep, &worker).await;

    // While it builds: podman got none of the worker's settings (they hold passwords).
    let podman: Vec<Proc> = running_with(&data_dir)
        .into_iter()
        .filter(|p| p.cmdline.starts_with("/usr/bin/podman") || p.cmdline.starts_with("podman"))
        .collect();
    assert!(!podman.is_empty(), "no podman for {data_dir} found");
    for p in &podman {
        let environ = std::fs::read(format!("/proc/{}/environ", p.pid)).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            !environ.contains("IMAGE_BUILDER"),
            "podman {} got the worker's settings: {environ}",
            p.pid
        );
    }

    worker.signal(Signal::SIGKILL);
    assert_eq!(worker.wait_exit(GONE_WITHIN).await, None, "killed");
    until_none("processes of the killed worker's build", || {
        let mut left = running_with(&sleep);
        left.extend(running_with(&data_dir));
        left.into_iter().map(|p| p.cmdline).collect()
    })
    .await;

    // The killed build's network namespace is left; the next build given its address removes
    // it first, and its own is gone once it ends.
    assert!(netns.exists(), "the killed build had {}", netns.display());
    // (Queues of their own: the killed build's message, redelivered, would hold that address.)
    let mut after = Stack::new().await;
    repo_with(&git, "acme/after-kill", DOCKERFILE_WITH_RUN);
    let worker = Worker::spawn(&after, &git, &net).await;
    let id = unique("after-kill-");
    after
        .publish_json(&json!({"id": id, "repo": "acme/after-kill", "user_id": "u1"}))
        .await;
    match after.outcome(&id, BUILD_TIMEOUT).await {
        Event::ImageUpdated(_) => {}
        other => panic!("a build after the kill: {other:?}\n{}", worker.log()),
    }
    until_none("network namespaces of ended builds", || {
        [&netns]
            .into_iter()
            .filter(|p| p.exists())
            .collect::<Vec<_>>()
    })
    .await;
    worker.stop().await;
    after.cleanup().await;
    stack.cleanup().await;
}

/// The pid `unshare` forked: the worker's init, PID 1 of its namespace.
fn child_of(parent: i32) -> Option<i32> {
    processes()
        .into_iter()
        .find(|p| p.ppid == parent)
        .map(|p| p.pid)
}

/// Zombies below `root` (by parent links), as (pid, parent).
fn zombies_under(root: i32) -> Vec<(i32, i32)> {
    let all = processes();
    let parent_of = |pid: i32| all.iter().find(|p| p.pid == pid).map(|p| p.ppid);
    all.iter()
        .filter(|p| p.state == 'Z')
        .filter(|p| {
            let mut at = p.ppid;
            for _ in 0..64 {
                if at == root {
                    return true;
                }
                match parent_of(at) {
                    Some(up) if up > 0 => at = up,
                    _ => return false,
                }
            }
            false
        })
        .map(|p| (p.pid, p.ppid))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_as_pid1_reaps_the_processes_its_timed_out_builds_leave() {
    let git = GitServer::start().await;
    let sleep = unique_sleep();
    let dockerfile = format!("FROM localhost/busybox:latest\nRUN {sleep}\n");
    repo_with(&git, "acme/orphans", &dockerfile);
    let mut stack = Stack::new().await;
    let env = [
        ("IMAGE_BUILDER__BUILD__TIMEOUT_SECS", "20"),
        ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "1"),
    ];
    let mut worker = Worker::spawn_as_pid1(&stack, &git, &env).await;
    let init = child_of(worker.pid()).expect("the worker's init runs");
    let id = unique("orphans-");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/orphans", "user_id": "u1"}))
        .await;
    wait_for_process(&sleep, &worker).await;

    // The timeout kills the build's `unshare`; podman, its child, is reparented to PID 1.
    let event = stack.outcome(&id, BUILD_TIMEOUT).await;
    let Event::Failed(failed) = &event else {
        panic!("expected build.failed, got {event:?}\n{}", worker.log());
    };
    assert!(failed.reason.contains("timed out"), "{}", failed.reason);
    until_none("processes of the timed-out build", || {
        running_with(&sleep)
            .into_iter()
            .map(|p| p.cmdline)
            .collect()
    })
    .await;
    until_none("zombies in the worker's namespace", || zombies_under(init)).await;
    assert!(
        processes().iter().any(|p| p.pid == init && p.state != 'Z'),
        "the init is gone:\n{}",
        worker.log()
    );

    // SIGTERM to PID 1 reaches the worker, which stops cleanly; PID 1 exits with its status.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), Signal::SIGTERM).expect("signal");
    assert_eq!(
        worker.wait_exit(GONE_WITHIN).await,
        Some(0),
        "{}",
        worker.log()
    );
    stack.cleanup().await;
}

fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM for {pid}: {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_printing_an_endless_line_fails_at_its_timeout_and_the_worker_goes_on() {
    let git = GitServer::start().await;
    repo_with(
        &git,
        "acme/zeros",
        "FROM localhost/busybox:latest\nRUN cat /dev/zero\n",
    );
    repo_with(&git, "acme/next", DOCKERFILE_WITH_RUN);
    let mut stack = Stack::new().await;
    let env = [
        ("IMAGE_BUILDER__BUILD__TIMEOUT_SECS", "20"),
        ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "1"),
    ];
    let worker = Worker::spawn(&stack, &git, &env).await;

    let zeros = unique("zeros-");
    stack
        .publish_json(&json!({"id": zeros, "repo": "acme/zeros", "user_id": "u1"}))
        .await;
    let event = stack.outcome(&zeros, BUILD_TIMEOUT).await;
    let Event::Failed(failed) = &event else {
        panic!("expected build.failed, got {event:?}\n{}", worker.log());
    };
    assert!(failed.reason.contains("timed out"), "{}", failed.reason);

    let next = unique("next-");
    stack
        .publish_json(&json!({"id": next, "repo": "acme/next", "user_id": unique("u")}))
        .await;
    let event = stack.outcome(&next, BUILD_TIMEOUT).await;
    assert!(
        matches!(event, Event::ImageUpdated(_)),
        "expected image.updated, got {event:?}\n{}",
        worker.log()
    );
    // Unbounded reading of /dev/zero reaches gigabytes within seconds.
    let peak = peak_rss_kib(worker.pid());
    assert!(peak < 200 * 1024, "worker peak RSS {peak} KiB");
    worker.stop().await;
    stack.cleanup().await;
}
