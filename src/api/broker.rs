//! The API server's own broker session: publishes requests and control commands with confirms, and
//! reads queue depths. Reconnects in the background; readiness reflects whether it is connected.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, Control, MessageMeta, Publisher, SessionEnd, Topology};
use crate::config::Settings;

/// How long an API call waits for the broker before answering 503.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Live {
    publisher: Publisher,
    channel: lapin::Channel,
}

#[derive(Clone)]
pub struct Broker {
    live: watch::Receiver<Option<Live>>,
    topology: Arc<Topology>,
}

impl Broker {
    /// Starts the connect loop; it ends with `shutdown`.
    pub fn start(settings: Arc<Settings>, shutdown: CancellationToken) -> Self {
        let topology = Arc::new(Topology::from_settings(&settings));
        let (tx, live) = watch::channel(None);
        tokio::spawn(keep_connected(settings, topology.clone(), tx, shutdown));
        Self { live, topology }
    }

    pub fn is_connected(&self) -> bool {
        self.live.borrow().is_some()
    }

    async fn current(&self) -> anyhow::Result<Live> {
        let mut live = self.live.clone();
        let wait = live.wait_for(Option::is_some);
        match tokio::time::timeout(PUBLISH_WAIT, wait).await {
            Ok(Ok(live)) => live
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no broker session")),
            _ => anyhow::bail!("the broker is not reachable"),
        }
    }

    /// A build request, with the build id and attempt 1 in its headers.
    pub async fn submit(
        &self,
        body: &[u8],
        request_id: &str,
        build_id: &str,
    ) -> anyhow::Result<()> {
        let meta = MessageMeta {
            attempt: 1,
            request_id: Some(request_id.to_owned()),
            build_id: Some(build_id.to_owned()),
            last_error: None,
        };
        let live = self.current().await?;
        live.publisher.request(body, meta.to_headers()).await
    }

    pub async fn control(&self, command: &Control) -> anyhow::Result<()> {
        self.current().await?.publisher.control(command).await
    }

    pub async fn event(&self, event: &crate::events::Event) -> anyhow::Result<()> {
        self.current().await?.publisher.event(event).await
    }

    /// Ready messages in the build queue and in each retry tier.
    pub async fn queue_depths(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let live = self.current().await?;
        let mut names = vec![
            self.topology.build_queue.clone(),
            self.topology.dead_queue.clone(),
        ];
        names.extend(self.topology.retry_queues.iter().map(|(n, _)| n.clone()));
        let mut depths = Vec::with_capacity(names.len());
        for name in names {
            let queue = live
                .channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            depths.push((name, queue.message_count()));
        }
        Ok(depths)
    }
}

async fn keep_connected(
    settings: Arc<Settings>,
    topology: Arc<Topology>,
    tx: watch::Sender<Option<Live>>,
    shutdown: CancellationToken,
) {
    let brokers = amqp::Brokers::from_settings(&settings.amqp);
    let brokers = &brokers;
    let open = || async {
        let connection = brokers.connect("image-builder api").await?;
        let live = brokers
            .set_up(async {
                topology.declare(&connection).await?;
                let channel = connection.create_channel().await?;
                let publisher = Publisher::open(&connection, topology.clone()).await?;
                anyhow::Ok(Live { publisher, channel })
            })
            .await?;
        anyhow::Ok((connection, live))
    };
    let (tx, shutdown_ref) = (&tx, &shutdown);
    let watch = |(connection, live): (lapin::Connection, Live)| async move {
        tx.send_replace(Some(live.clone()));
        // lapin has no "closed" future: look at the session every half second.
        while connection.status().connected() && live.channel.status().connected() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown_ref.cancelled() => {
                    tx.send_replace(None);
                    let _ = connection.close(200, "API shutting down".into()).await;
                    return SessionEnd::Shutdown;
                }
            }
        }
        tx.send_replace(None);
        brokers.lost();
        SessionEnd::Lost(anyhow::anyhow!("the connection closed"))
    };
    amqp::keep_session("API", &shutdown, open, watch).await;
}
