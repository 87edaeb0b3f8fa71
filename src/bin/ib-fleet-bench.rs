//! Fleet benchmark client (scripts/bench-fleet.sh): publishes a plan of build requests, follows
//! every event, and prints one JSON line: throughput, pickup latency (publish -> `build.started`)
//! and cache affinity figures -- how many builds ran on a replica already warm for their
//! repository, and their mean build time.
//!
//!   ib-fleet-bench --plan plan.jsonl --concurrency 12
//!
//! The replicas and this client read the same settings (`IMAGE_BUILDER__*`): with
//! `amqp.affinity_fallback_ms` set, requests go through the affinity exchange as the API sends
//! them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use image_builder::amqp::{self, MessageMeta, Publisher, Topology};
use image_builder::config::Settings;
use image_builder::events::{Event, How};
use lapin::options::BasicAckOptions;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// JSON lines, one request body each (with `repo`), sent in this order; ids are added.
    #[arg(long)]
    plan: std::path::PathBuf,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 12)]
    concurrency: usize,
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::from_env()?;
    let plan = std::fs::read_to_string(&args.plan).context("failed to read the plan")?;
    let plan: Vec<Value> = plan
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("the plan: every line must be a JSON request")?;
    let topology = Arc::new(Topology::from_settings(&settings));
    let connection = amqp::Brokers::from_settings(&settings.amqp)
        .connect("ib-fleet-bench")
        .await?;
    topology.declare(&connection).await?;
    let mut events = topology
        .subscribe_events(&connection.create_channel().await?)
        .await?;
    let publisher = Publisher::open(&connection, topology.clone()).await?;

    let mut fleet = Fleet::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut queue = plan.into_iter();
    while fleet.settled < fleet.sent.len() || queue.len() > 0 {
        while fleet.in_flight() < args.concurrency {
            let Some(mut body) = queue.next() else { break };
            let repo = body["repo"].as_str().unwrap_or_default().to_owned();
            let id = format!("fleet-{}", uuid::Uuid::new_v4().simple());
            body["id"] = Value::String(id.clone());
            let meta = MessageMeta {
                attempt: 1,
                request_id: Some(id.clone()),
                ..MessageMeta::default()
            };
            fleet.published(id, repo);
            publisher
                .request(&serde_json::to_vec(&body)?, meta.to_headers())
                .await?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, events.next())
            .await
            .context("timed out waiting for events")?
            .context("the events stream ended")??;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        if let Ok(event) = serde_json::from_slice::<Event>(&delivery.data) {
            fleet.observe(&event, Instant::now());
        }
    }
    let mut report = fleet.report();
    let wall = started.elapsed().as_secs_f64();
    report["wall_s"] = wall.into();
    report["per_s"] = (fleet.settled as f64 / wall).into();
    report["affinity_fallback_ms"] = settings.amqp.affinity_fallback_ms.into();
    println!("{report}");
    // Bounded: a broker slow to close a connection must not hold the figures back.
    let closing = connection.close(200, "done".into());
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    Ok(())
}

/// One request as the events tell it.
struct Request {
    repo: String,
    sent: Instant,
    /// First `build.started` (pickup); later attempts do not move it.
    picked_up: Option<Instant>,
    /// The replica of the latest attempt, and whether it was warm for the repository then.
    host: Option<(String, bool)>,
}

/// What the events say about the fleet, in the order they arrive.
#[derive(Default)]
struct Fleet {
    sent: HashMap<String, Request>,
    settled: usize,
    /// (replica, repository) pairs where a build (not a cached answer) has succeeded.
    warm: HashSet<(String, String)>,
    pickups_ms: Vec<f64>,
    /// duration_ms of each build that was not a cached answer, warm or cold.
    warm_builds_ms: Vec<f64>,
    cold_builds_ms: Vec<f64>,
    cached: usize,
    incremental: usize,
    failed: usize,
    hosts: HashSet<String>,
}

impl Fleet {
    fn in_flight(&self) -> usize {
        self.sent.len() - self.settled
    }

    fn published(&mut self, id: String, repo: String) {
        let sent = Instant::now();
        let request = Request {
            repo,
            sent,
            picked_up: None,
            host: None,
        };
        self.sent.insert(id, request);
    }

    fn observe(&mut self, event: &Event, at: Instant) {
        let Some(request) = self.sent.get_mut(&event.build().request_id) else {
            return;
        };
        match event {
            Event::Started(started) => {
                if request.picked_up.is_none() {
                    request.picked_up = Some(at);
                    let ms = at.duration_since(request.sent).as_secs_f64() * 1000.0;
                    self.pickups_ms.push(ms);
                }
                let key = (started.host.clone(), request.repo.clone());
                let warm = self.warm.contains(&key);
                self.hosts.insert(key.0.clone());
                request.host = Some((key.0, warm));
            }
            Event::Retrying(_) => {}
            Event::ImageUpdated(updated) => {
                self.settled += 1;
                if updated.cached || updated.how == How::Cached {
                    self.cached += 1;
                    return;
                }
                self.incremental += usize::from(updated.how == How::Incremental);
                let Some((host, warm)) = request.host.clone() else {
                    return;
                };
                let ms = updated.duration_ms as f64;
                match warm {
                    true => self.warm_builds_ms.push(ms),
                    false => self.cold_builds_ms.push(ms),
                }
                self.warm.insert((host, request.repo.clone()));
            }
            Event::Failed(_) | Event::Rejected(_) | Event::Cancelled(_) => {
                eprintln!("not built: {}", String::from_utf8_lossy(&event.to_json()));
                self.settled += 1;
                self.failed += 1;
            }
        }
    }

    fn report(&mut self) -> Value {
        self.pickups_ms.sort_by(f64::total_cmp);
        let builds = self.warm_builds_ms.len() + self.cold_builds_ms.len();
        let all: Vec<f64> = self
            .warm_builds_ms
            .iter()
            .chain(&self.cold_builds_ms)
            .copied()
            .collect();
        serde_json::json!({
            "n": self.sent.len(), "failed": self.failed, "cached": self.cached,
            "builds": builds, "incremental": self.incremental, "replicas_seen": self.hosts.len(),
            "pickup_p50_ms": nearest_rank(&self.pickups_ms, 0.50),
            "pickup_p99_ms": nearest_rank(&self.pickups_ms, 0.99),
            "warm_hits": self.warm_builds_ms.len(),
            "warm_hit_ratio": self.warm_builds_ms.len() as f64 / builds.max(1) as f64,
            "mean_build_ms": mean(&all),
            "mean_warm_build_ms": mean(&self.warm_builds_ms),
            "mean_cold_build_ms": mean(&self.cold_builds_ms),
        })
    }
}

/// The smallest value with at least `p` of `sorted` at or below it.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_builder::events::{BuildRef, BuildStarted, ImageUpdated};

    fn build_ref(id: &str) -> BuildRef {
        BuildRef {
            build_id: id.into(),
            request_id: id.into(),
            user_id: None,
            repo: None,
            git_ref: None,
        }
    }

    fn started(id: &str, host: &str) -> Event {
        Event::Started(BuildStarted {
            build: build_ref(id),
            attempt: 1,
            host: host.into(),
        })
    }

    fn updated(id: &str, how: How, ms: u64) -> Event {
        Event::ImageUpdated(ImageUpdated {
            build: build_ref(id),
            commit: "c".into(),
            image: "i".into(),
            tags: Vec::new(),
            digest: "d".into(),
            platforms: Vec::new(),
            cached: how == How::Cached,
            duration_ms: ms,
            finished_at: time::OffsetDateTime::UNIX_EPOCH,
            artifacts: Vec::new(),
            how,
            why: String::new(),
            bases: Vec::new(),
        })
    }

    #[test]
    fn a_build_is_warm_only_where_its_repository_was_built_before() {
        let mut fleet = Fleet::default();
        for (id, repo) in [("1", "r"), ("2", "r"), ("3", "r"), ("4", "r"), ("5", "s")] {
            fleet.published(id.into(), repo.into());
        }
        let now = Instant::now();
        // 1 cold on a; 2 on a after 1 succeeded: warm; 3 on b: cold; 4 cached on a: not a
        // build; 5 another repository on a: cold.
        for event in [
            started("1", "a"),
            updated("1", How::Full, 100),
            started("2", "a"),
            started("3", "b"),
            updated("2", How::Full, 10),
            updated("3", How::Full, 90),
            started("4", "a"),
            updated("4", How::Cached, 1),
            started("5", "a"),
            updated("5", How::Full, 110),
        ] {
            fleet.observe(&event, now);
        }
        let report = fleet.report();
        assert_eq!(report["builds"], 4);
        assert_eq!(report["cached"], 1);
        assert_eq!(report["warm_hits"], 1);
        assert_eq!(report["warm_hit_ratio"], 0.25);
        assert_eq!(report["mean_cold_build_ms"], 100.0);
        assert_eq!(report["mean_build_ms"], 77.5);
        assert_eq!(fleet.settled, 5);
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(nearest_rank(&sorted, 0.99), 198.0);
        assert_eq!(nearest_rank(&sorted, 0.5), 100.0);
        assert!(nearest_rank(&[], 0.99).is_nan());
    }
}
