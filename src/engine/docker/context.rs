//! The build context as the Engine API wants it: one tar, with the Dockerfile inside.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::confined::{Entry, Tree};
use crate::dockerignore::IgnoreRules;
use crate::error::BuildError;

/// The tar written into the scratch dir and the name the Dockerfile has in it.
pub struct Archive {
    pub path: PathBuf,
    pub dockerfile: String,
}

/// A repository's `.dockerignore` larger than this is refused (it is a list of patterns).
const MAX_IGNORE_BYTES: u64 = 1024 * 1024;

/// Packs `context` into `<scratch>/context.tar`, adds the Dockerfile's text (the Dockerfile may
/// live outside the context, as nixpacks' does) under a name no file of the context has, and
/// lists that name in the tar's `.dockerignore` -- what the docker CLI does, so `COPY . /app`
/// leaves it out (dockerd drops it; podman's compat service was seen to honour the entry too).
/// The context is walked through `confined::Tree`: no symlink is followed (a symlink is stored
/// as one, which the daemon resolves inside the context), each file is read from the descriptor
/// that was measured, and a special file is refused by name. What the ignore rules exclude
/// (see `ignore_rules`) is left out. Blocking: call it from
/// `spawn_blocking`.
pub fn archive(context: &Path, dockerfile: &[u8], scratch: &Path) -> Result<Archive, BuildError> {
    let tree = Tree::open(context).map_err(|e| failed("open the build context", &e))?;
    let name = free_name(&tree)?;
    let path = scratch.join("context.tar");
    let file = File::create(&path).map_err(|e| failed("create the context archive", &e))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    tar.follow_symlinks(false);

    let (rules, mut ignore) = ignore_rules(&tree)?;
    tree.walk(&mut |rel: &Path, entry| {
        let shown = rel.to_string_lossy();
        // Both are rewritten below as one `.dockerignore` holding the rules applied here.
        if shown == ".dockerignore" || shown == ".containerignore" || rules.excludes(&shown) {
            return Ok(());
        }
        pack(&mut tar, rel, entry)
    })?;

    if !ignore.is_empty() && !ignore.ends_with('\n') {
        ignore.push('\n');
    }
    ignore.push_str(&format!("{name}\n"));
    append_file(&mut tar, ".dockerignore", ignore.as_bytes())?;
    append_file(&mut tar, &name, dockerfile)?;

    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| failed("write the context archive", &e))?;
    Ok(Archive {
        path,
        dockerfile: name,
    })
}

/// The context's ignore rules and their text: `.containerignore` if there is one, else
/// `.dockerignore` (podman's order, so both engines leave out the same files), applied here as
/// the docker CLI applies them, since the Engine API daemon does not.
fn ignore_rules(tree: &Tree) -> Result<(IgnoreRules, String), BuildError> {
    for name in [".containerignore", ".dockerignore"] {
        let rel = Path::new(name);
        if tree.kind(rel)?.is_none() {
            continue;
        }
        let text = tree.read_to_string(rel, MAX_IGNORE_BYTES)?;
        let rules =
            IgnoreRules::parse(&text).map_err(|e| BuildError::NoRecipe(format!("{name} {e}")))?;
        return Ok((rules, text));
    }
    Ok((IgnoreRules::default(), String::new()))
}

/// One entry of the context, with its mode and time, owned by root.
fn pack(
    tar: &mut tar::Builder<BufWriter<File>>,
    rel: &Path,
    entry: Entry,
) -> Result<(), BuildError> {
    use std::os::unix::fs::MetadataExt;
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    let packed = match entry {
        Entry::Dir { mode, mtime } => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(mode);
            header.set_mtime(u64::try_from(mtime).unwrap_or(0));
            header.set_size(0);
            tar.append_data(&mut header, rel, std::io::empty())
        }
        Entry::File(opened) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(opened.meta.mode() & 0o7777);
            header.set_mtime(u64::try_from(opened.meta.mtime()).unwrap_or(0));
            header.set_size(opened.meta.len());
            // Exactly the measured size, or an error: the header never disagrees with the data.
            tar.append_data(&mut header, rel, opened.exact())
        }
        Entry::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, rel, &target)
        }
    };
    packed.map_err(|e| failed(&format!("pack {}", rel.display()), &e))
}

/// `.image-builder.Dockerfile`, or a numbered variant if the context has a file of that name.
fn free_name(context: &Tree) -> Result<String, BuildError> {
    (0..100)
        .map(|n| match n {
            0 => ".image-builder.Dockerfile".to_owned(),
            n => format!(".image-builder-{n}.Dockerfile"),
        })
        .find(|name| !context.has_entry(Path::new(name)))
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
        std::os::unix::fs::symlink("/", context.join("h")).expect("symlink");

        let archive = archive(&context, b"FROM scratch\n", dir.path()).expect("packed");
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
        assert_eq!(find("h").map(|e| e.1), Some('l'), "stored as a symlink");
        assert!(
            !entries.iter().any(|(n, _, _)| n.starts_with("h/")),
            "a symlinked directory is not walked: {entries:?}"
        );
        let ignores = entries
            .iter()
            .filter(|(n, _, _)| n == ".dockerignore")
            .count();
        assert_eq!(ignores, 1, "{entries:?}");
    }

    fn packed_names(context: &Path, scratch: &Path) -> Vec<String> {
        let archive = archive(context, b"FROM scratch\n", scratch).expect("packed");
        let mut names: Vec<String> = entries(&archive.path).into_iter().map(|e| e.0).collect();
        names.sort();
        names
    }

    #[test]
    fn what_the_ignore_file_excludes_is_not_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let context = dir.path().join("ctx");
        for path in [
            "secrets/key.pem",
            "secrets/public.txt",
            "src/a.log",
            "src/main.rs",
        ] {
            let path = context.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, "x").expect("write");
        }
        std::fs::write(context.join(".env"), "PASSWORD=1").expect("write");
        std::fs::write(
            context.join(".dockerignore"),
            "# local only\n.env\nsecrets\n!secrets/public.txt\n**/*.log\n",
        )
        .expect("write");
        assert_eq!(
            packed_names(&context, dir.path()),
            [
                ".dockerignore",
                ".image-builder.Dockerfile",
                "secrets/public.txt",
                "src",
                "src/main.rs"
            ]
        );

        // podman's order: a .containerignore wins over the .dockerignore.
        std::fs::write(context.join(".containerignore"), "src\n").expect("write");
        let names = packed_names(&context, dir.path());
        assert!(names.contains(&".env".to_owned()), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("src")), "{names:?}");
        assert!(!names.contains(&".containerignore".to_owned()), "{names:?}");
    }

    #[test]
    fn a_bad_ignore_file_is_a_user_fault_naming_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let context = dir.path().join("ctx");
        std::fs::create_dir_all(&context).expect("dirs");
        std::fs::write(context.join(".dockerignore"), "ok\n[abc\n").expect("write");
        let err = archive(&context, b"FROM scratch\n", dir.path())
            .err()
            .expect("refused");
        assert_eq!(err.classify(), crate::error::Fault::User, "{err}");
        assert!(err.to_string().contains(".dockerignore line 2"), "{err}");
    }

    #[test]
    fn special_files_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let context = dir.path().join("ctx");
        std::fs::create_dir_all(context.join("run")).expect("dirs");
        let made = std::process::Command::new("mkfifo")
            .arg(context.join("run/pipe"))
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let err = archive(&context, b"FROM scratch\n", dir.path())
            .err()
            .expect("refused");
        assert_eq!(err.classify(), crate::error::Fault::User, "{err}");
        assert!(err.to_string().contains("run/pipe is a FIFO"), "{err}");
    }
}
