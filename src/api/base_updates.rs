//! Rebuilds when a base image moves. A recorded base reference (`store::bases`) is checked in its
//! registry when the registry says it was pushed (`registry_events`) or every
//! `bases.poll_interval_ms` (`poll`). When configurations' newest images were built on another
//! digest than the one it names now, one replica (the one whose insert into `base_moves` wins)
//! publishes one request per configuration: the stored request with `base_update` set, under an
//! id made of the build id and the new digest, so publishing it again after a lapsed claim
//! queues nothing twice. The rebuilds go through the queue like any request.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::builds::{enqueue, truncate_id};
use crate::ports::Manifest;
use crate::request::BuildRequest;
use crate::store::Dependent;

/// What told this replica to look at a base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The registry's push notification, with the digest it announced.
    Notification,
    Poll,
}

impl Seen {
    fn as_str(self) -> &'static str {
        match self {
            Self::Notification => "notification",
            Self::Poll => "poll",
        }
    }
}

/// Checks `reference` in its registry and, if it moved and this replica decides, publishes the
/// rebuilds; returns how many it published. `announced`: a digest the registry said it now
/// names, so a push of an image nobody builds on costs no registry request.
pub async fn check(
    state: &AppState,
    reference: &str,
    announced: Option<&str>,
    seen: Seen,
) -> anyhow::Result<usize> {
    if !state.settings.bases.rebuild {
        return Ok(0);
    }
    let Some((host, repository, tag)) = split_reference(reference) else {
        return Ok(0);
    };
    if let Some(digest) = announced
        && state
            .store
            .dependents(reference, &[digest.to_owned()])
            .await?
            .is_empty()
    {
        return Ok(0);
    }
    let registry = state.base_registries.for_host(host);
    let Some(digest) = registry.digest(repository, tag).await? else {
        return Ok(0);
    };
    let mut current = vec![digest.clone()];
    let mut dependents = state.store.dependents(reference, &current).await?;
    if dependents.is_empty() {
        return Ok(0);
    }
    // An index names one image per platform: an image built on one of them is up to date.
    if let Some(manifest) = registry.manifest(repository, &digest).await? {
        let children = index_children(&manifest);
        if !children.is_empty() {
            current.extend(children);
            dependents = state.store.dependents(reference, &current).await?;
            if dependents.is_empty() {
                return Ok(0);
            }
        }
    }
    let decided = state
        .store
        .decide_base_move(reference, &digest, seen.as_str(), &replica_name())
        .await?;
    if !decided {
        return Ok(0);
    }
    tracing::info!(
        base = reference,
        digest = %digest,
        dependents = dependents.len(),
        via = seen.as_str(),
        "a base image moved: rebuilding the configurations built on it"
    );
    let mut published = 0;
    let mut failed = false;
    for dependent in &dependents {
        match rebuild(state, dependent, reference, &digest).await {
            Ok(true) => published += 1,
            Ok(false) => {}
            Err(e) => {
                failed = true;
                tracing::warn!(build_id = %dependent.build_id, "failed to publish a base update rebuild: {e:#}");
            }
        }
    }
    // Unfinished, the claim lapses and a later check publishes what is missing (same ids).
    if !failed {
        state
            .store
            .base_move_done(reference, &digest, published)
            .await?;
    }
    Ok(published)
}

/// Publishes the rebuild of one configuration; false when it opted out or cannot be rebuilt.
async fn rebuild(
    state: &AppState,
    dependent: &Dependent,
    reference: &str,
    digest: &str,
) -> anyhow::Result<bool> {
    let Value::Object(mut request) = dependent.request.clone() else {
        return Ok(false);
    };
    let id = &dependent.build_id;
    if request.get("rebuild_on_base_update") == Some(&Value::Bool(false)) {
        tracing::info!(build_id = %id, base = reference, "not rebuilt: the request opted out (rebuild_on_base_update)");
        return Ok(false);
    }
    // Tokens, build arg values and secrets are never stored: such a build cannot be repeated
    // without its owner.
    let unstored = request.get("has_token") == Some(&Value::Bool(true))
        || ["build_args", "secrets"].iter().any(|field| {
            request
                .get(*field)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        });
    if unstored {
        tracing::warn!(build_id = %id, base = reference, "not rebuilt on the moved base: its token, build arg values or secrets are not stored; rebuild it through the API");
        return Ok(false);
    }
    request.remove("has_token");
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let new_id = format!("{}-base-{}", truncate_id(id), &hex[..hex.len().min(12)]);
    request.insert("id".into(), json!(new_id));
    request.insert(
        "base_update".into(),
        json!({"reference": reference, "digest": digest, "commit": dependent.commit}),
    );
    let body = serde_json::to_vec(&Value::Object(request))?;
    let parsed = BuildRequest::parse(&body, &state.policy, None)
        .map_err(|r| anyhow::anyhow!("the stored request no longer parses: {r}"))?;
    enqueue(state, &parsed, &body, Some(id.clone()))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(true)
}

/// Checks every watched base each `bases.poll_interval_ms` until `shutdown`.
pub async fn poll(state: AppState, shutdown: CancellationToken) {
    let every = Duration::from_millis(state.settings.bases.poll_interval_ms);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let references = match state.store.watched_bases().await {
            Ok(references) => references,
            Err(e) => {
                tracing::warn!("failed to list the watched base images: {e:#}");
                continue;
            }
        };
        for reference in references {
            if let Err(e) = check(&state, &reference, None, Seen::Poll).await {
                tracing::warn!(base = %reference, "failed to check a base image: {e:#}");
            }
        }
    }
}

/// `host/repository:tag` -> its parts; None for a pinned reference (`@sha256:...`, it cannot
/// move) or one on podman's local store (`localhost/...`, no registry).
pub fn split_reference(reference: &str) -> Option<(&str, &str, &str)> {
    if reference.contains('@') {
        return None;
    }
    let (host, rest) = reference.split_once('/')?;
    if host == "localhost" || !(host.contains('.') || host.contains(':')) {
        return None;
    }
    let (repository, tag) = match rest.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, tag),
        _ => (rest, "latest"),
    };
    Some((host, repository, tag))
}

/// The manifests an index (or a Docker manifest list) names; empty for an image manifest.
fn index_children(manifest: &Manifest) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<Value>(&manifest.bytes) else {
        return Vec::new();
    };
    value["manifests"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|m| m["digest"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// This replica in `base_moves`: host and pid, since replicas may share a host.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_host_repository_and_tag() {
        assert_eq!(
            split_reference("127.0.0.1:5000/ns/base:v1"),
            Some(("127.0.0.1:5000", "ns/base", "v1"))
        );
        assert_eq!(
            split_reference("docker.io/library/alpine"),
            Some(("docker.io", "library/alpine", "latest"))
        );
        assert_eq!(split_reference("localhost/busybox:latest"), None);
        assert_eq!(split_reference("reg.test/base@sha256:00"), None);
        assert_eq!(split_reference("busybox:1"), None);
    }

    #[test]
    fn an_index_names_its_images() {
        let index = Manifest {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            bytes: br#"{"manifests":[{"digest":"sha256:a"},{"digest":"sha256:b"}]}"#.to_vec(),
            digest: "sha256:i".into(),
        };
        assert_eq!(index_children(&index), ["sha256:a", "sha256:b"]);
        let image = Manifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: br#"{"layers":[]}"#.to_vec(),
            digest: "sha256:m".into(),
        };
        assert!(index_children(&image).is_empty());
    }
}
