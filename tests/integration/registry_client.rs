//! The registry client (`RegistryClient`) against registries of the test's own: a real
//! `docker-registry` with htpasswd basic auth and one with token auth (an in-process token
//! server), each behind a counting proxy, plus a fake that serves content not matching its
//! digest. Only 127.0.0.1 is contacted.

pub(crate) mod fake;
mod processes;
mod proxy;
mod token_server;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use image_builder::config::RegistrySettings;
use image_builder::error::RegistryError;
use image_builder::ports::{ImageRegistry, Manifest, content_digest};
use image_builder::registry::RegistryClient;
use secrecy::SecretString;

use processes::{Registry, write_file};
use proxy::Proxy;
use token_server::TokenServer;

const USER: &str = "builder";
const PASSWORD: &str = "s3cret-registry-pw";

fn client(host: &str, password: &str) -> RegistryClient {
    RegistryClient::new(&RegistrySettings {
        host: host.to_owned(),
        insecure: true,
        username: USER.to_owned(),
        password: SecretString::from(password.to_owned()),
    })
}

/// A small image: a config from memory, a layer from a file, and the manifest naming them.
struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Manifest,
}

fn image() -> Image {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","id":"{}"}}"#,
        uuid::Uuid::new_v4()
    )
    .into_bytes();
    let layer: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": content_digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": content_digest(&layer), "size": layer.len()}],
    }))
    .expect("manifest json");
    Image {
        manifest: Manifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: content_digest(&bytes),
            bytes,
        },
        config,
        layer,
    }
}

/// Pushes `image` to `repository:tag` and reads all of it back, checking every byte.
async fn push_and_read(
    client: &RegistryClient,
    dir: &std::path::Path,
    repository: &str,
    tag: &str,
    image: &Image,
) {
    client
        .upload_blob(
            repository,
            &content_digest(&image.config),
            image.config.clone(),
        )
        .await
        .expect("config upload");
    let layer = write_file(dir, &format!("layer-{tag}"), &image.layer);
    client
        .upload_blob_file(
            repository,
            &content_digest(&image.layer),
            &layer,
            image.layer.len() as u64,
        )
        .await
        .expect("layer upload");
    client
        .tag(repository, tag, &image.manifest)
        .await
        .expect("tag");
    let read = client
        .manifest(repository, tag)
        .await
        .expect("manifest")
        .expect("manifest exists");
    assert_eq!(read.bytes, image.manifest.bytes);
    assert_eq!(read.digest, image.manifest.digest);
    let by_digest = client
        .manifest(repository, &image.manifest.digest)
        .await
        .expect("manifest by digest")
        .expect("exists");
    assert_eq!(by_digest.bytes, image.manifest.bytes);
    assert_eq!(
        client.digest(repository, tag).await.expect("head"),
        Some(image.manifest.digest.clone())
    );
    let config = client
        .blob(repository, &content_digest(&image.config))
        .await
        .expect("blob")
        .expect("blob exists");
    assert_eq!(config, image.config);
}

async fn basic_registry() -> (Registry, Proxy) {
    let proxy = Proxy::start().await;
    let mut registry = Registry::new(
        |dir| {
            let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
            let htpasswd = write_file(dir, "htpasswd", format!("{USER}:{hash}\n").as_bytes());
            format!(
                "  htpasswd:\n    realm: test-realm\n    path: {}\n",
                htpasswd.display()
            )
        },
        &proxy.addr,
    );
    proxy.point_at(&registry.addr);
    registry.start().await;
    (registry, proxy)
}

#[tokio::test]
async fn basic_auth_credentials_go_on_the_first_request_after_one_challenge() {
    let (registry, proxy) = basic_registry().await;
    let client = client(&proxy.addr, PASSWORD);
    let started = Instant::now();
    push_and_read(&client, registry.dir.path(), "team/app", "v1", &image()).await;
    let first = (proxy.counts.requests(), proxy.counts.unauthorized());
    push_and_read(&client, registry.dir.path(), "team/other", "v2", &image()).await;
    let total = (proxy.counts.requests(), proxy.counts.unauthorized());
    eprintln!(
        "basic auth: first image {} requests / {} 401s, both {} / {} in {:?}",
        first.0,
        first.1,
        total.0,
        total.1,
        started.elapsed()
    );
    // One challenge for the whole client, on its very first request; nothing more after.
    assert_eq!(total.1, 1, "exactly one 401 for the client's life");
    assert_eq!(
        proxy.counts.with_credentials(),
        total.0 - 1,
        "every request but the first carried the login"
    );
}

#[tokio::test]
async fn basic_auth_with_a_wrong_password_fails_without_retrying_the_login() {
    let (_registry, proxy) = basic_registry().await;
    let client = client(&proxy.addr, "wrong password");
    let err = client
        .manifest("team/app", "v1")
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, RegistryError::Status { status, .. } if status.as_u16() == 401),
        "{err:?}"
    );
    assert!(!format!("{err:?} {err}").contains("wrong password"));
    // The anonymous try and the one with the (refused) login: no loop.
    assert_eq!(proxy.counts.unauthorized(), 2);
    assert!(client.digest("team/app", "v1").await.is_err());
    // Known basic registry: the login goes first, refused once, not resent.
    assert_eq!(proxy.counts.unauthorized(), 3);
}

async fn token_registry(tokens: &TokenServer) -> (Registry, Proxy) {
    let proxy = Proxy::start().await;
    let mut registry = Registry::new(
        |dir| {
            let bundle = write_file(dir, "root.pem", &tokens.cert_pem());
            tokens.registry_auth(&bundle)
        },
        &proxy.addr,
    );
    proxy.point_at(&registry.addr);
    registry.start().await;
    (registry, proxy)
}

#[tokio::test]
async fn bearer_tokens_are_sent_first_and_refreshed_before_they_expire() {
    // Short-lived: 2 s (the registry itself allows 60 s of leeway past `exp`).
    let tokens = TokenServer::start(2).await;
    let (registry, proxy) = token_registry(&tokens).await;
    let client = client(&proxy.addr, PASSWORD);
    let image = image();
    let repo = "team/app";
    push_and_read(&client, registry.dir.path(), repo, "v1", &image).await;
    // Scopes: pull,push (uploads, tag) and pull (reads): one token each, one 401 in all (the
    // first request; after it the client knows the realm and fetches before sending).
    let fetched = tokens.tokens();
    assert_eq!(fetched, 2, "one token per scope");
    assert_eq!(proxy.counts.unauthorized(), 1);
    assert_eq!(
        tokens.issued.with_login.load(Ordering::SeqCst),
        fetched,
        "the login goes to the realm on the registry's host"
    );
    // Still valid: reused, nothing fetched.
    // The layer, not the config: the client keeps small blobs it uploaded and sends no request.
    client.digest(repo, "v1").await.expect("head");
    client
        .blob(repo, &content_digest(&image.layer))
        .await
        .expect("blob");
    assert_eq!(tokens.tokens(), fetched);
    // Past its refresh point (2 s less a tenth): a new token before the request, no 401.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    client
        .blob(repo, &content_digest(&image.layer))
        .await
        .expect("blob after expiry");
    assert_eq!(tokens.tokens(), fetched + 1, "refreshed once");
    assert_eq!(proxy.counts.unauthorized(), 1, "no 401 for a refresh");
    eprintln!(
        "token auth: {} requests, {} 401s, {} tokens",
        proxy.counts.requests(),
        proxy.counts.unauthorized(),
        tokens.tokens()
    );
}

#[tokio::test]
async fn a_cached_token_the_registry_rejects_is_replaced_once() {
    let tokens = TokenServer::start(300).await;
    let (mut registry, proxy) = token_registry(&tokens).await;
    let client = client(&proxy.addr, PASSWORD);
    let image = image();
    let repo = "team/app";
    push_and_read(&client, registry.dir.path(), repo, "v1", &image).await;
    let fetched = tokens.tokens();
    // The registry now trusts only a new key: every cached token is rejected.
    tokens.rotate_key();
    registry.stop();
    write_file(registry.dir.path(), "root.pem", &tokens.cert_pem());
    registry.start().await;
    let before = proxy.counts.unauthorized();
    // The layer, not the config: the client keeps small blobs it uploaded and sends no request.
    let read = client
        .blob(repo, &content_digest(&image.layer))
        .await
        .expect("blob with a replaced token")
        .expect("exists");
    assert_eq!(read, image.layer);
    assert_eq!(proxy.counts.unauthorized(), before + 1, "one rejection");
    assert_eq!(tokens.tokens(), fetched + 1, "one new token");
    // The replacement is cached in its turn.
    client.digest(repo, "v1").await.expect("head");
    assert_eq!(tokens.tokens(), fetched + 1);
    assert_eq!(proxy.counts.unauthorized(), before + 1);
}

#[tokio::test]
async fn catalog_and_tags_are_read_page_by_page_with_a_token_for_each() {
    let tokens = TokenServer::start(300).await;
    let (registry, proxy) = token_registry(&tokens).await;
    let client = client(&proxy.addr, PASSWORD).with_listing_page(2);
    let image = image();
    let repos = ["team/a", "team/b", "other/c"];
    for repo in repos {
        push_and_read(&client, registry.dir.path(), repo, "v1", &image).await;
    }
    for tag in ["v2", "latest"] {
        client
            .tag("team/a", tag, &image.manifest)
            .await
            .expect("tag");
    }
    let before = proxy.counts.requests();
    let mut listed = client.repositories().await.expect("catalog");
    // Two pages of 2 names (the registry links the second), no 401: the catalog scope's token
    // is fetched before the first request.
    assert_eq!(
        proxy.counts.requests() - before,
        2,
        "the catalog in two pages"
    );
    listed.sort();
    assert_eq!(listed, ["other/c", "team/a", "team/b"]);
    // Tag pages (`n`, `Link`) are followed the same way where the registry pages tags; this
    // registry version answers all tags at once.
    let mut tags = client
        .tags("team/a")
        .await
        .expect("tags")
        .expect("team/a exists");
    tags.sort();
    assert_eq!(tags, ["latest", "v1", "v2"]);
    assert_eq!(
        client.tags("team/absent").await.expect("tags of nothing"),
        None
    );
}

fn mismatch(result: Result<impl std::fmt::Debug, RegistryError>) -> String {
    match result {
        Err(RegistryError::DigestMismatch { what, .. }) => what,
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn content_that_does_not_match_its_digest_is_refused() {
    let fake = fake::Fake::start().await;
    let client = client(&fake.addr, PASSWORD);
    // By tag: the announced digest is checked against the bytes.
    mismatch(client.manifest("tampered", "latest").await);
    let honest = client
        .manifest("tampered", "honest")
        .await
        .expect("honest manifest")
        .expect("exists");
    assert_eq!(honest.digest, content_digest(fake::MANIFEST));
    // By digest: the bytes must be that digest.
    mismatch(
        client
            .manifest("tampered", &content_digest(fake::MANIFEST))
            .await,
    );
    mismatch(client.blob("tampered", &content_digest(b"the blob")).await);
    // Streamed (artifact downloads): the stream ends in the mismatch, never cleanly, and the
    // last chunk is held back for the check, so no reader gets the whole wrong blob.
    let mut stream = client
        .blob_stream("tampered", &content_digest(b"the blob"))
        .await
        .expect("an answer")
        .expect("the blob exists");
    let (mut received, mut ended) = (Vec::new(), None);
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream.chunks).await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(e) => {
                ended = Some(e);
                break;
            }
        }
    }
    mismatch(Err::<(), _>(ended.expect("the stream ends in an error")));
    assert!(
        received.len() < stream.len.map_or(1, |l| l as usize),
        "{received:?}"
    );
    let dir = tempfile::tempdir().expect("dir");
    mismatch(
        client
            .blob_to_file(
                "tampered",
                &content_digest(b"the blob"),
                &dir.path().join("b"),
            )
            .await,
    );
    // Writes: a different digest announced back is an error.
    let manifest = Manifest {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: fake::MANIFEST.to_vec(),
        digest: content_digest(fake::MANIFEST),
    };
    mismatch(client.tag("tampered", "v1", &manifest).await);
    mismatch(
        client
            .upload_blob("tampered", &content_digest(b"blob"), b"blob".to_vec())
            .await,
    );
}

#[tokio::test]
async fn a_retried_file_upload_sends_the_whole_file_again() {
    let fake = fake::Fake::start().await;
    let client = client(&fake.addr, PASSWORD);
    let dir = tempfile::tempdir().expect("dir");
    let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let path = write_file(dir.path(), "layer", &bytes);
    client
        .upload_blob_file("flaky", &content_digest(&bytes), &path, bytes.len() as u64)
        .await
        .expect("upload after one 500");
    let bodies = fake.seen.upload_bodies.lock().expect("bodies");
    assert_eq!(bodies.len(), 2, "one failed try, one good");
    assert!(
        bodies.iter().all(|b| *b == bytes),
        "both tries sent the whole file"
    );
}

/// Sessions started ahead (`prepare_uploads`) make each upload one request, the PUT; a
/// session the registry no longer knows is replaced by a new one, and the upload succeeds.
#[tokio::test]
async fn uploads_use_sessions_started_ahead_and_replace_ones_the_registry_forgot() {
    let (registry, proxy) = basic_registry().await;
    let client = client(&proxy.addr, PASSWORD);
    let dir = tempfile::tempdir().expect("dir");
    let image = image();
    // The first request learns the auth scheme (one 401): not part of what is counted.
    client.prepare_uploads("ahead", 2).await;
    let before = proxy.counts.requests();
    client
        .upload_blob(
            "ahead",
            &content_digest(&image.config),
            image.config.clone(),
        )
        .await
        .expect("config upload");
    let layer = write_file(dir.path(), "layer", &image.layer);
    client
        .upload_blob_file(
            "ahead",
            &content_digest(&image.layer),
            &layer,
            image.layer.len() as u64,
        )
        .await
        .expect("layer upload");
    assert_eq!(
        proxy.counts.requests() - before,
        2,
        "one PUT for each blob, no POST"
    );
    client
        .tag("ahead", "v1", &image.manifest)
        .await
        .expect("the manifest names blobs the registry has");

    // The registry forgets its upload sessions (as when it purges old ones).
    client.prepare_uploads("forgot", 1).await;
    std::fs::remove_dir_all(
        registry
            .dir
            .path()
            .join("data/docker/registry/v2/repositories/forgot/_uploads"),
    )
    .expect("the registry's upload sessions");
    let before = proxy.counts.requests();
    client
        .upload_blob(
            "forgot",
            &content_digest(&image.config),
            image.config.clone(),
        )
        .await
        .expect("uploaded through a new session");
    assert_eq!(
        proxy.counts.requests() - before,
        3,
        "the forgotten session's PUT, a new session, its PUT"
    );
    // Read by another client: this one keeps the small blobs it uploaded.
    let read = self::client(&proxy.addr, PASSWORD)
        .blob("forgot", &content_digest(&image.config))
        .await
        .expect("blob");
    assert_eq!(read, Some(image.config));
}
