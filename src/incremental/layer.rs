//! One `COPY` step as an OCI layer (gzip tar), from the checked-out context, with the step's
//! semantics: a directory source contributes its contents, a file source itself; owner root.
//! Parent directories of the destination are left out: unpacking creates missing ones and keeps
//! existing ones (and their modes) as the lower layers have them.
//!
//! The context is read through `confined::Tree` and no symlink is followed, not even one that
//! stays inside (the engine's COPY has its own rules for them): a source that is or passes
//! through a symlink, or a special file, leaves the build to the engine. Each file is read from
//! the descriptor that was measured, exactly as many bytes as the header says; or, when git says
//! it did not change since the layer this one replaces and this worker kept that layer
//! (`layer_memo`), its bytes and mode are taken from there unread.
//!
//! The layer is a pure function of the commit: fixed owner (0:0, no names), modes reduced to
//! what git records (0644, 0755 if executable; directories 0755), every mtime the commit's
//! committer time, entries in name order, gzip without a timestamp. The same commit gives the
//! same digest on any worker. It is written to the build's scratch dir and uploaded from there,
//! compressed on a second thread while the tar is made (`compressing`).

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compressing::{Compressed, Compressing};
use super::layer_memo::{self, KeptFile, KeptLayer};
use super::tail::CopyStep;
use crate::confined::{Entry, Node, Opened, Refused, Tree};
use crate::dockerfile::IgnoreFile;

/// Sources above this size are built by the engine instead (the layer goes through the
/// scratch disk, compressed, before its upload).
const MAX_SOURCE_BYTES: u64 = 1024 * 1024 * 1024;

pub(super) struct Layer {
    /// The compressed layer as uploaded, in the build's scratch dir.
    pub path: PathBuf,
    /// `sha256:` of the file.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// `sha256:` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    pub files: usize,
    /// Files whose bytes came from the layer it replaces, as this worker kept it.
    pub reused: usize,
}

/// Why a step cannot be made here (the build then goes to the engine).
enum Why {
    /// What the context holds (named relative to the COPY source).
    Refused(Refused),
    Other(String),
}

impl From<Refused> for Why {
    fn from(refused: Refused) -> Self {
        Self::Refused(refused)
    }
}

impl Why {
    fn about(self, source: &str) -> String {
        match self {
            Self::Refused(why) => format!("COPY source {source}: {why}"),
            Self::Other(why) => why,
        }
    }
}

type LayerTar = tar::Builder<Compressing>;

/// The layer being replaced, as this worker kept it (`layer_memo`), and the context files that
/// changed since the commit it was made from: every other file's bytes and mode are taken from
/// it unread. Only when nothing outside the files changes what a checkout holds (the caller
/// leaves it out when `.gitattributes` changed).
pub(super) struct Earlier<'a> {
    pub layer: Arc<KeptLayer>,
    /// Relative to the context.
    pub changed: &'a HashSet<String>,
}

impl Earlier<'_> {
    /// The mode and bytes the earlier layer holds for `target` from context file `source`,
    /// unless that file changed since.
    fn unchanged(&self, target: &str, source: &str) -> Option<(u32, &[u8])> {
        if self.changed.contains(source) {
            return None;
        }
        self.layer.file(target, source)
    }
}

/// Writes the layer of `step` to `out`. `mtime` goes into every entry. The layer is kept in
/// `layer_memo` for the next edit.
pub(super) fn build(
    context: &Tree,
    ignore: &IgnoreFile,
    step: &CopyStep,
    (mtime, earlier): (u64, Option<&Earlier<'_>>),
    out: &Path,
) -> Result<Layer, String> {
    let file = File::create(out).map_err(|e| format!("failed to create the layer file: {e}"))?;
    let gz = Compressing::new(file, layer_memo::MAX_LAYER_BYTES)
        .map_err(|e| format!("failed to start compressing: {e}"))?;
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut state = Walk {
        files: 0,
        bytes: 0,
        mtime,
        earlier,
        appended: Vec::new(),
        reused: 0,
    };
    let into_dir = step.dest.ends_with('/');
    let dest = step.dest.trim_matches('/');
    for source in &step.sources {
        if ignore.ignores(source) {
            return Err(format!("COPY source {source} is in the ignore file"));
        }
        let node = context
            .open_nofollow(Path::new(source))
            .map_err(|why| match why {
                Refused::Missing(_) => format!("COPY source {source} is not in the context"),
                other => format!("COPY source {source}: {other}"),
            })?;
        match node {
            Node::Dir(tree) => {
                add_tree(&mut tar, &tree, (source, dest), ignore, &mut state)
                    .map_err(|w| w.about(source))?;
            }
            Node::File(opened) => {
                let name = Path::new(source)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| format!("COPY source {source} has no usable name"))?;
                let target = if into_dir {
                    format!("{dest}/{name}")
                } else {
                    dest.to_owned()
                };
                add_file(
                    &mut tar,
                    Source::Opened(opened),
                    (&target, source),
                    &mut state,
                )
                .map_err(|w| w.about(source))?;
            }
        }
    }
    let gz = tar
        .into_inner()
        .map_err(|e| format!("failed to finish the layer: {e}"))?;
    let Compressed {
        blob,
        uncompressed,
        kept,
    } = gz
        .finish()
        .map_err(|e| format!("failed to compress the layer: {e}"))?;
    if let Some(layer) = kept.and_then(|tar| KeptLayer::new(tar, state.appended)) {
        layer_memo::keep(&uncompressed.digest, layer);
    }
    Ok(Layer {
        path: out.to_owned(),
        digest: blob.digest,
        size: blob.size,
        diff_id: uncompressed.digest,
        files: state.files,
        reused: state.reused,
    })
}

struct Walk<'a> {
    files: usize,
    bytes: u64,
    mtime: u64,
    earlier: Option<&'a Earlier<'a>>,
    /// Each file appended: its entry name, where it came from, where its bytes went.
    appended: Vec<(String, KeptFile)>,
    /// Files whose bytes came from the earlier layer.
    reused: usize,
}

/// Where a file's bytes come from.
enum Source<'a> {
    Opened(Opened),
    Kept { mode: u32, bytes: &'a [u8] },
}

/// The contents of `tree` (the context's `source`) under `dest`, in name order, directories
/// before what they hold; what the ignore file names left out.
fn add_tree(
    tar: &mut LayerTar,
    tree: &Tree,
    (source, dest): (&str, &str),
    ignore: &IgnoreFile,
    state: &mut Walk,
) -> Result<(), Why> {
    tree.walk_unopened(&mut |rel: &Path, entry| {
        let rel = rel
            .to_str()
            .ok_or_else(|| Why::Other(format!("{} is not a UTF-8 name", rel.display())))?;
        let in_context = match source {
            "." => rel.to_owned(),
            dir => format!("{dir}/{rel}"),
        };
        if ignore.ignores(&in_context) {
            return Ok(());
        }
        let target = if dest.is_empty() {
            rel.to_owned()
        } else {
            format!("{dest}/{rel}")
        };
        match entry {
            Entry::Dir { .. } => {
                let mut header = header(tar::EntryType::Directory, 0o755, 0, state.mtime);
                tar.append_data(&mut header, format!("{target}/"), std::io::empty())
                    .map_err(|e| Why::Other(format!("failed to add {target}: {e}")))
            }
            Entry::File(unopened) => {
                let earlier = state.earlier;
                let from = match earlier.and_then(|e| e.unchanged(&target, &in_context)) {
                    Some((mode, bytes)) => Source::Kept { mode, bytes },
                    None => Source::Opened(unopened.open()?),
                };
                add_file(tar, from, (&target, &in_context), state)
            }
            Entry::Symlink(_) => Err(Refused::Symlink(rel.to_owned()).into()),
        }
    })
}

/// Appends the file read from `source` (in the context) as `target`, and notes where its bytes
/// went for `layer_memo`.
fn add_file(
    tar: &mut LayerTar,
    from: Source<'_>,
    (target, source): (&str, &str),
    state: &mut Walk,
) -> Result<(), Why> {
    use std::os::unix::fs::MetadataExt;
    let size = match &from {
        Source::Opened(opened) => opened.meta.len(),
        Source::Kept { bytes, .. } => bytes.len() as u64,
    };
    state.files += 1;
    state.bytes += size;
    if state.bytes > MAX_SOURCE_BYTES {
        return Err(Why::Other(format!(
            "the COPY sources exceed {} MiB",
            MAX_SOURCE_BYTES >> 20
        )));
    }
    let failed = |e: std::io::Error| Why::Other(format!("failed to add {target}: {e}"));
    let mode = match &from {
        Source::Opened(opened) if opened.meta.mode() & 0o111 == 0 => 0o644,
        Source::Opened(_) => 0o755,
        Source::Kept { mode, .. } => *mode,
    };
    let mut header = header(tar::EntryType::Regular, mode, size, state.mtime);
    match from {
        // Exactly `size` bytes or an error: the header never disagrees with the data.
        Source::Opened(opened) => tar.append_data(&mut header, target, opened.exact()),
        Source::Kept { bytes, .. } => {
            state.reused += 1;
            tar.append_data(&mut header, target, bytes)
        }
    }
    .map_err(failed)?;
    // The data ends the entry, padded to a whole block.
    let end = usize::try_from(tar.get_ref().written()).map_err(|e| Why::Other(e.to_string()))?;
    let len = usize::try_from(size).map_err(|e| Why::Other(e.to_string()))?;
    let start = end
        .checked_sub(len.next_multiple_of(512))
        .ok_or_else(|| Why::Other(format!("failed to add {target}: the tar is shorter")))?;
    state.appended.push((
        target.to_owned(),
        KeptFile {
            source: source.to_owned(),
            mode,
            data: start..start + len,
        },
    ));
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// (path, mode, content) of every entry; asserts each header's size is what the entry holds.
    fn entries(layer: &Layer) -> Vec<(String, u32, String)> {
        let file = File::open(&layer.path).expect("layer file");
        let mut out = Vec::new();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            let header = entry.header();
            let (mode, size) = (header.mode().expect("mode"), header.size().expect("size"));
            assert_eq!(header.uid().expect("uid"), 0);
            assert_eq!(header.username().expect("uname"), Some(""));
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read");
            assert_eq!(size, text.len() as u64, "{path}: header size = data");
            out.push((path, mode, text));
        }
        out
    }

    fn layer(dir: &Path, step: &CopyStep, out: &str) -> Result<Layer, String> {
        let tree = Tree::open(dir).expect("tree");
        build(
            &tree,
            &IgnoreFile::default(),
            step,
            (1_700_000_000, None),
            &dir.join(out),
        )
    }

    fn step(sources: &[&str], dest: &str) -> CopyStep {
        CopyStep {
            line: 1,
            sources: sources.iter().map(|s| (*s).to_owned()).collect(),
            dest: dest.into(),
            written_dest: dest.into(),
            followed_by: 0,
        }
    }

    /// A context of its own next to the scratch dir the layers go to.
    fn context() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ctx = tmp.path().join("ctx");
        std::fs::create_dir_all(ctx.join("src/sub")).expect("dirs");
        std::fs::write(ctx.join("src/main.txt"), "main").expect("write");
        std::fs::write(ctx.join("src/sub/run.sh"), "run").expect("write");
        std::fs::write(ctx.join("a.txt"), "a").expect("write");
        (tmp, ctx)
    }

    #[test]
    fn directory_sources_give_their_contents_and_files_land_by_name() {
        use std::os::unix::fs::PermissionsExt;
        let (tmp, ctx) = context();
        std::fs::set_permissions(
            ctx.join("src/sub/run.sh"),
            std::fs::Permissions::from_mode(0o775),
        )
        .expect("chmod");
        let tree = Tree::open(&ctx).expect("tree");
        let out = tmp.path().join("layer.tar.gz");
        let none = IgnoreFile::default();
        let built =
            build(&tree, &none, &step(&["src"], "/app/src/"), (7, None), &out).expect("layer");
        let listed = entries(&built);
        let names: Vec<&str> = listed.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            names,
            ["app/src/main.txt", "app/src/sub/", "app/src/sub/run.sh"]
        );
        assert_eq!(listed[0].1, 0o644);
        assert_eq!(listed[1].1, 0o755);
        assert_eq!(listed[2].1, 0o755, "executable");
        assert_eq!(listed[0].2, "main");
        assert_eq!(built.files, 2);
        assert_eq!(built.size, std::fs::metadata(&out).expect("meta").len());
        let bytes = std::fs::read(&out).expect("read");
        assert_eq!(built.digest, crate::ports::content_digest(&bytes));
        assert!(built.diff_id.starts_with("sha256:") && built.diff_id != built.digest);

        let listed = entries(
            &build(
                &tree,
                &none,
                &step(&["a.txt"], "/etc/b.txt"),
                (7, None),
                &out,
            )
            .expect("layer"),
        );
        assert_eq!(listed[0].0, "etc/b.txt");
        assert_eq!(listed[0].2, "a");
    }

    #[test]
    fn an_edit_takes_unchanged_files_from_the_layer_it_replaces_and_reads_the_changed_ones() {
        let (tmp, ctx) = context();
        std::fs::write(ctx.join("src/exec.sh"), "x").expect("write");
        let set_mode = |path: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(ctx.join(path), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        };
        set_mode("src/exec.sh", 0o755);
        let tree = Tree::open(&ctx).expect("tree");
        let none = IgnoreFile::default();
        let copy = step(&["src", "a.txt"], "/app/");
        let first = build(&tree, &none, &copy, (7, None), &tmp.path().join("1.gz")).expect("1");
        let kept = layer_memo::find(&first.diff_id).expect("the layer is kept");

        // The next commit changed main.txt only. sub/run.sh also differs on disk but not in git:
        // its bytes come from the kept layer, which is how the test sees they were not read.
        std::fs::write(ctx.join("src/main.txt"), "main, edited").expect("edit");
        std::fs::write(ctx.join("src/sub/run.sh"), "tampered").expect("tamper");
        set_mode("src/exec.sh", 0o644);
        let changed: HashSet<String> = ["src/main.txt".to_owned()].into();
        let earlier = Earlier {
            layer: kept,
            changed: &changed,
        };
        let out = tmp.path().join("2.gz");
        let second = build(&tree, &none, &copy, (8, Some(&earlier)), &out).expect("2");
        // a.txt, a source of its own, is opened to learn what it is: it is read as well.
        assert_eq!((second.files, second.reused), (4, 2));
        let listed = entries(&second);
        let find = |name: &str| {
            listed
                .iter()
                .find(|(p, _, _)| p == name)
                .cloned()
                .expect(name)
        };
        assert_eq!(find("app/main.txt").2, "main, edited", "changed: read");
        assert_eq!(
            find("app/sub/run.sh").2,
            "run",
            "unchanged: taken from the kept layer"
        );
        assert_eq!(find("app/exec.sh").1, 0o755, "the kept mode too");
        assert_eq!(find("app/a.txt").2, "a");

        // Read entirely, the same tree gives the tampered bytes: the difference is the memo's.
        let read = build(&tree, &none, &copy, (8, None), &tmp.path().join("3.gz")).expect("3");
        assert_eq!(read.reused, 0);
        assert_ne!(read.diff_id, second.diff_id);
        // And with run.sh and exec.sh named as changed too, every byte is read again.
        let changed: HashSet<String> = ["src/main.txt", "src/sub/run.sh", "src/exec.sh"]
            .map(str::to_owned)
            .into();
        let earlier = Earlier {
            layer: layer_memo::find(&first.diff_id).expect("kept"),
            changed: &changed,
        };
        let again = build(
            &tree,
            &none,
            &copy,
            (8, Some(&earlier)),
            &tmp.path().join("4.gz"),
        );
        assert_eq!(again.expect("4").diff_id, read.diff_id);
    }

    #[test]
    fn ignored_paths_are_left_out() {
        let (tmp, ctx) = context();
        let tree = Tree::open(&ctx).expect("tree");
        let ignore = IgnoreFile::parse("src/sub\na.txt\n").expect("literal");
        let out = tmp.path().join("layer.tar.gz");
        let built = build(&tree, &ignore, &step(&["."], "/app/"), (7, None), &out).expect("layer");
        let names: Vec<String> = entries(&built).into_iter().map(|(p, _, _)| p).collect();
        assert_eq!(names, ["app/src/", "app/src/main.txt"]);
        let err = build(&tree, &ignore, &step(&["a.txt"], "/a"), (7, None), &out).err();
        assert!(err.is_some_and(|e| e.contains("a.txt is in the ignore file")));
    }

    #[test]
    fn one_commit_gives_one_layer() {
        let (tmp, ctx) = context();
        let copy = step(&["src", "a.txt"], "/app/");
        let first = layer(&ctx, &copy, "../one.tar.gz").expect("layer");
        // Different file times and a looser umask on the same content: the same bytes.
        std::fs::write(ctx.join("src/main.txt"), "main").expect("rewrite");
        let touched = std::process::Command::new("touch")
            .args(["-d", "2001-01-01"])
            .arg(ctx.join("a.txt"))
            .status()
            .expect("touch");
        assert!(touched.success());
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(ctx.join("a.txt"), std::fs::Permissions::from_mode(0o664))
                .expect("chmod");
        }
        let second = layer(&ctx, &copy, "../two.tar.gz").expect("layer");
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.diff_id, second.diff_id);
        assert_eq!(
            std::fs::read(tmp.path().join("one.tar.gz")).expect("one"),
            std::fs::read(tmp.path().join("two.tar.gz")).expect("two")
        );
        std::fs::write(ctx.join("a.txt"), "b").expect("change");
        let third = layer(&ctx, &copy, "../three.tar.gz").expect("layer");
        assert_ne!(first.digest, third.digest);
    }

    #[test]
    fn missing_sources_symlinks_and_special_files_are_left_to_the_engine() {
        let (_tmp, ctx) = context();
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("link")).expect("symlink");
        std::os::unix::fs::symlink("/", ctx.join("h")).expect("symlink");
        std::os::unix::fs::symlink("src", ctx.join("inside")).expect("symlink");
        std::fs::create_dir(ctx.join("tree")).expect("dir");
        std::os::unix::fs::symlink("../a.txt", ctx.join("tree/back")).expect("symlink");
        std::fs::create_dir(ctx.join("pipes")).expect("dir");
        let made = std::process::Command::new("mkfifo")
            .arg(ctx.join("pipes/fifo"))
            .status()
            .expect("mkfifo");
        assert!(made.success());
        for (source, why) in [
            ("nope", "is not in the context"),
            ("link", "link is a symlink"),
            ("h/proc/self/environ", "h is a symlink"),
            ("h/etc/passwd", "h is a symlink"),
            ("inside/main.txt", "inside is a symlink"),
            ("tree", "COPY source tree: back is a symlink"),
            ("pipes", "COPY source pipes: fifo is a FIFO"),
            ("pipes/fifo", "pipes/fifo is a FIFO"),
        ] {
            let err = layer(&ctx, &step(&[source], "/x/"), "../out.tar.gz").err();
            assert!(
                err.as_deref().is_some_and(|e| e.contains(why)),
                "{source}: {err:?}"
            );
        }
    }
}
