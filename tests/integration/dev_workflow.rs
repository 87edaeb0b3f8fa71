//! The ways in besides the binary: docker-compose.yml and the devcontainer validate
//! (`scripts/validate-compose.sh`: a real compose parser, then the settings through this very
//! binary's `config check`), the service image builds from the Containerfile with podman and its
//! binary runs (`scripts/service-image.sh`), and `make help` lists every Makefile target.

use std::path::Path;
use std::process::Command;

fn script(name: &str, args: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let out = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", path.display()));
    assert!(
        out.status.success(),
        "{name}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_file_and_devcontainer_validate() {
    script(
        "validate-compose.sh",
        &[env!("CARGO_BIN_EXE_image-builder")],
    );
}

#[test]
fn the_service_image_builds_and_its_binary_runs() {
    script(
        "service-image.sh",
        &[
            env!("CARGO_BIN_EXE_image-builder"),
            "localhost/image-builder:test",
        ],
    );
}

#[test]
fn make_help_lists_every_target_with_its_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let makefile = std::fs::read_to_string(root.join("Makefile")).expect("Makefile");
    let targets: Vec<&str> = makefile
        .lines()
        .filter_map(|l| l.split_once(':').map(|(t, _)| t))
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect();
    for wanted in [
        "up", "logs", "down", "devc", "prep", "help", "run", "test", "services",
    ] {
        assert!(targets.contains(&wanted), "no `{wanted}` target");
    }
    let out = Command::new("make")
        .args(["--no-print-directory", "-C"])
        .arg(root)
        .arg("help")
        .output()
        .expect("make runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for target in targets {
        let line = help
            .lines()
            .find(|l| l.split_whitespace().next() == Some(target))
            .unwrap_or_else(|| panic!("`make help` does not list {target}:\n{help}"));
        assert!(
            line.split_whitespace().count() > 2,
            "{target} has no description: {line}"
        );
    }
}
