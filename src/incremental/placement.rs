//! Where the tail's COPYs write, and what the earlier steps really read, in the terms the engine
//! resolves them with: the working directory for relative destinations, what the lower layers
//! hold for a file copied to a path without a trailing "/" (the engine puts it *inside* that
//! path when a lower layer made it a directory: `COPY a.txt /etc` writes /etc/a.txt), and the
//! checkout's symlinks for the paths earlier steps read.

use std::path::Path;

use super::tail::CopyStep;
use crate::confined::{Kind, Refused, Tree};
use crate::error::BuildError;
use crate::image_edit::Previous;
use crate::ports::ImageRegistry;

/// A previous COPY layer larger than this is not read to learn where its file went: the
/// engine builds instead.
const MAX_PEEKED_LAYER_BYTES: u64 = 16 * 1024 * 1024;

/// Earlier reads with every path that passes through a symlink (or is not a plain file or
/// directory) widened to the whole context: the engine follows it, to wherever it leads.
pub(super) fn through_symlinks(context: &Tree, reads: &[String]) -> Vec<String> {
    reads
        .iter()
        .map(|read| {
            if read == "." {
                return read.clone();
            }
            match context.open_nofollow(Path::new(read)) {
                Ok(_) | Err(Refused::Missing(_)) => read.clone(),
                Err(_) => ".".to_owned(),
            }
        })
        .collect()
}

/// The tail's COPYs with absolute destinations, "/"-terminated where the engine writes into a
/// directory. Outer error: the registry failed; inner: why the build goes to the engine.
pub(super) async fn place(
    store: &dyn ImageRegistry,
    repository: &str,
    previous: &Previous,
    context: &Tree,
    copies: Vec<CopyStep>,
) -> Result<Result<Vec<CopyStep>, String>, BuildError> {
    let workdir = previous.working_dir();
    let first_replaced = previous.layer_count().saturating_sub(copies.len());
    let mut placed = Vec::with_capacity(copies.len());
    for (n, mut copy) in copies.into_iter().enumerate() {
        copy.dest = match absolute(&copy.dest, workdir) {
            Some(dest) => dest,
            None => {
                return Ok(Err(format!(
                    "COPY (line {}) destination {} in working directory {workdir:?} is not modelled",
                    copy.line, copy.dest
                )));
            }
        };
        let single_file = match copy.sources.as_slice() {
            [source] => matches!(context.kind(Path::new(source)), Ok(Some(Kind::File))),
            _ => false,
        };
        if single_file && !copy.dest.ends_with('/') {
            match into_directory(store, repository, previous, first_replaced + n, &copy).await? {
                Ok(true) => copy.dest.push('/'),
                Ok(false) => {}
                Err(why) => return Ok(Err(why)),
            }
        }
        placed.push(copy);
    }
    Ok(Ok(placed))
}

/// `dest` made absolute against `workdir` and cleaned; a trailing "/" (or "." as the last
/// part) means a directory. None for ".." or a working directory that is not absolute.
pub(super) fn absolute(dest: &str, workdir: &str) -> Option<String> {
    let joined = if dest.starts_with('/') {
        dest.to_owned()
    } else if workdir.starts_with('/') {
        format!("{workdir}/{dest}")
    } else {
        return None;
    };
    let into_dir = joined.ends_with('/') || joined.ends_with("/.");
    let mut parts = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if into_dir && out != "/" {
        out.push('/');
    }
    Some(out)
}

/// Whether the previous image's layer of the same step holds the file inside `copy.dest`
/// (true) or at it (false); an error when it shows neither.
async fn into_directory(
    store: &dyn ImageRegistry,
    repository: &str,
    previous: &Previous,
    index: usize,
    copy: &CopyStep,
) -> Result<Result<bool, String>, BuildError> {
    let unknown = || {
        format!(
            "COPY (line {}): the earlier image does not show whether {} is a directory",
            copy.line, copy.dest
        )
    };
    let Some((digest, size)) = previous.layer(index) else {
        return Ok(Err(unknown()));
    };
    if size > MAX_PEEKED_LAYER_BYTES {
        return Ok(Err(unknown()));
    }
    let Some(blob) = store.blob(repository, &digest).await? else {
        return Ok(Err(unknown()));
    };
    let dest = copy.dest.trim_matches('/').to_owned();
    let name = copy
        .sources
        .first()
        .and_then(|s| s.rsplit('/').next())
        .unwrap_or_default();
    let inside = format!("{dest}/{name}");
    let found = tokio::task::spawn_blocking(move || find_regular(&blob, &[&dest, &inside]))
        .await
        .map_err(|e| BuildError::Internal(anyhow::anyhow!("layer peek failed: {e}")))?;
    Ok(match found {
        Some(0) => Ok(false),
        Some(_) => Ok(true),
        None => Err(unknown()),
    })
}

/// Which of `names` is first found as a regular file in the gzip tar `layer`.
fn find_regular(layer: &[u8], names: &[&str]) -> Option<usize> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    for entry in archive.entries().ok()? {
        let entry = entry.ok()?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().ok()?;
        let path = path.to_str()?;
        let path = path.strip_prefix("./").unwrap_or(path);
        if let Some(found) = names.iter().position(|n| *n == path) {
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_resolve_against_the_working_directory() {
        assert_eq!(absolute(".", "/app").as_deref(), Some("/app/"));
        assert_eq!(absolute("./", "/").as_deref(), Some("/"));
        assert_eq!(absolute("sub/x", "/app/").as_deref(), Some("/app/sub/x"));
        assert_eq!(absolute("/etc/./a", "/w").as_deref(), Some("/etc/a"));
        assert_eq!(absolute("/etc/.", "/w").as_deref(), Some("/etc/"));
        assert_eq!(absolute("../x", "/w"), None);
        assert_eq!(absolute("x", ""), None);
    }

    fn gz_tar(entries: &[(&str, tar::EntryType)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, kind) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(0);
            header.set_mode(0o644);
            tar.append_data(&mut header, path, std::io::empty())
                .expect("append");
        }
        tar.into_inner()
            .and_then(flate2::write::GzEncoder::finish)
            .expect("finish")
    }

    #[test]
    fn the_previous_layer_tells_a_file_target_from_a_directory() {
        use tar::EntryType::{Directory, Regular};
        let at = gz_tar(&[("app/", Directory), ("app/a.txt", Regular)]);
        assert_eq!(
            find_regular(&at, &["app/a.txt", "app/a.txt/a.txt"]),
            Some(0)
        );
        let inside = gz_tar(&[("etc/", Directory), ("etc/a.txt", Regular)]);
        assert_eq!(find_regular(&inside, &["etc", "etc/a.txt"]), Some(1));
        assert_eq!(find_regular(&inside, &["var", "var/a.txt"]), None);
        assert_eq!(find_regular(b"not gzip", &["a"]), None);
    }
}
