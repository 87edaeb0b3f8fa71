//! Notification bodies published on the events exchange; the routing key is the event name.

use serde::{Deserialize, Serialize};

use crate::error::Fault;

/// Identifies a build in every event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildRef {
    pub build_id: String,
    pub request_id: String,
    pub user_id: Option<String>,
    pub repo: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildStarted {
    #[serde(flatten)]
    pub build: BuildRef,
    pub attempt: u32,
    pub host: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRetrying {
    #[serde(flatten)]
    pub build: BuildRef,
    pub attempt: u32,
    pub next_attempt: u32,
    pub delay_ms: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageUpdated {
    #[serde(flatten)]
    pub build: BuildRef,
    pub commit: String,
    /// registry/namespace/name, without a tag.
    pub image: String,
    pub tags: Vec<String>,
    pub digest: String,
    pub platforms: Vec<String>,
    /// The image already existed for this commit and configuration; nothing was built.
    pub cached: bool,
    pub duration_ms: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: time::OffsetDateTime,
    /// The request's `artifacts`, exported and stored next to the image; absent when none were
    /// asked for, so consumers that predate the field see the same body.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRef>,
    /// How the image was made, so a container manager can decide whether to redeploy.
    #[serde(default)]
    pub how: How,
    /// Why it was made that way, in one sentence ("first build of this configuration", "only
    /// files no step but the final COPYs reads changed: app/main.py").
    #[serde(default)]
    pub why: String,
    /// The base images the image was built on, as the engine resolved and pulled them (a cached
    /// or incremental answer: those of the image it reused). Absent when unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bases: Vec<BaseImage>,
}

/// One stage's base image: what a base update is matched against (`store::bases`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BaseImage {
    /// The stage's name, or its index when it has none.
    pub stage: String,
    /// The stage the image is (the target, else the last).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// As the Dockerfile's FROM says it, its variables expanded.
    pub written: String,
    /// The full reference the engine resolved it to (`registry/repository:tag`).
    pub reference: String,
    /// The manifest digest of the image the build used, as the engine stored it.
    pub digest: String,
    /// Other manifest digests of the same image (a registry may serve it converted, or another
    /// registry under another digest): a base is up to date when its registry serves any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
}

/// How an image came to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// It existed for this commit and configuration: only its tags were pointed at it.
    Cached,
    /// The previous image of this configuration, edited in the registry (final COPY layers).
    Incremental,
    /// The previous image of this configuration moved onto its moved base in the registry (its
    /// Dockerfile never reads the base).
    Rebased,
    /// Built by the engine.
    #[default]
    Full,
}

impl How {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Incremental => "incremental",
            Self::Rebased => "rebased",
            Self::Full => "full",
        }
    }
}

/// One stored artifact: an OCI artifact manifest in the image's repository whose subject is the
/// image, with one `tar.gz` layer of `path`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArtifactRef {
    pub name: String,
    /// The path in the image, normalised.
    pub path: String,
    /// `os/arch[/variant]` of the image it was read from.
    pub platform: String,
    /// The artifact manifest's digest (`oras pull <image repo>@<digest>`).
    pub digest: String,
    /// The `tar.gz` blob's digest and size.
    pub blob_digest: String,
    pub size: u64,
}

/// Body of `build.failed` and `build.rejected`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildFailed {
    #[serde(flatten)]
    pub build: BuildRef,
    pub attempts: u32,
    pub fault: Fault,
    pub reason: String,
    /// For rejections: the request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub log_tail: Vec<String>,
}

/// Body of `build.cancelled`: stopped on request, before or while it ran; nothing was pushed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildCancelled {
    #[serde(flatten)]
    pub build: BuildRef,
    pub attempts: u32,
    /// Whether a build was running (its process tree was killed) or still queued.
    pub was_running: bool,
    pub log_tail: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum Event {
    #[serde(rename = "build.started")]
    Started(BuildStarted),
    #[serde(rename = "build.retrying")]
    Retrying(BuildRetrying),
    #[serde(rename = "image.updated")]
    ImageUpdated(ImageUpdated),
    #[serde(rename = "build.failed")]
    Failed(BuildFailed),
    #[serde(rename = "build.rejected")]
    Rejected(BuildFailed),
    #[serde(rename = "build.cancelled")]
    Cancelled(BuildCancelled),
}

impl Event {
    pub fn routing_key(&self) -> &'static str {
        match self {
            Self::Started(_) => "build.started",
            Self::Retrying(_) => "build.retrying",
            Self::ImageUpdated(_) => "image.updated",
            Self::Failed(_) => "build.failed",
            Self::Rejected(_) => "build.rejected",
            Self::Cancelled(_) => "build.cancelled",
        }
    }

    pub fn build(&self) -> &BuildRef {
        match self {
            Self::Started(e) => &e.build,
            Self::Retrying(e) => &e.build,
            Self::ImageUpdated(e) => &e.build,
            Self::Failed(e) | Self::Rejected(e) => &e.build,
            Self::Cancelled(e) => &e.build,
        }
    }

    /// Whether this event ends the build (no more events for it will follow).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::ImageUpdated(_) | Self::Failed(_) | Self::Rejected(_) | Self::Cancelled(_)
        )
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_carries_its_name_and_flat_fields() {
        let event = Event::Rejected(BuildFailed {
            build: BuildRef {
                build_id: "b".into(),
                request_id: "r".into(),
                user_id: None,
                repo: Some("a/b".into()),
                git_ref: None,
            },
            attempts: 1,
            fault: Fault::Rejected,
            reason: "`ref` must not start with '-'".into(),
            field: Some("ref".into()),
            log_tail: vec![],
        });
        let value: serde_json::Value = serde_json::from_slice(&event.to_json()).expect("json");
        assert_eq!(value["event"], "build.rejected");
        assert_eq!(value["field"], "ref");
        assert_eq!(value["fault"], "rejected");
        assert_eq!(value["repo"], "a/b");
        let back: Event = serde_json::from_value(value).expect("round trip");
        assert_eq!(back.routing_key(), "build.rejected");
    }

    #[test]
    fn image_updated_names_artifacts_only_when_there_are_some() {
        let mut updated = ImageUpdated {
            build: BuildRef {
                build_id: "b".into(),
                request_id: "r".into(),
                user_id: None,
                repo: None,
                git_ref: None,
            },
            commit: "c".into(),
            image: "reg/u/app".into(),
            tags: vec![],
            digest: "sha256:i".into(),
            platforms: vec![],
            cached: false,
            duration_ms: 1,
            finished_at: time::OffsetDateTime::UNIX_EPOCH,
            how: Default::default(),
            why: String::new(),
            bases: Vec::new(),
            artifacts: vec![],
        };
        let plain = serde_json::to_value(&updated).expect("json");
        assert!(plain.get("artifacts").is_none(), "{plain}");
        // A body from before the field reads as no artifacts.
        let old: ImageUpdated = serde_json::from_value(plain).expect("old body");
        assert!(old.artifacts.is_empty());
        updated.artifacts.push(ArtifactRef {
            name: "dist".into(),
            path: "/app/dist".into(),
            platform: "linux/amd64".into(),
            digest: "sha256:a".into(),
            blob_digest: "sha256:b".into(),
            size: 3,
        });
        let listed = serde_json::to_value(&updated).expect("json");
        assert_eq!(listed["artifacts"][0]["digest"], "sha256:a");
        assert_eq!(listed["artifacts"][0]["blob_digest"], "sha256:b");
    }
}
