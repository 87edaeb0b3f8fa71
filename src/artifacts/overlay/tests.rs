use std::collections::BTreeMap;

use super::*;

/// One synthetic layer entry.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// Writes a layer tar (gzip when `gz`) of `entries`, in order, to `dir/name`.
fn layer(dir: &Path, name: &str, gz: bool, entries: &[E]) -> PathBuf {
    let path = dir.join(name);
    let file = File::create(&path).expect("create layer");
    let sink: Box<dyn Write> = if gz {
        Box::new(GzEncoder::new(file, Compression::fast()))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Builder::new(sink);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        match entry {
            E::Dir(p) => {
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, p, io::empty()).expect("dir");
            }
            E::File(p, body) => {
                header.set_size(body.len() as u64);
                tar.append_data(&mut header, p, body.as_bytes())
                    .expect("file");
            }
            E::Symlink(p, to) => {
                header.set_entry_type(EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, p, to).expect("symlink");
            }
            E::Hardlink(p, to) => {
                header.set_entry_type(EntryType::Link);
                header.set_size(0);
                tar.append_link(&mut header, p, to).expect("hardlink");
            }
        }
    }
    tar.into_inner()
        .expect("finish tar")
        .flush()
        .expect("flush");
    path
}

/// The artifact's entries: name -> "dir", "file:<body>", "symlink:<to>" or "link:<to>".
fn read(out: &Path) -> BTreeMap<String, String> {
    let mut archive = tar::Archive::new(GzDecoder::new(File::open(out).expect("open out")));
    let mut seen = BTreeMap::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let link = || {
            entry
                .link_name()
                .expect("link")
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let what = match entry.header().entry_type() {
            EntryType::Directory => "dir".to_owned(),
            EntryType::Symlink => format!("symlink:{}", link()),
            EntryType::Link => format!("link:{}", link()),
            _ => {
                let mut body = String::new();
                entry.read_to_string(&mut body).expect("body");
                format!("file:{body}")
            }
        };
        assert!(seen.insert(name.clone(), what).is_none(), "{name} twice");
    }
    seen
}

fn path(raw: &str) -> ImagePath {
    ImagePath::parse(raw).expect("valid path")
}

fn run(
    layers: &[PathBuf],
    target: &str,
    max: u64,
    dir: &Path,
) -> Result<BTreeMap<String, String>, ExportError> {
    let out = dir.join("out.tar.gz");
    let exported = export(layers, &path(target), max, &out)?;
    let seen = read(&out);
    assert_eq!(exported.entries, seen.len(), "{seen:?}");
    let bytes = std::fs::read(&out).expect("read out");
    assert_eq!(exported.size, bytes.len() as u64);
    assert_eq!(exported.digest, crate::ports::content_digest(&bytes));
    Ok(seen)
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const MAX: u64 = 1 << 20;

#[test]
fn later_layers_win_and_whiteouts_delete_from_lower_layers_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = layer(
        dir.path(),
        "0",
        true,
        &[
            E::Dir("app"),
            E::Dir("app/dist"),
            E::File("app/dist/index.html", "v1"),
            E::File("app/dist/gone.txt", "deleted later"),
            E::File("app/dist/kept.txt", "kept"),
            E::Dir("app/dist/old"),
            E::File("app/dist/old/a.txt", "old dir"),
            E::File("app/other.txt", "outside"),
        ],
    );
    let upper = layer(
        dir.path(),
        "1",
        false,
        &[
            E::File("./app/dist/index.html", "v2"),
            E::File("app/dist/.wh.gone.txt", ""),
            // A whiteout never hides its own layer's entry.
            E::File("app/dist/new.txt", "new"),
            E::File("app/dist/.wh.new.txt", ""),
            E::Dir("app/dist/old/"),
            E::File("app/dist/old/.wh..wh..opq", ""),
            E::File("app/dist/old/b.txt", "fresh"),
        ],
    );
    let seen = run(&[base, upper], "/app/dist", MAX, dir.path()).expect("export");
    assert_eq!(
        seen,
        expect(&[
            ("dist", "dir"),
            ("dist/index.html", "file:v2"),
            ("dist/kept.txt", "file:kept"),
            ("dist/new.txt", "file:new"),
            ("dist/old", "dir"),
            ("dist/old/b.txt", "file:fresh"),
        ])
    );
}

#[test]
fn a_file_over_a_directory_hides_what_was_beneath() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = layer(
        dir.path(),
        "0",
        true,
        &[E::Dir("srv/out"), E::File("srv/out/x", "x")],
    );
    let upper = layer(dir.path(), "1", true, &[E::File("srv/out", "now a file")]);
    let seen = run(&[base, upper], "/srv/out", MAX, dir.path()).expect("export");
    assert_eq!(seen, expect(&[("out", "file:now a file")]));
}

#[test]
fn a_single_file_is_exported_under_its_own_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = layer(
        dir.path(),
        "0",
        true,
        &[
            E::File("usr/local/bin/tool", "#!/bin/sh"),
            E::File("usr/local/bin/toolbox", "no"),
        ],
    );
    let seen = run(&[base], "/usr/local/bin/tool", MAX, dir.path()).expect("export");
    assert_eq!(seen, expect(&[("tool", "file:#!/bin/sh")]));
}

#[test]
fn symlinks_stay_symlinks_and_are_never_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = layer(
        dir.path(),
        "0",
        true,
        &[
            E::Dir("app"),
            E::Symlink("app/passwd", "/etc/passwd"),
            E::Symlink("app/up", "../../../../etc"),
        ],
    );
    let seen = run(&[base], "/app", MAX, dir.path()).expect("export");
    assert_eq!(
        seen,
        expect(&[
            ("app", "dir"),
            ("app/passwd", "symlink:/etc/passwd"),
            ("app/up", "symlink:../../../../etc"),
        ])
    );
    // A symlink on the way to the path is not followed either.
    let link = layer(dir.path(), "1", true, &[E::Symlink("www", "/app")]);
    match run(&[link], "/www/passwd", MAX, dir.path()) {
        Err(ExportError::Missing(p)) => assert_eq!(p, "/www/passwd"),
        other => panic!("expected Missing, got {other:?}"),
    }
}

#[test]
fn hard_links_keep_their_bytes_inside_the_artifact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = layer(
        dir.path(),
        "0",
        true,
        &[
            E::File("bin/busybox", "BUSYBOX"),
            E::Hardlink("bin/ls", "bin/busybox"),
            E::File("opt/a", "A"),
            E::Hardlink("opt/b", "opt/a"),
            E::Hardlink("opt/sh", "bin/busybox"),
        ],
    );
    let seen = run(std::slice::from_ref(&base), "/opt", MAX, dir.path()).expect("export");
    assert_eq!(
        seen,
        expect(&[
            ("opt/a", "file:A"),
            ("opt/b", "link:opt/a"),
            ("opt/sh", "file:BUSYBOX"),
        ])
    );
    let seen = run(&[base], "/bin/ls", MAX, dir.path()).expect("export");
    assert_eq!(seen, expect(&[("ls", "file:BUSYBOX")]));
}

#[test]
fn a_missing_or_deleted_path_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = layer(
        dir.path(),
        "0",
        true,
        &[E::Dir("app/dist"), E::File("app/dist/x", "x")],
    );
    let missing = run(std::slice::from_ref(&base), "/app/nope", MAX, dir.path());
    assert!(
        matches!(&missing, Err(ExportError::Missing(p)) if p == "/app/nope"),
        "{missing:?}"
    );
    assert!(
        missing
            .err()
            .is_some_and(|e| e.to_string().starts_with("/app/nope is not in the image"))
    );
    // Deleted by a whiteout of the path, or of an ancestor, or below an opaque ancestor.
    for upper in [
        vec![E::File("app/.wh.dist", "")],
        vec![E::File(".wh.app", "")],
        vec![E::Dir("app"), E::File("app/.wh..wh..opq", "")],
    ] {
        let upper = layer(dir.path(), "1", true, &upper);
        let deleted = run(&[base.clone(), upper], "/app/dist", MAX, dir.path());
        assert!(
            matches!(deleted, Err(ExportError::Missing(_))),
            "{deleted:?}"
        );
    }
}

#[test]
fn the_size_bound_counts_uncompressed_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Compresses to almost nothing; the bound is on what it unpacks to.
    let big = "a".repeat(64 * 1024);
    let base = layer(
        dir.path(),
        "0",
        true,
        &[E::Dir("d"), E::File("d/big", &big)],
    );
    // Two headers (512 each) and the padded data fit exactly.
    let exact = 512 + 512 + 64 * 1024;
    assert!(run(std::slice::from_ref(&base), "/d", exact, dir.path()).is_ok());
    let over = run(&[base], "/d", exact - 1, dir.path());
    match over {
        Err(ExportError::TooLarge { path, max }) => {
            assert_eq!((path.as_str(), max), ("/d", exact - 1));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn entries_with_dot_dot_in_a_layer_are_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The tar crate refuses to write `..` names, so the header is filled in by hand.
    let path = dir.path().join("0");
    let mut tar = tar::Builder::new(File::create(&path).expect("create"));
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..15].copy_from_slice(b"app/../etc/evil");
    header.set_size(1);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append(&header, &b"x"[..]).expect("append");
    let mut ok = tar::Header::new_gnu();
    ok.set_size(2);
    ok.set_mode(0o644);
    tar.append_data(&mut ok, "app/ok", &b"ok"[..])
        .expect("append");
    tar.finish().expect("finish");
    drop(tar);
    let seen = run(&[path], "/app", MAX, dir.path()).expect("export");
    assert_eq!(seen, expect(&[("app/ok", "file:ok")]));
}
