//! `[base_images]`: where the images a Dockerfile names in `FROM` are pulled from. A name
//! without a registry (`alpine:3.19`) resolves as docker resolves it; per-prefix entries
//! rewrite where a namespace is pulled from and add pull-through mirrors tried first. The
//! podman engine turns these into the registries.conf of its children; checked at load.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseImageSettings {
    /// The registry a name without one is looked up in (`docker.io`: `alpine` ->
    /// `docker.io/library/alpine`).
    pub short_name_registry: String,
    /// Per-prefix pull settings; the longest matching prefix applies.
    #[serde(default, deserialize_with = "registries")]
    pub registries: Vec<BaseRegistry>,
}

/// `base_images.registries` as TOML tables, or from IMAGE_BUILDER__BASE_IMAGES__REGISTRIES as
/// `prefix=docker.io,location=hub.internal/hub,mirror=cache:5000/hub;prefix=...` (fields
/// `prefix`, `location`, `insecure=true`, `mirror`, `insecure_mirror`; entries split by `;`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RegistriesInput {
    Compact(String),
    // Through JSON so a table's own error (an unknown field) is kept, not lost to `untagged`.
    Tables(serde_json::Value),
}

fn registries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<BaseRegistry>, D::Error> {
    use serde::de::Error;
    match RegistriesInput::deserialize(d)? {
        RegistriesInput::Compact(text) => compact(&text).map_err(D::Error::custom),
        RegistriesInput::Tables(value) => serde_json::from_value(value)
            .map_err(|e| D::Error::custom(format!("base_images.registries: {e}"))),
    }
}

fn compact(text: &str) -> Result<Vec<BaseRegistry>, String> {
    let mut entries = Vec::new();
    for (i, entry) in text
        .split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let mut registry = BaseRegistry {
            prefix: String::new(),
            location: String::new(),
            insecure: false,
            mirrors: Vec::new(),
        };
        for field in entry.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (key, value) = field.split_once('=').unwrap_or((field, ""));
            let value = value.trim().to_owned();
            match key.trim() {
                "prefix" => registry.prefix = value,
                "location" => registry.location = value,
                "insecure" => registry.insecure = value == "true",
                "mirror" | "insecure_mirror" => registry.mirrors.push(BaseMirror {
                    location: value,
                    insecure: key.trim() == "insecure_mirror",
                }),
                other => {
                    return Err(format!(
                        "base_images.registries entry {i}: unknown field {other:?} (use prefix, \
                         location, insecure, mirror, insecure_mirror)"
                    ));
                }
            }
        }
        entries.push(registry);
    }
    Ok(entries)
}

/// One `[[base_images.registries]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRegistry {
    /// `host[:port]`, `host[:port]/namespace...` or `*.host`, matched against the image's full
    /// name (a docker.io official image is `docker.io/library/<name>`).
    pub prefix: String,
    /// Where the prefix's images are really pulled from (same form); empty: the prefix itself.
    #[serde(default)]
    pub location: String,
    /// Plain HTTP or unverified TLS to `location`.
    #[serde(default)]
    pub insecure: bool,
    /// Tried in order before `location`; the first that has the image is used.
    #[serde(default)]
    pub mirrors: Vec<BaseMirror>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseMirror {
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
}

impl BaseRegistry {
    /// Where the prefix's images are pulled from when no mirror has them.
    pub fn location(&self) -> &str {
        if self.location.is_empty() {
            &self.prefix
        } else {
            &self.location
        }
    }

    /// Mirrors and location that skip TLS verification, for the security review.
    pub fn insecure_places(&self) -> Vec<&str> {
        let mut places: Vec<&str> = self
            .mirrors
            .iter()
            .filter(|m| m.insecure)
            .map(|m| m.location.as_str())
            .collect();
        if self.insecure {
            places.push(self.location());
        }
        places
    }
}

impl BaseImageSettings {
    /// Every problem, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(why) = host(&self.short_name_registry) {
            problems.push(format!("base_images.short_name_registry {why}"));
        }
        for (i, entry) in self.registries.iter().enumerate() {
            let field = format!("base_images.registries[{i}]");
            if let Some(wild) = entry.prefix.strip_prefix("*.") {
                if let Err(why) = host(wild) {
                    problems.push(format!("{field}.prefix {why}"));
                }
                if !entry.location.is_empty() || !entry.mirrors.is_empty() {
                    problems.push(format!(
                        "{field}.location and mirrors must be empty: a wildcard prefix ({}) \
                         cannot be rewritten",
                        entry.prefix
                    ));
                }
            } else if let Err(why) = place(&entry.prefix) {
                problems.push(format!("{field}.prefix {why}"));
            }
            if !entry.location.is_empty()
                && let Err(why) = place(&entry.location)
            {
                problems.push(format!("{field}.location {why}"));
            }
            for (j, mirror) in entry.mirrors.iter().enumerate() {
                if let Err(why) = place(&mirror.location) {
                    problems.push(format!("{field}.mirrors[{j}].location {why}"));
                }
            }
            let same = self.registries[..i]
                .iter()
                .any(|other| other.prefix == entry.prefix);
            if same {
                problems.push(format!(
                    "{field}.prefix {:?} is given twice; merge the entries",
                    entry.prefix
                ));
            }
        }
        problems
    }

    /// Whether anything differs from docker's own behaviour (which the docker engine has).
    pub fn is_docker_default(&self) -> bool {
        self.short_name_registry == "docker.io" && self.registries.is_empty()
    }
}

/// `host[:port]`: no scheme, no path, no spaces.
fn host(value: &str) -> Result<(), String> {
    place(value)?;
    if value.contains('/') {
        return Err(format!(
            "must be a registry host[:port] without a path, not {value:?}"
        ));
    }
    Ok(())
}

/// `host[:port][/namespace...]` as containers-registries.conf(5) takes it.
fn place(value: &str) -> Result<(), String> {
    let plain = value.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/' | b'[' | b']')
    });
    if value.is_empty() || !plain || value.contains("://") || value.ends_with('/') {
        return Err(format!(
            "must be host[:port] or host[:port]/namespace (no scheme, no trailing '/'), not {value:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compact_form_of_an_env_var() {
        let parsed = compact(
            "prefix=docker.io,location=hub.internal/hub,mirror=a:5000/hub,insecure_mirror=b/hub; \
             prefix=quay.io,insecure=true",
        )
        .expect("parsed");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].location(), "hub.internal/hub");
        assert_eq!(
            parsed[0].mirrors,
            [
                BaseMirror {
                    location: "a:5000/hub".into(),
                    insecure: false
                },
                BaseMirror {
                    location: "b/hub".into(),
                    insecure: true
                }
            ]
        );
        assert_eq!(parsed[1].location(), "quay.io");
        assert!(parsed[1].insecure);
        let err = compact("prefix=x.io,mirrors=y").expect_err("refused");
        assert!(err.contains("unknown field \"mirrors\""), "{err}");
        assert!(compact("").expect("empty").is_empty());
    }

    fn entry(prefix: &str, location: &str) -> BaseRegistry {
        BaseRegistry {
            prefix: prefix.into(),
            location: location.into(),
            insecure: false,
            mirrors: Vec::new(),
        }
    }

    #[test]
    fn problems_name_the_field() {
        let settings = BaseImageSettings {
            short_name_registry: "https://docker.io".into(),
            registries: vec![
                entry("docker.io", "registry.internal/hub/"),
                entry("*.example.com", "x.io"),
                BaseRegistry {
                    mirrors: vec![BaseMirror {
                        location: "".into(),
                        insecure: true,
                    }],
                    ..entry("docker.io", "")
                },
            ],
        };
        let problems = settings.problems().join("\n");
        for expected in [
            "base_images.short_name_registry must be",
            "base_images.registries[0].location must be",
            "base_images.registries[1].location and mirrors must be empty",
            "base_images.registries[2].mirrors[0].location must be",
            "base_images.registries[2].prefix \"docker.io\" is given twice",
        ] {
            assert!(problems.contains(expected), "{expected}\n{problems}");
        }
        let good = BaseImageSettings {
            short_name_registry: "docker.io".into(),
            registries: vec![entry("docker.io/library", "127.0.0.1:5000/hub/library")],
        };
        assert!(good.problems().is_empty(), "{:?}", good.problems());
        assert!(!good.is_docker_default());
    }
}
