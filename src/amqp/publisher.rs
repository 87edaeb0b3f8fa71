//! Publishing with publisher confirms: a call returns only once the broker has the message.

use std::sync::Arc;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use super::topology::{AFFINITY_HEADER, BUILD_ROUTING_KEY, Topology};
use crate::events::Event;
use crate::request::RequestSummary;

const PERSISTENT: u8 = 2;

#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    topology: Arc<Topology>,
}

impl Publisher {
    /// Opens a channel of its own in confirm mode.
    pub async fn open(conn: &Connection, topology: Arc<Topology>) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel, topology })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub async fn event(&self, event: &Event) -> anyhow::Result<()> {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(event.build().build_id.as_str().into());
        self.publish(
            &self.topology.events_exchange,
            event.routing_key(),
            &event.to_json(),
            props,
            false,
        )
        .await
    }

    /// A new build request: to the build exchange, or with cache affinity on, to the affinity
    /// exchange with its repository in the header that exchange hashes.
    pub async fn request(&self, body: &[u8], mut headers: FieldTable) -> anyhow::Result<()> {
        let exchange = match &self.topology.affinity {
            Some(affinity) => {
                if let Some(repo) = RequestSummary::sniff(body).repo {
                    headers.insert(AFFINITY_HEADER.into(), AMQPValue::LongString(repo.into()));
                }
                &affinity.exchange
            }
            None => &self.topology.exchange,
        };
        self.publish(
            exchange,
            BUILD_ROUTING_KEY,
            body,
            request_props(headers),
            true,
        )
        .await
    }

    /// A command to every replica (not persistent: it only matters to replicas running now).
    pub async fn control(&self, command: &super::Control) -> anyhow::Result<()> {
        let props = BasicProperties::default().with_content_type("application/json".into());
        self.publish(
            &self.topology.control_exchange,
            "",
            &command.to_json(),
            props,
            false,
        )
        .await
    }

    /// Straight into a queue (retry tier or dead queue) through the default exchange.
    pub async fn to_queue(
        &self,
        queue: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> anyhow::Result<()> {
        self.publish("", queue, body, request_props(headers), true)
            .await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
        mandatory: bool,
    ) -> anyhow::Result<()> {
        let opts = BasicPublishOptions {
            mandatory,
            ..Default::default()
        };
        let confirm = self
            .channel
            .basic_publish(exchange.into(), routing_key.into(), opts, body, props)
            .await
            .map_err(|e| anyhow::anyhow!("failed to publish to {exchange}/{routing_key}: {e}"))?
            .await
            .map_err(|e| {
                anyhow::anyhow!("failed to get a confirm for {exchange}/{routing_key}: {e}")
            })?;
        anyhow::ensure!(
            confirm.is_ack(),
            "the broker refused the message for {exchange}/{routing_key}"
        );
        if let Some(returned) = confirm.take_message() {
            anyhow::bail!(
                "the broker could not route the message for {exchange}/{routing_key}: {}",
                returned.reply_text
            );
        }
        Ok(())
    }
}

fn request_props(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers)
}
