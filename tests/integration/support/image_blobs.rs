//! Everything a repository of the registry holds: every tag's manifest (and the manifests an
//! index lists), every config and layer blob, each layer unpacked and checked to be a valid tar.

use std::collections::BTreeSet;
use std::io::Read;

use serde_json::Value;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// One stored object and what it holds, for content scans.
pub struct Stored {
    /// `manifest <reference>`, `config <digest>` or `layer <digest>`.
    pub what: String,
    /// As the registry serves it.
    pub raw: Vec<u8>,
    /// A layer's uncompressed tar (empty for the others).
    pub tar: Vec<u8>,
    /// A layer's entries: (path, data).
    pub entries: Vec<(String, Vec<u8>)>,
}

impl Stored {
    /// Whether `needle` is anywhere in it: raw, unpacked, or in any entry's data.
    pub fn contains(&self, needle: &str) -> bool {
        let found = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
        found(&self.raw) || found(&self.tar) || self.entries.iter().any(|(_, d)| found(d))
    }
}

/// The file `path` (from the root, no leading "/") of an image stored as `name` in the test
/// registry, as text; panics when no stored image has it.
pub async fn file_of(name: &str, path: &str) -> String {
    let (_, stored) = stored_images(super::REGISTRY, name).await;
    stored
        .iter()
        .flat_map(|s| &s.entries)
        .find(|(entry, _)| entry.trim_start_matches("./") == path)
        .map(|(_, data)| String::from_utf8_lossy(data).into_owned())
        .unwrap_or_else(|| panic!("no /{path} in {name}"))
}

/// Every tag of `registry/name`, and everything they reference. Panics on a layer that is not
/// a valid tar (an entry whose data disagrees with its header's size, bytes after the end).
pub async fn stored_images(registry: &str, name: &str) -> (Vec<String>, Vec<Stored>) {
    let client = reqwest::Client::new();
    let tags: Value = client
        .get(format!("http://{registry}/v2/{name}/tags/list"))
        .send()
        .await
        .expect("registry answers")
        .json()
        .await
        .expect("tags JSON");
    let tags: Vec<String> = tags["tags"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut references: Vec<String> = tags.clone();
    while let Some(reference) = references.pop() {
        let manifest = get(&client, registry, name, "manifests", &reference).await;
        let parsed: Value = serde_json::from_slice(&manifest).expect("manifest JSON");
        for child in parsed["manifests"].as_array().into_iter().flatten() {
            let digest = child["digest"].as_str().expect("child digest").to_owned();
            if seen.insert(digest.clone()) {
                references.push(digest);
            }
        }
        if let Some(config) = parsed["config"]["digest"].as_str()
            && seen.insert(config.to_owned())
        {
            let raw = get(&client, registry, name, "blobs", config).await;
            out.push(Stored {
                what: format!("config {config}"),
                raw,
                tar: Vec::new(),
                entries: Vec::new(),
            });
        }
        for layer in parsed["layers"].as_array().into_iter().flatten() {
            let digest = layer["digest"].as_str().expect("layer digest").to_owned();
            if !seen.insert(digest.clone()) {
                continue;
            }
            let raw = get(&client, registry, name, "blobs", &digest).await;
            let tar = if raw.starts_with(&[0x1f, 0x8b]) {
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(raw.as_slice())
                    .read_to_end(&mut tar)
                    .expect("layer gunzips");
                tar
            } else {
                raw.clone()
            };
            let entries = valid_tar_entries(&tar)
                .unwrap_or_else(|e| panic!("layer {digest} of {name} is not a valid tar: {e}"));
            out.push(Stored {
                what: format!("layer {digest}"),
                raw,
                tar,
                entries,
            });
        }
        out.push(Stored {
            what: format!("manifest {reference}"),
            raw: manifest,
            tar: Vec::new(),
            entries: Vec::new(),
        });
    }
    (tags, out)
}

/// The entries of `tar`, each read to its end; an error if a header's size is not what the
/// entry holds or anything but zero blocks follows the last entry.
pub fn valid_tar_entries(tar: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut archive = tar::Archive::new(tar);
    let mut entries = Vec::new();
    let mut end = 0u64;
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry
            .path()
            .map_err(|e| e.to_string())?
            .display()
            .to_string();
        let size = entry.header().entry_size().map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
        if data.len() as u64 != size {
            return Err(format!(
                "{path}: header says {size} bytes, holds {}",
                data.len()
            ));
        }
        end = entry.raw_file_position() + size.div_ceil(512) * 512;
        entries.push((path, data));
    }
    let rest = tar
        .get(usize::try_from(end).unwrap_or(usize::MAX)..)
        .unwrap_or(&[]);
    if rest.iter().any(|b| *b != 0) {
        return Err(format!(
            "{} bytes after the last entry are not zero",
            rest.len()
        ));
    }
    Ok(entries)
}

async fn get(
    client: &reqwest::Client,
    registry: &str,
    name: &str,
    kind: &str,
    reference: &str,
) -> Vec<u8> {
    let response = client
        .get(format!("http://{registry}/v2/{name}/{kind}/{reference}"))
        .header("Accept", MANIFEST_TYPES)
        .send()
        .await
        .expect("registry answers");
    assert!(
        response.status().is_success(),
        "{name} {kind} {reference}: {}",
        response.status()
    );
    response.bytes().await.expect("body").to_vec()
}
