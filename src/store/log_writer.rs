//! Streams a running build's log lines into the store, in batches, so `GET .../logs?follow=true`
//! shows them while the build runs. Lines arrive already redacted (`BuildLog`).

use sqlx::Row;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::BuildStore;

/// Per build and attempt, beyond this the stored log says it was cut (podman can be chatty).
const MAX_STORED_BYTES: usize = 4 * 1024 * 1024;
const BATCH: usize = 512;

pub struct LogWriter {
    tx: mpsc::UnboundedSender<String>,
    task: JoinHandle<()>,
}

impl LogWriter {
    /// Where `BuildLog` sends its lines.
    pub fn sender(&self) -> mpsc::UnboundedSender<String> {
        self.tx.clone()
    }

    /// Waits until every line sent so far is stored. Every other sender must be dropped first
    /// (`BuildLog::detach_sink`), or this waits for them.
    pub async fn finish(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            tracing::warn!("the log writer stopped: {e}");
        }
    }
}

impl BuildStore {
    pub fn log_writer(&self, build_id: &str) -> LogWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = self.clone();
        let build_id = build_id.to_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = store.write_lines(&build_id, rx).await {
                // The build goes on; its record just lacks part of the log.
                tracing::warn!("failed to store build log lines: {e:#}");
            }
        });
        LogWriter { tx, task }
    }

    async fn write_lines(
        &self,
        build_id: &str,
        mut rx: mpsc::UnboundedReceiver<String>,
    ) -> anyhow::Result<()> {
        // A retry appends to the lines of earlier attempts.
        let last: Option<i64> =
            sqlx::query("SELECT MAX(n) AS last FROM build_logs WHERE build_id = $1")
                .bind(build_id)
                .fetch_one(&self.pool)
                .await?
                .try_get("last")?;
        let mut n = last.unwrap_or(0);
        let mut bytes = 0usize;
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
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
        Ok(())
    }
}
