//! The previous image with its last layers replaced: a new config (diff ids, history, labels,
//! creation time) and a new manifest pointing at it. Plain JSON edits; everything else is kept.

use crate::ports::content_digest;
use serde_json::{Value, json};

/// Single-image manifests we can edit (an index for several platforms is not one of them).
pub(super) const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A replacement layer, as the manifest and config name it.
pub(crate) struct NewLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

/// A layer added after an image's own, and the history entry of the step that made it.
pub(crate) struct Appended {
    pub layer: NewLayer,
    /// As buildah writes it: `/bin/sh -c #(nop) COPY dir:<hex> in <dest> `.
    pub created_by: String,
    /// How many history entries (metadata steps) followed the step in the Dockerfile.
    pub followed_by: usize,
}

/// The config and manifest of the previous image, checked to end in `replaced` COPY layers.
pub(crate) struct Previous {
    pub manifest: Value,
    pub config: Value,
}

impl Previous {
    pub(crate) fn parse(
        media_type: &str,
        manifest: &[u8],
        config: &[u8],
        replaced: usize,
    ) -> Result<Self, String> {
        if !MANIFEST_TYPES.contains(&media_type) {
            return Err(format!("the previous image is a {media_type}"));
        }
        let manifest: Value = serde_json::from_slice(manifest)
            .map_err(|e| format!("the previous manifest is not JSON: {e}"))?;
        let config: Value = serde_json::from_slice(config)
            .map_err(|e| format!("the previous config is not JSON: {e}"))?;
        let layers = manifest["layers"].as_array().map_or(0, Vec::len);
        let diff_ids = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
        if layers != diff_ids || layers < replaced {
            return Err("the previous image's layers do not match its config".into());
        }
        if replaced == 0 {
            // Relabelling only: history is optional in OCI and not touched.
            return Ok(Self { manifest, config });
        }
        // The last `replaced` layers must be the COPY steps (buildah: "... COPY dir:... in ...").
        let made_layers: Vec<&Value> = config["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
                    .collect()
            })
            .unwrap_or_default();
        if made_layers.len() != layers {
            return Err("the previous image's history does not match its layers".into());
        }
        let tail_is_copy = made_layers[layers - replaced..]
            .iter()
            .all(|e| e["created_by"].as_str().is_some_and(|c| c.contains("COPY")));
        if !tail_is_copy {
            return Err("the previous image's last layers are not COPY steps".into());
        }
        // Replacements are gzip tars: the layers they replace must be too.
        let gzip = manifest["layers"]
            .as_array()
            .map(|l| &l[layers - replaced..])
            .unwrap_or_default()
            .iter()
            .all(|l| l["mediaType"].as_str().is_some_and(|t| t.ends_with("gzip")));
        if !gzip {
            return Err("the previous image's last layers are not gzip tars".into());
        }
        Ok(Self { manifest, config })
    }

    /// The working directory of the image's last steps ("/" when it sets none).
    pub(crate) fn working_dir(&self) -> &str {
        match self.config["config"]["WorkingDir"].as_str() {
            Some(dir) if !dir.is_empty() => dir,
            _ => "/",
        }
    }

    pub(crate) fn layer_count(&self) -> usize {
        self.manifest["layers"].as_array().map_or(0, Vec::len)
    }

    /// (digest, size) of layer `index`.
    pub(crate) fn layer(&self, index: usize) -> Option<(String, u64)> {
        let layer = &self.manifest["layers"][index];
        Some((
            layer["digest"].as_str()?.to_owned(),
            layer["size"].as_u64()?,
        ))
    }

    /// `sha256:` of layer `index` uncompressed (the config's `rootfs.diff_ids`).
    pub(crate) fn diff_id(&self, index: usize) -> Option<&str> {
        self.config["rootfs"]["diff_ids"][index].as_str()
    }

    /// The first ONBUILD trigger this image's build saw: buildah records a base's triggers as
    /// `#(nop) ONBUILD` history entries (and a docker-format config keeps them in `OnBuild`).
    /// A trigger runs in the child's build and may read any file of its context.
    pub(crate) fn onbuild_trigger(&self) -> Option<String> {
        let from_history = self.config["history"].as_array().and_then(|h| {
            h.iter().find_map(|e| {
                let by = e["created_by"].as_str()?;
                let (_, trigger) = by.split_once("#(nop) ONBUILD ")?;
                Some(trigger.trim().to_owned())
            })
        });
        from_history.or_else(|| {
            self.config["config"]["OnBuild"]
                .as_array()?
                .first()?
                .as_str()
                .map(str::to_owned)
        })
    }

    /// The commit the previous image was built from (its OCI revision label).
    pub(crate) fn revision(&self) -> Option<&str> {
        self.config["config"]["Labels"]["org.opencontainers.image.revision"].as_str()
    }

    /// New (config bytes, manifest bytes). `created` is RFC 3339; `note` goes in the history.
    pub(crate) fn relayer(
        mut self,
        layers: &[NewLayer],
        labels: &[(String, String)],
        created: &str,
        note: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let k = layers.len();
        self.stamp(labels, created);
        let config = &mut self.config;
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array_mut()
            .ok_or_else(broken)?;
        let keep = diff_ids.len() - k;
        diff_ids.truncate(keep);
        diff_ids.extend(layers.iter().map(|l| json!(l.diff_id)));
        // History is optional in OCI: only an image whose layers change needs it.
        let Some(history) = config["history"].as_array_mut() else {
            return if k == 0 {
                self.finish(layers)
            } else {
                Err(broken())
            };
        };
        let mut rebuilt = history
            .iter_mut()
            .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
            .skip(keep);
        for _ in 0..k {
            let entry = rebuilt.next().ok_or_else(broken)?;
            entry["created"] = json!(created);
            entry["comment"] = json!(note);
        }
        // Metadata steps after the copies (the labels among them) happened now too.
        for entry in history
            .iter_mut()
            .rev()
            .take_while(|e| e["empty_layer"].as_bool().unwrap_or(false))
        {
            entry["created"] = json!(created);
        }
        self.finish(layers)
    }

    /// New (config bytes, manifest bytes) with `layers` after the image's own, each with its
    /// history entry placed as the engine would have: before the metadata steps that followed
    /// its COPY (`Appended::followed_by`), which the image's history must end with.
    pub(crate) fn append(
        mut self,
        layers: &[Appended],
        labels: &[(String, String)],
        created: &str,
        note: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        self.stamp(labels, created);
        let layer_type = if self.manifest["mediaType"].as_str() == Some(MANIFEST_TYPES[1]) {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        };
        let history = self.config["history"]
            .as_array_mut()
            .ok_or("the image has no history to add the COPY steps to")?;
        for appended in layers {
            let at = history
                .len()
                .checked_sub(appended.followed_by)
                .filter(|&at| {
                    history[at..]
                        .iter()
                        .all(|e| e["empty_layer"].as_bool().unwrap_or(false))
                })
                .ok_or("the image's history does not end in the steps after its COPYs")?;
            history.insert(
                at,
                json!({"created": created, "created_by": appended.created_by, "comment": note}),
            );
        }
        let diff_ids = self.config["rootfs"]["diff_ids"]
            .as_array_mut()
            .ok_or_else(broken)?;
        diff_ids.extend(layers.iter().map(|a| json!(a.layer.diff_id)));
        let entries = self.manifest["layers"].as_array_mut().ok_or_else(broken)?;
        entries.extend(layers.iter().map(
            |a| json!({"mediaType": layer_type, "digest": a.layer.digest, "size": a.layer.size}),
        ));
        self.finish(&[])
    }

    /// The creation time, and `labels` over the image's own.
    fn stamp(&mut self, labels: &[(String, String)], created: &str) {
        let config = &mut self.config;
        config["created"] = json!(created);
        if !config["config"]["Labels"].is_object() {
            config["config"]["Labels"] = json!({});
        }
        for (key, value) in labels {
            config["config"]["Labels"][key] = json!(value);
        }
    }

    /// Serialises the config, then the manifest pointing at it, its last `layers.len()` layers
    /// replaced.
    fn finish(mut self, layers: &[NewLayer]) -> Result<(Vec<u8>, Vec<u8>), String> {
        let config_bytes = serde_json::to_vec(&self.config).map_err(|e| e.to_string())?;
        let manifest = &mut self.manifest;
        manifest["config"]["digest"] = json!(content_digest(&config_bytes));
        manifest["config"]["size"] = json!(config_bytes.len());
        let entries = manifest["layers"].as_array_mut().ok_or_else(broken)?;
        let keep = entries.len().saturating_sub(layers.len());
        for (entry, layer) in entries.iter_mut().skip(keep).zip(layers) {
            entry["digest"] = json!(layer.digest);
            entry["size"] = json!(layer.size);
            if let Some(annotations) = entry.as_object_mut() {
                annotations.remove("annotations");
            }
        }
        let manifest_bytes = serde_json::to_vec(manifest).map_err(|e| e.to_string())?;
        Ok((config_bytes, manifest_bytes))
    }

    pub(crate) fn media_type(&self, fallback: &str) -> String {
        self.manifest["mediaType"]
            .as_str()
            .unwrap_or(fallback)
            .to_owned()
    }
}

fn broken() -> String {
    "the previous image changed shape while being edited".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

    fn previous() -> (Vec<u8>, Vec<u8>) {
        let config = json!({
            "created": "2026-01-01T00:00:00Z",
            "config": {"Labels": {"org.opencontainers.image.revision": "c1", "keep": "me"}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:base", "sha256:run", "sha256:old"]},
            "history": [
                {"created_by": "/bin/sh -c #(nop) ADD file:x in / "},
                {"created_by": "/bin/sh -c make"},
                {"created_by": "/bin/sh -c #(nop) COPY dir:abc in /app/src/ "},
                {"created_by": "/bin/sh -c #(nop) LABEL a=b", "empty_layer": true},
            ]
        });
        let manifest = json!({
            "schemaVersion": 2, "mediaType": OCI,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:cfg", "size": 1},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:l1", "size": 1},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:l2", "size": 2},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:l3", "size": 3},
            ]
        });
        (
            serde_json::to_vec(&manifest).expect("json"),
            serde_json::to_vec(&config).expect("json"),
        )
    }

    #[test]
    fn the_last_layers_are_replaced_and_the_rest_is_kept() {
        let (manifest, config) = previous();
        let prev = Previous::parse(OCI, &manifest, &config, 1).expect("editable");
        assert_eq!(prev.revision(), Some("c1"));
        let layer = NewLayer {
            digest: "sha256:new".into(),
            diff_id: "sha256:newdiff".into(),
            size: 42,
        };
        let labels = [(
            "org.opencontainers.image.revision".to_owned(),
            "c2".to_owned(),
        )];
        let (config, manifest) = prev
            .relayer(&[layer], &labels, "2026-02-02T00:00:00Z", "rebuilt")
            .expect("relayered");
        let config: Value = serde_json::from_slice(&config).expect("json");
        let manifest: Value = serde_json::from_slice(&manifest).expect("json");
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!(["sha256:base", "sha256:run", "sha256:newdiff"])
        );
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.revision"],
            "c2"
        );
        assert_eq!(config["config"]["Labels"]["keep"], "me");
        assert_eq!(config["history"][2]["comment"], "rebuilt");
        assert_eq!(config["history"][1]["created"], Value::Null);
        assert_eq!(manifest["layers"][2]["digest"], "sha256:new");
        assert_eq!(manifest["layers"][2]["size"], 42);
        assert_eq!(manifest["layers"][1]["digest"], "sha256:l2");
        let config_bytes = serde_json::to_vec(&config).expect("json");
        assert_eq!(
            manifest["config"]["digest"],
            json!(content_digest(&config_bytes))
        );
    }

    #[test]
    fn appended_layers_go_last_and_their_steps_before_the_metadata_that_followed_them() {
        let (manifest, config) = previous();
        let image = Previous::parse(OCI, &manifest, &config, 0).expect("editable");
        let layer = |n: &str| NewLayer {
            digest: format!("sha256:l{n}"),
            diff_id: format!("sha256:d{n}"),
            size: 7,
        };
        let appended = [
            Appended {
                layer: layer("4"),
                created_by: "COPY a".into(),
                followed_by: 1,
            },
            Appended {
                layer: layer("5"),
                created_by: "COPY b".into(),
                followed_by: 0,
            },
        ];
        let labels = [(
            "org.opencontainers.image.revision".to_owned(),
            "c2".to_owned(),
        )];
        let (config, manifest) = image
            .append(&appended, &labels, "2026-02-02T00:00:00Z", "made here")
            .expect("appended");
        let config: Value = serde_json::from_slice(&config).expect("json");
        let manifest: Value = serde_json::from_slice(&manifest).expect("json");
        let steps: Vec<&str> = config["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|e| e["created_by"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            steps[2..],
            [
                "/bin/sh -c #(nop) COPY dir:abc in /app/src/ ",
                "COPY a",
                "/bin/sh -c #(nop) LABEL a=b",
                "COPY b"
            ]
        );
        assert_eq!(config["history"][3]["comment"], "made here");
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!([
                "sha256:base",
                "sha256:run",
                "sha256:old",
                "sha256:d4",
                "sha256:d5"
            ])
        );
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.revision"],
            "c2"
        );
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 5);
        assert_eq!(layers[3]["digest"], "sha256:l4");
        assert_eq!(
            layers[4]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(layers[2]["digest"], "sha256:l3", "the image's own stay");
        let config_bytes = serde_json::to_vec(&config).expect("json");
        assert_eq!(
            manifest["config"]["digest"],
            json!(content_digest(&config_bytes))
        );
        // The edited image is one the next incremental rebuild can edit again.
        let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
        assert!(Previous::parse(OCI, &manifest_bytes, &config_bytes, 2).is_ok());
    }

    #[test]
    fn a_step_cannot_go_before_layers() {
        let (manifest, config) = previous();
        let image = Previous::parse(OCI, &manifest, &config, 0).expect("editable");
        let appended = [Appended {
            layer: NewLayer {
                digest: "sha256:x".into(),
                diff_id: "sha256:y".into(),
                size: 1,
            },
            created_by: "COPY a".into(),
            followed_by: 2,
        }];
        assert!(image.append(&appended, &[], "now", "").is_err());
    }

    #[test]
    fn relabelling_needs_no_history() {
        let (manifest, config) = previous();
        let mut config: Value = serde_json::from_slice(&config).expect("json");
        config.as_object_mut().expect("object").remove("history");
        let config = serde_json::to_vec(&config).expect("json");
        let image = Previous::parse(OCI, &manifest, &config, 0).expect("relabellable");
        let labels = [("a".to_owned(), "b".to_owned())];
        let (config, manifest) = image.relayer(&[], &labels, "now", "").expect("labelled");
        let config: Value = serde_json::from_slice(&config).expect("json");
        let manifest: Value = serde_json::from_slice(&manifest).expect("json");
        assert_eq!(config["config"]["Labels"]["a"], "b");
        assert_eq!(
            manifest["layers"][2]["digest"], "sha256:l3",
            "no layer moves"
        );
        assert_eq!(
            manifest["config"]["digest"],
            json!(content_digest(&serde_json::to_vec(&config).expect("json")))
        );
    }

    #[test]
    fn onbuild_triggers_are_found_in_history_or_config() {
        let (manifest, config) = previous();
        let prev = Previous::parse(OCI, &manifest, &config, 1).expect("editable");
        assert_eq!(prev.onbuild_trigger(), None);
        let mut with = serde_json::from_slice::<Value>(&config).expect("json");
        with["history"].as_array_mut().expect("history").insert(
            1,
            json!({"created_by": "/bin/sh -c #(nop) ONBUILD COPY . /app", "empty_layer": true}),
        );
        let with = serde_json::to_vec(&with).expect("json");
        let prev = Previous::parse(OCI, &manifest, &with, 1).expect("editable");
        assert_eq!(prev.onbuild_trigger().as_deref(), Some("COPY . /app"));
        let mut docker = serde_json::from_slice::<Value>(&config).expect("json");
        docker["config"]["OnBuild"] = json!(["RUN make"]);
        let docker = serde_json::to_vec(&docker).expect("json");
        let prev = Previous::parse(OCI, &manifest, &docker, 1).expect("editable");
        assert_eq!(prev.onbuild_trigger().as_deref(), Some("RUN make"));
    }

    #[test]
    fn images_of_another_shape_are_refused() {
        let (manifest, config) = previous();
        assert!(
            Previous::parse(
                "application/vnd.oci.image.index.v1+json",
                &manifest,
                &config,
                1
            )
            .is_err()
        );
        // Two layers asked for, but the second-to-last one was a RUN.
        assert!(Previous::parse(OCI, &manifest, &config, 2).is_err());
        assert!(Previous::parse(OCI, &manifest, &config, 4).is_err());
    }
}
