//! Streams a running build's log lines into the store, in batches, so `GET .../logs?follow=true`
//! shows them while the build runs. Lines arrive already redacted (`BuildLog`).

use std::sync::atomic::Ordering;

use sqlx::Row;
use tokio::task::JoinHandle;

use super::BuildStore;
use crate::build_log::{LogSink, LogSource};

/// Per build and attempt, beyond this the stored log says it was cut (podman can be chatty).
const MAX_STORED_BYTES: usize = 4 * 1024 * 1024;
const BATCH: usize = 512;
/// Lines waiting for the store, at most (each at most `MAX_LINE` and a marker): what a build
/// that prints faster than the store writes can hold in memory.
const QUEUED_LINES: usize = 2 * BATCH;

pub struct LogWriter {
    sink: LogSink,
    task: JoinHandle<()>,
}

impl LogWriter {
    /// Where `BuildLog` sends its lines.
    pub fn sender(&self) -> LogSink {
        self.sink.clone()
    }

    /// Waits until every line sent so far is stored. Every other sender must be dropped first
    /// (`BuildLog::detach_sink`), or this waits for them.
    pub async fn finish(self) {
        drop(self.sink);
        if let Err(e) = self.task.await {
            tracing::warn!("the log writer stopped: {e}");
        }
    }
}

impl BuildStore {
    pub fn log_writer(&self, build_id: &str) -> LogWriter {
        let (sink, source) = LogSink::channel(QUEUED_LINES);
        let store = self.clone();
        let build_id = build_id.to_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = store.write_lines(&build_id, source).await {
                // The build goes on; its record just lacks part of the log.
                tracing::warn!("failed to store build log lines: {e:#}");
            }
        });
        LogWriter { sink, task }
    }

    async fn write_lines(&self, build_id: &str, mut source: LogSource) -> anyhow::Result<()> {
        // A retry appends to the lines of earlier attempts.
        let last: Option<i64> =
            sqlx::query("SELECT MAX(n) AS last FROM build_logs WHERE build_id = $1")
                .bind(build_id)
                .fetch_one(&self.pool)
                .await?
                .try_get("last")?;
        let mut n = last.unwrap_or(0);
        let mut bytes = 0usize;
        let mut batch = Vec::with_capacity(BATCH + 1);
        loop {
            let open = source.lines.recv_many(&mut batch, BATCH).await > 0;
            // Lines that found the queue full came after the ones queued: say so after them.
            let not_sent = source.not_sent.swap(0, Ordering::Relaxed);
            if not_sent > 0 {
                batch.push(format!(
                    "[{not_sent} lines not stored: the build printed faster than the store wrote]"
                ));
            }
            if batch.is_empty() && !open {
                return Ok(());
            }
            if bytes > MAX_STORED_BYTES {
                batch.clear();
                continue;
            }
            let mut tx = self.writer.begin().await?;
            for line in batch.drain(..) {
                bytes += line.len();
                n += 1;
                let line = if bytes > MAX_STORED_BYTES {
                    "[log truncated: the rest of this attempt's output was not stored]".to_owned()
                } else {
                    line
                };
                sqlx::query("INSERT INTO build_logs (build_id, n, line) VALUES ($1, $2, $3)")
                    .bind(build_id)
                    .bind(n)
                    .bind(line)
                    .execute(&mut *tx)
                    .await?;
                if bytes > MAX_STORED_BYTES {
                    break;
                }
            }
            batch.clear();
            tx.commit().await?;
        }
    }
}
