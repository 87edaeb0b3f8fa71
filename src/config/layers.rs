//! Where settings come from, in order (later wins): the built-in defaults, the built-in overlay of
//! the chosen environment, the operator's file, then `IMAGE_BUILDER__*` variables. The built-ins
//! are compiled in, so the binary behaves the same wherever it is started.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use config::{FileFormat, Source, Value, ValueKind};

/// The safe defaults every installation starts from.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");
/// The `local` environment: development and tests on one machine (published key, plain HTTP).
pub const LOCAL: &str = include_str!("../../config/local.toml");

/// Names `IMAGE_BUILDER_ENV` may take; unset means `production` (the defaults alone).
pub const ENVIRONMENTS: [&str; 2] = ["production", "local"];

/// Prefix of the per-setting variables (`IMAGE_BUILDER__SECTION__KEY`).
pub const VAR_PREFIX: &str = "IMAGE_BUILDER__";

/// Where one value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// The built-in overlay of an environment (`local`).
    Overlay(String),
    File(PathBuf),
    Var(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => write!(f, "default"),
            Self::Overlay(env) => write!(f, "env {env} (built in)"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Var(name) => write!(f, "env {name}"),
        }
    }
}

/// One value as a layer gave it: its dotted key, its text as shown to people, its origin.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

/// Everything that was read, before it is merged into `Settings`.
#[derive(Debug, Clone)]
pub struct Layers {
    pub env: String,
    pub file: Option<PathBuf>,
    /// The process's `IMAGE_BUILDER__*` variables, sorted by name.
    pub vars: Vec<(String, String)>,
    /// Every value of every layer, in layer order.
    pub entries: Vec<Entry>,
}

impl Layers {
    /// Reads the built-ins for `env`, `file` if given, and `vars` (any process variables; those
    /// without the prefix are ignored).
    pub fn gather(
        env: Option<&str>,
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let env = env.unwrap_or("production").to_owned();
        anyhow::ensure!(
            ENVIRONMENTS.contains(&env.as_str()),
            "IMAGE_BUILDER_ENV = {env:?} is not an environment: use one of {ENVIRONMENTS:?} \
             (unset means production)"
        );
        let mut entries = flatten_toml(DEFAULTS, &Origin::Default).context("built-in defaults")?;
        if env == "local" {
            entries.extend(flatten_toml(LOCAL, &Origin::Overlay(env.clone()))?);
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read the config file {}", path.display()))?;
            entries.extend(
                flatten_toml(&text, &Origin::File(path.to_owned()))
                    .with_context(|| format!("failed to parse {}", path.display()))?,
            );
        }
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(VAR_PREFIX))
            .collect();
        vars.sort();
        for (name, value) in &vars {
            entries.push(Entry {
                key: var_key(name),
                value: value.clone(),
                origin: Origin::Var(name.clone()),
            });
        }
        Ok(Self {
            env,
            file: file.map(Path::to_owned),
            vars,
            entries,
        })
    }

    pub fn is_local(&self) -> bool {
        self.env == "local"
    }

    /// The winning entry of each key, by key.
    pub fn effective(&self) -> BTreeMap<&str, &Entry> {
        let mut winners = BTreeMap::new();
        for entry in &self.entries {
            winners.insert(entry.key.as_str(), entry);
        }
        winners
    }

    /// The merged settings source for the `config` crate (same order as `entries`).
    pub fn builder(&self) -> anyhow::Result<config::ConfigBuilder<config::builder::DefaultState>> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, FileFormat::Toml));
        if self.is_local() {
            builder = builder.add_source(config::File::from_str(LOCAL, FileFormat::Toml));
        }
        if let Some(path) = &self.file {
            // TOML whatever the name ends in: `--config /etc/image-builder/settings` is a TOML file too.
            builder =
                builder.add_source(config::File::from(path.as_path()).format(FileFormat::Toml));
        }
        let env = config::Environment::with_prefix("IMAGE_BUILDER")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("retry.delays_ms")
            .with_list_parse_key("request.allowed_schemes")
            .with_list_parse_key("request.allowed_networks")
            .with_list_parse_key("api.key_hashes")
            .with_list_parse_key("amqp.urls")
            .with_list_parse_key("amqp.management_urls")
            .try_parsing(true)
            .source(Some(self.vars.iter().cloned().collect()));
        Ok(builder.add_source(env))
    }
}

/// `IMAGE_BUILDER__BUILD__LIMITS__CHECKOUT_MB` -> `build.limits.checkout_mb`.
pub fn var_key(name: &str) -> String {
    name.trim_start_matches(VAR_PREFIX)
        .split("__")
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// `build.limits.checkout_mb` -> `IMAGE_BUILDER__BUILD__LIMITS__CHECKOUT_MB`.
pub fn key_var(key: &str) -> String {
    format!("{VAR_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// One entry per leaf of a TOML document. An empty table (`github_repos = {}`) and every array
/// are leaves, and so is a table under a key the defaults hold as an empty table (a map the
/// operator fills).
pub fn flatten_toml(text: &str, origin: &Origin) -> anyhow::Result<Vec<Entry>> {
    let table = config::File::from_str(text, FileFormat::Toml)
        .collect()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut entries = Vec::new();
    flatten_into(&mut entries, "", &table, origin);
    Ok(entries)
}

/// Keys the defaults hold as an empty table: maps of operator-chosen names.
pub const MAP_KEYS: [&str; 2] = ["webhooks.github_repos", "webhooks.gitlab_repos"];

fn flatten_into(
    out: &mut Vec<Entry>,
    prefix: &str,
    table: &config::Map<String, Value>,
    origin: &Origin,
) {
    let mut keys: Vec<&String> = table.keys().collect();
    keys.sort();
    for name in keys {
        let Some(value) = table.get(name) else {
            continue;
        };
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match &value.kind {
            ValueKind::Table(inner) if !inner.is_empty() && !MAP_KEYS.contains(&key.as_str()) => {
                flatten_into(out, &key, inner, origin)
            }
            kind => out.push(Entry {
                key,
                value: render(kind),
                origin: origin.clone(),
            }),
        }
    }
}

/// TOML-like text of a value.
pub fn render(kind: &ValueKind) -> String {
    match kind {
        ValueKind::Nil => "nil".to_owned(),
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| render(&v.kind)).collect();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Table(table) => {
            let mut keys: Vec<&String> = table.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .into_iter()
                .filter_map(|k| table.get(k).map(|v| format!("{k:?} = {}", render(&v.kind))))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_win_and_say_where_they_came_from() {
        let vars = [
            ("IMAGE_BUILDER__REGISTRY__HOST".to_owned(), "r:1".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let layers = Layers::gather(Some("local"), None, vars).expect("gathered");
        let effective = layers.effective();
        let host = effective["registry.host"];
        assert_eq!(host.value, "r:1");
        assert_eq!(
            host.origin,
            Origin::Var("IMAGE_BUILDER__REGISTRY__HOST".into())
        );
        assert_eq!(
            effective["registry.insecure"].origin,
            Origin::Overlay("local".into())
        );
        assert_eq!(effective["amqp.prefetch"].origin, Origin::Default);
        assert_eq!(effective["webhooks.github_repos"].value, "{}");
        assert_eq!(layers.vars.len(), 1, "only prefixed variables are read");
    }

    #[test]
    fn a_config_file_is_toml_whatever_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("settings");
        std::fs::write(&path, "[amqp]\nprefetch = 7\n").expect("write");
        let layers = Layers::gather(None, Some(&path), []).expect("gathered");
        let built = layers.builder().expect("builder").build().expect("read");
        assert_eq!(built.get_int("amqp.prefetch").expect("prefetch"), 7);
    }

    #[test]
    fn an_unknown_environment_is_refused_by_name() {
        let err = Layers::gather(Some("prod"), None, []).expect_err("refused");
        assert!(err.to_string().contains("\"prod\""), "{err}");
    }

    #[test]
    fn variable_names_and_keys_map_both_ways() {
        assert_eq!(
            var_key("IMAGE_BUILDER__BUILD__LIMITS__CHECKOUT_MB"),
            "build.limits.checkout_mb"
        );
        assert_eq!(key_var("api.key_hashes"), "IMAGE_BUILDER__API__KEY_HASHES");
    }
}
