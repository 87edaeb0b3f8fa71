//! Streams a running build's log lines into the store, in batches, so `GET .../logs?follow=true`
//! shows them while the build runs. Lines arrive already redacted (`BuildLog`).

use std::sync::atomic::Ordering;

use sqlx::Row;
use tokio::task::JoinHandle;

use super::BuildStore;
use crate::build_log::{LogSink, LogSource};
use crate::error::StoreError;

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
                tracing::warn!(
                    "failed to store build log lines: {}",
                    crate::error::cause_chain(&e)
                );
            }
        });
        LogWriter { sink, task }
    }

    async fn write_lines(&self, build_id: &str, mut source: LogSource) -> Result<(), StoreError> {
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
            // Lines that found the queue full came after the ones queued: say so once those are
            // stored.
            let drained = source.lines.is_empty();
            let not_sent = if drained {
                source.not_sent.swap(0, Ordering::Relaxed)
            } else {
                0
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build_log::BuildLog;
    use crate::redact::Redactor;

    #[tokio::test]
    async fn a_log_faster_than_the_store_loses_lines_and_says_how_many() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
        let store = BuildStore::connect(&url).await.expect("store");
        let writer = store.log_writer("b1");
        let log = BuildLog::with_sink(Redactor::default(), writer.sender());
        // No await in between: the writer cannot take any line until all are pushed.
        let pushed = QUEUED_LINES + 100;
        for i in 0..pushed {
            log.push(&format!("line {i}"));
        }
        log.detach_sink();
        writer.finish().await;
        let stored = store.log_lines("b1", 0, 10_000).await.expect("lines");
        let lines: Vec<&str> = stored.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines.len(), QUEUED_LINES + 1);
        assert_eq!(
            lines[QUEUED_LINES - 1],
            format!("line {}", QUEUED_LINES - 1)
        );
        assert_eq!(
            lines[QUEUED_LINES],
            "[100 lines not stored: the build printed faster than the store wrote]"
        );
    }
}
