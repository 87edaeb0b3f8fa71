//! Failover between the nodes of one cluster (`amqp.urls`, or `amqp.url` alone). A connection
//! goes to the first broker that answers, starting with the current one; once a session on it is
//! lost, the next one is tried first (the node that dropped it is likely the one going down), so
//! replicas move round-robin. The caller's backoff runs between rounds, not between brokers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::Connection;
use secrecy::SecretString;

use crate::config::{AmqpSettings, broker_endpoint};

/// How long one broker may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a broker that accepted the connection may take to set up a session on it
/// (declares, policies, consumers). Seen here: a node answering connections and quorum-queue
/// declares while a classic declare never returned; without a bound the replica hung silently.
pub const SESSION_SETUP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Brokers {
    urls: Vec<SecretString>,
    /// Index of the broker the next round starts with.
    current: AtomicUsize,
}

impl Brokers {
    pub fn from_settings(settings: &AmqpSettings) -> Self {
        Self::new(settings.broker_urls())
    }

    /// `urls` in the order to try them (at least one; settings always give one).
    pub fn new(urls: Vec<SecretString>) -> Self {
        Self {
            urls,
            current: AtomicUsize::new(0),
        }
    }

    /// One round: each broker once, from the current one on; the first that accepts becomes the
    /// current one. `name` is the connection's name on the broker. Errors name brokers by
    /// `host:port` only: a URL may hold credentials.
    pub async fn connect(&self, name: &str) -> anyhow::Result<Connection> {
        let count = self.urls.len();
        anyhow::ensure!(count > 0, "no broker URL configured (amqp.url, amqp.urls)");
        let start = self.current.load(Ordering::Acquire) % count;
        let mut failures = Vec::new();
        for offset in 0..count {
            let index = (start + offset) % count;
            let Some(url) = self.urls.get(index) else {
                continue;
            };
            let endpoint = broker_endpoint(url);
            match tokio::time::timeout(CONNECT_TIMEOUT, super::connect(url, name)).await {
                Ok(Ok(connection)) => {
                    self.current.store(index, Ordering::Release);
                    if count > 1 {
                        tracing::info!(broker = %endpoint, "connected to the broker");
                    }
                    return Ok(connection);
                }
                Ok(Err(e)) => failures.push(format!("{endpoint}: {e:#}")),
                Err(_) => {
                    failures.push(format!("{endpoint}: no answer within {CONNECT_TIMEOUT:?}"))
                }
            }
        }
        anyhow::bail!("{}", failures.join("; "))
    }

    /// The session on the current broker was lost: the next round starts with the one after it.
    pub fn lost(&self) {
        let count = self.urls.len().max(1);
        let _ = self
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |i| {
                Some((i + 1) % count)
            });
    }

    /// `setup` (the session's declares and consumers on a connection just made), bounded by
    /// `SESSION_SETUP_TIMEOUT`: a broker that does not finish it counts as lost, so the next
    /// round starts with another node, and the error says what hung.
    pub async fn set_up<T>(
        &self,
        setup: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        self.set_up_within(SESSION_SETUP_TIMEOUT, setup).await
    }

    async fn set_up_within<T>(
        &self,
        limit: Duration,
        setup: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(limit, setup).await {
            Ok(result) => result,
            Err(_) => {
                self.lost();
                anyhow::bail!(
                    "the broker accepted the connection but did not finish setting up the session \
                     (queue declares, policies, consumers) within {limit:?}"
                )
            }
        }
    }

    /// The broker URL whose credentials and vhost the management API is used with: the first.
    pub fn first(&self) -> Option<&SecretString> {
        self.urls.first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback port nobody listens on (bound, then released).
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn a_round_tries_every_broker_and_names_each_without_credentials() {
        let (a, b) = (closed_port(), closed_port());
        let brokers = Brokers::new(vec![
            format!("amqp://u:topsecret@127.0.0.1:{a}/%2f").into(),
            format!("amqp://u:topsecret@127.0.0.1:{b}/%2f").into(),
        ]);
        let err = brokers.connect("test").await.expect_err("nobody listens");
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("127.0.0.1:{a}: "))
                && text.contains(&format!("127.0.0.1:{b}: ")),
            "{text}"
        );
        assert!(!text.contains("topsecret"), "{text}");
    }

    #[tokio::test]
    async fn a_setup_that_hangs_fails_naming_it_and_moves_to_the_next_broker() {
        let brokers = Brokers::new(vec![
            "amqp://a".to_owned().into(),
            "amqp://b".to_owned().into(),
        ]);
        let hung = brokers
            .set_up_within(
                Duration::from_millis(20),
                std::future::pending::<anyhow::Result<()>>(),
            )
            .await
            .expect_err("never finishes");
        assert!(
            format!("{hung:#}").contains("did not finish setting up"),
            "{hung:#}"
        );
        assert_eq!(brokers.current.load(Ordering::Acquire), 1);
        let done = brokers
            .set_up_within(Duration::from_millis(20), async { anyhow::Ok(7) })
            .await
            .expect("finishes");
        assert_eq!(done, 7);
        assert_eq!(brokers.current.load(Ordering::Acquire), 1);
    }

    #[test]
    fn a_lost_session_moves_to_the_next_broker_round_robin() {
        let brokers = Brokers::new(vec![
            "amqp://a".to_owned().into(),
            "amqp://b".to_owned().into(),
            "amqp://c".to_owned().into(),
        ]);
        let at = |b: &Brokers| b.current.load(Ordering::Acquire);
        assert_eq!(at(&brokers), 0);
        brokers.lost();
        brokers.lost();
        assert_eq!(at(&brokers), 2);
        brokers.lost();
        assert_eq!(at(&brokers), 0, "wraps around");
    }
}
