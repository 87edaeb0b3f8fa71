//! The layering rule, checked: every `crate::<module>` path in a module's source names a module of
//! a lower layer (so there is no import circle), and only the composition root names a build
//! adapter. Runs with `cargo test --lib layering`; docs/architecture.md draws the same table.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. A module may use modules of lower layers only, never one of its own layer or
/// a higher one. A new top-level module must be placed here (the check fails until it is).
const LAYERS: &[(&str, &[&str])] = &[
    ("primitives", &["percent"]),
    (
        "base",
        &[
            "request",
            "redact",
            "fresh",
            "now_and_then",
            "metrics",
            "init",
        ],
    ),
    ("shared types", &["error", "build_log", "config"]),
    (
        "helpers",
        &[
            "events",
            "confined",
            "digest_writer",
            "dockerfile",
            "dockerignore",
            "process",
            "telemetry",
        ],
    ),
    ("ports", &["ports"]),
    (
        "adapters",
        &["source", "engine", "registry", "store", "amqp", "testing"],
    ),
    ("notifications", &["notify"]),
    ("image edits", &["image_edit", "artifacts"]),
    ("stages", &["plan", "incremental"]),
    ("pipeline", &["pipeline"]),
    ("delivery", &["worker", "api", "submit", "client"]),
    ("composition", &["startup"]),
];

/// The adapters a build runs on: chosen in one place, seen elsewhere only through `ports`.
const BUILD_ADAPTERS: &[&str] = &["source", "engine", "registry"];
const COMPOSITION_ROOT: &str = "startup";

/// Uses of a build adapter outside the composition root that are accepted for now, with why.
/// Each must still occur (a stale entry fails the check too).
const KNOWN_EXCEPTIONS: &[(&str, &str, &str)] = &[];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level modules declared in lib.rs, but this one (its tests quote paths on purpose).
fn declared_modules() -> Vec<String> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("read src/lib.rs");
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.split_once("mod ")?.1;
            (!line.starts_with("//")).then_some(())?;
            Some(rest.trim_end_matches(';').trim().to_owned())
        })
        .filter(|m| m != "layering")
        .collect()
}

/// Every `.rs` file of a top-level module: `src/<m>.rs` and everything under `src/<m>/`.
fn files_of(module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = src_dir().join(format!("{module}.rs"));
    if single.is_file() {
        files.push(single);
    }
    let mut dirs = vec![src_dir().join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The top-level modules a source text names through `crate::` (`crate::a::b`,
/// `crate::{a, b::{c, d}}`, over several lines too), comments skipped.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => found.extend(group_heads(group)),
            None => {
                found.insert(first_segment(rest));
            }
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

/// The first segment of each item of a `{...}` group (the text after its opening brace).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && (c.is_ascii_alphanumeric() || c == '_') => {
                heads.push(first_segment(&group[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn first_segment(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// (module, used module, file) for every `crate::` use in the crate's modules.
fn edges() -> Vec<(String, String, PathBuf)> {
    let mut edges = Vec::new();
    for module in declared_modules() {
        for file in files_of(&module) {
            let text = std::fs::read_to_string(&file).expect("read a source file");
            for used in crate_paths(&text) {
                if used != module {
                    edges.push((module.clone(), used, file.clone()));
                }
            }
        }
    }
    edges
}

#[test]
fn every_module_has_a_layer() {
    let unplaced: Vec<String> = declared_modules()
        .into_iter()
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "place these modules in layering::LAYERS: {unplaced:?}"
    );
}

#[test]
fn modules_use_only_lower_layers() {
    let mut wrong = Vec::new();
    for (module, used, file) in edges() {
        let (Some(from), Some(to)) = (layer_of(&module), layer_of(&used)) else {
            continue; // reported by `every_module_has_a_layer`
        };
        if to >= from {
            wrong.push(format!(
                "{} ({}) uses {used} ({}) in {}",
                module,
                LAYERS[from].0,
                LAYERS[to].0,
                file.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "upward or sideways uses:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn only_the_composition_root_names_a_build_adapter() {
    let mut wrong = Vec::new();
    let mut exceptions_seen = BTreeSet::new();
    for (module, used, file) in edges() {
        if !BUILD_ADAPTERS.contains(&used.as_str()) || module == COMPOSITION_ROOT {
            continue;
        }
        if let Some(known) = KNOWN_EXCEPTIONS
            .iter()
            .find(|(m, u, _)| *m == module && *u == used)
        {
            exceptions_seen.insert(*known);
            continue;
        }
        wrong.push(format!("{module} uses {used} in {}", file.display()));
    }
    assert!(
        wrong.is_empty(),
        "use the ports instead (the adapter is chosen in {COMPOSITION_ROOT}):\n{}",
        wrong.join("\n")
    );
    let stale: Vec<_> = KNOWN_EXCEPTIONS
        .iter()
        .filter(|e| !exceptions_seen.contains(*e))
        .collect();
    assert!(stale.is_empty(), "remove stale exceptions: {stale:?}");
}

#[test]
fn top_level_files_do_not_reach_the_crate_root_through_super() {
    for module in declared_modules() {
        for file in [
            src_dir().join(format!("{module}.rs")),
            src_dir().join(&module).join("mod.rs"),
        ] {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("").trim();
                assert!(
                    !code.contains("super::") || code == "use super::*;",
                    "{}: `{code}` names the crate root through super::",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn the_scanner_reads_grouped_and_inline_paths() {
    let text = "use crate::{pipeline::Job, ports::{BuildCtx, Checkout},\n    store};\n\
                let x = crate::engine::escape_char(t);\n\
                // crate::worker in a comment\n";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["engine", "pipeline", "ports", "store"]);
}
