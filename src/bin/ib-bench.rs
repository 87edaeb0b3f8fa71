//! Benchmark client: publishes build requests and times publish -> outcome event, as a producer
//! sees it. Used by scripts/bench.sh; prints one JSON line of figures.
//!
//!   ib-bench --body request.json --n 200 --concurrency 50
//!   ib-bench --mix requests.jsonl --concurrency 8
//!
//! `--mix` publishes each line of a JSON-lines file once, in order (`{"kind": "...", "body":
//! {...}}`), and adds each kind's p50/p99/max to the figures: a mix of cold, warm and cached
//! requests shows whether a cached answer waits behind a build.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use image_builder::amqp::{self, MessageMeta, Publisher, Topology};
use image_builder::config::Settings;
use image_builder::events::Event;
use lapin::options::BasicAckOptions;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// A JSON request; each copy gets a fresh `id`, also put wherever the body says `{id}`.
    #[arg(long, required_unless_present = "mix")]
    body: Option<std::path::PathBuf>,
    /// JSON lines `{"kind": "...", "body": {...}}`, each published once; overrides --n.
    #[arg(long, conflicts_with = "body")]
    mix: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Requests in flight at once (1 = one after the other).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let settings = Settings::from_env()?;
    // (kind, body template) per request.
    let templates: Vec<(String, Value)> = match (&args.mix, &args.body) {
        (Some(mix), _) => std::fs::read_to_string(mix)?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let mut entry: Value = serde_json::from_str(line)
                    .with_context(|| format!("failed to parse a --mix line: {line}"))?;
                let kind = entry["kind"].as_str().unwrap_or("request").to_owned();
                Ok((kind, entry["body"].take()))
            })
            .collect::<anyhow::Result<_>>()?,
        (None, Some(body)) => {
            let template: Value = serde_json::from_str(&std::fs::read_to_string(body)?)
                .context("failed to parse the request body")?;
            vec![("request".to_owned(), template); args.n]
        }
        (None, None) => anyhow::bail!("--body or --mix is needed"),
    };
    args.n = templates.len();
    let topology = Arc::new(Topology::from_settings(&settings));
    let connection = amqp::Brokers::from_settings(&settings.amqp)
        .connect("ib-bench")
        .await?;
    topology.declare(&connection).await?;
    let channel = connection.create_channel().await?;
    let mut events = topology.subscribe_events(&channel).await?;
    let publisher = Publisher::open(&connection, topology.clone()).await?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut sent: HashMap<String, (Instant, String)> = HashMap::new();
    let mut latencies = Vec::new();
    let mut by_kind: HashMap<String, Vec<f64>> = HashMap::new();
    let (mut cached, mut failed, mut next) = (0usize, 0usize, 0usize);
    while latencies.len() + failed < args.n {
        while next < args.n && sent.len() < args.concurrency {
            let id = format!("bench-{}", uuid::Uuid::new_v4().simple());
            let (kind, template) = &templates[next];
            let mut body: Value = serde_json::from_str(&template.to_string().replace("{id}", &id))?;
            body["id"] = Value::String(id.clone());
            let meta = MessageMeta {
                attempt: 1,
                request_id: Some(id.clone()),
                ..MessageMeta::default()
            };
            sent.insert(id, (Instant::now(), kind.clone()));
            // Bounded too: a broker that stops confirming (seen) must not hang the bench.
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout(
                left,
                publisher.request(&serde_json::to_vec(&body)?, meta.to_headers()),
            )
            .await
            .context("timed out publishing a request (is the broker confirming?)")??;
            next += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, events.next())
            .await
            .context("timed out waiting for outcomes")?
            .context("the events stream ended")??;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        let Ok(event) = serde_json::from_slice::<Event>(&delivery.data) else {
            continue;
        };
        if !event.is_terminal() {
            continue;
        }
        let Some((at, kind)) = sent.remove(&event.build().request_id) else {
            continue;
        };
        match event {
            Event::ImageUpdated(updated) => {
                cached += usize::from(updated.cached);
                let ms = at.elapsed().as_secs_f64() * 1000.0;
                latencies.push(ms);
                by_kind.entry(kind).or_default().push(ms);
            }
            other => {
                eprintln!("failed: {}", String::from_utf8_lossy(&other.to_json()));
                failed += 1;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let mut figures = serde_json::json!({
        "n": args.n, "ok": latencies.len(), "failed": failed, "cached": cached,
        "wall_s": wall, "per_s": latencies.len() as f64 / wall,
        "p50_ms": pct(&mut latencies, 0.5), "p90_ms": pct(&mut latencies, 0.9),
        "max_ms": pct(&mut latencies, 1.0),
    });
    if args.mix.is_some() {
        for (kind, mut ms) in by_kind {
            figures["kinds"][kind] = serde_json::json!({
                "n": ms.len(), "p50_ms": pct(&mut ms, 0.5), "p99_ms": pct(&mut ms, 0.99),
                "max_ms": pct(&mut ms, 1.0),
            });
        }
    }
    println!("{figures}");
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// The `p` quantile (nearest rank) of `values`; NaN when there are none.
fn pct(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(i).copied().unwrap_or(f64::NAN)
}
