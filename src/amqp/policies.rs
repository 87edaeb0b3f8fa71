//! The queue settings that must be able to change while replicas run (retry delays, where dead
//! letters go, the delivery limit) are RabbitMQ policies, one per queue, put through the
//! management HTTP API. A policy changes a live queue in place; a queue argument is frozen at
//! declaration, and a replica declaring other values fails with PRECONDITION_FAILED. So a
//! replica started with new `retry.delays_ms` applies them, and every replica's retry tiers use
//! them from then on, without a restart of the others.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::topology::{BUILD_ROUTING_KEY, Topology};
use crate::percent::encode_component;

/// Above the default 0 of ad-hoc operator policies; one policy applies per queue (the highest).
const PRIORITY: u8 = 10;

/// One policy: applies to exactly one queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub queue: String,
    pub definition: Value,
}

impl Policy {
    fn body(&self) -> Value {
        json!({
            "pattern": format!("^{}$", regex_escape(&self.queue)),
            "definition": self.definition,
            "priority": PRIORITY,
            "apply-to": "queues",
        })
    }
}

impl Topology {
    /// The build queue's delivery limit and dead-lettering, and each retry tier's TTL and way
    /// back. Policies are named after their queue.
    pub fn policies(&self) -> Vec<Policy> {
        let mut policies = vec![Policy {
            name: self.build_queue.clone(),
            queue: self.build_queue.clone(),
            definition: json!({
                "delivery-limit": self.delivery_limit,
                "dead-letter-exchange": "",
                "dead-letter-routing-key": self.dead_lettered_queue,
            }),
        }];
        policies.extend(self.retry_queues.iter().map(|(queue, delay)| Policy {
            name: queue.clone(),
            queue: queue.clone(),
            definition: json!({
                "message-ttl": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "dead-letter-exchange": self.exchange,
                "dead-letter-routing-key": BUILD_ROUTING_KEY,
            }),
        }));
        // This replica's affinity queue: what its replica does not take within the fallback
        // expires into the shared queue, at least once (quorum queues default to at most once).
        policies.extend(self.affinity.iter().map(|affinity| Policy {
            name: affinity.queue.clone(),
            queue: affinity.queue.clone(),
            definition: json!({
                "message-ttl": u64::try_from(affinity.fallback.as_millis()).unwrap_or(u64::MAX),
                "dead-letter-exchange": "",
                "dead-letter-routing-key": self.build_queue,
                "dead-letter-strategy": "at-least-once",
                "overflow": "reject-publish",
                "delivery-limit": self.delivery_limit,
            }),
        }));
        policies
    }
}

/// The management API of the broker at `amqp_url`, with that URL's credentials and vhost.
pub struct Management {
    base: String,
    vhost: String,
    user: String,
    password: SecretString,
    http: reqwest::Client,
}

impl Management {
    pub fn new(management_url: &str, amqp_url: &SecretString) -> anyhow::Result<Self> {
        // Errors never show the AMQP URL: it may hold a password.
        let amqp = url::Url::parse(amqp_url.expose_secret())
            .map_err(|_| anyhow::anyhow!("the broker URL (amqp.url, amqp.urls) is not a URL"))?;
        let decode = |raw: &str| {
            percent_decode(raw)
                .ok_or_else(|| anyhow::anyhow!("the broker URL: bad percent-encoding"))
        };
        let vhost = match amqp.path().trim_start_matches('/') {
            "" => "/".to_owned(),
            raw => decode(raw)?,
        };
        let user = match amqp.username() {
            "" => "guest".to_owned(),
            raw => decode(raw)?,
        };
        let password = decode(amqp.password().unwrap_or("guest"))?;
        Ok(Self {
            base: management_url.trim_end_matches('/').to_owned(),
            vhost,
            user,
            password: password.into(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    fn url(&self, name: &str) -> String {
        format!(
            "{}/api/policies/{}/{}",
            self.base,
            // A vhost is often `/`.
            encode_component(&self.vhost),
            encode_component(name)
        )
    }

    /// Puts every policy (creating or replacing it).
    pub async fn apply(&self, policies: &[Policy]) -> anyhow::Result<()> {
        for policy in policies {
            let response = self
                .http
                .put(self.url(&policy.name))
                .basic_auth(&self.user, Some(self.password.expose_secret()))
                .json(&policy.body())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("management API at {}: {e}", self.base))?;
            let status = response.status();
            if !status.is_success() {
                let body: String = response.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                anyhow::bail!(
                    "policy {} refused by the broker ({status}): {body}",
                    policy.name
                );
            }
        }
        Ok(())
    }

    /// Removes policies by name (tests, and a prefix taken out of service).
    pub async fn remove(&self, names: &[String]) -> anyhow::Result<()> {
        for name in names {
            self.http
                .delete(self.url(name))
                .basic_auth(&self.user, Some(self.password.expose_secret()))
                .send()
                .await?;
        }
        Ok(())
    }
}

/// Applies `policies` through the first of `apis` that takes them all, with the credentials and
/// vhost of `amqp_url`; returns the API used. Policies are cluster-wide: any node will do.
pub async fn apply_through_any<'a>(
    apis: &'a [String],
    amqp_url: &SecretString,
    policies: &[Policy],
) -> anyhow::Result<&'a str> {
    let mut failures = Vec::new();
    for api in apis {
        match Management::new(api, amqp_url)?.apply(policies).await {
            Ok(()) => return Ok(api),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    anyhow::ensure!(!failures.is_empty(), "no management API configured");
    anyhow::bail!("{}", failures.join("; "))
}

fn regex_escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len() * 2);
    for c in literal.chars() {
        if "\\.+*?()|[]{}^$-/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn one_policy_per_queue_with_its_values() {
        let mut settings = Settings::for_env("local").expect("local config");
        settings.amqp.prefix = "ib.x".into();
        settings.retry.delays_ms = vec![100, 200];
        settings.amqp.delivery_limit = 3;
        let policies = Topology::from_settings(&settings).policies();
        assert_eq!(policies.len(), 3);
        assert_eq!(policies[0].body()["pattern"], "^ib\\.x\\.builds$");
        assert_eq!(policies[0].definition["delivery-limit"], 3);
        assert_eq!(
            policies[0].definition["dead-letter-routing-key"],
            "ib.x.dead-lettered"
        );
        assert_eq!(policies[2].queue, "ib.x.retry.2");
        assert_eq!(policies[2].definition["message-ttl"], 200);
        assert_eq!(policies[2].definition["dead-letter-exchange"], "ib.x");

        settings.amqp.affinity_fallback_ms = 1500;
        settings.amqp.replica = "w1".into();
        let policies = Topology::from_settings(&settings).policies();
        let affinity = policies.last().expect("an affinity policy");
        assert_eq!(affinity.body()["pattern"], "^ib\\.x\\.affinity\\.w1$");
        assert_eq!(affinity.definition["message-ttl"], 1500);
        assert_eq!(
            affinity.definition["dead-letter-routing-key"],
            "ib.x.builds"
        );
        assert_eq!(affinity.definition["dead-letter-strategy"], "at-least-once");
    }

    #[test]
    fn credentials_and_vhost_come_from_the_amqp_url() {
        let url: SecretString = "amqp://us%40er:p%2Fw@127.0.0.1:5672/%2f".to_owned().into();
        let m = Management::new("http://127.0.0.1:15672/", &url).expect("parses");
        assert_eq!(m.user, "us@er");
        assert_eq!(m.password.expose_secret(), "p/w");
        assert_eq!(m.url("a.b"), "http://127.0.0.1:15672/api/policies/%2F/a.b");
        assert!(Management::new("x", &"not a url".to_owned().into()).is_err());
    }
}
