//! The build context as the Engine API wants it: one tar, with the Dockerfile inside.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::error::BuildError;

/// The tar written into the scratch dir and the name the Dockerfile has in it.
pub struct Archive {
    pub path: PathBuf,
    pub dockerfile: String,
}

/// Packs `context` into `<scratch>/context.tar`, adds `dockerfile` (which may live outside the
/// context, as nixpacks' does) under a name no file of the context has, and lists that name in
/// the tar's `.dockerignore` -- what the docker CLI does, so `COPY . /app` leaves it out (dockerd
/// drops it; podman's compat service was seen to honour the entry too). Symlinks are stored as
/// symlinks: following one could pack a file from outside the checkout. Blocking: call it from
/// `spawn_blocking`.
pub fn archive(context: &Path, dockerfile: &Path, scratch: &Path) -> Result<Archive, BuildError> {
    let name = free_name(context)?;
    let path = scratch.join("context.tar");
    let file = File::create(&path).map_err(|e| failed("create the context archive", &e))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    tar.follow_symlinks(false);

    let mut entries: Vec<_> = std::fs::read_dir(context)
        .map_err(|e| failed("read the build context", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| failed("read the build context", &e))?;
    // A stable order: the same checkout gives the same archive.
    entries.sort_by_key(std::fs::DirEntry::file_name);
    let mut ignore = Vec::new();
    for entry in entries {
        let file_name = entry.file_name();
        let kind = entry
            .file_type()
            .map_err(|e| failed("read the build context", &e))?;
        if file_name == ".dockerignore" {
            // Rewritten below. A symlinked one is not followed (it could point anywhere).
            if kind.is_file() {
                ignore =
                    std::fs::read(entry.path()).map_err(|e| failed("read .dockerignore", &e))?;
            }
            continue;
        }
        let packed = if kind.is_dir() {
            tar.append_dir_all(&file_name, entry.path())
        } else {
            tar.append_path_with_name(entry.path(), &file_name)
        };
        packed.map_err(|e| failed(&format!("pack {}", file_name.to_string_lossy()), &e))?;
    }

    if !ignore.is_empty() && !ignore.ends_with(b"\n") {
        ignore.push(b'\n');
    }
    ignore.extend_from_slice(format!("{name}\n").as_bytes());
    append_file(&mut tar, ".dockerignore", &ignore)?;
    let text = std::fs::read(dockerfile)
        .map_err(|e| BuildError::NoRecipe(format!("failed to read the Dockerfile: {e}")))?;
    append_file(&mut tar, &name, &text)?;

    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| failed("write the context archive", &e))?;
    Ok(Archive {
        path,
        dockerfile: name,
    })
}

/// `.image-builder.Dockerfile`, or a numbered variant if the context has a file of that name.
fn free_name(context: &Path) -> Result<String, BuildError> {
    (0..100)
        .map(|n| match n {
            0 => ".image-builder.Dockerfile".to_owned(),
            n => format!(".image-builder-{n}.Dockerfile"),
        })
        .find(|name| context.join(name).symlink_metadata().is_err())
        .ok_or_else(|| {
            BuildError::NoRecipe("the context has no free name for the Dockerfile".into())
        })
}

fn append_file(
    tar: &mut tar::Builder<BufWriter<File>>,
    name: &str,
    data: &[u8],
) -> Result<(), BuildError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    tar.append_data(&mut header, name, data)
        .map_err(|e| failed(&format!("pack {name}"), &e))
}

fn failed(what: &str, e: &dyn std::fmt::Display) -> BuildError {
    BuildError::Internal(anyhow::anyhow!("failed to {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (path, kind, content or link target) of every entry.
    fn entries(path: &Path) -> Vec<(String, char, String)> {
        let mut archive = tar::Archive::new(File::open(path).expect("open tar"));
        let mut out = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            let kind = entry.header().entry_type();
            let (kind, body) = if kind.is_symlink() {
                let target = entry.link_name().expect("link").expect("target");
                ('l', target.display().to_string())
            } else if kind.is_dir() {
                ('d', String::new())
            } else {
                let mut body = String::new();
                std::io::Read::read_to_string(&mut entry, &mut body).expect("read");
                ('f', body)
            };
            out.push((name, kind, body));
        }
        out
    }

    #[test]
    fn context_dockerfile_and_ignore_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let context = dir.path().join("ctx");
        std::fs::create_dir_all(context.join("src")).expect("dirs");
        std::fs::write(context.join("src/main.txt"), "main").expect("write");
        std::fs::write(context.join(".dockerignore"), "*.tmp").expect("write");
        // Taken by the repository: the Dockerfile needs another name.
        std::fs::write(context.join(".image-builder.Dockerfile"), "theirs").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", context.join("passwd")).expect("symlink");
        let dockerfile = dir.path().join("outside.Dockerfile");
        std::fs::write(&dockerfile, "FROM scratch\n").expect("write");

        let archive = archive(&context, &dockerfile, dir.path()).expect("packed");
        assert_eq!(archive.dockerfile, ".image-builder-1.Dockerfile");
        let entries = entries(&archive.path);
        let find = |name: &str| entries.iter().find(|(n, _, _)| n == name).cloned();
        assert_eq!(
            find(".image-builder-1.Dockerfile"),
            Some((
                ".image-builder-1.Dockerfile".into(),
                'f',
                "FROM scratch\n".into()
            ))
        );
        assert_eq!(
            find(".image-builder.Dockerfile").map(|e| e.2),
            Some("theirs".into())
        );
        assert_eq!(
            find(".dockerignore").map(|e| e.2),
            Some("*.tmp\n.image-builder-1.Dockerfile\n".into())
        );
        assert_eq!(find("src/main.txt").map(|e| e.2), Some("main".into()));
        assert_eq!(
            find("passwd"),
            Some(("passwd".into(), 'l', "/etc/passwd".into())),
            "symlinks are not followed"
        );
        let ignores = entries
            .iter()
            .filter(|(n, _, _)| n == ".dockerignore")
            .count();
        assert_eq!(ignores, 1, "{entries:?}");
    }
}
