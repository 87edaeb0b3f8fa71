//! Where podman looks for a base image, worked out the way containers/image does it from the
//! registries.conf the engine writes (`registries_conf`): a short name goes to the short-name
//! registry (docker.io adds `library/`), then the longest matching prefix's mirrors are tried
//! in order, then its location. Only for messages: podman does the pulling.

use crate::config::BaseRegistry;

/// The registries.conf entries podman uses, as far as image-builder knows them (the host's
/// drop-in files may add to them; the engine warns about those at start).
#[derive(Debug, Clone, Default)]
pub(super) struct BaseImages {
    pub short_name_registry: String,
    pub entries: Vec<BaseRegistry>,
}

/// One base image's way through the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lookup {
    /// As the Dockerfile writes it.
    pub written: String,
    /// The full name podman gives it.
    pub resolved: String,
    /// The places tried, in order: mirrors first, then the location.
    pub tried: Vec<Place>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Place {
    pub reference: String,
    pub mirror: bool,
}

impl BaseImages {
    pub fn lookup(&self, written: &str) -> Lookup {
        let resolved = self.resolve(written);
        let tried = match self.entry_for(&resolved) {
            Some(entry) if !entry.prefix.starts_with("*.") => {
                let rest = &resolved[entry.prefix.len()..];
                let mirrors = entry.mirrors.iter().map(|m| Place {
                    reference: format!("{}{rest}", m.location),
                    mirror: true,
                });
                mirrors
                    .chain(std::iter::once(Place {
                        reference: format!("{}{rest}", entry.location()),
                        mirror: false,
                    }))
                    .collect()
            }
            _ => vec![Place {
                reference: resolved.clone(),
                mirror: false,
            }],
        };
        Lookup {
            written: written.to_owned(),
            resolved,
            tried,
        }
    }

    /// The full name of `written`, as docker and containers/image normalise it.
    fn resolve(&self, written: &str) -> String {
        let (domain, path) = match written.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, rest)
            }
            _ => (self.short_name_registry.as_str(), written),
        };
        let domain = if domain == "index.docker.io" {
            "docker.io"
        } else {
            domain
        };
        let library = if domain == "docker.io" && !path.contains('/') {
            "library/"
        } else {
            ""
        };
        let last = path.rsplit('/').next().unwrap_or(path);
        let latest = if last.contains(':') || path.contains('@') {
            ""
        } else {
            ":latest"
        };
        format!("{domain}/{library}{path}{latest}")
    }

    /// The entry whose prefix matches `name` longest.
    fn entry_for(&self, name: &str) -> Option<&BaseRegistry> {
        self.entries
            .iter()
            .filter(|entry| prefix_matches(&entry.prefix, name))
            .max_by_key(|entry| entry.prefix.len())
    }
}

/// containers-registries.conf(5): the name starts with the prefix, followed by `/` (or by `:`
/// or `@` when the prefix names a repository); `*.host` matches the name's host by suffix.
fn prefix_matches(prefix: &str, name: &str) -> bool {
    if let Some(domain) = prefix.strip_prefix("*.") {
        let host = name.split('/').next().unwrap_or(name);
        return host.ends_with(&format!(".{domain}"));
    }
    match name.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => {
            rest.starts_with('/')
                || (prefix.contains('/') && (rest.starts_with(':') || rest.starts_with('@')))
        }
        None => false,
    }
}

impl Lookup {
    /// `alpine:3.19 (docker.io/library/alpine:3.19), looked for at m/library/alpine:3.19
    /// (mirror), then r/library/alpine:3.19`: only what adds to the name as written.
    pub fn describe(&self) -> String {
        let mut out = self.written.clone();
        // A name made of build args is only known to podman.
        if self.written.contains('$') {
            return out;
        }
        if self.resolved != self.written {
            out.push_str(&format!(" ({})", self.resolved));
        }
        let direct = self.tried.len() == 1 && self.tried[0].reference == self.resolved;
        if !direct {
            let places: Vec<String> = self
                .tried
                .iter()
                .map(|p| {
                    if p.mirror {
                        format!("{} (mirror)", p.reference)
                    } else {
                        p.reference.clone()
                    }
                })
                .collect();
            out.push_str(&format!(", looked for at {}", places.join(", then ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BaseMirror;

    fn images() -> BaseImages {
        BaseImages {
            short_name_registry: "docker.io".into(),
            entries: vec![
                BaseRegistry {
                    prefix: "docker.io".into(),
                    location: "127.0.0.1:5000/hub".into(),
                    insecure: true,
                    mirrors: vec![BaseMirror {
                        location: "127.0.0.1:5001/cache".into(),
                        insecure: true,
                    }],
                },
                BaseRegistry {
                    prefix: "docker.io/library/debian".into(),
                    location: "debs.internal/debian".into(),
                    insecure: false,
                    mirrors: Vec::new(),
                },
            ],
        }
    }

    #[test]
    fn short_names_resolve_as_docker_does() {
        let images = BaseImages {
            short_name_registry: "docker.io".into(),
            entries: Vec::new(),
        };
        for (written, resolved) in [
            ("alpine:3.19", "docker.io/library/alpine:3.19"),
            ("alpine", "docker.io/library/alpine:latest"),
            ("acme/app:1", "docker.io/acme/app:1"),
            ("index.docker.io/alpine", "docker.io/library/alpine:latest"),
            ("alpine@sha256:abc", "docker.io/library/alpine@sha256:abc"),
            ("localhost/busybox:latest", "localhost/busybox:latest"),
            ("127.0.0.1:5000/x/busybox:x", "127.0.0.1:5000/x/busybox:x"),
            ("ghcr.io/o/n", "ghcr.io/o/n:latest"),
        ] {
            assert_eq!(images.resolve(written), resolved, "{written}");
        }
        let other = BaseImages {
            short_name_registry: "registry.internal:5000".into(),
            entries: Vec::new(),
        };
        assert_eq!(other.resolve("alpine:3"), "registry.internal:5000/alpine:3");
    }

    #[test]
    fn mirrors_then_the_location_of_the_longest_prefix() {
        let lookup = images().lookup("alpine:3.19");
        assert_eq!(
            lookup.describe(),
            "alpine:3.19 (docker.io/library/alpine:3.19), looked for at \
             127.0.0.1:5001/cache/library/alpine:3.19 (mirror), then \
             127.0.0.1:5000/hub/library/alpine:3.19"
        );
        let debian = images().lookup("debian:bookworm-slim");
        assert_eq!(
            debian.tried,
            [Place {
                reference: "debs.internal/debian:bookworm-slim".into(),
                mirror: false
            }]
        );
        // `docker.io/library/debian` is not a prefix of `docker.io/library/debian-ish`.
        let near = images().lookup("debian-ish:1");
        assert_eq!(near.tried.len(), 2, "{near:?}");
        let direct = images().lookup("127.0.0.1:5999/nothing/here:1");
        assert_eq!(direct.describe(), "127.0.0.1:5999/nothing/here:1");
        assert_eq!(images().lookup("$BASE").describe(), "$BASE");
    }

    #[test]
    fn wildcard_prefixes_match_hosts_only() {
        assert!(prefix_matches("*.example.com", "a.b.example.com/x:1"));
        assert!(!prefix_matches("*.example.com", "example.com/x:1"));
        assert!(prefix_matches("r.io/ns/app", "r.io/ns/app:1"));
        assert!(!prefix_matches("r.io", "r.io:5000/app:1"));
    }
}
