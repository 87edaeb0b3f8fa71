//! RabbitMQ adapter: topology, headers that carry a build across retries, confirmed publishing.

mod brokers;
mod control;
mod headers;
mod policies;
mod publisher;
mod session;
mod slot;
mod topology;

pub use brokers::Brokers;
pub use control::Control;
pub use headers::{Attempt, MessageMeta};
pub use policies::{Management, Policy, apply_through_any};
pub use publisher::Publisher;
pub use session::{SessionEnd, broker_backoff, keep_session};
pub use slot::{PublisherSlot, PublisherSlotSetter, publisher_slot};
pub use topology::{BUILD_ROUTING_KEY, Topology};

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

/// Connects to the broker. Errors never include the URL: it may hold credentials.
pub async fn connect(url: &SecretString, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url.expose_secret(), props)
        .await
        .map_err(|e| anyhow::anyhow!("failed to connect to the broker: {e}"))
}
