//! The OCI documents an artifact is stored as (image spec 1.1 "artifacts" guidance, ORAS
//! conventions) and the referrers fallback index (distribution spec 1.1, "referrers tag
//! schema") for registries without the referrers API.
//!
//! Checked against the shared registry (Debian's docker-registry, distribution 2.8): a manifest
//! with `artifactType`, `subject` and the empty config (with its `data`) is accepted as it is
//! (201) and served back byte for byte; the answer has no `OCI-Subject` header and
//! `GET /v2/<name>/referrers/<digest>` is 404, so the fallback tag is always written. On a
//! registry with the referrers API the tag is redundant but harmless (clients prefer the API).
//!
//! Every document is a pure function of its inputs (no timestamps), so exporting the same path
//! of the same image again writes the same digests and the index converges instead of growing.

use serde_json::{Value, json};

use crate::ports::content_digest;

pub const ARTIFACT_TYPE: &str = "application/vnd.image-builder.artifact.v1";
pub const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
pub const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The empty config's bytes: `{}`.
pub const EMPTY: &[u8] = b"{}";
pub const TITLE: &str = "org.opencontainers.image.title";
pub const NAME: &str = "vnd.image-builder.artifact.name";
pub const PATH: &str = "vnd.image-builder.artifact.path";
pub const PLATFORM: &str = "vnd.image-builder.artifact.platform";

/// A content descriptor: what an artifact's `subject` and an index entry are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// What one artifact manifest says.
pub struct Artifact<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub platform: &'a str,
    /// The `tar.gz` blob.
    pub blob: &'a Descriptor,
    /// The image it was read from.
    pub subject: &'a Descriptor,
}

/// The artifact manifest's bytes: an image manifest with `artifactType`, the empty config, one
/// `tar.gz` layer titled `<name>.tar.gz` (what `oras pull` saves it as) and the image as its
/// `subject`.
pub fn artifact_manifest(a: &Artifact<'_>) -> Vec<u8> {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": EMPTY_CONFIG,
            "digest": content_digest(EMPTY),
            "size": EMPTY.len(),
            "data": "e30=",
        },
        "layers": [{
            "mediaType": TAR_GZIP,
            "digest": a.blob.digest,
            "size": a.blob.size,
            "annotations": { TITLE: format!("{}.tar.gz", a.name) },
        }],
        "subject": {
            "mediaType": a.subject.media_type,
            "digest": a.subject.digest,
            "size": a.subject.size,
        },
        "annotations": annotations(a),
    });
    serde_json::to_vec(&manifest).unwrap_or_default()
}

fn annotations(a: &Artifact<'_>) -> Value {
    json!({
        NAME: a.name,
        PATH: a.path,
        PLATFORM: a.platform,
        TITLE: format!("{}.tar.gz", a.name),
    })
}

/// The tag the referrers of `subject` are listed under when the registry has no referrers API:
/// `sha256-<hex>`.
pub fn referrers_tag(subject: &str) -> String {
    subject.replacen(':', "-", 1)
}

/// The referrers index with `added` in it: the entries of `current` (an index this tag already
/// held; anything else counts as empty) whose digest is not among `added`, then `added` in order.
pub fn referrers_index(current: Option<&[u8]>, added: &[(Descriptor, &Artifact<'_>)]) -> Vec<u8> {
    let mut entries: Vec<Value> = current
        .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        .and_then(|index| index.get("manifests").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    entries.retain(|entry| {
        let digest = entry.get("digest").and_then(Value::as_str);
        !added.iter().any(|(d, _)| Some(d.digest.as_str()) == digest)
    });
    for (descriptor, artifact) in added {
        entries.push(json!({
            "mediaType": descriptor.media_type,
            "digest": descriptor.digest,
            "size": descriptor.size,
            "artifactType": ARTIFACT_TYPE,
            "annotations": annotations(artifact),
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": IMAGE_INDEX,
        "manifests": entries,
    });
    serde_json::to_vec(&index).unwrap_or_default()
}

/// Whether the index `bytes` lists every descriptor of `added`.
pub fn lists_all(bytes: &[u8], added: &[(Descriptor, &Artifact<'_>)]) -> bool {
    let listed: Vec<String> = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|index| index.get("manifests").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.get("digest").and_then(Value::as_str).map(str::to_owned))
        .collect();
    added.iter().all(|(d, _)| listed.contains(&d.digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(digest: &str) -> Descriptor {
        Descriptor {
            media_type: IMAGE_MANIFEST.into(),
            digest: digest.into(),
            size: 7,
        }
    }

    #[test]
    fn the_manifest_follows_oras_and_names_its_subject() {
        let blob = Descriptor {
            media_type: TAR_GZIP.into(),
            digest: "sha256:bb".into(),
            size: 42,
        };
        let subject = descriptor("sha256:aa");
        let a = Artifact {
            name: "dist",
            path: "/app/dist",
            platform: "linux/amd64",
            blob: &blob,
            subject: &subject,
        };
        let bytes = artifact_manifest(&a);
        assert_eq!(bytes, artifact_manifest(&a), "deterministic");
        let m: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(m["artifactType"], ARTIFACT_TYPE);
        assert_eq!(m["config"]["mediaType"], EMPTY_CONFIG);
        assert_eq!(
            m["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(m["layers"][0]["annotations"][TITLE], "dist.tar.gz");
        assert_eq!(m["layers"][0]["size"], 42);
        assert_eq!(m["subject"]["digest"], "sha256:aa");
        assert_eq!(m["annotations"][PATH], "/app/dist");
    }

    #[test]
    fn the_referrers_index_keeps_others_and_replaces_its_own() {
        let (blob, subject) = (descriptor("sha256:b"), descriptor("sha256:s"));
        let a = Artifact {
            name: "dist",
            path: "/d",
            platform: "linux/amd64",
            blob: &blob,
            subject: &subject,
        };
        assert_eq!(referrers_tag("sha256:abc"), "sha256-abc");
        let first = referrers_index(None, &[(descriptor("sha256:1"), &a)]);
        let foreign = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:sig","mediaType":"x","size":1}]}"#;
        let merged = referrers_index(Some(foreign), &[(descriptor("sha256:1"), &a)]);
        let again = referrers_index(Some(&merged), &[(descriptor("sha256:1"), &a)]);
        assert_eq!(
            merged, again,
            "adding the same referrer twice changes nothing"
        );
        let index: Value = serde_json::from_slice(&again).expect("json");
        let digests: Vec<&str> = index["manifests"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|m| m["digest"].as_str())
            .collect();
        assert_eq!(digests, vec!["sha256:sig", "sha256:1"]);
        assert_eq!(index["mediaType"], IMAGE_INDEX);
        assert_eq!(index["manifests"][1]["artifactType"], ARTIFACT_TYPE);
        assert!(lists_all(&again, &[(descriptor("sha256:1"), &a)]));
        assert!(!lists_all(foreign, &[(descriptor("sha256:1"), &a)]));
        let garbage = referrers_index(Some(b"not json"), &[(descriptor("sha256:1"), &a)]);
        assert_eq!(garbage, first);
    }
}
