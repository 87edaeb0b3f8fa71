//! Build secrets: mounted for `RUN --mount=type=secret` steps, and found nowhere afterwards: in
//! no blob of the pushed image (layers, config, history), no log, event or stored record.

use std::io::Read;
use std::time::Duration;

use image_builder::events::Event;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{
    Api, GitServer, REGISTRY, RepoFixture, Stack, assert_secret_absent, encoded_forms, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

const USES_A_SECRET: &str = "FROM localhost/busybox:latest\n\
RUN --mount=type=secret,id=npmrc sha256sum /run/secrets/npmrc | cut -d' ' -f1 > /npmrc.sha256 \
 && echo printing && cat /run/secrets/npmrc && echo\n\
COPY app.txt /app.txt\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_build_secret_reaches_its_step_and_no_blob_log_or_record() {
    let git = GitServer::start().await;
    let fixture = RepoFixture::create(git.root.path(), "acme/npm");
    fixture.commit(
        &[("Dockerfile", USES_A_SECRET), ("app.txt", "app\n")],
        "one",
    );
    fixture.push();
    let mut stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &[]).await;
    let secret = format!("//registry.npmjs.org/:_authToken=npm_{}", unique(""));
    let id = unique("sec-");
    stack
        .publish_json(&json!({
            "id": id, "repo": "acme/npm", "user_id": unique("u"),
            "secrets": {"npmrc": secret},
        }))
        .await;
    let event = stack.outcome(&id, BUILD_TIMEOUT).await;
    let Event::ImageUpdated(built) = event else {
        panic!(
            "expected image.updated, got {event:?}\n{}",
            api.worker.log()
        );
    };

    // Every blob of the pushed image, layers unpacked.
    let blobs = image_blobs(&built.image, &built.digest).await;
    let expected = hex::encode(Sha256::digest(secret.as_bytes()));
    assert!(
        blobs.iter().any(|b| contains(b, expected.as_bytes())),
        "the step saw the secret (its digest is in a layer)"
    );
    for form in encoded_forms(&secret) {
        for blob in &blobs {
            assert!(
                !contains(blob, form.as_bytes()),
                "a blob of the image holds the secret as {form:?}"
            );
        }
    }
    // The step printed it: the stored log has the line, masked.
    let log = api.text(&format!("/v1/builds/{id}/logs")).await;
    assert!(log.contains("printing"), "{log}");
    assert!(log.contains("[REDACTED]"), "{log}");
    assert!(!log.contains(&secret), "{log}");
    let record = api.text(&format!("/v1/builds/{id}")).await;
    assert!(!record.contains(&secret), "{record}");
    assert_secret_absent(&secret, &api.worker, &stack);

    // Another tenant, same Dockerfile, its own secret: podman's layer cache (keyed by the
    // step's text) must not hand it the layer the first secret made.
    let theirs = format!("//registry.npmjs.org/:_authToken=npm_{}", unique(""));
    let other = unique("sec-");
    stack
        .publish_json(&json!({
            "id": other, "repo": "acme/npm", "user_id": unique("v"),
            "secrets": {"npmrc": theirs},
        }))
        .await;
    let Event::ImageUpdated(second) = stack.outcome(&other, BUILD_TIMEOUT).await else {
        panic!("the second tenant's build failed\n{}", api.worker.log());
    };
    let blobs = image_blobs(&second.image, &second.digest).await;
    let first_digest = expected;
    let theirs_digest = hex::encode(Sha256::digest(theirs.as_bytes()));
    assert!(blobs.iter().any(|b| contains(b, theirs_digest.as_bytes())));
    assert!(
        !blobs.iter().any(|b| contains(b, first_digest.as_bytes())),
        "the second tenant's image holds a layer made with the first tenant's secret"
    );
    api.worker.stop().await;
    stack.cleanup().await;
}

/// The manifest, the config and every layer (gunzipped) of `image@digest` in the test registry.
async fn image_blobs(image: &str, digest: &str) -> Vec<Vec<u8>> {
    let name = image
        .strip_prefix(&format!("{REGISTRY}/"))
        .unwrap_or_else(|| panic!("{image} is not in {REGISTRY}"));
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("http://{REGISTRY}/v2/{name}/{path}"))
                .header(
                    "accept",
                    "application/vnd.oci.image.manifest.v1+json, \
                     application/vnd.docker.distribution.manifest.v2+json",
                )
                .send()
                .await
                .expect("registry answers");
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
            response.bytes().await.expect("body").to_vec()
        }
    };
    let manifest_bytes = get(format!("manifests/{digest}")).await;
    let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("manifest JSON");
    let mut blobs = vec![manifest_bytes];
    let config = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    blobs.push(get(format!("blobs/{config}")).await);
    for layer in manifest["layers"].as_array().expect("layers") {
        let digest = layer["digest"].as_str().expect("layer digest");
        let bytes = get(format!("blobs/{digest}")).await;
        let mut unpacked = Vec::new();
        match flate2::read::GzDecoder::new(bytes.as_slice()).read_to_end(&mut unpacked) {
            Ok(_) => blobs.push(unpacked),
            Err(_) => blobs.push(bytes),
        }
    }
    blobs
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
