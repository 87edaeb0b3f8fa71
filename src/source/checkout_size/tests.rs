use git2::{Oid, Repository};

use super::*;

const FILE: i32 = 0o100_644;
const DIR: i32 = 0o040_000;

/// A tree listing `child` `times` times (as files or directories).
fn repeat(repo: &Repository, child: Oid, mode: i32, times: usize) -> Oid {
    let mut tree = repo.treebuilder(None).expect("treebuilder");
    for i in 0..times {
        tree.insert(format!("e{i}"), child, mode).expect("insert");
    }
    tree.write().expect("tree")
}

fn bounds(checkout_mb: u64, max_entries: u64) -> CheckoutBounds {
    CheckoutBounds {
        checkout_mb,
        max_entries,
    }
}

fn check(repo: &Repository, tree: Oid, bounds: &CheckoutBounds) -> Result<(), BuildError> {
    let tree = repo.find_tree(tree).expect("tree");
    ensure_fits(repo, &tree, bounds)
}

#[test]
fn repeated_references_count_every_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repository::init_bare(dir.path()).expect("repo");
    let blob = repo.blob(&[7; 100 * 1024]).expect("blob");
    let files = repeat(&repo, blob, FILE, 10); // 1000 KiB in 10 files
    let dirs = repeat(&repo, files, DIR, 3); // 3000 KiB in 3 dirs

    assert!(check(&repo, files, &bounds(1, 100)).is_ok());
    let err = check(&repo, dirs, &bounds(2, 100)).expect_err("3000 KiB > 2 MiB");
    assert!(matches!(err, BuildError::LimitExceeded(_)), "{err}");
    assert!(
        err.to_string().contains("build.limits.checkout_mb = 2"),
        "{err}"
    );
    assert!(check(&repo, dirs, &bounds(3, 100)).is_ok());
}

#[test]
fn a_git_bomb_of_empty_files_fails_on_its_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repository::init_bare(dir.path()).expect("repo");
    let empty = repo.blob(b"").expect("blob");
    // 1000^3 empty files: no bytes at all, a billion entries.
    let mut tree = repeat(&repo, empty, FILE, 1000);
    for _ in 0..2 {
        tree = repeat(&repo, tree, DIR, 1000);
    }
    let err = check(&repo, tree, &bounds(1, MAX_CHECKOUT_ENTRIES)).expect_err("too many entries");
    assert!(matches!(err, BuildError::LimitExceeded(_)), "{err}");
    assert!(err.to_string().contains("files and directories"), "{err}");
}

#[test]
fn deep_nesting_is_walked_without_recursion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repository::init_bare(dir.path()).expect("repo");
    let blob = repo.blob(b"x").expect("blob");
    let mut tree = repeat(&repo, blob, FILE, 1);
    for _ in 0..20_000 {
        tree = repeat(&repo, tree, DIR, 1);
    }
    // 20 001 directories and one file: within the bounds, and no stack overflow on the way.
    assert!(check(&repo, tree, &bounds(1, MAX_CHECKOUT_ENTRIES)).is_ok());
}

#[test]
fn submodules_add_an_entry_and_no_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repository::init_bare(dir.path()).expect("repo");
    // A gitlink names a commit of another repository: it is not in this one.
    let elsewhere = Oid::from_str("1234567890123456789012345678901234567890").expect("oid");
    let tree = repeat(&repo, elsewhere, 0o160_000, 3);
    assert!(check(&repo, tree, &bounds(1, 3)).is_ok());
    assert!(check(&repo, tree, &bounds(1, 2)).is_err());
}
