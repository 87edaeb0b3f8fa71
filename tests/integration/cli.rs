//! The command line as a person uses it, the real binary against the real registry, podman,
//! broker and API: `build DIR` with no broker, the API commands, `submit --wait` streaming the
//! log, completions and the man page.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use image_builder::events::ImageUpdated;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{Api, GitServer, RepoFixture, Stack, registry_image, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

/// The binary with the test environment's settings and nothing from the caller's.
fn cli(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_image-builder"));
    cmd.env("IMAGE_BUILDER_ENV", "local")
        .env("IMAGE_BUILDER__DATA_DIR", data_dir)
        .env_remove("IMAGE_BUILDER_API")
        .env_remove("IMAGE_BUILDER_API_KEY")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    cmd
}

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: Command) -> Ran {
    let out = tokio::time::timeout(BUILD_TIMEOUT, cmd.output())
        .await
        .expect("the command ends")
        .expect("the binary runs");
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn build_dir_pushes_the_files_as_they_are_with_no_broker() {
    let data = tempfile::tempdir().expect("data dir");
    let work = tempfile::tempdir().expect("work");
    let dir = work.path().join("Hello App");
    std::fs::create_dir_all(&dir).expect("dir");
    let marker = unique("marker-");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM localhost/busybox:latest\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt\n",
    )
    .expect("write");
    std::fs::write(dir.join("hello.txt"), &marker).expect("write");
    let user = unique("u");
    let build = |dir: &Path| {
        let mut cmd = cli(data.path());
        // A relative data dir, as the local env's `.run/data`: the snapshot is still fetched.
        cmd.current_dir(data.path())
            .env("IMAGE_BUILDER__DATA_DIR", "data");
        // Nothing listens there: the build must not need a broker.
        cmd.env(
            "IMAGE_BUILDER__AMQP__URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        )
        .args(["build", "--user-id", &user, "--json"])
        .arg(dir);
        run(cmd)
    };

    let first = build(&dir).await;
    assert!(first.ok, "{}\n{}", first.stdout, first.stderr);
    let updated: ImageUpdated = serde_json::from_str(&first.stdout).expect("image.updated JSON");
    assert!(!updated.cached);
    assert!(
        first.stderr.contains(&marker),
        "the RUN step printed the uncommitted file, and the engine's output is shown:\n{}",
        first.stderr
    );
    assert_eq!(updated.image, format!("127.0.0.1:5000/{user}/hello-app"));
    for tag in ["local", "latest", &updated.commit[..12]] {
        assert!(
            updated.tags.iter().any(|t| t == tag),
            "{tag}: {:?}",
            updated.tags
        );
    }
    let (digest, _) = registry_image(&format!("{user}/hello-app"), "local").await;
    assert_eq!(
        digest, updated.digest,
        "the registry holds what was reported"
    );
    assert!(
        !dir.join(".git").exists(),
        "nothing was written into the directory"
    );

    // Unchanged files: the same commit, answered from the registry.
    let again = build(&dir).await;
    assert!(again.ok, "{}", again.stderr);
    let cached: ImageUpdated = serde_json::from_str(&again.stdout).expect("JSON");
    assert!(cached.cached, "{}", again.stderr);
    assert_eq!(cached.commit, updated.commit);

    std::fs::write(dir.join("hello.txt"), format!("{marker}-changed")).expect("write");
    let changed = build(&dir).await;
    assert!(changed.ok, "{}", changed.stderr);
    let rebuilt: ImageUpdated = serde_json::from_str(&changed.stdout).expect("JSON");
    assert_ne!(rebuilt.commit, updated.commit);
    assert!(!rebuilt.cached);

    // A directory without a recipe is the user's to fix, said plainly.
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    std::fs::write(empty.join("README"), "nothing to build").expect("write");
    let mut cmd = cli(data.path());
    cmd.args([
        "build",
        "--user-id",
        &user,
        "--dockerfile",
        "Nope.Dockerfile",
    ])
    .arg(&empty);
    let failed = run(cmd).await;
    assert!(!failed.ok);
    assert!(
        failed.stderr.contains("build failed (user fault)"),
        "{}",
        failed.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_commands_list_show_follow_cancel_and_rebuild() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/cli");
    let marker = unique("said-");
    repo.commit(
        &[(
            "Dockerfile",
            &format!("FROM localhost/busybox:latest\nRUN echo {marker}\n"),
        )],
        "one",
    );
    repo.checkout_new_branch("slow");
    repo.commit(
        &[(
            "Dockerfile",
            "FROM localhost/busybox:latest\nRUN echo started-sleeping && sleep 866\n",
        )],
        "slow",
    );
    repo.checkout("main");
    repo.push();
    let stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &[]).await;
    let data = tempfile::tempdir().expect("data dir");
    let user = unique("u");
    let command = |args: &[&str]| {
        let mut cmd = cli(data.path());
        cmd.env("IMAGE_BUILDER_API", &api.base)
            .env("IMAGE_BUILDER_API_KEY", &api.key)
            .args(args);
        cmd
    };

    let (status, _) = api
        .post_json(
            "/v1/builds",
            &json!({"id": "cli-one", "repo": "acme/cli", "user_id": user}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    api.wait_state("cli-one", "succeeded", BUILD_TIMEOUT).await;

    let listed = run(command(&["list", "--repo", "acme/cli"])).await;
    assert!(listed.ok, "{}", listed.stderr);
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", listed.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("cli-one") && l.contains("succeeded")),
        "{}",
        listed.stdout
    );
    let shown = run(command(&["status", "cli-one"])).await;
    assert!(shown.ok, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("podman pull 127.0.0.1:5000/"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("queued -> running -> succeeded"),
        "{}",
        shown.stdout
    );
    let logs = run(command(&["logs", "cli-one"])).await;
    assert!(logs.stdout.contains(&marker), "{}", logs.stdout);

    // A key the API does not know: refused, and the message says where the key comes from.
    let mut wrong = command(&["list"]);
    wrong.env("IMAGE_BUILDER_API_KEY", "not-a-key");
    let refused = run(wrong).await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("IMAGE_BUILDER_API_KEY"),
        "{}",
        refused.stderr
    );
    let missing = run(command(&["status", "no-such-build"])).await;
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains("no-such-build"),
        "{}",
        missing.stderr
    );

    // Follow a running build's log live, then cancel it from the command line.
    let (status, _) = api
        .post_json(
            "/v1/builds",
            &json!({"id": "cli-slow", "repo": "acme/cli", "ref": "slow", "user_id": user}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    api.wait_state("cli-slow", "running", BUILD_TIMEOUT).await;
    let mut follower = command(&["logs", "cli-slow", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("follower");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let saw_it_running = tokio::time::timeout(BUILD_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("line") {
            if line.contains("started-sleeping") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the running build's line arrives");
    assert!(saw_it_running, "{}", api.worker.log());
    let cancelled = run(command(&["cancel", "cli-slow"])).await;
    assert!(cancelled.ok, "{}", cancelled.stderr);
    assert!(
        cancelled.stdout.starts_with("cli-slow: "),
        "{}",
        cancelled.stdout
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), follower.wait())
        .await
        .expect("the follower ends with the build")
        .expect("exit");
    assert!(ended.success());
    api.wait_state("cli-slow", "cancelled", Duration::from_secs(30))
        .await;

    let rebuilt = run(command(&["rebuild", "cli-one", "--follow"])).await;
    assert!(rebuilt.ok, "{}\n{}", rebuilt.stdout, rebuilt.stderr);
    let new_id = rebuilt.stdout.trim();
    assert_ne!(new_id, "cli-one");
    assert!(
        rebuilt.stderr.contains(&marker),
        "the new build's log: {}",
        rebuilt.stderr
    );
    let (_, record) = api.get_json(&format!("/v1/builds/{new_id}")).await;
    assert_eq!(record["rebuild_of"], "cli-one", "{record}");
    api.worker.shutdown().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_wait_streams_the_builds_log() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/streamed");
    let marker = unique("streamed-");
    repo.commit(
        &[(
            "Dockerfile",
            &format!("FROM localhost/busybox:latest\nRUN echo {marker}\n"),
        )],
        "one",
    );
    repo.push();
    let stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &[]).await;
    let data = tempfile::tempdir().expect("data dir");
    let mut cmd = cli(data.path());
    cmd.env("IMAGE_BUILDER__AMQP__PREFIX", &stack.prefix)
        .env("IMAGE_BUILDER_API_KEY", &api.key)
        .args([
            "submit",
            "--repo",
            "acme/streamed",
            "--user-id",
            &unique("u"),
        ])
        .args(["--wait", "--api", &api.base]);
    let submitted = run(cmd).await;
    assert!(submitted.ok, "{}\n{}", submitted.stderr, api.worker.log());
    assert!(
        submitted.stderr.contains(&marker),
        "the build's output, not just event names:\n{}",
        submitted.stderr
    );
    let outcome: Value = serde_json::from_str(&submitted.stdout).expect("outcome JSON");
    assert_eq!(outcome["event"], "image.updated", "{outcome}");
    api.worker.shutdown().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_and_man_pages_come_from_the_flags() {
    let data = tempfile::tempdir().expect("data dir");
    let mut cmd = cli(data.path());
    cmd.args(["completions", "bash"]);
    let bash = run(cmd).await;
    assert!(bash.ok, "{}", bash.stderr);
    for word in ["image-builder", "build", "--follow", "--token-env"] {
        assert!(bash.stdout.contains(word), "{word} is not completed");
    }
    let mut cmd = cli(data.path());
    cmd.arg("man");
    let page = run(cmd).await;
    assert!(page.ok, "{}", page.stderr);
    assert!(page.stdout.contains(".TH image-builder"), "{}", page.stdout);
    let pages = tempfile::tempdir().expect("pages");
    let mut cmd = cli(data.path());
    cmd.args(["man", "--dir"]).arg(pages.path());
    assert!(run(cmd).await.ok);
    for page in [
        "image-builder.1",
        "image-builder-build.1",
        "image-builder-logs.1",
    ] {
        assert!(pages.path().join(page).is_file(), "{page} was not written");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn build_repo_builds_a_ref_of_a_repository_with_no_broker() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/cli-repo");
    let marker = unique("tagged-");
    let tagged = repo.commit(
        &[(
            "Dockerfile",
            &format!("FROM localhost/busybox:latest\nRUN echo {marker}\n"),
        )],
        "one",
    );
    repo.tag("v1.0.0");
    repo.commit(&[("later.txt", "later")], "two");
    repo.push();
    let data = tempfile::tempdir().expect("data dir");
    let mut cmd = cli(data.path());
    cmd.env(
        "IMAGE_BUILDER__AMQP__URL",
        "amqp://guest:guest@127.0.0.1:1/%2f",
    )
    .env("IMAGE_BUILDER__CONNECTORS__GITHUB__BASE_URL", &git.base_url)
    .args([
        "build",
        "--repo",
        "acme/cli-repo",
        "--ref",
        "v1.0.0",
        "--json",
    ])
    .args(["--user-id", &unique("u")]);
    let built = run(cmd).await;
    assert!(built.ok, "{}\n{}", built.stdout, built.stderr);
    let updated: ImageUpdated = serde_json::from_str(&built.stdout).expect("image.updated JSON");
    assert_eq!(updated.commit, tagged, "the tag, not the branch head");
    assert!(
        updated.tags.iter().any(|t| t == "v1.0.0"),
        "{:?}",
        updated.tags
    );
    assert!(built.stderr.contains(&marker), "{}", built.stderr);
}
