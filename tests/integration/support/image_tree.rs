//! What an image holds, for comparing two images: every path of its root filesystem (kind,
//! mode, owner, content digest, symlink target), read through `podman image mount`, and the
//! parts of its config a build decides.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Label prefixes the worker writes (provenance: revision, source, created, build id): they
/// differ from a plain podman build by design.
const PROVENANCE: [&str; 2] = ["org.opencontainers.image.", "io.image-builder."];

/// Path -> "kind mode uid:gid detail"; mtimes are left out (the worker writes the commit time,
/// podman the checkout's).
pub type Tree = BTreeMap<String, String>;

/// The root filesystem of local image `image`.
pub fn tree(image: &str) -> Tree {
    let root = podman(&["image", "mount", image]);
    let root = root.trim();
    let mut out = Tree::new();
    let mut digests = HashMap::new();
    walk(Path::new(root), "", &mut out, &mut digests);
    podman(&["image", "unmount", image]);
    out
}

fn walk(dir: &Path, rel: &str, out: &mut Tree, digests: &mut HashMap<(u64, u64), String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry"))
        .collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let rel = format!("{rel}/{name}");
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        let owner = format!("{:o} {}:{}", meta.mode() & 0o7777, meta.uid(), meta.gid());
        let kind = meta.file_type();
        let shown = if kind.is_symlink() {
            let target = std::fs::read_link(&path).expect("read link");
            format!("symlink -> {}", target.display())
        } else if kind.is_dir() {
            walk(&path, &rel, out, digests);
            format!("dir {owner}")
        } else if kind.is_file() {
            // Hard links (busybox has hundreds) are hashed once.
            let digest = digests.entry((meta.dev(), meta.ino())).or_insert_with(|| {
                let bytes = std::fs::read(&path).expect("read file");
                hex::encode(Sha256::digest(&bytes))
            });
            format!("file {owner} {}", &digest[..16])
        } else {
            format!("special {owner}")
        };
        out.insert(rel, shown);
    }
}

/// The config a build decides: env, cmd, entrypoint, workdir, user, ports, stop signal, the
/// labels that are not provenance, the history's steps (`created_by`, `empty_layer`), and the
/// healthcheck, shell and ONBUILD triggers that only a docker-format config holds (read from
/// the raw config: `podman image inspect` shows the OCI view, which has no place for them).
/// Left out: times, history comments (podman names the parent image there, the worker's edit
/// names the image it edited), and the content digest buildah writes into a COPY's
/// `created_by` (`COPY file:<sha256> in /x`): that digest is of the copied files, which the
/// tree comparison checks directly.
pub fn config(image: &str) -> Value {
    let inspected: Value =
        serde_json::from_str(&podman(&["image", "inspect", image])).expect("inspect JSON");
    let image = &inspected[0];
    let config = &image["Config"];
    let mut labels = config["Labels"].as_object().cloned().unwrap_or_default();
    labels.retain(|key, _| !PROVENANCE.iter().any(|p| key.starts_with(p)));
    let history: Vec<Value> = image["History"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| {
                    json!({
                        "created_by": without_digests(e["created_by"].as_str().unwrap_or("")),
                        "empty_layer": e["empty_layer"].as_bool().unwrap_or(false),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let id = image["Id"].as_str().expect("image id");
    let raw = docker_only(id);
    json!({
        "Env": config["Env"], "Cmd": config["Cmd"], "Entrypoint": config["Entrypoint"],
        "WorkingDir": config["WorkingDir"], "User": config["User"],
        "ExposedPorts": config["ExposedPorts"], "StopSignal": config["StopSignal"],
        "Labels": labels, "History": history,
        "Healthcheck": raw["Healthcheck"], "Shell": raw["Shell"], "OnBuild": raw["OnBuild"],
    })
}

/// Healthcheck, Shell and OnBuild of local image `id`'s raw config (null when absent or empty:
/// a docker-format config writes empty lists where an OCI one writes nothing).
fn docker_only(id: &str) -> Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--config", "--raw"])
        .arg(format!("containers-storage:{id}"))
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo inspect {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw: Value = serde_json::from_slice(&out.stdout).expect("raw config JSON");
    let mut kept = serde_json::Map::new();
    for key in ["Healthcheck", "Shell", "OnBuild"] {
        let value = &raw["config"][key];
        let empty = value.is_null() || value.as_array().is_some_and(Vec::is_empty);
        kept.insert(
            key.to_owned(),
            if empty { Value::Null } else { value.clone() },
        );
    }
    Value::Object(kept)
}

/// `podman build --no-cache --isolation chroot` of `commit`'s tree in the work tree `work`,
/// tagged `tag`, with `extra` arguments (`--format docker`, `--file ...`); Err is podman's
/// stderr. The tree is unpacked as `git archive` gives it, with git's own modes (0644/0755,
/// directories 0755), as the worker's checkout has them.
pub fn reference_build(work: &Path, commit: &str, tag: &str, extra: &[&str]) -> Result<(), String> {
    let tree = tempfile::tempdir().expect("tempdir");
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git -C '{}' -c tar.umask=0022 archive --format=tar {commit} | tar -x -C '{}'",
            work.display(),
            tree.path().display()
        ))
        .status()
        .expect("git archive runs");
    assert!(unpacked.success(), "git archive of {commit}");
    let context = tree.path().to_str().expect("utf8 path");
    let mut args = vec![
        "build",
        "-q",
        "--no-cache",
        "--isolation",
        "chroot",
        "-t",
        tag,
    ];
    args.extend(extra);
    args.push(context);
    let out = Command::new("podman")
        .args(&args)
        .output()
        .expect("podman runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every difference between the worker's image and the reference.
pub fn compare(worker_image: &str, reference: &str) -> Vec<String> {
    podman(&["pull", "-q", "--tls-verify=false", worker_image]);
    let mut out = differences(&tree(reference), &tree(worker_image));
    let (want, got) = (config(reference), config(worker_image));
    if want != got {
        out.push(format!("config: {got:#}\n  full build: {want:#}"));
    }
    // Names only: removing images would race other tests' builds (podman 4.3's cache lookup
    // fails when an image goes while it looks); the worker's prune takes them when no build runs.
    untag(worker_image);
    untag(reference);
    out
}

/// Removes the one name `name` (never `podman rmi`, which races other builds' cache lookups,
/// nor `untag IMAGE` alone, which removes every name: the base image's too when a build added
/// nothing to it).
pub fn untag(name: &str) {
    let _ = Command::new("podman").args(["untag", name, name]).output();
}

/// `file:<64 hex>` / `dir:<64 hex>` / `multi:<64 hex>` with the hex replaced by `*`.
fn without_digests(created_by: &str) -> String {
    let mut out = String::with_capacity(created_by.len());
    let mut rest = created_by;
    while let Some(colon) = rest.find(':') {
        let (head, tail) = rest.split_at(colon + 1);
        out.push_str(head);
        let hex = tail.len() >= 64 && tail[..64].bytes().all(|b| b.is_ascii_hexdigit());
        let tagged = ["file:", "dir:", "multi:"]
            .iter()
            .any(|t| head.ends_with(t));
        rest = if hex && tagged {
            out.push('*');
            &tail[64..]
        } else {
            tail
        };
    }
    out.push_str(rest);
    out
}

/// Lines naming every difference of two trees (empty when equal).
pub fn differences(expected: &Tree, actual: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => out.push(format!("{path}: missing (full build: {want})")),
            Some(got) if got != want => out.push(format!("{path}: {got} (full build: {want})")),
            Some(_) => {}
        }
    }
    for (path, got) in actual {
        if !expected.contains_key(path) {
            out.push(format!("{path}: extra {got}"));
        }
    }
    out
}

/// Builds `dockerfile` (a context of nothing else) as local image `tag` in docker format, as a
/// base with ONBUILD triggers must be (podman's OCI format drops them). No registry can be
/// pulled from here, so such bases are made locally.
pub fn build_docker_format_base(dockerfile: &str, tag: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write");
    let context = dir.path().to_str().expect("utf8 path");
    podman(&[
        "build",
        "-q",
        "--format",
        "docker",
        "--isolation",
        "chroot",
        "-t",
        tag,
        context,
    ]);
}

/// Runs podman; panics with its stderr when it fails. Returns stdout.
pub fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .output()
        .expect("podman runs");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names of `image`, or why podman could not tell.
pub fn names(image: &str) -> Result<Vec<String>, String> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format", "{{json .RepoTags}}", image])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Waits until `image` carries no worker build name (`image-builder/build:*`) beyond those in
/// `before` (another test's build may hold one for a moment), and fails naming those left; it
/// must still carry `image` itself. An inspect can fail for a moment while another test's image
/// goes (podman 4.3's lookup), so only the last answer before the deadline counts.
pub async fn expect_no_new_build_names(image: &str, before: &[String]) {
    let new = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| n.contains("image-builder/build") && !before.contains(n))
            .cloned()
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let seen = loop {
        let seen = names(image);
        if seen.as_ref().is_ok_and(|n| new(n).is_empty()) || std::time::Instant::now() >= deadline {
            break seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let seen = seen.unwrap_or_else(|e| panic!("{image} is gone: {e}"));
    assert!(
        seen.iter().any(|n| n == image),
        "{image} lost its name: {seen:?}"
    );
    assert!(
        new(&seen).is_empty(),
        "build names left on {image}: {:?}",
        new(&seen)
    );
}

#[test]
fn copy_digests_are_masked() {
    let digest = "a".repeat(64);
    assert_eq!(
        without_digests(&format!("/bin/sh -c #(nop) COPY file:{digest} in /x ")),
        "/bin/sh -c #(nop) COPY file:* in /x "
    );
    assert_eq!(without_digests("RUN a:b"), "RUN a:b");
}
