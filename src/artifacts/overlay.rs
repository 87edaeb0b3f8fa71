//! One path of an image, read from its layer tars as the runtime's overlay would show it, and
//! written as a `tar.gz` of that subtree. Nothing touches the host filesystem but the two files
//! given (layers read, artifact written): entries go from tar to tar, so a symlink stays a
//! symlink, whatever it points at, and is never followed.
//!
//! The layers are read from the top (the last) down: the first layer that has an entry decides
//! it, and the whiteouts of a layer hide entries of the layers below it (OCI image spec,
//! "Whiteouts": `.wh.<name>` deletes `<name>`, `.wh..wh..opq` hides everything a lower layer
//! put in its directory; neither applies to its own layer). A non-directory entry also hides
//! whatever lower layers put beneath its path. Reading top down writes each winning entry once,
//! straight from its layer, with nothing kept but the set of decided paths.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use tar::EntryType;

use crate::digest_writer::DigestWriter;
use crate::request::ImagePath;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Why a path could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "{0} is not in the image (paths are read literally: a symlink on the way is not followed)"
    )]
    Missing(String),
    #[error("{path} is more than {max} bytes (uncompressed tar); the bound is artifacts.max_bytes")]
    TooLarge { path: String, max: u64 },
    #[error("layer {layer} cannot be read: {reason}")]
    Layer { layer: usize, reason: String },
    #[error("failed to write the artifact: {0}")]
    Write(#[source] io::Error),
}

/// The written artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// `sha256:` of the `tar.gz` file.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Entries written (directories, files, links).
    pub entries: usize,
}

/// Writes the subtree at `target` of the image whose layers (`tar` or `tar+gzip`, bottom
/// first) are the files `layers` into `out` as a `tar.gz` whose entries are named from the
/// target's own name down (`/app/dist` -> `dist/...`). At most `max_bytes` of uncompressed tar.
pub fn export(
    layers: &[PathBuf],
    target: &ImagePath,
    max_bytes: u64,
    out: &Path,
) -> Result<Exported, ExportError> {
    let file = File::create(out).map_err(ExportError::Write)?;
    let hashed = DigestWriter::new(BufWriter::new(file));
    let mut tar = tar::Builder::new(GzEncoder::new(hashed, Compression::default()));
    tar.follow_symlinks(false);
    let mut walk = Walk::new(target, max_bytes);
    for (index, layer) in layers.iter().enumerate().rev() {
        walk.layer(&mut tar, layer, index)?;
    }
    if walk.entries == 0 {
        return Err(ExportError::Missing(target.as_str().to_owned()));
    }
    let gz = tar.into_inner().map_err(ExportError::Write)?;
    let mut hashed = gz.finish().map_err(ExportError::Write)?;
    hashed.flush().map_err(ExportError::Write)?;
    let (_, blob) = hashed.into_parts();
    Ok(Exported {
        digest: blob.digest,
        size: blob.size,
        entries: walk.entries,
    })
}

type Out = tar::Builder<GzEncoder<DigestWriter<BufWriter<File>>>>;

/// What the layers above the current one decided.
struct Walk<'a> {
    target: &'a str,
    /// The name entries get in the artifact: the target's last component.
    base: &'a str,
    max_bytes: u64,
    /// Uncompressed tar bytes written so far.
    used: u64,
    /// Paths an upper layer wrote (or saw as a directory): lower layers' entries lose.
    decided: BTreeSet<String>,
    /// Paths whose whole subtree upper layers removed (whiteouts, non-directories).
    gone: BTreeSet<String>,
    /// Directories whose lower contents upper layers hid (opaque).
    opaque: BTreeSet<String>,
    entries: usize,
}

impl<'a> Walk<'a> {
    fn new(target: &'a ImagePath, max_bytes: u64) -> Self {
        let target = target.relative();
        Self {
            target,
            base: target.rsplit('/').next().unwrap_or(target),
            max_bytes,
            used: 0,
            decided: BTreeSet::new(),
            gone: BTreeSet::new(),
            opaque: BTreeSet::new(),
            entries: 0,
        }
    }

    /// Whether `path` (inside the target or one of its ancestors) matters here.
    fn concerns(&self, path: &str) -> bool {
        within(path, self.target) || within(self.target, path)
    }

    /// Whether an upper layer hid `path`: it or an ancestor is gone, or an ancestor is opaque.
    fn hidden(&self, path: &str) -> bool {
        ancestors_and_self(path).any(|p| self.gone.contains(p))
            || ancestors_and_self(path)
                .skip(1)
                .any(|p| self.opaque.contains(p))
    }

    /// The artifact's name for `path` (inside the target).
    fn out_name(&self, path: &str) -> String {
        let rest = &path[self.target.len()..];
        format!("{}{rest}", self.base)
    }

    fn layer(&mut self, out: &mut Out, file: &Path, index: usize) -> Result<(), ExportError> {
        let bad = |reason: String| ExportError::Layer {
            layer: index,
            reason,
        };
        // Applied to the layers below this one only, once this one is read.
        let mut gone = Vec::new();
        let mut opaque = Vec::new();
        let mut decided = Vec::new();
        // Hard links whose target this layer holds outside what was written: name -> target.
        let mut links: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut written: BTreeMap<String, String> = BTreeMap::new();

        let mut archive = open_layer(file).map_err(|e| bad(e.to_string()))?;
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let raw = entry.path().map_err(|e| bad(e.to_string()))?;
            let Some(path) = normalise(&raw.to_string_lossy()) else {
                continue;
            };
            let (dir, name) = match path.rsplit_once('/') {
                Some((dir, name)) => (dir, name),
                None => ("", path.as_str()),
            };
            if name == OPAQUE {
                if self.concerns(dir) {
                    opaque.push(dir.to_owned());
                }
                continue;
            }
            if let Some(deleted) = name.strip_prefix(WHITEOUT) {
                if !deleted.starts_with(WHITEOUT) {
                    let deleted = join(dir, deleted);
                    if self.concerns(&deleted) {
                        gone.push(deleted);
                    }
                }
                continue;
            }
            if !self.concerns(&path) || self.hidden(&path) || self.decided.contains(&path) {
                continue;
            }
            let kind = entry.header().entry_type();
            if !kind.is_dir() {
                // Whatever lower layers have beneath a file is not there any more.
                gone.push(path.clone());
            }
            decided.push(path.clone());
            if !within(&path, self.target) {
                // An ancestor of the target: it shapes what is hidden, nothing more.
                continue;
            }
            let name = self.out_name(&path);
            let mut header = entry.header().clone();
            match kind {
                EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(|e| bad(e.to_string()))?
                        .and_then(|t| normalise(&t.to_string_lossy()));
                    let Some(target) = target else {
                        return Err(bad(format!("hard link {path} has no target")));
                    };
                    match written.get(&target) {
                        Some(written_as) => {
                            self.account(0)?;
                            out.append_link(&mut header, &name, written_as)
                                .map_err(ExportError::Write)?;
                        }
                        None => {
                            // Counted when `linked_contents` writes it.
                            links.entry(target).or_default().push(name);
                            continue;
                        }
                    }
                }
                EntryType::Symlink => {
                    let link = entry
                        .link_name()
                        .map_err(|e| bad(e.to_string()))?
                        .unwrap_or_default()
                        .into_owned();
                    self.account(0)?;
                    out.append_link(&mut header, &name, link)
                        .map_err(ExportError::Write)?;
                }
                EntryType::Regular | EntryType::Continuous | EntryType::Directory => {
                    let size = if kind.is_dir() { 0 } else { entry.size() };
                    self.account(size)?;
                    header.set_entry_type(if kind.is_dir() {
                        EntryType::Directory
                    } else {
                        EntryType::Regular
                    });
                    header.set_size(size);
                    out.append_data(&mut header, &name, &mut entry)
                        .map_err(ExportError::Write)?;
                    if !kind.is_dir() {
                        written.insert(path.clone(), name);
                    }
                }
                // Devices and fifos are kept as they are (no data).
                EntryType::Char | EntryType::Block | EntryType::Fifo => {
                    self.account(0)?;
                    header.set_size(0);
                    out.append_data(&mut header, &name, io::empty())
                        .map_err(ExportError::Write)?;
                }
                _ => continue,
            }
            self.entries += 1;
        }
        if !links.is_empty() {
            self.linked_contents(out, file, index, links)?;
        }
        self.gone.extend(gone);
        self.opaque.extend(opaque);
        self.decided.extend(decided);
        Ok(())
    }

    /// Hard links into the artifact whose target is outside it: the target's bytes, read again
    /// from the same layer, written under each linking name.
    fn linked_contents(
        &mut self,
        out: &mut Out,
        file: &Path,
        index: usize,
        mut links: BTreeMap<String, Vec<String>>,
    ) -> Result<(), ExportError> {
        let bad = |reason: String| ExportError::Layer {
            layer: index,
            reason,
        };
        let mut archive = open_layer(file).map_err(|e| bad(e.to_string()))?;
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let raw = entry.path().map_err(|e| bad(e.to_string()))?;
            let Some(path) = normalise(&raw.to_string_lossy()) else {
                continue;
            };
            let Some(names) = links.remove(&path) else {
                continue;
            };
            let mut header = entry.header().clone();
            let mut first: Option<&String> = None;
            for name in &names {
                match first {
                    None => {
                        self.account(entry.size())?;
                        header.set_entry_type(EntryType::Regular);
                        out.append_data(&mut header, name, &mut entry)
                            .map_err(ExportError::Write)?;
                        first = Some(name);
                    }
                    Some(first) => {
                        self.account(0)?;
                        let mut link = header.clone();
                        link.set_entry_type(EntryType::Link);
                        link.set_size(0);
                        out.append_link(&mut link, name, first)
                            .map_err(ExportError::Write)?;
                    }
                }
                self.entries += 1;
            }
        }
        match links.into_iter().next() {
            None => Ok(()),
            Some((target, _)) => Err(bad(format!("a hard link names {target}, which it lacks"))),
        }
    }

    /// Counts one more entry of `size` bytes (a 512-byte header and the data, padded) against
    /// the bound before it is written: the bound holds before a byte past it is read.
    fn account(&mut self, size: u64) -> Result<(), ExportError> {
        let more = 512 + size.div_ceil(512) * 512;
        self.used = self.used.saturating_add(more);
        if self.used > self.max_bytes {
            return Err(ExportError::TooLarge {
                path: format!("/{}", self.target),
                max: self.max_bytes,
            });
        }
        Ok(())
    }
}

/// A layer as a tar stream: gzip when it starts like gzip, else plain tar.
fn open_layer(file: &Path) -> io::Result<tar::Archive<Box<dyn Read>>> {
    let mut reader = BufReader::new(File::open(file)?);
    let magic = {
        use std::io::BufRead;
        reader.fill_buf()?.get(..4).map(<[u8]>::to_vec)
    };
    let stream: Box<dyn Read> = match magic.as_deref() {
        Some([0x1f, 0x8b, ..]) => Box::new(GzDecoder::new(reader)),
        Some([0x28, 0xb5, 0x2f, 0xfd]) => {
            return Err(io::Error::other(
                "zstd-compressed layers are not supported for artifacts",
            ));
        }
        _ => Box::new(reader),
    };
    Ok(tar::Archive::new(stream))
}

/// A layer entry's name as a relative path without `.`, empty parts or a trailing '/'; None for
/// the root itself and for names with `..` (no valid layer has them; they are skipped).
fn normalise(raw: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            other => parts.push(other),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `path` is `root` or beneath it.
fn within(path: &str, root: &str) -> bool {
    root.is_empty()
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `a/b/c`, `a/b`, `a`, then `` (the root).
fn ancestors_and_self(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rsplit_once('/') {
            Some((parent, _)) => Some(parent),
            None if current.is_empty() => None,
            None => Some(""),
        };
        Some(current)
    })
}

#[cfg(test)]
mod tests;
