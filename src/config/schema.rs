//! Which keys exist (exactly those of the built-in defaults), which hold secrets, and how a
//! value is shown without leaking one.

use std::collections::BTreeSet;

use super::layers::{DEFAULTS, Entry, Origin, flatten_toml};

/// Keys whose values are secrets (or URLs that may carry a password): never printed.
pub const SECRET_KEYS: [&str; 8] = [
    "amqp.url",
    "amqp.urls",
    "registry.password",
    "store.url",
    "webhooks.github_secret",
    "webhooks.gitlab_secret",
    "notify.webhooks",
    "bases.notify_key",
];

/// Connectors are a map of operator-chosen names; the defaults' entries name its fields.
const CONNECTOR_PREFIX: &str = "connectors.";

/// Every known key, connector fields written `connectors.<name>.<field>`.
pub fn known_keys() -> BTreeSet<String> {
    flatten_toml(DEFAULTS, &Origin::Default)
        .unwrap_or_default()
        .into_iter()
        .map(|entry| generic_key(&entry.key))
        .collect()
}

/// `connectors.github.base_url` -> `connectors.<name>.base_url`; other keys as they are.
pub fn generic_key(key: &str) -> String {
    match key
        .strip_prefix(CONNECTOR_PREFIX)
        .map(|rest| rest.split_once('.'))
    {
        Some(Some((_, field))) => format!("{CONNECTOR_PREFIX}<name>.{field}"),
        _ => key.to_owned(),
    }
}

/// One refusal per entry whose key is not a setting, naming it, where it came from, and the
/// closest known key when one is near.
pub fn unknown_keys(entries: &[Entry]) -> Vec<String> {
    let known = known_keys();
    entries
        .iter()
        .filter(|entry| !known.contains(&generic_key(&entry.key)))
        .map(|entry| {
            let hint = closest(&entry.key, &known)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            format!(
                "unknown setting `{}` (from {}){hint}",
                entry.key, entry.origin
            )
        })
        .collect()
}

fn closest<'a>(key: &str, known: &'a BTreeSet<String>) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, k)| *d <= (k.len() / 4).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Secret keys whose value is a list (a TOML array, or comma-separated in a variable).
const SECRET_LISTS: [&str; 1] = ["amqp.urls"];

/// The value as it may be shown: secrets masked (a URL keeps all but its password; a list, each
/// of its items).
pub fn shown(key: &str, value: &str) -> String {
    if !SECRET_KEYS.contains(&key) || value.is_empty() || value == "\"\"" || value == "[]" {
        return value.to_owned();
    }
    if key == "notify.webhooks" {
        // A list of tables holding secrets: each one masked, the rest kept readable.
        return super::notify::shown(value);
    }
    if SECRET_LISTS.contains(&key) {
        // A comma inside an item splits it: each part is then masked whole (fails closed).
        let items: Vec<String> = value
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(shown_item)
            .collect();
        return format!("[{}]", items.join(", "));
    }
    shown_item(value)
}

/// One secret value, quoted or not, as it may be shown.
fn shown_item(value: &str) -> String {
    let bare = value.trim_matches('"');
    match url::Url::parse(bare) {
        Ok(mut url) if url.has_host() => {
            if url.password().is_some() {
                // A URL with a host accepts a password, so this cannot fail.
                let _ = url.set_password(Some("***"));
            }
            format!("{:?}", url.as_str())
        }
        _ => "\"***\"".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_is_named_with_its_closest_key() {
        let entries = [Entry {
            key: "registry.insecur".into(),
            value: "true".into(),
            origin: Origin::Var("IMAGE_BUILDER__REGISTRY__INSECUR".into()),
        }];
        let problems = unknown_keys(&entries);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("`registry.insecur`")
                && problems[0].contains("IMAGE_BUILDER__REGISTRY__INSECUR")
                && problems[0].contains("did you mean `registry.insecure`"),
            "{problems:?}"
        );
    }

    #[test]
    fn connector_names_and_repo_maps_are_open() {
        let entry = |key: &str| Entry {
            key: key.into(),
            value: "\"x\"".into(),
            origin: Origin::Default,
        };
        let entries = [
            entry("connectors.forgejo.base_url"),
            entry("webhooks.github_repos"),
            entry("api.keys"),
        ];
        assert!(unknown_keys(&entries).is_empty());
        assert_eq!(unknown_keys(&[entry("connectors.forgejo.url")]).len(), 1);
    }

    #[test]
    fn secrets_are_masked_and_urls_keep_their_shape() {
        assert_eq!(
            shown("amqp.url", "\"amqp://guest:guest@127.0.0.1:5672/%2f\""),
            "\"amqp://guest:***@127.0.0.1:5672/%2f\""
        );
        assert_eq!(shown("registry.password", "\"hunter2\""), "\"***\"");
        assert_eq!(shown("registry.password", "\"\""), "\"\"");
        assert_eq!(shown("registry.host", "\"r:5000\""), "\"r:5000\"");
        // An env var's raw text has no quotes: still masked.
        assert_eq!(shown("webhooks.github_secret", "s3cret"), "\"***\"");
        // A list of URLs: each item keeps its shape, from a file or a variable alike.
        assert_eq!(
            shown(
                "amqp.urls",
                "[\"amqp://u:p1@127.0.0.1:5681/%2f\", \"amqp://u:p2@127.0.0.1:5682/%2f\"]"
            ),
            "[\"amqp://u:***@127.0.0.1:5681/%2f\", \"amqp://u:***@127.0.0.1:5682/%2f\"]"
        );
        assert_eq!(
            shown("amqp.urls", "amqp://u:p1@127.0.0.1:5681,secret"),
            "[\"amqp://u:***@127.0.0.1:5681\", \"***\"]"
        );
        assert_eq!(shown("amqp.urls", "[]"), "[]");
    }
}

/// README's configuration table is this text, between these markers: a test compares them, so
/// the documented keys and defaults are exactly the built-in ones.
#[cfg(test)]
mod readme {
    use std::collections::BTreeMap;

    use super::super::layers::{DEFAULTS, Entry, LOCAL, Origin, flatten_toml, key_var};

    const START: &str = "<!-- config-table:start (generated: cargo test --lib readme_table) -->";
    const END: &str = "<!-- config-table:end -->";

    fn table() -> String {
        let values = |text: &str| -> BTreeMap<String, String> {
            flatten_toml(text, &Origin::Default)
                .unwrap_or_default()
                .into_iter()
                .map(|Entry { key, value, .. }| (key, value))
                .collect()
        };
        let (defaults, local) = (values(DEFAULTS), values(LOCAL));
        let mut out = String::from("| key | variable | default | `local` |\n|---|---|---|---|\n");
        for (key, value) in &defaults {
            let var = key_var(key);
            let local = local.get(key).map_or(String::new(), |v| format!("`{v}`"));
            out.push_str(&format!("| `{key}` | `{var}` | `{value}` | {local} |\n"));
        }
        out
    }

    #[test]
    fn readme_table_matches_the_built_in_defaults() {
        let readme = include_str!("../../README.md");
        let expected = table();
        let found = readme
            .split_once(START)
            .and_then(|(_, rest)| rest.split_once(END))
            .map(|(table, _)| table.trim_start_matches('\n'));
        assert_eq!(
            found,
            Some(expected.as_str()),
            "README.md's configuration table is out of date; between its markers it should read:\n{START}\n{expected}{END}"
        );
    }
}
