//! One `COPY` step as an OCI layer (gzip tar), from the checked-out context, with the step's
//! semantics: a directory source contributes its contents, a file source itself; owner root;
//! modes and modification times from the checkout, as podman's COPY keeps them.
//! Parent directories of the destination are left out: unpacking creates missing ones and keeps
//! existing ones (and their modes) as the lower layers have them.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use super::dockerfile::CopyStep;
use crate::registry::content_digest;

/// Sources above this size are built by the engine instead (the layer is held in memory).
const MAX_SOURCE_BYTES: u64 = 256 * 1024 * 1024;

pub(super) struct Layer {
    /// The compressed layer as uploaded.
    pub blob: Vec<u8>,
    /// `sha256:` of `blob`.
    pub digest: String,
    /// `sha256:` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    pub files: usize,
}

/// Hashes the uncompressed stream on its way to the compressor.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(super) fn build(context: &Path, step: &CopyStep) -> Result<Layer, String> {
    let gz = GzEncoder::new(Vec::new(), Compression::fast());
    let mut tar = tar::Builder::new(Hashing {
        inner: gz,
        hasher: Sha256::new(),
    });
    tar.follow_symlinks(false);
    let mut state = Walk { files: 0, bytes: 0 };
    let into_dir = step.dest.ends_with('/');
    let dest = step.dest.trim_matches('/');
    for source in &step.sources {
        let path = if source == "." {
            context.to_owned()
        } else {
            context.join(source)
        };
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|_| format!("COPY source {source} is not in the context"))?;
        if meta.is_dir() {
            add_tree(&mut tar, &path, dest, &mut state)?;
        } else if meta.is_file() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("COPY source {source} has no usable name"))?;
            let target = if into_dir {
                format!("{dest}/{name}")
            } else {
                dest.to_owned()
            };
            add_file(&mut tar, &path, &target, &meta, &mut state)?;
        } else {
            return Err(format!("COPY source {source} is a symlink or special file"));
        }
    }
    let hashing = tar
        .into_inner()
        .map_err(|e| format!("failed to finish the layer: {e}"))?;
    let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    let blob = hashing
        .inner
        .finish()
        .map_err(|e| format!("failed to compress the layer: {e}"))?;
    let digest = content_digest(&blob);
    Ok(Layer {
        blob,
        digest,
        diff_id,
        files: state.files,
    })
}

struct Walk {
    files: usize,
    bytes: u64,
}

type LayerTar = tar::Builder<Hashing<GzEncoder<Vec<u8>>>>;

/// The contents of `dir` under `dest`, sorted, directories before what they hold.
fn add_tree(tar: &mut LayerTar, dir: &Path, dest: &str, state: &mut Walk) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("failed to read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| format!("a file name in {} is not UTF-8", dir.display()))?;
        let target = if dest.is_empty() {
            name.to_owned()
        } else {
            format!("{dest}/{name}")
        };
        let meta = entry
            .metadata()
            .map_err(|e| format!("failed to read {target}: {e}"))?;
        if meta.is_dir() {
            let mut header = header(&meta, tar::EntryType::Directory, 0);
            tar.append_data(&mut header, format!("{target}/"), std::io::empty())
                .map_err(|e| format!("failed to add {target}: {e}"))?;
            add_tree(tar, &entry.path(), &target, state)?;
        } else if meta.is_file() {
            add_file(tar, &entry.path(), &target, &meta, state)?;
        } else {
            return Err(format!("{target} is a symlink or special file"));
        }
    }
    Ok(())
}

fn add_file(
    tar: &mut LayerTar,
    path: &Path,
    target: &str,
    meta: &std::fs::Metadata,
    state: &mut Walk,
) -> Result<(), String> {
    state.files += 1;
    state.bytes += meta.len();
    if state.bytes > MAX_SOURCE_BYTES {
        return Err(format!(
            "the COPY sources exceed {} MiB",
            MAX_SOURCE_BYTES >> 20
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("failed to read {target}: {e}"))?;
    let mut header = header(meta, tar::EntryType::Regular, meta.len());
    tar.append_data(&mut header, target, file)
        .map_err(|e| format!("failed to add {target}: {e}"))
}

fn header(meta: &std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    use std::os::unix::fs::MetadataExt;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entries(layer: &Layer) -> Vec<(String, u32, String)> {
        let mut out = Vec::new();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer.blob.as_slice()));
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            let mode = entry.header().mode().expect("mode");
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read");
            out.push((path, mode, text));
        }
        out
    }

    #[test]
    fn directory_sources_give_their_contents_and_files_land_by_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("src/sub")).expect("dirs");
        std::fs::write(dir.path().join("src/main.txt"), "main").expect("write");
        std::fs::write(dir.path().join("src/sub/run.sh"), "run").expect("write");
        std::fs::set_permissions(
            dir.path().join("src/sub/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::write(dir.path().join("a.txt"), "a").expect("write");

        let step = CopyStep {
            sources: vec!["src".into()],
            dest: "/app/src/".into(),
        };
        let layer = build(dir.path(), &step).expect("layer");
        let listed = entries(&layer);
        let names: Vec<&str> = listed.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            names,
            ["app/src/main.txt", "app/src/sub/", "app/src/sub/run.sh"]
        );
        assert_eq!(listed[2].1 & 0o777, 0o755);
        assert_eq!(listed[0].2, "main");
        assert_eq!(layer.files, 2);
        assert!(layer.digest.starts_with("sha256:") && layer.diff_id != layer.digest);

        let step = CopyStep {
            sources: vec!["a.txt".into()],
            dest: "/etc/b.txt".into(),
        };
        let listed = entries(&build(dir.path(), &step).expect("layer"));
        assert_eq!(listed[0].0, "etc/b.txt");
        assert_eq!(listed[0].2, "a");
    }

    #[test]
    fn missing_sources_and_symlinks_are_left_to_the_engine() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).expect("symlink");
        for source in ["nope", "link"] {
            let step = CopyStep {
                sources: vec![source.into()],
                dest: "/x".into(),
            };
            assert!(build(dir.path(), &step).is_err(), "{source}");
        }
    }
}
