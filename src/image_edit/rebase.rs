//! An image moved onto a new base in the registry, as `crane rebase` does: the old base's
//! layers at the bottom of the image are replaced by the new base's, the image's own layers and
//! config are kept. Only right when nothing the image's own steps made depends on the base's
//! files (no `RUN`, no `COPY --chown=<name>`): the caller decides that from the Dockerfile; this
//! module checks what the images themselves can tell (the image really starts with the old
//! base, and the new base's config would give a full build the same settings).

use serde_json::{Map, Value, json};

use super::image::MANIFEST_TYPES;
use crate::ports::content_digest;

const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A single-platform image as JSON: its manifest and config.
pub(crate) struct Parsed {
    pub manifest: Value,
    pub config: Value,
}

impl Parsed {
    pub(crate) fn parse(
        what: &str,
        media_type: &str,
        manifest: &[u8],
        config: &[u8],
    ) -> Result<Self, String> {
        if !MANIFEST_TYPES.contains(&media_type) {
            return Err(format!("{what} is a {media_type}"));
        }
        let manifest: Value = serde_json::from_slice(manifest)
            .map_err(|e| format!("the manifest of {what} is not JSON: {e}"))?;
        let config: Value = serde_json::from_slice(config)
            .map_err(|e| format!("the config of {what} is not JSON: {e}"))?;
        let parsed = Self { manifest, config };
        if parsed.layers().len() != parsed.diff_ids().len() {
            return Err(format!("the layers of {what} do not match its config"));
        }
        Ok(parsed)
    }

    fn layers(&self) -> &[Value] {
        self.manifest["layers"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    fn diff_ids(&self) -> &[Value] {
        self.config["rootfs"]["diff_ids"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    fn history(&self) -> &[Value] {
        self.config["history"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The platform a base's index entry must match.
    pub(crate) fn platform(&self) -> (String, String, Option<String>) {
        let text = |key: &str| self.config[key].as_str().map(str::to_owned);
        (
            text("os").unwrap_or_default(),
            text("architecture").unwrap_or_default(),
            text("variant"),
        )
    }
}

/// What the rebased image is made of.
pub(crate) struct Swap<'a> {
    pub image: &'a Parsed,
    pub old_base: &'a Parsed,
    pub new_base: &'a Parsed,
    /// The manifest digest of the new base, for the OCI base annotation when the image has it.
    pub new_base_digest: &'a str,
    pub labels: &'a [(String, String)],
    /// RFC 3339.
    pub created: &'a str,
}

/// The rebased image's (config bytes, manifest bytes), or why the image cannot be rebased.
pub(crate) fn swap(s: &Swap<'_>) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (image, old, new) = (s.image, s.old_base, s.new_base);
    let n = old.layers().len();
    let starts_with_old = image.layers().len() >= n
        && image
            .layers()
            .iter()
            .zip(old.layers())
            .all(|(a, b)| a["digest"] == b["digest"])
        && image.diff_ids().get(..n) == Some(old.diff_ids());
    if !starts_with_old {
        return Err("the image does not start with its recorded base's layers".into());
    }
    if let Some(field) = inherited_difference(old, new) {
        return Err(format!(
            "the new base's {field} differs from the old one's, and a full build would inherit it"
        ));
    }
    if meaningful(&old.config["config"]["OnBuild"]).is_some() {
        return Err(
            "the base has ONBUILD triggers, which ran as steps of the image's build".into(),
        );
    }
    let old_history = old.history();
    let image_history = image.history();
    let made = |h: &[Value]| h.iter().filter(|e| !is_empty_layer(e)).count();
    let history_fits = image_history.len() >= old_history.len()
        && made(old_history) == n
        && made(new.history()) == new.layers().len()
        && made(image_history) == image.layers().len()
        && image_history
            .iter()
            .zip(old_history)
            .all(|(a, b)| a["created_by"] == b["created_by"]);
    if !history_fits {
        return Err("the images' histories do not match their layers".into());
    }

    let media_type = image.manifest["mediaType"].as_str().unwrap_or_default();
    let base_layers = new
        .layers()
        .iter()
        .map(|layer| as_layer_of(layer, media_type))
        .collect::<Result<Vec<_>, _>>()?;

    let mut config = image.config.clone();
    config["created"] = json!(s.created);
    let diff_ids: Vec<Value> = new
        .diff_ids()
        .iter()
        .chain(&image.diff_ids()[n..])
        .cloned()
        .collect();
    config["rootfs"]["diff_ids"] = Value::Array(diff_ids);
    if config["history"].is_array() {
        let history: Vec<Value> = new
            .history()
            .iter()
            .chain(&image_history[old_history.len()..])
            .cloned()
            .collect();
        config["history"] = Value::Array(history);
    }
    if !config["config"]["Labels"].is_object() {
        config["config"]["Labels"] = json!({});
    }
    for (key, value) in s.labels {
        config["config"]["Labels"][key] = json!(value);
    }
    let config_bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;

    let mut manifest = image.manifest.clone();
    manifest["config"]["digest"] = json!(content_digest(&config_bytes));
    manifest["config"]["size"] = json!(config_bytes.len());
    let layers: Vec<Value> = base_layers
        .into_iter()
        .chain(image.layers()[n..].iter().cloned())
        .collect();
    manifest["layers"] = Value::Array(layers);
    let annotations = &mut manifest["annotations"];
    if annotations["org.opencontainers.image.base.digest"].is_string() {
        annotations["org.opencontainers.image.base.digest"] = json!(s.new_base_digest);
    }
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    Ok((config_bytes, manifest_bytes))
}

fn is_empty_layer(entry: &Value) -> bool {
    entry["empty_layer"].as_bool().unwrap_or(false)
}

/// The first setting a child image inherits in which `new` differs from `old`: its config
/// (environment, command, user, labels, triggers...) and platform. Absent, null and empty are
/// the same setting.
fn inherited_difference(old: &Parsed, new: &Parsed) -> Option<String> {
    for key in ["os", "architecture", "variant", "os.version"] {
        if meaningful(&old.config[key]) != meaningful(&new.config[key]) {
            return Some(key.to_owned());
        }
    }
    let empty = Map::new();
    let settings = |p: &Parsed| p.config["config"].as_object().unwrap_or(&empty).clone();
    let (old, new) = (settings(old), settings(new));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .find(|key| {
            let setting = |m: &Map<String, Value>| m.get(key.as_str()).cloned().unwrap_or_default();
            meaningful(&setting(&old)) != meaningful(&setting(&new))
        })
        .map(|key| format!("config {key}"))
}

/// `value`, with null and empty lists, maps and strings all read as absent.
fn meaningful(value: &Value) -> Option<&Value> {
    let empty = match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    };
    (!empty).then_some(value)
}

/// A base layer's manifest entry as the image's manifest type names it: a Docker manifest
/// cannot list OCI media types, and the reverse.
fn as_layer_of(layer: &Value, manifest_type: &str) -> Result<Value, String> {
    let mut layer = layer.clone();
    let kind = layer["mediaType"].as_str().unwrap_or_default().to_owned();
    let wanted = match (manifest_type == DOCKER_MANIFEST, kind.as_str()) {
        (true, OCI_GZIP) | (true, DOCKER_GZIP) => DOCKER_GZIP,
        (false, OCI_GZIP) | (false, DOCKER_GZIP) => OCI_GZIP,
        (true, _) => return Err(format!("a Docker manifest cannot hold a {kind} base layer")),
        (false, _) => return Ok(layer),
    };
    layer["mediaType"] = json!(wanted);
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

    fn image(layers: &[&str], history: &[(&str, bool)], env: &[&str]) -> Parsed {
        let manifest = json!({
            "schemaVersion": 2, "mediaType": OCI,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:c", "size": 1},
            "layers": layers.iter().map(|l| json!({"mediaType": OCI_GZIP, "digest": format!("sha256:{l}"), "size": 1})).collect::<Vec<_>>(),
        });
        let config = json!({
            "os": "linux", "architecture": "amd64",
            "config": {"Env": env, "Labels": {"base": "yes"}},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| format!("sha256:d{l}")).collect::<Vec<_>>()},
            "history": history.iter().map(|(by, empty)| json!({"created_by": by, "empty_layer": empty})).collect::<Vec<_>>(),
        });
        Parsed { manifest, config }
    }

    fn bases() -> (Parsed, Parsed) {
        let old = image(&["b1"], &[("ADD base v1", false)], &["PATH=/bin"]);
        let new = image(
            &["n1", "n2"],
            &[("ADD base v2", false), ("ADD fix", false)],
            &["PATH=/bin"],
        );
        (old, new)
    }

    fn app() -> Parsed {
        image(
            &["b1", "a1"],
            &[
                ("ADD base v1", false),
                ("COPY dir:x in /app", false),
                ("CMD [\"/app/run\"]", true),
            ],
            &["PATH=/bin", "MODE=prod"],
        )
    }

    fn swapped(image: &Parsed, old: &Parsed, new: &Parsed) -> Result<(Value, Value), String> {
        let labels = [("rebuilt".to_owned(), "base".to_owned())];
        let (config, manifest) = swap(&Swap {
            image,
            old_base: old,
            new_base: new,
            new_base_digest: "sha256:newbase",
            labels: &labels,
            created: "2026-12-03T00:00:00Z",
        })?;
        Ok((
            serde_json::from_slice(&config).expect("json"),
            serde_json::from_slice(&manifest).expect("json"),
        ))
    }

    #[test]
    fn the_old_base_layers_are_replaced_and_the_image_s_own_are_kept() {
        let (old, new) = bases();
        let (config, manifest) = swapped(&app(), &old, &new).expect("rebased");
        let digests: Vec<&str> = manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .filter_map(|l| l["digest"].as_str())
            .collect();
        assert_eq!(digests, ["sha256:n1", "sha256:n2", "sha256:a1"]);
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!(["sha256:dn1", "sha256:dn2", "sha256:da1"])
        );
        let history: Vec<&str> = config["history"]
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|e| e["created_by"].as_str())
            .collect();
        assert_eq!(
            history,
            [
                "ADD base v2",
                "ADD fix",
                "COPY dir:x in /app",
                "CMD [\"/app/run\"]"
            ]
        );
        assert_eq!(config["config"]["Env"], json!(["PATH=/bin", "MODE=prod"]));
        assert_eq!(config["config"]["Labels"]["rebuilt"], "base");
        assert_eq!(config["created"], "2026-12-03T00:00:00Z");
        let config_bytes = serde_json::to_vec(&config).expect("json");
        assert_eq!(
            manifest["config"]["digest"],
            json!(content_digest(&config_bytes))
        );
    }

    #[test]
    fn an_image_not_built_on_the_old_base_is_refused() {
        let (old, new) = bases();
        let other = image(&["x1", "a1"], &[("ADD other", false), ("COPY", false)], &[]);
        let err = swapped(&other, &old, &new).expect_err("another base");
        assert!(err.contains("does not start with"), "{err}");
    }

    #[test]
    fn a_new_base_with_other_settings_is_refused_naming_them() {
        let (old, _) = bases();
        let new = image(&["n1"], &[("ADD base v2", false)], &["PATH=/usr/bin"]);
        let err = swapped(&app(), &old, &new).expect_err("Env moved");
        assert!(err.contains("config Env"), "{err}");
        let mut arm = image(&["n1"], &[("ADD base v2", false)], &["PATH=/bin"]);
        arm.config["architecture"] = json!("arm64");
        let err = swapped(&app(), &old, &arm).expect_err("another platform");
        assert!(err.contains("architecture"), "{err}");
        // Absent and empty are one setting: an empty Cmd added by the new base is no change.
        let mut same = image(&["n1"], &[("ADD base v2", false)], &["PATH=/bin"]);
        same.config["config"]["Cmd"] = json!([]);
        assert!(swapped(&app(), &old, &same).is_ok());
        // Triggers ran in the image's build: what they made depends on the base.
        let (mut triggered, mut new) = bases();
        triggered.config["config"]["OnBuild"] = json!(["RUN make"]);
        new.config["config"]["OnBuild"] = json!(["RUN make"]);
        let err = swapped(&app(), &triggered, &new).expect_err("ONBUILD");
        assert!(err.contains("ONBUILD"), "{err}");
    }

    #[test]
    fn histories_that_do_not_match_the_layers_are_refused() {
        let (old, _) = bases();
        let new = image(&["n1", "n2"], &[("ADD base v2", false)], &["PATH=/bin"]);
        let err = swapped(&app(), &old, &new).expect_err("one entry for two layers");
        assert!(err.contains("histories"), "{err}");
    }

    #[test]
    fn a_docker_manifest_gets_docker_layer_types() {
        let (old, new) = bases();
        let mut docker = app();
        docker.manifest["mediaType"] = json!(DOCKER_MANIFEST);
        let (_, manifest) = swapped(&docker, &old, &new).expect("rebased");
        assert_eq!(manifest["layers"][0]["mediaType"], DOCKER_GZIP);
        let mut zstd = bases().1;
        zstd.manifest["layers"][0]["mediaType"] =
            json!("application/vnd.oci.image.layer.v1.tar+zstd");
        let err = swapped(&docker, &old, &zstd).expect_err("zstd in a Docker manifest");
        assert!(err.contains("zstd"), "{err}");
    }
}
