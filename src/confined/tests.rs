use super::*;
use std::os::unix::fs::symlink;

/// `<tmp>/outside.txt` next to `<tmp>/tree`, which holds `inside.txt` and `sub/a.txt`.
fn fixture() -> (tempfile::TempDir, Tree) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("tree");
    std::fs::create_dir_all(root.join("sub")).expect("dirs");
    std::fs::write(tmp.path().join("outside.txt"), "outside").expect("write");
    std::fs::write(root.join("inside.txt"), "inside").expect("write");
    std::fs::write(root.join("sub/a.txt"), "a").expect("write");
    let tree = Tree::open(&root).expect("open tree");
    (tmp, tree)
}

fn read(tree: &Tree, rel: &str) -> Result<String, Refused> {
    tree.read_to_string(Path::new(rel), 1 << 20)
}

#[test]
fn a_symlinked_directory_to_the_root_leads_nowhere() {
    let (_tmp, tree) = fixture();
    symlink("/", tree.path().join("h")).expect("symlink");
    for rel in ["h/proc/self/environ", "h/etc/passwd"] {
        assert!(
            matches!(read(&tree, rel), Err(Refused::Outside(_))),
            "{rel}: {:?}",
            read(&tree, rel)
        );
        assert!(matches!(
            tree.kind(Path::new(rel)),
            Err(Refused::Outside(_))
        ));
        assert!(matches!(
            tree.open_nofollow(Path::new(rel)),
            Err(Refused::Symlink(p)) if p == "h"
        ));
    }
    assert!(matches!(
        tree.resolve(Path::new("h")),
        Err(Refused::Outside(_))
    ));
    assert!(matches!(
        tree.subtree(Path::new("h")),
        Err(Refused::Outside(_))
    ));
    // The name itself is there (an ignore-file check must see it).
    assert!(tree.has_entry(Path::new("h")));
}

#[test]
fn dot_dot_cannot_climb_out_but_may_move_inside() {
    let (_tmp, tree) = fixture();
    for rel in [
        "../outside.txt",
        "sub/../../outside.txt",
        "sub/../sub/../../outside.txt",
    ] {
        assert!(
            matches!(read(&tree, rel), Err(Refused::Outside(_))),
            "{rel}"
        );
    }
    assert!(matches!(
        read(&tree, "/etc/passwd"),
        Err(Refused::Outside(_))
    ));
    assert_eq!(read(&tree, "sub/../inside.txt").expect("inside"), "inside");
    assert_eq!(
        tree.resolve(Path::new("./sub/../sub/a.txt"))
            .expect("resolved"),
        PathBuf::from("sub/a.txt")
    );
    assert_eq!(tree.resolve(Path::new(".")).expect("root"), PathBuf::new());
}

#[test]
fn absolute_and_climbing_symlinks_are_refused_even_towards_the_tree() {
    let (tmp, tree) = fixture();
    symlink(tree.path().join("inside.txt"), tree.path().join("abs")).expect("symlink");
    symlink("../outside.txt", tree.path().join("up")).expect("symlink");
    symlink("../../outside.txt", tree.path().join("sub/up2")).expect("symlink");
    symlink(tmp.path(), tree.path().join("parent")).expect("symlink");
    for rel in ["abs", "up", "sub/up2", "parent/outside.txt"] {
        assert!(
            matches!(read(&tree, rel), Err(Refused::Outside(_))),
            "{rel}: {:?}",
            read(&tree, rel)
        );
    }
}

#[test]
fn symlinks_that_stay_inside_are_followed_where_resolution_is_wanted() {
    let (_tmp, tree) = fixture();
    symlink("inside.txt", tree.path().join("link")).expect("symlink");
    symlink("sub", tree.path().join("dirlink")).expect("symlink");
    symlink("../inside.txt", tree.path().join("sub/back")).expect("symlink");
    assert_eq!(read(&tree, "link").expect("sibling"), "inside");
    assert_eq!(read(&tree, "dirlink/a.txt").expect("through a dir"), "a");
    assert_eq!(read(&tree, "sub/back").expect("up and back"), "inside");
    assert_eq!(
        tree.resolve(Path::new("dirlink/a.txt")).expect("resolved"),
        PathBuf::from("sub/a.txt")
    );
    let sub = tree.subtree(Path::new("dirlink")).expect("subtree");
    assert_eq!(sub.path(), tree.path().join("sub"));
    // ... but never where the engine's COPY would see the link itself.
    assert!(matches!(
        tree.open_nofollow(Path::new("dirlink/a.txt")),
        Err(Refused::Symlink(p)) if p == "dirlink"
    ));
    assert!(matches!(
        tree.open_nofollow(Path::new("sub/a.txt")),
        Ok(Node::File(_))
    ));
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
}

#[test]
fn fifos_are_refused_without_blocking() {
    let (_tmp, tree) = fixture();
    mkfifo(&tree.path().join("sub/pipe"));
    symlink("sub/pipe", tree.path().join("to-pipe")).expect("symlink");
    for rel in ["sub/pipe", "to-pipe"] {
        assert!(
            matches!(read(&tree, rel), Err(Refused::Special { kind: "FIFO", .. })),
            "{rel}"
        );
    }
    assert!(matches!(
        tree.open_nofollow(Path::new("sub/pipe")),
        Err(Refused::Special { kind: "FIFO", .. })
    ));
    let walked = tree.walk(&mut |_, _| Ok::<_, Refused>(()));
    assert!(
        matches!(&walked, Err(Refused::Special { path, .. }) if path == "sub/pipe"),
        "{:?}",
        walked.err()
    );
    let dest = tempfile::tempdir().expect("tempdir");
    let copied = tree.copy_into(&dest.path().join("copy"), &mut |_| {});
    assert!(matches!(copied, Err(Refused::Special { .. })));
}

#[test]
fn proc_like_files_that_lie_about_their_size_are_not_read() {
    // /proc reports size 0 for files full of bytes: reading exactly what fstat said refuses it.
    let proc_self = Tree::open(Path::new("/proc/self")).expect("/proc/self");
    let read = proc_self.read(Path::new("environ"), 1 << 20);
    assert!(matches!(read, Err(Refused::Changed(_))), "{read:?}");
    // And a checkout cannot reach it at all.
    let (_tmp, tree) = fixture();
    symlink("/proc/self", tree.path().join("me")).expect("symlink");
    symlink(
        "../../../../../../../../../../proc/self",
        tree.path().join("me2"),
    )
    .expect("symlink");
    for rel in ["me/environ", "me2/environ"] {
        assert!(matches!(
            tree.read(Path::new(rel), 1 << 20),
            Err(Refused::Outside(_))
        ));
    }
}

#[test]
fn a_file_that_grows_while_read_is_an_error() {
    let (_tmp, tree) = fixture();
    let opened = tree.open_file(Path::new("inside.txt")).expect("open");
    std::fs::write(tree.path().join("inside.txt"), "inside and more").expect("grow");
    let mut out = Vec::new();
    let err = opened.exact().read_to_end(&mut out).expect_err("grew");
    assert!(err.to_string().contains("changed size"), "{err}");
}

#[test]
fn exact_reads_give_the_measured_bytes_and_refuse_a_file_that_shrank_or_grew() {
    let (_tmp, tree) = fixture();
    let big: Vec<u8> = (0..100_000u32).map(|n| (n % 251) as u8).collect();
    std::fs::write(tree.path().join("big.bin"), &big).expect("write");
    // Read in the tar writer's way (8 KiB at a time): every byte, then the end.
    let opened = tree.open_file(Path::new("big.bin")).expect("open");
    let mut out = Vec::new();
    std::io::copy(&mut opened.exact(), &mut out).expect("read");
    assert_eq!(out, big);

    // Grown by a byte past the last full buffer, or shrunk: each is an error, not a short file.
    for (changed, what) in [
        (&big[..big.len() - 1], "shrank"),
        (&[&big[..], b"x"].concat()[..], "grew"),
    ] {
        let opened = tree.open_file(Path::new("big.bin")).expect("open");
        std::fs::write(tree.path().join("big.bin"), changed).expect("change");
        let err = std::io::copy(&mut opened.exact(), &mut std::io::sink()).expect_err(what);
        assert!(err.to_string().contains("changed size"), "{what}: {err}");
        std::fs::write(tree.path().join("big.bin"), &big).expect("restore");
    }

    // An empty file reads as empty.
    std::fs::write(tree.path().join("empty"), "").expect("write");
    let mut out = Vec::new();
    let opened = tree.open_file(Path::new("empty")).expect("open");
    std::io::copy(&mut opened.exact(), &mut out).expect("read");
    assert!(out.is_empty());
}

#[test]
fn walks_in_order_without_following_links() {
    let (_tmp, tree) = fixture();
    std::fs::create_dir(tree.path().join("b")).expect("dir");
    std::fs::write(tree.path().join("b/z.txt"), "z").expect("write");
    symlink("/", tree.path().join("h")).expect("symlink");
    let mut seen = Vec::new();
    tree.walk(&mut |rel: &Path, entry| {
        let kind = match entry {
            Entry::Dir { .. } => "d".to_owned(),
            Entry::File(opened) => format!("f{}", opened.meta.len()),
            Entry::Symlink(link) => format!("l{}", link.display()),
        };
        seen.push(format!("{} {kind}", rel.display()));
        Ok::<_, Refused>(())
    })
    .expect("walk");
    assert_eq!(
        seen,
        [
            "b d",
            "b/z.txt f1",
            "h l/",
            "inside.txt f6",
            "sub d",
            "sub/a.txt f1"
        ]
    );
}

#[test]
fn a_copy_keeps_inside_links_and_leaves_out_the_rest() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, tree) = fixture();
    let root = tree.path().to_owned();
    std::fs::set_permissions(
        root.join("inside.txt"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    symlink("inside.txt", root.join("link")).expect("symlink");
    symlink("sub", root.join("dirlink")).expect("symlink");
    symlink("/", root.join("h")).expect("symlink");
    symlink("../outside.txt", root.join("up")).expect("symlink");
    symlink("missing", root.join("dangling")).expect("symlink");
    // Lexically inside, but `..` after a symlink climbs out: s -> sub, sub/t -> .., e -> s/t/..
    symlink("sub", root.join("s")).expect("symlink");
    symlink("..", root.join("sub/t")).expect("symlink");
    symlink("s/t/..", root.join("e")).expect("symlink");

    let dest = tmp.path().join("copy");
    let mut skipped = Vec::new();
    let stats = tree
        .copy_into(&dest, &mut |line| skipped.push(line))
        .expect("copied");
    assert_eq!(stats.files, 2);
    assert_eq!(
        std::fs::read_to_string(dest.join("link")).expect("link"),
        "inside"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("dirlink/a.txt")).expect("a"),
        "a"
    );
    assert_eq!(
        std::fs::metadata(dest.join("inside.txt"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    for name in ["h", "up", "dangling", "e"] {
        assert!(
            dest.join(name).symlink_metadata().is_err(),
            "{name} was left out"
        );
        assert!(
            skipped
                .iter()
                .any(|l| l.contains(&format!("symlink {name} "))),
            "{name}: {skipped:?}"
        );
    }
    assert!(
        dest.join("sub/t").symlink_metadata().is_ok(),
        "sub/t -> .. stays inside"
    );
    // Nothing in the copy resolves outside it.
    let copy = Tree::open(&dest).expect("copy");
    copy.walk(&mut |rel: &Path, entry| {
        if let Entry::Symlink(_) = entry {
            copy.kind(rel).expect("resolves inside");
        }
        Ok::<_, Refused>(())
    })
    .expect("walk the copy");
}
