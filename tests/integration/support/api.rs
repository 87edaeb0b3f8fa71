//! The real binary in `run` mode (worker + HTTP API) on a free port, with a random admin API key
//! (every user id), optionally more keys with scopes, and an HTTP client that sends one of them.

use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

use super::{GitServer, Stack, Worker, unique};

pub struct Api {
    pub worker: Worker,
    pub base: String,
    /// An admin key for every user id (`api.key_hashes`).
    pub key: String,
    /// One key per scope given to `spawn_scoped`, in that order.
    pub scoped: Vec<String>,
    pub client: reqwest::Client,
}

/// Requests sent with one particular key.
pub struct Caller<'a> {
    api: &'a Api,
    key: &'a str,
}

/// GitHub's X-Hub-Signature-256 of `body` under `secret`.
pub fn sign_github(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub const POSTGRES_ADMIN_URL: &str =
    "postgres://image_builder:image_builder@127.0.0.1:5432/image_builder";

/// A fresh PostgreSQL database for one test; returns its URL.
pub async fn postgres_database() -> String {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable ({e}); start the services with `scripts/services.sh up`")
        });
    let name = unique("ibt_");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    format!("postgres://image_builder:image_builder@127.0.0.1:5432/{name}")
}

impl Api {
    pub async fn spawn(stack: &Stack, git: &GitServer, extra_env: &[(&str, &str)]) -> Self {
        Self::spawn_scoped(stack, git, extra_env, &[]).await
    }

    /// Also configures one key per `(role, users)` (users comma-separated; "*" for every user id)
    /// through the compact env form `IMAGE_BUILDER__API__KEYS`, as an operator would.
    pub async fn spawn_scoped(
        stack: &Stack,
        git: &GitServer,
        extra_env: &[(&str, &str)],
        scopes: &[(&str, &str)],
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let key = format!("key-{}", unique(""));
        let hash = image_builder::api::hash_key(&key);
        let scoped: Vec<String> = scopes
            .iter()
            .map(|(role, _)| format!("key-{role}-{}", unique("")))
            .collect();
        let compact: Vec<String> = scoped
            .iter()
            .zip(scopes)
            .map(|(k, (role, users))| format!("{}:{role}:{users}", image_builder::api::hash_key(k)))
            .collect();
        let compact = compact.join(";");
        let mut env = vec![
            ("IMAGE_BUILDER__API__LISTEN", listen.as_str()),
            ("IMAGE_BUILDER__API__KEY_HASHES", hash.as_str()),
        ];
        if !scopes.is_empty() {
            env.push(("IMAGE_BUILDER__API__KEYS", compact.as_str()));
        }
        env.extend_from_slice(extra_env);
        let worker = Worker::start("run", stack, git, &env).await;
        let api = Self {
            worker,
            base: format!("http://{listen}"),
            key,
            scoped,
            client: reqwest::Client::new(),
        };
        api.wait_ready().await;
        api
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the API did not get ready:\n{}", self.worker.log());
    }

    /// Requests with the admin key.
    pub fn admin(&self) -> Caller<'_> {
        self.as_key(&self.key)
    }

    /// Requests with `key`.
    pub fn as_key<'a>(&'a self, key: &'a str) -> Caller<'a> {
        Caller { api: self, key }
    }

    /// A request with the admin key.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.admin().request(method, path)
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        self.admin().get_json(path).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.admin().post_json(path, body).await
    }

    pub async fn text(&self, path: &str) -> String {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .expect("API answers");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.text().await.expect("text body")
    }

    /// Polls a build until it is in `state`.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, build) = self.get_json(&format!("/v1/builds/{id}")).await;
            if status == StatusCode::OK && build["state"] == state {
                return build;
            }
            assert!(
                Instant::now() < deadline,
                "build {id} not {state} within {timeout:?}: {build}\n{}",
                self.worker.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Caller<'_> {
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.api
            .client
            .request(method, format!("{}{path}", self.api.base))
            .bearer_auth(self.key)
    }

    /// Any method, no body; returns status and JSON body (Null when not JSON).
    pub async fn send(&self, method: Method, path: &str) -> (StatusCode, Value) {
        let response = self
            .request(method, path)
            .send()
            .await
            .expect("API answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .request(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("API answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}
