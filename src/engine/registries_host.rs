//! What the host's own registries configuration adds to the engine's. The engine's file takes
//! the place of the host's main registries.conf (whose other settings it carries over), but
//! podman still reads the drop-in directories after it: settings there win, so each one that
//! changes how base images resolve is named in a warning at start.

use std::path::{Path, PathBuf};

/// The main file podman would read without the engine's: the worker's own
/// `CONTAINERS_REGISTRIES_CONF`, else the user's, else the system's.
pub(super) fn main_file() -> anyhow::Result<Option<(PathBuf, toml::Table)>> {
    let chosen = std::env::var_os("CONTAINERS_REGISTRIES_CONF")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            [home_config("registries.conf"), Some(PathBuf::from(SYSTEM))]
                .into_iter()
                .flatten()
                .find(|p| p.exists())
        });
    let Some(path) = chosen else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("failed to read {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{} is not valid TOML: {e}", path.display()))?;
    Ok(Some((path, table)))
}

const SYSTEM: &str = "/etc/containers/registries.conf";
const SYSTEM_DROP_INS: &str = "/etc/containers/registries.conf.d";

/// The drop-in directories podman reads after the main file.
pub(super) fn drop_in_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(SYSTEM_DROP_INS)];
    dirs.extend(home_config("registries.conf.d"));
    dirs
}

fn home_config(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".config/containers").join(name))
}

/// One line per drop-in file that changes how image-builder's settings resolve base images.
pub(super) fn drop_in_warnings(dirs: &[PathBuf], short_name_registry: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    for dir in dirs {
        let Ok(read) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        files.sort();
        for file in files {
            let Some(table) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
            else {
                continue;
            };
            warnings.extend(file_warnings(&file, &table, short_name_registry));
        }
    }
    warnings
}

fn file_warnings(file: &Path, table: &toml::Table, short: &str) -> Vec<String> {
    let shown = file.display();
    let mut out = Vec::new();
    for key in [
        "unqualified-search-registries",
        "short-name-mode",
        "registry",
    ] {
        if table.contains_key(key) {
            out.push(format!(
                "{shown} sets `{key}`, which podman applies over image-builder's base_images \
                 settings"
            ));
        }
    }
    let elsewhere: Vec<String> = table
        .get("aliases")
        .and_then(toml::Value::as_table)
        .map(|aliases| {
            aliases
                .iter()
                .filter_map(|(name, to)| Some((name, to.as_str()?)))
                .filter(|(_, to)| !to.is_empty() && !to.starts_with(&format!("{short}/")))
                .map(|(name, to)| format!("{name} -> {to}"))
                .collect()
        })
        .unwrap_or_default();
    if !elsewhere.is_empty() {
        let examples: Vec<&str> = elsewhere.iter().take(3).map(String::as_str).collect();
        out.push(format!(
            "{shown} aliases {} short name(s) to registries other than {short} ({}{}): podman \
             pulls those from there, where docker would use {short}",
            elsewhere.len(),
            examples.join(", "),
            if elsewhere.len() > 3 { ", ..." } else { "" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ins_that_change_resolution_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("shortnames.conf"),
            "[aliases]\n\"alpine\" = \"docker.io/library/alpine\"\n\
             \"fedora\" = \"registry.fedoraproject.org/fedora\"\n",
        )
        .expect("written");
        std::fs::write(
            dir.path().join("mine.conf"),
            "unqualified-search-registries = [\"quay.io\"]\n",
        )
        .expect("written");
        std::fs::write(dir.path().join("ignored.txt"), "registry = 1\n").expect("written");
        let warnings = drop_in_warnings(&[dir.path().to_owned()], "docker.io");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("mine.conf sets `unqualified-search-registries`"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("aliases 1 short name(s)")
                && warnings[1].contains("fedora -> registry.fedoraproject.org/fedora"),
            "{warnings:?}"
        );
    }
}
