//! What checking out a tree would write, measured before anything is written.
//!
//! A few kilobytes of git can check out to gigabytes: a tree listing one blob a thousand times,
//! nested (a "git bomb"), or one huge blob of zeros that compresses to nothing. So the bytes
//! are summed the way the checkout writes them -- every reference to a blob counts again --
//! from object headers only (no blob is read), and the walk stops as soon as a bound is passed.
//! A subtree is measured once and its total reused wherever it appears again, so the walk costs
//! one visit per distinct tree entry, however often trees repeat.

use std::collections::HashMap;

use git2::{ObjectType, Odb, Oid, Repository, Tree};

use crate::error::{BuildError, GitError};

/// Files and directories one checkout may hold. Far above real repositories (a Linux kernel
/// tree has about 90 000), far below what makes a checkout take hours.
pub(super) const MAX_CHECKOUT_ENTRIES: u64 = 1_000_000;

/// What a checkout may write: bytes (`build.limits.checkout_mb`) and entries.
pub(super) struct CheckoutBounds {
    pub checkout_mb: u64,
    pub max_entries: u64,
}

#[derive(Clone, Copy, Default)]
struct Totals {
    bytes: u64,
    entries: u64,
}

impl Totals {
    fn plus(self, other: Totals) -> Totals {
        Totals {
            bytes: self.bytes.saturating_add(other.bytes),
            entries: self.entries.saturating_add(other.entries),
        }
    }

    fn minus(self, earlier: Totals) -> Totals {
        Totals {
            bytes: self.bytes.saturating_sub(earlier.bytes),
            entries: self.entries.saturating_sub(earlier.entries),
        }
    }
}

/// Fails with `LimitExceeded` naming the bound when checking out `tree` would pass one.
pub(super) fn ensure_fits(
    repo: &Repository,
    tree: &Tree<'_>,
    bounds: &CheckoutBounds,
) -> Result<(), BuildError> {
    let odb = repo.odb().map_err(GitError::git("open the mirror"))?;
    Walk {
        repo,
        odb,
        bounds,
        total: Totals::default(),
        subtrees: HashMap::new(),
        blobs: HashMap::new(),
    }
    .run(tree.clone())
}

struct Walk<'r, 'b> {
    repo: &'r Repository,
    odb: Odb<'r>,
    bounds: &'b CheckoutBounds,
    /// Everything counted so far.
    total: Totals,
    /// Subtrees already walked to the end, with what they hold.
    subtrees: HashMap<Oid, Totals>,
    blobs: HashMap<Oid, u64>,
}

/// A tree being walked: where in its entries, and the running total when it began.
struct Frame<'r> {
    tree: Tree<'r>,
    next: usize,
    began: Totals,
}

impl<'r> Walk<'r, '_> {
    /// Depth-first with an explicit stack: a hostile tree may nest deeper than a thread's stack.
    fn run(mut self, root: Tree<'r>) -> Result<(), BuildError> {
        let mut stack = vec![Frame {
            tree: root,
            next: 0,
            began: self.total,
        }];
        while let Some(frame) = stack.last_mut() {
            let next = frame.tree.get(frame.next).map(|e| (e.id(), e.kind()));
            frame.next += 1;
            let Some((id, kind)) = next else {
                if let Some(done) = stack.pop() {
                    self.subtrees
                        .insert(done.tree.id(), self.total.minus(done.began));
                }
                continue;
            };
            self.add(Totals {
                bytes: 0,
                entries: 1,
            })?;
            match kind {
                Some(ObjectType::Blob) => {
                    let bytes = self.blob_size(id)?;
                    self.add(Totals { bytes, entries: 0 })?;
                }
                Some(ObjectType::Tree) => {
                    if let Some(known) = self.subtrees.get(&id).copied() {
                        self.add(known)?;
                    } else {
                        let tree = self.repo.find_tree(id).map_err(|e| read_error(id, e))?;
                        stack.push(Frame {
                            tree,
                            next: 0,
                            began: self.total,
                        });
                    }
                }
                // A submodule (a commit): the checkout writes nothing for it.
                _ => {}
            }
        }
        Ok(())
    }

    fn add(&mut self, more: Totals) -> Result<(), BuildError> {
        self.total = self.total.plus(more);
        let max_bytes = self.bounds.checkout_mb.saturating_mul(1024 * 1024);
        if self.total.bytes > max_bytes {
            return Err(BuildError::LimitExceeded(format!(
                "the checkout is larger than build.limits.checkout_mb = {}",
                self.bounds.checkout_mb
            )));
        }
        if self.total.entries > self.bounds.max_entries {
            return Err(BuildError::LimitExceeded(format!(
                "the checkout has more than {} files and directories (the worker's bound on \
                 checkout entries)",
                self.bounds.max_entries
            )));
        }
        Ok(())
    }

    /// From the object's header: a packed delta is not applied, a loose blob not inflated.
    fn blob_size(&mut self, id: Oid) -> Result<u64, BuildError> {
        if let Some(size) = self.blobs.get(&id) {
            return Ok(*size);
        }
        let (size, _) = self.odb.read_header(id).map_err(|e| read_error(id, e))?;
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        self.blobs.insert(id, size);
        Ok(size)
    }
}

fn read_error(id: Oid, e: git2::Error) -> BuildError {
    GitError::git(format!("read object {id}"))(e).into()
}

#[cfg(test)]
mod tests;
