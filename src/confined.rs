//! Reading a checkout as a directory capability. A repository decides its own symlinks: `h -> /`
//! turns `h/proc/self/environ` into the worker's environment when a path is simply joined and
//! opened. Everything the worker reads from a checkout by itself goes through a `Tree`, which
//! resolves every path beneath its directory (cap-std: `openat2` with `RESOLVE_BENEATH`, or a
//! component-by-component walk where the kernel lacks it): a symlink may lead elsewhere inside,
//! never out, and absolute symlinks are refused. Only regular files, directories and symlinks
//! are read; devices, FIFOs and sockets are refused by name. A file is read from the descriptor
//! that was opened and measured, exactly as many bytes as it measured.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, FileTypeExt as _, MetadataExt, OpenOptions, OpenOptionsExt};
use std::os::unix::fs::FileTypeExt as _;

/// Why a path beneath a tree was not read. All but `Io` are the repository's doing.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{0} leads outside the repository (through a symlink or '..')")]
    Outside(String),
    #[error("{0} is a symlink")]
    Symlink(String),
    #[error("{path} is a {kind}, not a regular file or directory")]
    Special { path: String, kind: &'static str },
    #[error("{0} is not a directory")]
    NotDir(String),
    #[error("{0} is not a regular file")]
    NotFile(String),
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("{0} changed size while it was read")]
    Changed(String),
    #[error("failed to read {path}: {source}")]
    Io { path: String, source: io::Error },
}

impl From<Refused> for crate::error::BuildError {
    /// The repository's doing is a user fault naming the path; an I/O failure is ours.
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Io { .. } => Self::Internal(anyhow::anyhow!("{refused}")),
            other => Self::NoRecipe(other.to_string()),
        }
    }
}

/// What kind of thing a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Special(&'static str),
}

/// The `Kind` of a cap-std or std `FileType` (the two share method names, not a trait).
macro_rules! kind_of {
    ($file_type:expr) => {{
        let t = $file_type;
        if t.is_file() {
            Kind::File
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_fifo() {
            Kind::Special("FIFO")
        } else if t.is_socket() {
            Kind::Special("socket")
        } else if t.is_block_device() {
            Kind::Special("block device")
        } else if t.is_char_device() {
            Kind::Special("character device")
        } else {
            Kind::Special("special file")
        }
    }};
}

/// A regular file opened beneath a tree, with what `fstat` said of that very descriptor.
pub struct Opened {
    pub file: std::fs::File,
    pub meta: std::fs::Metadata,
    /// Relative to the tree, for messages.
    pub path: String,
}

impl Opened {
    /// Exactly `meta.len()` bytes; an error if the file ends sooner or goes on (a file that
    /// changes under the reader, or a /proc-like file that reports size 0).
    pub fn exact(self) -> Exact {
        Exact {
            left: self.meta.len(),
            ended: false,
            file: self.file,
            path: self.path,
        }
    }
}

/// See `Opened::exact`.
pub struct Exact {
    file: std::fs::File,
    left: u64,
    /// The end was seen with the last bytes: no read of its own needed.
    ended: bool,
    path: String,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let changed = || io::Error::other(Refused::Changed(self.path.clone()));
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        let left = usize::try_from(self.left).unwrap_or(usize::MAX);
        if left < buf.len() {
            // The rest and one byte more, in one read: a regular file gives fewer bytes than
            // asked only at its end, so one that goes on shows here, and the end costs no read
            // of its own (a small file is one read, not two).
            let got = self.file.read(&mut buf[..=left])?;
            if got > left || (got == 0 && left > 0) {
                return Err(changed());
            }
            self.left -= got as u64;
            self.ended = got == left;
            return Ok(got);
        }
        let got = self.file.read(buf)?;
        if got == 0 {
            return Err(changed());
        }
        self.left -= got as u64;
        Ok(got)
    }
}

/// One thing met by `Tree::walk` (a file opened), or by `Tree::walk_unopened` (a file to open
/// when its bytes are wanted).
pub enum Entry<F = Opened> {
    /// Permission bits (`st_mode & 0o7777`) and modification time (seconds) of the directory.
    Dir {
        mode: u32,
        mtime: i64,
    },
    File(F),
    /// The link's own text, unresolved; whether it stays inside is the caller's question.
    Symlink(PathBuf),
}

/// A directory of the checkout (or another tree of untrusted content), opened once.
pub struct Tree {
    dir: Dir,
    path: PathBuf,
}

impl Tree {
    /// Opens `path`, which the worker made or resolved itself: the checkout root, a context
    /// resolved by `plan`, nixpacks' output. Everything beneath it is then untrusted.
    pub fn open(path: &Path) -> io::Result<Self> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
        Ok(Self {
            dir,
            path: path.to_owned(),
        })
    }

    /// Where the tree is, to hand to a program that reads it by path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `rel`, a resolved path beneath the tree ("" for the tree itself).
    fn beneath(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// `rel` with its symlinks resolved beneath the tree and no `.` or `..` left, relative to
    /// the tree ("" for the tree itself).
    pub fn resolve(&self, rel: &Path) -> Result<PathBuf, Refused> {
        let rel = relative(rel)?;
        let resolved = self
            .dir
            .canonicalize(nonempty(&rel))
            .map_err(|e| classify(&rel, e))?;
        Ok(resolved
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect())
    }

    /// The kind of what `rel` resolves to beneath the tree (symlinks that stay inside are
    /// followed), or None when nothing is there.
    pub fn kind(&self, rel: &Path) -> Result<Option<Kind>, Refused> {
        let rel = relative(rel)?;
        match self.dir.metadata(nonempty(&rel)) {
            Ok(meta) => Ok(Some(kind_of!(meta.file_type()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(classify(&rel, e)),
        }
    }

    /// Whether anything (a dangling or escaping symlink included) has the name `rel`.
    pub fn has_entry(&self, rel: &Path) -> bool {
        relative(rel).is_ok_and(|rel| self.dir.symlink_metadata(nonempty(&rel)).is_ok())
    }

    /// The directory `rel` as a tree of its own, resolved beneath this one.
    pub fn subtree(&self, rel: &Path) -> Result<Tree, Refused> {
        let resolved = self.resolve(rel)?;
        let shown = || shown(&resolved);
        match self.kind(&resolved)? {
            Some(Kind::Dir) => {}
            Some(_) => return Err(Refused::NotDir(shown())),
            None => return Err(Refused::Missing(shown())),
        }
        let dir = self
            .dir
            .open_dir(nonempty(&resolved))
            .map_err(|e| classify(&resolved, e))?;
        Ok(Tree {
            dir,
            path: self.beneath(&resolved),
        })
    }

    /// The regular file `rel`, resolved beneath the tree.
    pub fn open_file(&self, rel: &Path) -> Result<Opened, Refused> {
        let rel = relative(rel)?;
        let shown = shown(&rel);
        let kind = match self.dir.metadata(nonempty(&rel)) {
            Ok(meta) => kind_of!(meta.file_type()),
            Err(e) => return Err(classify(&rel, e)),
        };
        match kind {
            Kind::File => {}
            Kind::Special(kind) => return Err(Refused::Special { path: shown, kind }),
            _ => return Err(Refused::NotFile(shown)),
        }
        open_regular(&self.dir, nonempty(&rel), FollowSymlinks::Yes, shown)
    }

    /// At most `limit` bytes of the regular file `rel`, resolved beneath the tree.
    pub fn read(&self, rel: &Path, limit: u64) -> Result<Vec<u8>, Refused> {
        let opened = self.open_file(rel)?;
        let path = opened.path.clone();
        if opened.meta.len() > limit {
            return Err(Refused::TooLarge { path, limit });
        }
        let mut out = Vec::with_capacity(usize::try_from(opened.meta.len()).unwrap_or(0));
        opened
            .exact()
            .read_to_end(&mut out)
            .map_err(|e| from_read(&path, e))?;
        Ok(out)
    }

    /// `read`, as UTF-8 text.
    pub fn read_to_string(&self, rel: &Path, limit: u64) -> Result<String, Refused> {
        let bytes = self.read(rel, limit)?;
        String::from_utf8(bytes).map_err(|_| Refused::Io {
            path: shown(rel),
            source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"),
        })
    }

    /// `rel` without following any symlink at all, not even one that stays inside: for readers
    /// that must see the tree exactly as the engine's `COPY` would pack it.
    pub fn open_nofollow(&self, rel: &Path) -> Result<Node, Refused> {
        let rel = relative(rel)?;
        let mut dir = self.dir.try_clone().map_err(|e| classify(&rel, e))?;
        let mut walked = PathBuf::new();
        let mut parts = rel.components().peekable();
        while let Some(part) = parts.next() {
            let name = part.as_os_str();
            walked.push(name);
            let meta = dir
                .symlink_metadata(name)
                .map_err(|e| classify(&walked, e))?;
            let kind = kind_of!(meta.file_type());
            let last = parts.peek().is_none();
            match kind {
                Kind::Symlink => return Err(Refused::Symlink(shown(&walked))),
                Kind::Special(kind) => {
                    return Err(Refused::Special {
                        path: shown(&walked),
                        kind,
                    });
                }
                Kind::File if last => {
                    let opened = open_regular(&dir, name, FollowSymlinks::No, shown(&walked))?;
                    return Ok(Node::File(opened));
                }
                Kind::File => return Err(Refused::NotDir(shown(&walked))),
                Kind::Dir => {
                    dir = dir
                        .open_dir_nofollow(name)
                        .map_err(|e| classify(&walked, e))?;
                }
            }
        }
        Ok(Node::Dir(Tree {
            dir,
            path: self.beneath(&rel),
        }))
    }

    /// Everything beneath the tree, no symlink followed, in name order, each directory before
    /// what it holds; `visit` gets the path relative to the tree. Special files are refused.
    pub fn walk<E: From<Refused>>(
        &self,
        visit: &mut impl FnMut(&Path, Entry) -> Result<(), E>,
    ) -> Result<(), E> {
        walk_dir(&self.dir, Path::new(""), &mut |rel: &Path, entry| {
            let entry = match entry {
                Entry::File(unopened) => Entry::File(unopened.open()?),
                Entry::Dir { mode, mtime } => Entry::Dir { mode, mtime },
                Entry::Symlink(link) => Entry::Symlink(link),
            };
            visit(rel, entry)
        })
    }

    /// As `walk`, with each regular file (by its directory entry's type) left to the visitor to
    /// open: a visitor that already knows a file's bytes saves the open, the fstat and the read.
    pub fn walk_unopened<E: From<Refused>>(
        &self,
        visit: &mut impl FnMut(&Path, Entry<Unopened<'_>>) -> Result<(), E>,
    ) -> Result<(), E> {
        walk_dir(&self.dir, Path::new(""), visit)
    }
}

/// A regular file met by `Tree::walk_unopened`, not opened yet.
pub struct Unopened<'a> {
    dir: &'a Dir,
    name: &'a std::ffi::OsStr,
    rel: &'a Path,
}

impl Unopened<'_> {
    /// Opened without following a symlink, and checked through its own descriptor to be a
    /// regular file still.
    pub fn open(self) -> Result<Opened, Refused> {
        open_regular(self.dir, self.name, FollowSymlinks::No, shown(self.rel))
    }
}

/// What `Tree::open_nofollow` found.
pub enum Node {
    File(Opened),
    Dir(Tree),
}

/// The file `name` of `dir`, opened without blocking (a FIFO swapped in cannot hang the
/// worker) and checked through its own descriptor to be a regular file.
fn open_regular(
    dir: &Dir,
    name: impl AsRef<Path>,
    follow: FollowSymlinks,
    shown: String,
) -> Result<Opened, Refused> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .follow(follow)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY);
    let file = dir
        .open_with(name.as_ref(), &options)
        .map_err(|e| classify(Path::new(&shown), e))?
        .into_std();
    let meta = file.metadata().map_err(|source| Refused::Io {
        path: shown.clone(),
        source,
    })?;
    if !meta.is_file() {
        let kind = kind_of!(meta.file_type());
        return Err(match kind {
            Kind::Special(kind) => Refused::Special { path: shown, kind },
            _ => Refused::NotFile(shown),
        });
    }
    Ok(Opened {
        file,
        meta,
        path: shown,
    })
}

fn walk_dir<E: From<Refused>>(
    dir: &Dir,
    prefix: &Path,
    visit: &mut impl FnMut(&Path, Entry<Unopened<'_>>) -> Result<(), E>,
) -> Result<(), E> {
    let listing_failed = |source| Refused::Io {
        path: shown(prefix),
        source,
    };
    let mut entries = dir
        .entries()
        .map_err(listing_failed)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(listing_failed)?;
    entries.sort_by_key(cap_std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let rel = prefix.join(&name);
        let file_type = entry.file_type().map_err(|e| classify(&rel, e))?;
        match kind_of!(file_type) {
            Kind::Dir => {
                let meta = dir.symlink_metadata(&name).map_err(|e| classify(&rel, e))?;
                visit(
                    &rel,
                    Entry::Dir {
                        mode: meta.mode() & 0o7777,
                        mtime: meta.mtime(),
                    },
                )?;
                let sub = dir
                    .open_dir_nofollow(&name)
                    .map_err(|e| classify(&rel, e))?;
                walk_dir(&sub, &rel, visit)?;
            }
            Kind::File => {
                let unopened = Unopened {
                    dir,
                    name: &name,
                    rel: &rel,
                };
                visit(&rel, Entry::File(unopened))?;
            }
            Kind::Symlink => {
                let link = dir
                    .read_link_contents(&name)
                    .map_err(|e| classify(&rel, e))?;
                visit(&rel, Entry::Symlink(link))?;
            }
            Kind::Special(kind) => {
                return Err(Refused::Special {
                    path: shown(&rel),
                    kind,
                }
                .into());
            }
        }
    }
    Ok(())
}

/// `rel` as a relative path; an absolute one is refused before it reaches the filesystem.
fn relative(rel: &Path) -> Result<PathBuf, Refused> {
    if rel
        .components()
        .any(|c| matches!(c, Component::RootDir | Component::Prefix(_)))
    {
        return Err(Refused::Outside(shown(rel)));
    }
    Ok(rel
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect())
}

/// cap-std wants "." for the directory itself.
fn nonempty(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

fn shown(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        rel.display().to_string()
    }
}

/// cap-std says "a path led outside of the filesystem" (PermissionDenied) for an escape, and
/// the kernel ELOOP for a symlink where none may be followed (or a loop).
fn classify(rel: &Path, e: io::Error) -> Refused {
    let path = shown(rel);
    match e.kind() {
        io::ErrorKind::NotFound => Refused::Missing(path),
        io::ErrorKind::PermissionDenied => Refused::Outside(path),
        io::ErrorKind::NotADirectory => Refused::NotDir(path),
        _ if e.raw_os_error() == Some(nix::libc::ELOOP) => Refused::Symlink(path),
        _ => Refused::Io { path, source: e },
    }
}

/// A read that failed because the file changed under it keeps saying so.
fn from_read(path: &str, e: io::Error) -> Refused {
    if e.get_ref().is_some_and(|inner| inner.is::<Refused>()) {
        return Refused::Changed(path.to_owned());
    }
    Refused::Io {
        path: path.to_owned(),
        source: e,
    }
}

mod copy;

pub use copy::CopyStats;

#[cfg(test)]
mod tests;
