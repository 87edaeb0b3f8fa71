//! A confined copy of a tree, for programs that read a context by path and follow symlinks.

use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use super::{Entry, Kind, Refused, Tree, from_read};

impl Tree {
    /// Copies the tree into `dest` (created): directories, regular files with their permission
    /// bits, and symlinks whose target resolves to a file or directory inside the tree (kept as
    /// the same symlink, so it resolves the same way in the copy). Other symlinks are left out
    /// and reported through `skipped`; special files are refused. For programs that read a
    /// context by path and follow symlinks (nixpacks): the copy holds nothing from outside.
    pub fn copy_into(
        &self,
        dest: &Path,
        skipped: &mut impl FnMut(String),
    ) -> Result<CopyStats, Refused> {
        use std::os::unix::fs::PermissionsExt;
        let write_failed = |path: &Path, source: io::Error| Refused::Io {
            path: format!("{} (copy)", path.display()),
            source,
        };
        std::fs::create_dir_all(dest).map_err(|e| write_failed(dest, e))?;
        let mut stats = CopyStats::default();
        self.walk(&mut |rel: &Path, entry| {
            let target = dest.join(rel);
            match entry {
                Entry::Dir { .. } => {
                    std::fs::create_dir(&target).map_err(|e| write_failed(&target, e))?;
                }
                Entry::File(opened) => {
                    let mode = opened.meta.mode() & 0o777;
                    let path = opened.path.clone();
                    let mut out =
                        std::fs::File::create(&target).map_err(|e| write_failed(&target, e))?;
                    stats.bytes +=
                        io::copy(&mut opened.exact(), &mut out).map_err(|e| from_read(&path, e))?;
                    out.set_permissions(std::fs::Permissions::from_mode(mode))
                        .map_err(|e| write_failed(&target, e))?;
                    stats.files += 1;
                }
                Entry::Symlink(link) => match self.kind(rel) {
                    Ok(Some(Kind::File | Kind::Dir)) => {
                        std::os::unix::fs::symlink(&link, &target)
                            .map_err(|e| write_failed(&target, e))?;
                        stats.symlinks += 1;
                    }
                    Ok(_) => skipped(format!(
                        "left out symlink {} -> {}: it leads to nothing readable",
                        rel.display(),
                        link.display()
                    )),
                    Err(why) => skipped(format!(
                        "left out symlink {} -> {}: {why}",
                        rel.display(),
                        link.display()
                    )),
                },
            }
            Ok::<_, Refused>(())
        })?;
        Ok(stats)
    }
}

/// What `Tree::copy_into` copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub files: usize,
    pub symlinks: usize,
    pub bytes: u64,
}
