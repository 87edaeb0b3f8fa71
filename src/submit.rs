//! `submit`: publish a build request and, optionally, wait for its outcome event.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use serde_json::{Map, Value};

use crate::amqp::{self, MessageMeta, Publisher, Topology};
use crate::config::Settings;
use crate::events::Event;

/// Makes sure the request has an `id` (so its events can be found) and returns it.
pub fn ensure_id(body: &mut Map<String, Value>) -> String {
    match body.get("id").and_then(Value::as_str) {
        Some(id) => id.to_owned(),
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            body.insert("id".into(), Value::String(id.clone()));
            id
        }
    }
}

/// Publishes `body`; with `wait`, returns the terminal event for its id (or an error on timeout).
/// `on_progress` sees the non-terminal events (started, retrying) as they arrive.
pub async fn submit(
    settings: &Settings,
    mut body: Map<String, Value>,
    wait: Option<Duration>,
    mut on_progress: impl FnMut(&Event),
) -> anyhow::Result<(String, Option<Event>)> {
    let id = ensure_id(&mut body);
    let topology = Arc::new(Topology::from_settings(settings));
    let connection = amqp::Brokers::from_settings(&settings.amqp)
        .connect("image-builder submit")
        .await?;
    topology.declare(&connection).await?;
    let channel = connection.create_channel().await?;

    // Listen before publishing so a fast build's events cannot be missed.
    let mut events = match wait {
        None => None,
        Some(_) => Some(topology.subscribe_events(&channel).await?),
    };

    let publisher = Publisher::open(&connection, topology.clone()).await?;
    let payload = serde_json::to_vec(&Value::Object(body))?;
    let meta = MessageMeta {
        attempt: 1,
        request_id: Some(id.clone()),
        ..MessageMeta::default()
    };
    publisher.request(&payload, meta.to_headers()).await?;

    let (Some(timeout), Some(consumer)) = (wait, events.as_mut()) else {
        let _ = connection.close(200, "done".into()).await;
        return Ok((id, None));
    };
    let outcome = tokio::time::timeout(timeout, async {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
            let Ok(event) = serde_json::from_slice::<Event>(&delivery.data) else {
                continue;
            };
            if event.build().request_id != id {
                continue;
            }
            if event.is_terminal() {
                return anyhow::Ok(event);
            }
            on_progress(&event);
        }
        anyhow::bail!("the broker closed the events stream")
    })
    .await;
    let _ = connection.close(200, "done".into()).await;
    match outcome {
        Ok(event) => Ok((id, Some(event?))),
        Err(_) => anyhow::bail!("no outcome for request {id} within {timeout:?}"),
    }
}
