//! `[notify]`: HTTP webhooks every recorded event is POSTed to (signed with the webhook's
//! secret), and how their delivery is retried. Checked at load; errors name the field
//! (`notify.webhooks[1].url`) and never contain a secret or a webhook's URL (it may hold a token).

use std::fmt;

use secrecy::SecretString;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Every event name a webhook may ask for (`events::Event::routing_key`; `notify`'s tests check
/// the two agree).
pub const EVENT_NAMES: [&str; 6] = [
    "build.started",
    "build.retrying",
    "image.updated",
    "build.failed",
    "build.rejected",
    "build.cancelled",
];

const FIELDS: &str = "url, secret, events";

#[derive(Debug, Clone, Deserialize)]
pub struct NotifySettings {
    #[serde(default)]
    pub webhooks: Webhooks,
    /// A notification not delivered this long after its event was recorded is dropped (counted
    /// and logged).
    pub give_up_after_secs: u64,
    /// Bound of one POST, connecting included.
    pub timeout_secs: u64,
    /// How often the outbox is looked at for due notifications (an event recorded by this
    /// process wakes the deliverer at once).
    pub poll_ms: u64,
    /// Delay after the first failed attempt; doubled after each further one (plus jitter).
    pub backoff_min_ms: u64,
    /// Cap of the doubling.
    pub backoff_max_secs: u64,
}

/// `notify.webhooks`: TOML tables (`[[notify.webhooks]]`), or from IMAGE_BUILDER__NOTIFY__WEBHOOKS
/// a JSON array of the same objects.
#[derive(Clone, Default, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct Webhooks(pub Vec<Webhook>);

/// One receiver of notifications.
#[derive(Clone)]
pub struct Webhook {
    pub url: url::Url,
    /// The HMAC-SHA256 key of `X-Image-Builder-Signature`.
    pub secret: SecretString,
    /// Event names sent to it; empty: every event.
    pub events: Vec<String>,
}

impl Webhook {
    /// A stable name of the receiver, stored with each of its pending notifications: the start
    /// of the SHA-256 of its URL (the URL itself may hold a token, so it is not stored).
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.url.as_str().as_bytes())[..8])
    }

    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }

    /// Where it is, for logs: scheme, host and port, never the path, query or a password.
    pub fn place(&self) -> String {
        let host = self.url.host_str().unwrap_or("?");
        match self.url.port_or_known_default() {
            Some(port) => format!("{}://{host}:{port}", self.url.scheme()),
            None => format!("{}://{host}", self.url.scheme()),
        }
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("place", &self.place())
            .field("secret", &"***")
            .field("events", &self.events)
            .finish()
    }
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

impl TryFrom<serde_json::Value> for Webhooks {
    type Error = String;

    fn try_from(value: serde_json::Value) -> Result<Self, Self::Error> {
        let items = match value {
            serde_json::Value::String(text) if text.trim().is_empty() => Vec::new(),
            serde_json::Value::String(text) => match serde_json::from_str(&text) {
                Ok(serde_json::Value::Array(items)) => items,
                // serde_json's message quotes no input, only where it went wrong.
                Ok(_) => return Err(not_a_list()),
                Err(e) => return Err(format!("{}: {e}", not_a_list())),
            },
            serde_json::Value::Array(items) => items,
            _ => return Err(not_a_list()),
        };
        let mut hooks = Vec::new();
        for (i, item) in items.iter().enumerate() {
            hooks.push(webhook(item).map_err(|why| format!("notify.webhooks[{i}]{why}"))?);
        }
        for (i, hook) in hooks.iter().enumerate() {
            if let Some(first) = hooks[..i].iter().position(|h| h.url == hook.url) {
                return Err(format!(
                    "notify.webhooks[{i}].url repeats notify.webhooks[{first}].url"
                ));
            }
        }
        Ok(Self(hooks))
    }
}

fn not_a_list() -> String {
    format!(
        "notify.webhooks must be a list of {{{FIELDS}}} tables (from the environment: a JSON array \
         of such objects)"
    )
}

/// One entry, checked; the error starts with the field it is about (`.url ...`), or a space when
/// it is about the whole entry.
fn webhook(item: &serde_json::Value) -> Result<Webhook, String> {
    let serde_json::Value::Object(fields) = item else {
        return Err(format!(" must be a table of {FIELDS}"));
    };
    if let Some(other) = fields
        .keys()
        .find(|k| !["url", "secret", "events"].contains(&k.as_str()))
    {
        let other: String = other.chars().take(40).collect();
        return Err(format!(".{other} is not a field (use {FIELDS})"));
    }
    let url = match fields.get("url") {
        Some(serde_json::Value::String(raw)) => {
            url::Url::parse(raw.trim()).map_err(|e| format!(".url is not a URL ({e})"))?
        }
        Some(_) => return Err(".url must be a string".into()),
        None => return Err(".url is missing".into()),
    };
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(format!(
            ".url must be an http:// or https:// URL with a host, not a {:?} URL",
            url.scheme()
        ));
    }
    // Never quoted back: a secret of the wrong type is still a secret.
    let secret = match fields.get("secret") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => SecretString::from(s.clone()),
        Some(serde_json::Value::String(_)) | None => {
            return Err(".secret must be set (the HMAC-SHA256 key receivers verify with)".into());
        }
        Some(_) => return Err(".secret must be a string".into()),
    };
    let events = match fields.get("events") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(names)) => names
            .iter()
            .enumerate()
            .map(|(j, name)| match name.as_str() {
                Some(name) if EVENT_NAMES.contains(&name) => Ok(name.to_owned()),
                Some(name) => Err(format!(
                    ".events[{j}] {:?} is not an event (one of {})",
                    name.chars().take(40).collect::<String>(),
                    EVENT_NAMES.join(", ")
                )),
                None => Err(format!(".events[{j}] must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(".events must be a list of event names".into()),
    };
    Ok(Webhook {
        url,
        secret,
        events,
    })
}

impl NotifySettings {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("give_up_after_secs", self.give_up_after_secs),
            ("timeout_secs", self.timeout_secs),
            ("poll_ms", self.poll_ms),
            ("backoff_min_ms", self.backoff_min_ms),
            ("backoff_max_secs", self.backoff_max_secs),
        ] {
            if value == 0 {
                problems.push(format!("notify.{name} must be at least 1"));
            }
        }
        if self.backoff_max_secs.saturating_mul(1000) < self.backoff_min_ms {
            problems.push("notify.backoff_max_secs must not be below notify.backoff_min_ms".into());
        }
        problems
    }
}

/// `notify.webhooks` as `config check` shows it: each URL without its password, path or query
/// (a token may be in them), each secret masked; anything unreadable masked whole.
pub fn shown(value: &str) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .or_else(|| {
            // The layers render TOML values as TOML-like text.
            let doc: toml::Table = format!("v = {value}").parse().ok()?;
            serde_json::to_value(doc.get("v")?).ok()
        });
    let Some(serde_json::Value::Array(items)) = parsed else {
        return "\"***\"".to_owned();
    };
    let shown: Vec<String> = items
        .iter()
        .map(|item| {
            let url = item
                .get("url")
                .and_then(|u| u.as_str())
                .and_then(|u| url::Url::parse(u).ok())
                .map_or("***".to_owned(), |u| {
                    let hook = Webhook {
                        url: u,
                        secret: SecretString::from(String::new()),
                        events: Vec::new(),
                    };
                    format!("{}/...", hook.place())
                });
            let events = item
                .get("events")
                .map_or("[]".to_owned(), serde_json::Value::to_string);
            format!("{{url = {url:?}, secret = \"***\", events = {events}}}")
        })
        .collect();
    format!("[{}]", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<Webhooks, String> {
        Webhooks::try_from(value)
    }

    #[test]
    fn a_valid_list_parses_and_filters_by_event() {
        let hooks = parse(json!([
            {"url": "https://hooks.example/ib", "secret": "s1", "events": ["image.updated"]},
            {"url": "http://127.0.0.1:9000/x?token=abc", "secret": "s2"},
        ]))
        .expect("valid");
        assert_eq!(hooks.0.len(), 2);
        assert!(hooks.0[0].wants("image.updated") && !hooks.0[0].wants("build.failed"));
        assert!(hooks.0[1].wants("build.failed"), "no filter: every event");
        assert_ne!(hooks.0[0].id(), hooks.0[1].id());
        assert_eq!(hooks.0[1].place(), "http://127.0.0.1:9000");
        let debug = format!("{hooks:?}");
        assert!(
            !debug.contains("s2") && !debug.contains("token=abc"),
            "{debug}"
        );
    }

    #[test]
    fn bad_entries_name_the_field_and_never_the_secret() {
        let cases = [
            (
                json!([{"url": "ftp://h/x", "secret": "zz-secret"}]),
                "notify.webhooks[0].url",
            ),
            (
                json!([{"url": "https://a/x", "secret": "zz-secret"}, {"url": "not a url", "secret": "zz-secret"}]),
                "notify.webhooks[1].url",
            ),
            (json!([{"url": "https://a/x"}]), "notify.webhooks[0].secret"),
            (
                json!([{"url": "https://a/x", "secret": ""}]),
                "notify.webhooks[0].secret",
            ),
            (
                json!([{"url": "https://a/x", "secret": 12345}]),
                "notify.webhooks[0].secret",
            ),
            (
                json!([{"url": "https://a/x", "secret": "zz-secret", "events": ["image.updatd"]}]),
                "notify.webhooks[0].events[0]",
            ),
            (
                json!([{"url": "https://a/x", "secret": "zz-secret", "sekret": "zz-secret"}]),
                "notify.webhooks[0].sekret",
            ),
            (
                json!([{"url": "https://a/x", "secret": "zz-secret"}, {"url": "https://a/x", "secret": "zz-secret"}]),
                "notify.webhooks[1].url repeats",
            ),
            (json!("{not json"), "notify.webhooks must be a list"),
        ];
        for (value, field) in cases {
            let err = parse(value.clone()).expect_err("refused");
            assert!(err.starts_with(field), "{value}: {err}");
            assert!(
                !err.contains("zz-secret") && !err.contains("12345"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_environment_form_is_a_json_array() {
        let hooks = parse(json!(
            r#"[{"url": "https://a/x", "secret": "s;,=", "events": ["build.failed"]}]"#
        ))
        .expect("valid");
        assert_eq!(hooks.0[0].events, ["build.failed"]);
        assert_eq!(hooks.0[0].secret.expose_secret(), "s;,=");
        assert!(parse(json!("")).expect("empty").0.is_empty());
    }

    #[test]
    fn the_report_masks_secrets_and_url_paths_in_both_forms() {
        let toml_form = r#"[{"events" = ["image.updated"], "secret" = "zz-secret", "url" = "https://u:pw@h.example/hook?token=t0k"}]"#;
        let json_form = r#"[{"url": "https://h.example/hook?token=t0k", "secret": "zz-secret"}]"#;
        for value in [toml_form, json_form] {
            let shown = shown(value);
            for leak in ["zz-secret", "t0k", "pw", "/hook"] {
                assert!(!shown.contains(leak), "{leak} in {shown}");
            }
            assert!(shown.contains("https://h.example:443/..."), "{shown}");
        }
        assert_eq!(shown("zz-secret garbage"), "\"***\"");
        assert_eq!(shown("[]"), "[]");
    }
}

/// Through every layer: the TOML file form, the variable's JSON form, `config check`.
#[cfg(test)]
mod layered {
    use super::super::report::check;
    use super::super::{Layers, Settings};

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ib.toml");
        std::fs::write(&path, text).expect("written");
        (dir, path)
    }

    const HOOKS: &str = "[[notify.webhooks]]\nurl = \"https://a.example/hook?token=t0k\"\n\
                         secret = \"zz-file-secret\"\n\n[[notify.webhooks]]\n\
                         url = \"http://127.0.0.1:9/b\"\nsecret = \"zz-second\"\n\
                         events = [\"build.failed\"]\n";

    #[test]
    fn a_file_and_a_variable_configure_webhooks_and_check_shows_no_secret() {
        let (_dir, path) = file(HOOKS);
        let layers = Layers::gather(None, Some(&path), []).expect("gathered");
        let (settings, _) = Settings::from_layers(&layers).expect("loads");
        let hooks = &settings.notify.webhooks.0;
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[1].events, ["build.failed"]);
        let report = check(&layers);
        assert!(report.ok, "{}", report.text);
        for leak in ["zz-file-secret", "zz-second", "t0k"] {
            assert!(!report.text.contains(leak), "{leak}: {}", report.text);
        }
        assert!(
            report.text.contains("https://a.example:443/..."),
            "{}",
            report.text
        );

        let var = (
            "IMAGE_BUILDER__NOTIFY__WEBHOOKS".to_owned(),
            r#"[{"url": "https://c.example/x", "secret": "zz-var-secret", "events": ["image.updated"]}]"#
                .to_owned(),
        );
        let layers = Layers::gather(None, Some(&path), [var]).expect("gathered");
        let (settings, _) = Settings::from_layers(&layers).expect("loads");
        let hooks = &settings.notify.webhooks.0;
        assert_eq!(hooks.len(), 1, "the variable replaces the file's list");
        assert_eq!(hooks[0].url.as_str(), "https://c.example/x");
        let report = check(&layers);
        assert!(!report.text.contains("zz-var-secret"), "{}", report.text);
    }

    #[test]
    fn a_bad_entry_stops_the_load_naming_its_field_without_its_secret() {
        let (_dir, path) = file(&HOOKS.replace("http://127.0.0.1:9/b", "127.0.0.1:9/b"));
        let layers = Layers::gather(None, Some(&path), []).expect("gathered");
        let err = Settings::from_layers(&layers)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("notify.webhooks[1].url"), "{err}");
        assert!(!err.contains("zz-"), "{err}");
        let report = check(&layers);
        assert!(
            !report.ok && !report.text.contains("zz-"),
            "{}",
            report.text
        );

        let var = (
            "IMAGE_BUILDER__NOTIFY__GIVE_UP_AFTER_SECS".to_owned(),
            "0".to_owned(),
        );
        let layers = Layers::gather(None, None, [var]).expect("gathered");
        let err = Settings::from_layers(&layers)
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("notify.give_up_after_secs must be at least 1"),
            "{err}"
        );
    }
}
