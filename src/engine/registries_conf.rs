//! The registries.conf podman's children read (through `CONTAINERS_REGISTRIES_CONF`): short
//! names resolve to `base_images.short_name_registry` without prompting, `base_images.registries`
//! rewrite locations and add mirrors, and the product's own registry is insecure when
//! `registry.insecure` says so (bases it pushed itself can be built `FROM`). The host's main
//! file is carried over beneath these settings. Written once at engine start, atomically, 0644:
//! it holds no secret.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml::Value;

use super::base_images::BaseImages;
use super::registries_host;
use crate::config::{BaseImageSettings, BaseMirror, BaseRegistry, RegistrySettings};

/// The written file and what it says about base images.
#[derive(Debug, Clone)]
pub(super) struct RegistriesConf {
    pub path: PathBuf,
    pub images: BaseImages,
}

const HEADER: &str = "# Written by image-builder at start from [base_images] and [registry]; \
                      rewritten at every start.\n";

impl RegistriesConf {
    /// Writes `<dir>/registries.conf` and warns about host drop-ins that override it.
    pub fn write(
        dir: &Path,
        base: &BaseImageSettings,
        registry: &RegistrySettings,
    ) -> anyhow::Result<Self> {
        let host = registries_host::main_file()?;
        let path = dir.join("registries.conf");
        // The engine's own file from a previous start is not the host's.
        let host = host.filter(|(from, _)| *from != path);
        if let Some((from, table)) = &host
            && table.contains_key("registries")
        {
            tracing::warn!(
                "{} uses the deprecated v1 [registries.*] tables: podman's builds ignore them \
                 (write them as [[registry]] entries)",
                from.display()
            );
        }
        let (text, images) = render(base, registry, host.map(|(_, t)| t))?;
        write_atomically(dir, &path, &text)?;
        for warning in registries_host::drop_in_warnings(
            &registries_host::drop_in_dirs(),
            &base.short_name_registry,
        ) {
            tracing::warn!("base images: {warning}");
        }
        Ok(Self { path, images })
    }
}

/// The configured entries, plus the product's own registry when it is insecure (unless an
/// entry already names it).
fn ours(base: &BaseImageSettings, registry: &RegistrySettings) -> Vec<BaseRegistry> {
    let mut entries = base.registries.clone();
    if registry.insecure && !entries.iter().any(|e| e.prefix == registry.host) {
        entries.push(BaseRegistry {
            prefix: registry.host.clone(),
            location: String::new(),
            insecure: true,
            mirrors: Vec::new(),
        });
    }
    entries
}

/// The file's text over the host's main file (`host`), and the entries podman will use.
fn render(
    base: &BaseImageSettings,
    registry: &RegistrySettings,
    host: Option<toml::Table>,
) -> anyhow::Result<(String, BaseImages)> {
    let mut table = host.unwrap_or_default();
    // v1 tables cannot be mixed with v2 ones; search and mode are the engine's.
    for key in [
        "registries",
        "unqualified-search-registries",
        "short-name-mode",
    ] {
        table.remove(key);
    }
    table.insert(
        "unqualified-search-registries".into(),
        Value::Array(vec![base.short_name_registry.clone().into()]),
    );
    // No prompt (there is no terminal) and no alias recorded after a pull.
    table.insert("short-name-mode".into(), "disabled".into());
    let mut entries = ours(base, registry);
    let mut written: Vec<Value> = entries.iter().map(entry_table).collect();
    if let Some(Value::Array(host_entries)) = table.remove("registry") {
        for raw in host_entries {
            let parsed = raw.as_table().and_then(host_entry);
            let shadowed = parsed
                .as_ref()
                .is_some_and(|p| entries.iter().any(|e| e.prefix == p.prefix));
            if !shadowed {
                entries.extend(parsed);
                written.push(raw);
            }
        }
    }
    table.insert("registry".into(), Value::Array(written));
    let text = toml::to_string(&table)
        .map_err(|e| anyhow::anyhow!("failed to write the registries configuration: {e}"))?;
    let images = BaseImages {
        short_name_registry: base.short_name_registry.clone(),
        entries,
    };
    Ok((format!("{HEADER}{text}"), images))
}

fn entry_table(entry: &BaseRegistry) -> Value {
    let mut table = toml::Table::new();
    table.insert("prefix".into(), entry.prefix.clone().into());
    if !entry.prefix.starts_with("*.") {
        table.insert("location".into(), entry.location().to_owned().into());
    }
    table.insert("insecure".into(), entry.insecure.into());
    if !entry.mirrors.is_empty() {
        let mirrors = entry.mirrors.iter().map(|m| {
            let mut mirror = toml::Table::new();
            mirror.insert("location".into(), m.location.clone().into());
            mirror.insert("insecure".into(), m.insecure.into());
            Value::Table(mirror)
        });
        table.insert("mirror".into(), Value::Array(mirrors.collect()));
    }
    Value::Table(table)
}

/// A host `[[registry]]` entry as far as messages need it (prefix defaults to location).
fn host_entry(table: &toml::Table) -> Option<BaseRegistry> {
    let text = |t: &toml::Table, key: &str| t.get(key).and_then(Value::as_str).map(str::to_owned);
    let location = text(table, "location").unwrap_or_default();
    let prefix = text(table, "prefix").unwrap_or_else(|| location.clone());
    let insecure = |t: &toml::Table| t.get("insecure").and_then(Value::as_bool) == Some(true);
    let mirrors = table
        .get("mirror")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_table)
                .filter_map(|m| {
                    Some(BaseMirror {
                        location: text(m, "location")?,
                        insecure: insecure(m),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    (!prefix.is_empty()).then(|| BaseRegistry {
        prefix,
        location,
        insecure: insecure(table),
        mirrors,
    })
}

/// Readers never see half a file: a temporary file in the same directory, renamed over it.
fn write_atomically(dir: &Path, path: &Path, text: &str) -> anyhow::Result<()> {
    let failed = |e: std::io::Error| anyhow::anyhow!("failed to write {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(failed)?;
    file.as_file().sync_all().map_err(failed)?;
    file.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(insecure: bool) -> RegistrySettings {
        RegistrySettings {
            host: "127.0.0.1:5000".into(),
            insecure,
            username: String::new(),
            password: String::new().into(),
        }
    }

    fn base() -> BaseImageSettings {
        BaseImageSettings {
            short_name_registry: "docker.io".into(),
            registries: vec![BaseRegistry {
                prefix: "docker.io".into(),
                location: "127.0.0.1:5000/hub".into(),
                insecure: true,
                mirrors: vec![BaseMirror {
                    location: "127.0.0.1:5001/cache".into(),
                    insecure: true,
                }],
            }],
        }
    }

    fn parsed(text: &str) -> toml::Table {
        text.parse().expect("the written file is TOML")
    }

    #[test]
    fn search_mode_mapping_mirrors_and_the_own_registry() {
        let (text, images) = render(&base(), &registry(true), None).expect("rendered");
        let table = parsed(&text);
        assert_eq!(
            table["unqualified-search-registries"],
            Value::Array(vec!["docker.io".into()])
        );
        assert_eq!(table["short-name-mode"].as_str(), Some("disabled"));
        let entries = table["registry"].as_array().expect("registry array");
        assert_eq!(entries.len(), 2, "{text}");
        let hub = entries[0].as_table().expect("table");
        assert_eq!(hub["prefix"].as_str(), Some("docker.io"));
        assert_eq!(hub["location"].as_str(), Some("127.0.0.1:5000/hub"));
        assert_eq!(hub["insecure"].as_bool(), Some(true));
        let mirror = hub["mirror"].as_array().expect("mirrors")[0]
            .as_table()
            .expect("mirror table");
        assert_eq!(mirror["location"].as_str(), Some("127.0.0.1:5001/cache"));
        assert_eq!(mirror["insecure"].as_bool(), Some(true));
        let own = entries[1].as_table().expect("table");
        assert_eq!(own["location"].as_str(), Some("127.0.0.1:5000"));
        assert_eq!(own["insecure"].as_bool(), Some(true));
        assert_eq!(images.entries.len(), 2);

        // A TLS registry needs no entry; the defaults alone only set the search registry.
        let defaults = BaseImageSettings {
            short_name_registry: "docker.io".into(),
            registries: Vec::new(),
        };
        let (text, _) = render(&defaults, &registry(false), None).expect("rendered");
        let table = parsed(&text);
        assert_eq!(
            table["registry"].as_array().map(Vec::len),
            Some(0),
            "{text}"
        );
    }

    #[test]
    fn the_hosts_main_file_is_kept_beneath_the_engines_settings() {
        let host = parsed(
            "unqualified-search-registries = [\"quay.io\", \"docker.io\"]\n\
             credential-helpers = [\"containers-auth.json\"]\n\
             [aliases]\n\"x\" = \"quay.io/x/x\"\n\
             [[registry]]\nprefix = \"docker.io\"\nlocation = \"host-mirror.example\"\n\
             [[registry]]\nlocation = \"internal.example:5000\"\ninsecure = true\nblocked = false\n",
        );
        let (text, images) = render(&base(), &registry(false), Some(host)).expect("rendered");
        let table = parsed(&text);
        assert_eq!(
            table["unqualified-search-registries"],
            Value::Array(vec!["docker.io".into()])
        );
        assert!(table.contains_key("credential-helpers") && table.contains_key("aliases"));
        let entries = table["registry"].as_array().expect("registry array");
        let locations: Vec<&str> = entries
            .iter()
            .filter_map(|e| e.get("location")?.as_str())
            .collect();
        // The host's docker.io entry gives way to the configured one; its other entry stays.
        assert_eq!(locations, ["127.0.0.1:5000/hub", "internal.example:5000"]);
        assert_eq!(
            entries[1].get("blocked").and_then(Value::as_bool),
            Some(false)
        );
        assert_eq!(images.entries[1].prefix, "internal.example:5000");
    }

    #[test]
    fn written_atomically_readable_by_all() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = RegistriesConf::write(dir.path(), &base(), &registry(true)).expect("written");
        let mode = std::fs::metadata(&conf.path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let text = std::fs::read_to_string(&conf.path).expect("read");
        assert!(text.starts_with("# Written by image-builder"), "{text}");
        parsed(&text);
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }
}
