//! `image-builder build [DIR]`: one build on this machine with no broker and no API. A directory
//! is snapshotted into a throwaway repository (`source::snapshot_dir`) so that it goes through
//! exactly what a worker runs: the same pipeline, sandbox, layer cache and registry push.

use std::path::Path;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::build_log::{BuildLog, LogSink};
use crate::config::Settings;
use crate::error::BuildError;
use crate::events::ImageUpdated;
use crate::metrics::Metrics;
use crate::pipeline::{self, Job};
use crate::request::{BuildRequest, RequestPolicy};
use crate::source::snapshot_dir;
use crate::store::{BuildState, BuildStore, NewBuild};

/// Lines of build output held for the display before it falls behind (then lines are dropped
/// from the display, never from the build).
const DISPLAY_LINES: usize = 4096;

/// Builds `body` (a request as the queue takes it, `repo` and `user_id` at least) or, with
/// `dir`, the files of that directory. Each line of build output goes to `on_line` as it comes.
/// Cancelled (Ctrl-C) through `cancel`. The outer error is a refusal before building (a bad
/// field, an unreadable directory); the inner one is how the build ended.
pub async fn build(
    mut settings: Settings,
    mut body: Map<String, Value>,
    dir: Option<&Path>,
    cancel: CancellationToken,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<Result<ImageUpdated, BuildError>> {
    // Held until the build ends: the pipeline fetches from it.
    let snapshot = match dir {
        Some(dir) => {
            let (owned, root) = (dir.to_owned(), settings.data_dir.join("snapshots"));
            // git2 and the lock wait block: off the async threads (Ctrl-C stays responsive).
            let snapshot = tokio::task::spawn_blocking(move || snapshot_dir(&owned, &root))
                .await
                .map_err(|e| anyhow::anyhow!("the snapshot task failed: {e}"))??;
            Some((dir, snapshot))
        }
        None => None,
    };
    if let Some((dir, snapshot)) = &snapshot {
        on_line(&format!(
            "snapshot of {} is {}",
            dir.display(),
            snapshot.commit
        ));
        let remote = url::Url::from_file_path(&snapshot.repo)
            .map_err(|()| anyhow::anyhow!("{} is not an absolute path", snapshot.repo.display()))?;
        body.insert("connector".into(), "git".into());
        body.insert("repo".into(), remote.to_string().into());
        // The user's own files on the user's own machine: file:// is allowed for this build.
        settings.request.allowed_schemes.push("file".into());
    }
    let id = crate::submit::ensure_id(&mut body);
    let raw = serde_json::to_vec(&body)?;
    let policy = RequestPolicy {
        max_body_bytes: settings.request.max_body_bytes,
        allowed_schemes: settings.request.allowed_schemes.clone(),
    };
    let request = BuildRequest::parse(&raw, &policy, None)
        .map_err(|rejection| anyhow::anyhow!("{}: {}", rejection.field, rejection.reason))?;
    let store = BuildStore::open(&settings).await?;
    let metrics = Metrics::new();
    super::prepare_build_host(&settings);
    let env = super::environment(&settings, &store, &metrics)?;
    // Recorded like a worker's build: a later request (here or on a worker sharing the store)
    // may then be answered from the image, and the record shows who built what.
    let new = NewBuild::of_request(&id, &request, None);
    store.create(&new, BuildState::Running).await?;
    let job = Job {
        request,
        build_id: id,
        attempt: 1,
    };
    let (sink, mut lines) = LogSink::channel(DISPLAY_LINES);
    let log = BuildLog::with_sink(job.redactor(&settings.registry.password), sink);
    let run = pipeline::run(&env, &job, &log, &cancel);
    tokio::pin!(run);
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            Some(line) = lines.lines.recv() => on_line(&line),
        }
    };
    log.detach_sink();
    while let Ok(line) = lines.lines.try_recv() {
        on_line(&line);
    }
    // Recorded without events: a build run here is announced to nobody (no broker, and no
    // webhook notification, which only a worker's or the API's outcomes send).
    let id = &job.build_id;
    match &outcome {
        Ok(updated) => store.succeeded(id, 1, updated, None).await?,
        Err(BuildError::Cancelled) => store.cancelled(id, 1, None).await?,
        Err(error) => {
            let fault = error.classify();
            let reason = log.redactor().redact(&error.chain()).into_owned();
            store.failed(id, 1, fault.as_str(), &reason, None).await?;
        }
    }
    Ok(outcome)
}
