//! A request's identity: what it asks to be built, without its id, its secrets or how it is
//! built. The first request under an id records it; a later message under the same id is the
//! same request only if its fingerprint is equal (see the store's `start`).
//!
//! Build-arg values are left out on purpose: they are often secrets that rotate, and a keyed hash
//! would need a key every replica shares. The arg names are in, and so is the owner (`user_id`),
//! so another tenant cannot pass as the first request by changing only values.
//!
//! Artifacts are in: under one id, a request that asks for other exports is another request.
//! They are not in the build key (`plan::build_key`), which names the image: an artifact is read
//! from the image in the registry after the push, so a cached answer exports the new list from
//! the cached image instead of building an identical image again. A cached image is therefore
//! never handed out without the artifacts its request names.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{BuildRequest, BuilderKind, RefKind, RepoSpec};

/// Bumped whenever the fields below change, so old and new fingerprints never compare equal.
const VERSION: &str = "v1";

#[derive(Serialize)]
struct Identity<'a> {
    repo: String,
    connector: &'a str,
    git_ref: Option<&'a str>,
    /// Left out for "repo": fingerprints recorded before the field existed stay equal.
    #[serde(skip_serializing_if = "RefKind::is_repo")]
    kind: RefKind,
    user_id: &'a str,
    context: &'a str,
    dockerfile: Option<&'a str>,
    /// Left out when absent: fingerprints recorded before the field existed stay equal.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    builder: BuilderKind,
    platforms: Vec<&'a str>,
    image: Option<&'a str>,
    tags: Vec<&'a str>,
    labels: &'a std::collections::BTreeMap<String, String>,
    build_arg_names: Vec<&'a str>,
    /// Left out when there are none: fingerprints recorded before the field existed stay equal.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secret_ids: Vec<&'a str>,
    /// `(name, normalised path)` by name; left out when there are none, for the same reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    artifacts: Vec<(&'a str, &'a str)>,
}

impl BuildRequest {
    /// `v1:` and the hex SHA-256 of the identity fields, in a fixed order. Lists whose order does
    /// not change the image (platforms, tags) are sorted and deduplicated.
    pub fn fingerprint(&self) -> String {
        let identity = Identity {
            repo: normalised_repo(&self.repo),
            connector: self.connector.as_str(),
            git_ref: self.git_ref.as_ref().map(|r| r.as_str()),
            kind: self.ref_kind,
            user_id: self.user_id.as_str(),
            context: self.context.as_str(),
            dockerfile: self.dockerfile.as_ref().map(|d| d.as_str()),
            target: self.target.as_ref().map(|t| t.as_str()),
            builder: self.builder,
            platforms: sorted(self.platforms.iter().map(|p| p.as_str()).collect()),
            image: self.image.as_ref().map(|i| i.as_str()),
            tags: sorted(self.tags.iter().map(|t| t.as_str()).collect()),
            labels: &self.labels,
            build_arg_names: self.build_args.keys().collect(),
            secret_ids: self.secrets.ids().collect(),
            artifacts: {
                let mut list: Vec<(&str, &str)> = self
                    .artifacts
                    .iter()
                    .map(|a| (a.name.as_str(), a.path.as_str()))
                    .collect();
                list.sort_unstable();
                list
            },
        };
        // Serialising strings, options and a string map cannot fail.
        let canonical = serde_json::to_vec(&identity).unwrap_or_default();
        format!("{VERSION}:{}", hex::encode(Sha256::digest(&canonical)))
    }
}

fn sorted(mut list: Vec<&str>) -> Vec<&str> {
    list.sort_unstable();
    list.dedup();
    list
}

/// One spelling per repository: no `.git` suffix, no trailing slash (the URL parser already
/// lowercases the scheme and host).
fn normalised_repo(repo: &RepoSpec) -> String {
    let raw = repo.display();
    let trimmed = raw.trim_end_matches('/');
    trimmed.strip_suffix(".git").unwrap_or(trimmed).to_owned()
}

#[cfg(test)]
mod tests {
    use super::super::RequestPolicy;
    use super::*;
    use serde_json::{Value, json};

    fn parse(body: &Value) -> BuildRequest {
        let policy = RequestPolicy {
            max_body_bytes: 65536,
            allowed_schemes: vec!["https".into()],
        };
        BuildRequest::parse(body.to_string().as_bytes(), &policy, None).expect("valid request")
    }

    fn base() -> Value {
        json!({
            "id": "r-1", "repo": "https://git.example/acme/app.git", "connector": "git",
            "ref": "main", "user_id": "alice", "tags": ["b", "a"], "platforms": ["linux/amd64"],
            "labels": {"k": "v"}, "build_args": {"SECRET": "one"}, "token": "t-1"
        })
    }

    fn with(change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut body = base();
        if let Value::Object(map) = &mut body {
            change(map);
        }
        parse(&body).fingerprint()
    }

    #[test]
    fn id_token_arg_values_and_spelling_do_not_change_it() {
        let first = parse(&base()).fingerprint();
        assert!(first.starts_with("v1:") && first.len() == 3 + 64, "{first}");
        assert_eq!(with(|m| drop(m.insert("id".into(), json!("r-2")))), first);
        assert_eq!(
            with(|m| drop(m.insert("token".into(), json!("t-2")))),
            first
        );
        assert_eq!(with(|m| drop(m.remove("token"))), first);
        assert_eq!(
            with(|m| drop(m.insert("build_args".into(), json!({"SECRET": "rotated"})))),
            first
        );
        assert_eq!(
            with(|m| drop(m.insert("tags".into(), json!(["a", "b"])))),
            first
        );
        assert_eq!(
            with(|m| drop(m.insert("no_cache".into(), json!(true)))),
            first
        );
        // An artifact list that normalises to the same paths, in another order, is the same.
        let two = |first: Value, second: Value| {
            with(|m| drop(m.insert("artifacts".into(), json!([first, second]))))
        };
        assert_eq!(
            two(
                json!({"name": "a", "path": "/x/./a/"}),
                json!({"name": "b", "path": "/b"})
            ),
            two(
                json!({"name": "b", "path": "/b"}),
                json!({"name": "a", "path": "/x/a"})
            ),
        );
        assert_eq!(
            with(|m| drop(m.insert("artifacts".into(), json!([])))),
            first
        );
        let plain = "https://git.example/acme/app";
        assert_eq!(with(|m| drop(m.insert("repo".into(), json!(plain)))), first);
        assert_eq!(
            with(|m| drop(m.insert("type".into(), json!("repo")))),
            first,
            "\"repo\" is the default"
        );
    }

    #[test]
    fn every_identity_field_changes_it() {
        let first = parse(&base()).fingerprint();
        let changes: Vec<(&str, Value)> = vec![
            ("repo", json!("https://git.example/mallory/app")),
            ("connector", json!("gitlab")),
            ("ref", json!("dev")),
            ("type", json!("tag")),
            ("user_id", json!("mallory")),
            ("context", json!("sub")),
            ("dockerfile", json!("Other.Dockerfile")),
            ("builder", json!("nixpacks")),
            ("platforms", json!(["linux/arm64"])),
            ("image", json!("other")),
            ("tags", json!(["a"])),
            ("labels", json!({"k": "w"})),
            ("build_args", json!({"OTHER": "one"})),
            ("artifacts", json!([{"name": "dist", "path": "/app/dist"}])),
        ];
        for (field, value) in changes {
            let changed = with(|m| drop(m.insert(field.into(), value)));
            assert_ne!(changed, first, "{field} must be part of the identity");
        }
    }
}
