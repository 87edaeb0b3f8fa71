//! The real binary in `run` mode (worker + HTTP API) on a free port, with a random API key, and an
//! HTTP client that sends it.

use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

use super::{GitServer, Stack, Worker, unique};

pub struct Api {
    pub worker: Worker,
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let key = format!("key-{}", unique(""));
        let hash = image_builder::api::hash_key(&key);
        let mut env = vec![
            ("IMAGE_BUILDER__API__LISTEN", listen.as_str()),
            ("IMAGE_BUILDER__API__KEY_HASHES", hash.as_str()),
        ];
        env.extend_from_slice(extra_env);
        let worker = Worker::start("run", stack, git, &env).await;
        let api = Self {
            worker,
            base: format!("http://{listen}"),
            key,
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

    /// A request with the API key.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    /// GET with the key; returns status and JSON body (Null when not JSON).
    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .expect("API answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
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
