//! The web console at `/`, against the real binary in `run` mode, the broker, the registry,
//! podman and the git server: its pages and headers over plain HTTP, the registry routes it
//! reads (tenant boundaries included), and Debian's chromium driven through it by Playwright
//! (tests/browser/console.mjs) while real builds run. The build page's screenshot is kept at
//! target/test-artifacts/console-build.png.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Api, GitServer, RepoFixture, Stack, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
/// Everything the browser does: two builds of seconds each, a cancel and a rebuild.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread")]
async fn console_page_shows_no_data_without_a_key_and_the_registry_routes_keep_tenants_apart() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/consoled");
    let commit = repo.commit(&[("Dockerfile", "FROM localhost/busybox:latest\n")], "one");
    repo.push();
    let stack = Stack::new().await;
    let (owner, other) = (unique("uo"), unique("ux"));
    let api = Api::spawn_scoped(
        &stack,
        &git,
        &[],
        &[
            ("submit", owner.as_str()),
            ("read", owner.as_str()),
            ("read", other.as_str()),
        ],
    )
    .await;
    let (submit, read_owner, read_other) = (
        api.as_key(&api.scoped[0]),
        api.as_key(&api.scoped[1]),
        api.as_key(&api.scoped[2]),
    );
    let image = unique("img");
    let (status, body) = submit
        .post_json(
            "/v1/builds",
            &json!({"repo": "acme/consoled", "user_id": owner, "image": image}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().expect("an id").to_owned();
    api.wait_state(&id, "succeeded", BUILD_TIMEOUT).await;

    // Without a key: the login page, its assets, strict headers, and none of the data.
    let page = api
        .client
        .get(format!("{}/", api.base))
        .send()
        .await
        .expect("answer");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = header(&page, "content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let html = page.text().await.expect("html");
    assert!(html.contains(r#"<label for="api-key">API key</label>"#));
    for secret in [id.as_str(), owner.as_str(), image.as_str(), "acme/consoled"] {
        assert!(
            !html.contains(secret),
            "the page without a key shows {secret}"
        );
    }
    for (path, content_type) in [
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
    ] {
        let asset = api
            .client
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .expect("answer");
        assert_eq!(asset.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&asset, "content-type"), content_type, "{path}");
        assert_eq!(header(&asset, "content-security-policy"), csp, "{path}");
        assert_eq!(header(&asset, "x-content-type-options"), "nosniff");
    }
    let anonymous = api
        .client
        .get(format!("{}/v1/registry/repositories", api.base))
        .send()
        .await
        .expect("answer");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // The owner's key lists the image and its tags, and nothing of another namespace.
    let name = format!("{owner}/{image}");
    let (status, listing) = read_owner.get_json("/v1/registry/repositories").await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    let names = repository_names(&listing);
    assert_eq!(
        names,
        std::slice::from_ref(&name),
        "the owner's key sees exactly its image"
    );
    assert_eq!(listing["repositories"][0]["namespace"], owner.as_str());
    assert_eq!(listing["registry"], crate::support::REGISTRY);
    let tags_path = format!("/v1/registry/repositories/{name}/tags");
    let (status, tags) = read_owner.get_json(&tags_path).await;
    assert_eq!(status, StatusCode::OK, "{tags}");
    let listed: Vec<&str> = tags["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t["tag"].as_str())
        .collect();
    assert!(listed.contains(&&commit[..12]), "{tags}");
    assert!(listed.iter().all(|t| !t.starts_with("ib-")), "{tags}");
    assert!(tags["internal_tags"].as_u64() >= Some(1), "{tags}");
    assert_eq!(
        tags["tags"][0]["pull"],
        format!(
            "podman pull {}/{name}:{}",
            crate::support::REGISTRY,
            listed[0]
        )
    );

    // Another user's key: not listed, and its tags answer exactly like a repository that does
    // not exist.
    let (status, listing) = read_other.get_json("/v1/registry/repositories").await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    assert!(
        repository_names(&listing).is_empty(),
        "another user's key lists {listing}"
    );
    let (status, hidden) = read_other.get_json(&tags_path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{hidden}");
    assert_eq!(
        hidden,
        json!({"error": {"code": "not_found", "message": format!("repository {name:?} not found")}})
    );
    let (status, missing) = read_owner
        .get_json(&format!("/v1/registry/repositories/{owner}/absent/tags"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    let (status, bad) = read_owner
        .get_json(&format!("/v1/registry/repositories/{owner}/Bad..Name/tags"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert_eq!(bad["error"]["field"], "name");

    // The admin key sees every namespace, this one among them.
    let (status, listing) = api.get_json("/v1/registry/repositories").await;
    assert_eq!(status, StatusCode::OK);
    assert!(repository_names(&listing).contains(&name), "{listing}");
    api.worker.shutdown().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn console_in_chromium_follows_a_running_build_and_cancels_one_from_its_page() {
    let script = manifest_dir().join("tests/browser/console.mjs");
    assert!(
        manifest_dir()
            .join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed: run scripts/browser-deps.sh (scripts/test.sh does)"
    );
    let git = GitServer::start().await;
    // A step podman has never run before, so its layer cache cannot answer it at once.
    let run = unique("run-");
    let fast = RepoFixture::create(git.root.path(), "acme/console-fast");
    let fast_dockerfile = format!(
        "FROM localhost/busybox:latest\n\
         RUN echo {run} && for i in 1 2 3 4 5; do echo line-$i; sleep 1; done\n"
    );
    fast.commit(
        &[("Dockerfile", fast_dockerfile.as_str())],
        "five lines, one a second",
    );
    fast.push();
    let slow = RepoFixture::create(git.root.path(), "acme/console-slow");
    let slow_dockerfile = format!(
        "FROM localhost/busybox:latest\n\
         RUN echo {run} && for i in $(seq 1 300); do echo tick-$i; sleep 1; done\n"
    );
    slow.commit(
        &[("Dockerfile", slow_dockerfile.as_str())],
        "five minutes of ticks",
    );
    slow.push();
    let stack = Stack::new().await;
    let user = unique("uc");
    let api = Api::spawn_scoped(&stack, &git, &[], &[("submit", user.as_str())]).await;
    let request = |repo: &str, id: &str| {
        json!({"id": id, "repo": repo, "user_id": user, "image": unique("console")}).to_string()
    };
    let (fast_id, slow_id) = (unique("console-fast-"), unique("console-slow-"));
    let artifacts = manifest_dir().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");
    let screenshot = artifacts.join("console-build.png");
    let _ = std::fs::remove_file(&screenshot);

    let browser = tokio::process::Command::new("node")
        .arg(&script)
        .env("CONSOLE_URL", &api.base)
        .env("CONSOLE_KEY", &api.scoped[0])
        .env("CONSOLE_USER", &user)
        .env("CONSOLE_FAST_BUILD", request("acme/console-fast", &fast_id))
        .env("CONSOLE_SLOW_BUILD", request("acme/console-slow", &slow_id))
        .env("CONSOLE_SCREENSHOT", &screenshot)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_TIMEOUT, browser)
        .await
        .expect("the browser run ends")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser run failed:\n{stdout}\n{}\n--- worker log ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        api.worker.log()
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no result line ({e}):\n{stdout}"));
    assert_eq!(seen["fast"], fast_id.as_str());
    assert_eq!(seen["slow"], slow_id.as_str());

    // What the page showed is what the API records.
    let fast_build = api
        .wait_state(&fast_id, "succeeded", Duration::from_secs(5))
        .await;
    assert!(fast_build["digest"].as_str().is_some(), "{fast_build}");
    let log = api.text(&format!("/v1/builds/{fast_id}/logs")).await;
    for i in 1..=5 {
        assert!(log.contains(&format!("line-{i}")), "{log}");
    }
    let slow_build = api
        .wait_state(&slow_id, "cancelled", Duration::from_secs(5))
        .await;
    let states: Vec<&str> = slow_build["states"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|s| s["state"].as_str())
        .collect();
    assert_eq!(states, ["queued", "running", "cancelled"]);
    let rebuild = seen["rebuild"].as_str().expect("rebuild id");
    let rebuilt = api
        .wait_state(rebuild, "cancelled", Duration::from_secs(5))
        .await;
    assert_eq!(rebuilt["rebuild_of"], slow_id.as_str());

    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    api.worker.shutdown().await;
    stack.cleanup().await;
}

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn repository_names(listing: &Value) -> Vec<String> {
    listing["repositories"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
