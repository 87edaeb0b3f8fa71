//! Tenant boundaries of the HTTP API and the GitHub webhook, attacked for real: the binary in `run`
//! mode with keys scoped to different users, the broker, the registry, podman and the git server.

use std::time::Duration;

use image_builder::events::Event;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::api::{Caller, postgres_database, sign_github};
use crate::support::{Api, GitServer, RepoFixture, Stack, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

fn ids(page: &Value) -> Vec<&str> {
    page["builds"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["id"].as_str()).collect())
        .unwrap_or_default()
}

/// Another tenant's build answers exactly as an unknown id does.
fn assert_hidden(status: StatusCode, body: &Value, id: &str, what: &str) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
    assert_eq!(
        *body,
        json!({"error": {"code": "not_found", "message": format!("build {id:?} not found")}}),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_scoped_to_different_users_cannot_see_or_touch_each_others_builds() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/shared");
    repo.commit(&[("Dockerfile", "FROM localhost/busybox:latest\n")], "one");
    repo.push();
    let mut stack = Stack::new().await;
    let (ua, ub, uc) = (unique("ua"), unique("ub"), unique("uc"));
    let api = Api::spawn_scoped(
        &stack,
        &git,
        &[],
        &[
            ("submit", ua.as_str()),
            ("submit", ub.as_str()),
            ("read", ua.as_str()),
            ("admin", ua.as_str()),
            ("read", uc.as_str()),
        ],
    )
    .await;
    let a = api.as_key(&api.scoped[0]);
    let b = api.as_key(&api.scoped[1]);
    let read_a = api.as_key(&api.scoped[2]);
    let admin_a = api.as_key(&api.scoped[3]);
    let c = api.as_key(&api.scoped[4]);
    let admin = api.admin();

    // Refused submits start nothing.
    let (status, body) = a
        .post_json("/v1/builds", &json!({"repo": "acme/shared", "user_id": ub}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["field"], "user_id");
    let (status, body) = read_a
        .post_json("/v1/builds", &json!({"repo": "acme/shared", "user_id": ua}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("\"read\""), "names the role: {body}");
    let (_, none) = admin.get_json("/v1/builds").await;
    assert_eq!(
        ids(&none),
        Vec::<&str>::new(),
        "refused submits queued nothing"
    );

    // One build each, of the same repository; B's finishes last, so it is the newest image.
    let (ida, idb) = (unique("a-"), unique("b-"));
    for (caller, id, user) in [(&a, &ida, &ua), (&b, &idb, &ub)] {
        let (status, body) = caller
            .post_json(
                "/v1/builds",
                &json!({"id": id, "repo": "acme/shared", "user_id": user}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let Event::ImageUpdated(_) = stack.outcome(id, BUILD_TIMEOUT).await else {
            panic!("expected {id} to build:\n{}", api.worker.log());
        };
        api.wait_state(id, "succeeded", Duration::from_secs(10))
            .await;
    }

    // Lists show only the key's own builds, whatever the filter asks for.
    assert_eq!(ids(&a.get_json("/v1/builds").await.1), [ida.as_str()]);
    assert_eq!(ids(&b.get_json("/v1/builds").await.1), [idb.as_str()]);
    assert_eq!(ids(&read_a.get_json("/v1/builds").await.1), [ida.as_str()]);
    let (status, other) = a.get_json(&format!("/v1/builds?user_id={ub}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&other), Vec::<&str>::new(), "{other}");
    let (_, nothing) = c.get_json("/v1/builds").await;
    assert_eq!(ids(&nothing), Vec::<&str>::new());
    let (_, all) = admin.get_json("/v1/builds").await;
    assert_eq!(
        ids(&all),
        [idb.as_str(), ida.as_str()],
        "the admin key sees both"
    );

    // B's build, through A's keys: as if it did not exist.
    let (status, body) = a.get_json(&format!("/v1/builds/{idb}")).await;
    assert_hidden(status, &body, &idb, "details");
    let (status, body) = a.get_json(&format!("/v1/builds/{idb}/logs")).await;
    assert_hidden(status, &body, &idb, "logs");
    let (status, body) = a
        .send(Method::POST, &format!("/v1/builds/{idb}/cancel"))
        .await;
    assert_hidden(status, &body, &idb, "cancel");
    let (status, body) = a
        .post_json(&format!("/v1/builds/{idb}/rebuild"), &json!({}))
        .await;
    assert_hidden(status, &body, &idb, "rebuild");
    let (status, body) = admin_a
        .send(Method::DELETE, &format!("/v1/builds/{idb}"))
        .await;
    assert_hidden(
        status,
        &body,
        &idb,
        "delete by an admin key of another user",
    );
    let (status, _) = b.get_json(&format!("/v1/builds/{idb}")).await;
    assert_eq!(status, StatusCode::OK, "B's build is untouched");

    // Roles: a read key neither cancels nor rebuilds its own; a submit key does not delete.
    let (status, body) = read_a
        .post_json(&format!("/v1/builds/{ida}/rebuild"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = read_a
        .send(Method::POST, &format!("/v1/builds/{ida}/cancel"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = a.send(Method::DELETE, &format!("/v1/builds/{ida}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Image lookup, repos and versions: each tenant gets its own image only.
    async fn image_of(caller: &Caller<'_>) -> (StatusCode, Value) {
        caller.get_json("/v1/images?repo=acme/shared").await
    }
    let (status, image) = image_of(&a).await;
    assert_eq!(status, StatusCode::OK, "{image}");
    assert_eq!(image["build_id"], ida.as_str(), "not B's newer image");
    let (_, image) = image_of(&admin).await;
    assert_eq!(image["build_id"], idb.as_str());
    let (status, _) = image_of(&c).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "C has built nothing");
    let (_, versions) = a.get_json("/v1/repos/acme/shared/versions").await;
    let built: Vec<&str> = versions["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["build_id"].as_str())
        .collect();
    assert_eq!(built, [ida.as_str()]);
    let (status, _) = c.get_json("/v1/repos/acme/shared/versions").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(c.get_json("/v1/repos").await.1["repos"], json!([]));
    assert_eq!(a.get_json("/v1/repos").await.1["repos"][0]["builds"], 1);

    // The admin key of A's user deletes A's build.
    let (status, _) = admin_a
        .send(Method::DELETE, &format!("/v1/builds/{ida}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    api.worker.shutdown().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_build_mapped_repositories_once_and_refuse_oversize_bodies_unsigned() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/mapped");
    let commit = repo.commit(&[("Dockerfile", "FROM localhost/busybox:latest\n")], "one");
    repo.push();
    let stranger = RepoFixture::create(git.root.path(), "acme/stranger");
    let stranger_commit =
        stranger.commit(&[("Dockerfile", "FROM localhost/busybox:latest\n")], "s");
    stranger.push();
    let mut stack = Stack::new().await;
    let secret = unique("hook-");
    let tenant = unique("t");
    let mapping = format!("Acme/Mapped={tenant}");
    // Seen deliveries live in the store replicas share.
    let store = postgres_database().await;
    let api = Api::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__STORE__URL", store.as_str()),
            ("IMAGE_BUILDER__WEBHOOKS__GITHUB_SECRET", secret.as_str()),
            ("IMAGE_BUILDER__WEBHOOKS__GITHUB_REPOS", mapping.as_str()),
            ("IMAGE_BUILDER__WEBHOOKS__MAX_BODY_BYTES", "8192"),
        ],
    )
    .await;
    let hook = |event: &str, body: String, signature: String, delivery: &str| {
        api.client
            .post(format!("{}/v1/webhooks/github", api.base))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", signature)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    // The owner login is the tenant's own user id: it must still not decide who the build is for.
    let push = |name: &str, after: &str| {
        json!({"ref": "refs/heads/main", "after": after, "deleted": false,
               "repository": {"full_name": name, "owner": {"login": tenant}}})
        .to_string()
    };

    let ping = json!({"zen": "Keep it logically awesome.", "hook_id": 1}).to_string();
    let response = hook(
        "ping",
        ping.clone(),
        sign_github(&secret, ping.as_bytes()),
        "p-1",
    )
    .await
    .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);

    // Over the limit with a signature that does not match: 413, so the signature was never
    // computed (a checked one would answer 401).
    let huge = format!("{{\"padding\": \"{}\"}}", "x".repeat(9000));
    let response = hook("push", huge, "sha256=00".into(), "big-1")
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"]["field"], "body", "{body}");

    let unmapped = push("acme/stranger", &stranger_commit);
    let response = hook(
        "push",
        unmapped.clone(),
        sign_github(&secret, unmapped.as_bytes()),
        "s-1",
    )
    .await
    .expect("answer");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.expect("JSON");
    assert!(
        answer["ignored"]
            .as_str()
            .is_some_and(|w| w.contains("not configured")),
        "{answer}"
    );
    let (_, none) = api.get_json("/v1/builds").await;
    assert_eq!(ids(&none), Vec::<&str>::new(), "an unmapped push built");

    let body = push("acme/mapped", &commit);
    let signature = sign_github(&secret, body.as_bytes());
    let response = hook("push", body.clone(), signature.clone(), "d-1")
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let Event::ImageUpdated(updated) = stack.outcome("gh-d-1", BUILD_TIMEOUT).await else {
        panic!("expected the mapped push to build:\n{}", api.worker.log());
    };
    assert_eq!(updated.build.user_id.as_deref(), Some(tenant.as_str()));
    assert_eq!(updated.commit, commit);

    // Replays: the same delivery, and the same signed body under a fresh delivery id.
    for delivery in ["d-1", "d-2"] {
        let response = hook("push", body.clone(), signature.clone(), delivery)
            .await
            .expect("answer");
        assert_eq!(response.status(), StatusCode::OK, "replay as {delivery}");
        let answer: Value = response.json().await.expect("JSON");
        assert_eq!(answer["duplicate"], true, "{answer}");
    }
    let (_, all) = api.get_json("/v1/builds").await;
    assert_eq!(ids(&all), ["gh-d-1"], "a replay started a build");
    api.worker.shutdown().await;
    stack.cleanup().await;
}
