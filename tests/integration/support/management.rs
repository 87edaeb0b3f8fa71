//! RabbitMQ's management HTTP API on loopback (guest/guest), for what AMQP cannot do: users and
//! their permissions, closing a client's connections, a queue's effective policy.

use image_builder::percent::encode_component;
use serde_json::{Value, json};

const BASE: &str = "http://127.0.0.1:15672/api";

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    let response = request
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API answers (scripts/services.sh up)");
    assert!(
        response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND,
        "management API: {}",
        response.status()
    );
    response
}

/// A broker user of one test, deleted when dropped (a failing test included).
pub struct BrokerUser {
    pub name: String,
    /// Its AMQP URL.
    pub url: String,
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-u", "guest:guest", "-X", "DELETE"])
            .arg(format!("{BASE}/users/{}", self.name))
            .status();
    }
}

/// A broker user with full rights on `/` who may also set policies.
pub async fn create_user(name: &str, password: &str) -> BrokerUser {
    send(client().put(format!("{BASE}/users/{name}")).json(&json!({
        "password": password,
        "tags": "policymaker",
    })))
    .await;
    grant(name).await;
    BrokerUser {
        name: name.to_owned(),
        url: format!("amqp://{name}:{password}@127.0.0.1:5672/%2f"),
    }
}

pub async fn grant(name: &str) {
    send(
        client()
            .put(format!("{BASE}/permissions/%2F/{name}"))
            .json(&json!({"configure": ".*", "write": ".*", "read": ".*"})),
    )
    .await;
}

/// From now on the user cannot open a connection on `/` (existing ones stay open).
pub async fn revoke(name: &str) {
    send(client().delete(format!("{BASE}/permissions/%2F/{name}"))).await;
}

/// Closes every connection of `user`; returns how many there were.
pub async fn close_connections_of(user: &str) -> usize {
    let connections: Vec<Value> = send(client().get(format!("{BASE}/connections")))
        .await
        .json()
        .await
        .expect("connections JSON");
    let mut closed = 0;
    for connection in connections.iter().filter(|c| c["user"] == user) {
        let Some(name) = connection["name"].as_str() else {
            continue;
        };
        let name = encode_component(name);
        send(client().delete(format!("{BASE}/connections/{name}"))).await;
        closed += 1;
    }
    closed
}

/// The queue as the management API shows it (consumers, effective_policy_definition...).
pub async fn queue(name: &str) -> Value {
    send(client().get(format!("{BASE}/queues/%2F/{}", encode_component(name))))
        .await
        .json()
        .await
        .expect("queue JSON")
}
