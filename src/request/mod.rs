//! Wire JSON -> `BuildRequest`, through one constructor that names the field and reason of any
//! refusal. Nothing downstream handles unvalidated input.

mod artifacts;
mod base_update;
mod fields;
mod fingerprint;
mod repo;
mod reserved_env;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;

use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;

pub use artifacts::{ArtifactSpec, MAX_ARTIFACTS};
pub use base_update::BaseUpdate;
pub use repo::{Connector, RepoSpec, strip_userinfo};
pub use types::{
    ArtifactName, GitRef, ImageName, ImagePath, Platform, RelPath, RequestId, StageName, Tag,
    UserId,
};

use fields::Fields;
use types::truncate;

/// What the validator needs from config.
#[derive(Debug, Clone)]
pub struct RequestPolicy {
    pub max_body_bytes: usize,
    pub allowed_schemes: Vec<String>,
}

/// A request refused before any work: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub field: String,
    pub reason: String,
}

impl Rejection {
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.field, self.reason)
    }
}

impl std::error::Error for Rejection {}

/// How `ref` is read: the request's `type` (the seed format's field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefKind {
    /// A branch, tag or commit; the default branch without `ref`.
    #[default]
    Repo,
    /// Only a tag of that name (a branch of the same name is not taken).
    Tag,
    /// A tag; without `ref`, the highest released version among the tags (`v1.2.3` or `1.2.3`,
    /// pre-releases left out).
    Release,
}

impl RefKind {
    pub fn is_repo(&self) -> bool {
        *self == Self::Repo
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    Auto,
    Dockerfile,
    Nixpacks,
}

/// Build arguments. Values may be secrets: Debug shows only the keys.
#[derive(Clone, Default)]
pub struct BuildArgs(BTreeMap<String, String>);

impl BuildArgs {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }
}

/// Build secrets by id, mounted for `RUN --mount=type=secret,id=<id>` steps. Unlike build
/// args they reach no layer, history or config; Debug shows only the ids.
#[derive(Clone, Default)]
pub struct BuildSecrets(BTreeMap<String, SecretString>);

impl BuildSecrets {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretString)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for BuildSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl fmt::Debug for BuildArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A validated build request.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub id: RequestId,
    pub repo: RepoSpec,
    pub connector: Connector,
    pub git_ref: Option<GitRef>,
    pub ref_kind: RefKind,
    pub token: Option<SecretString>,
    pub user_id: UserId,
    pub context: RelPath,
    pub dockerfile: Option<RelPath>,
    /// The Dockerfile stage to build; the last one when absent.
    pub target: Option<StageName>,
    pub builder: BuilderKind,
    pub build_args: BuildArgs,
    pub secrets: BuildSecrets,
    pub platforms: Vec<Platform>,
    pub image: Option<ImageName>,
    pub tags: Vec<Tag>,
    pub labels: BTreeMap<String, String>,
    /// Build even when an image of this exact configuration exists (a rebuild).
    pub no_cache: bool,
    /// Paths of the built image to export as OCI artifacts after the push.
    pub artifacts: Vec<ArtifactSpec>,
    /// Rebuild this configuration when a base image it was built on moves (default true).
    pub rebuild_on_base_update: bool,
    /// Set on the rebuilds a moved base image publishes.
    pub base_update: Option<BaseUpdate>,
}

/// Best-effort identifiers of a request, for the `build.rejected` event of one that failed to parse.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestSummary {
    pub request_id: Option<String>,
    pub user_id: Option<String>,
    pub repo: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
}

impl RequestSummary {
    /// Reads what it can from a body that may be invalid; never fails, quotes at most 200 chars.
    /// The repo loses its user-info before it is cut, so a cut cannot hide the '@' that ends it.
    pub fn sniff(body: &[u8]) -> Self {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let raw = |k: &str| map.get(k).and_then(Value::as_str);
        let quote = |s: &str| truncate(&s.replace(|c: char| c.is_control(), "?"), 200);
        Self {
            request_id: raw("id").map(quote),
            user_id: raw("user_id").or_else(|| raw("userID")).map(quote),
            repo: raw("repo").map(|r| quote(&strip_userinfo(r))),
            git_ref: raw("ref").map(quote),
        }
    }
}

const MAX_LIST: usize = 16;
const MAX_MAP: usize = 64;

impl BuildRequest {
    /// The request as recorded and shown by the API: no token, and build arg values replaced by
    /// null (they may be secrets). `has_token` says whether a rebuild needs one supplied again.
    pub fn public_view(&self) -> Value {
        let build_args: serde_json::Map<String, Value> = self
            .build_args
            .keys()
            .map(|k| (k.to_owned(), Value::Null))
            .collect();
        serde_json::json!({
            "id": self.id.as_str(),
            "repo": self.repo.display(),
            "connector": self.connector.as_str(),
            "ref": self.git_ref.as_ref().map(GitRef::as_str),
            "user_id": self.user_id.as_str(),
            "context": self.context.as_str(),
            "dockerfile": self.dockerfile.as_ref().map(RelPath::as_str),
            "target": self.target.as_ref().map(StageName::as_str),
            "builder": self.builder,
            "build_args": build_args,
            "secrets": self
                .secrets
                .ids()
                .map(|id| (id.to_owned(), Value::Null))
                .collect::<serde_json::Map<_, _>>(),
            "platforms": self.platforms.iter().map(Platform::as_str).collect::<Vec<_>>(),
            "image": self.image.as_ref().map(ImageName::as_str),
            "tags": self.tags.iter().map(Tag::as_str).collect::<Vec<_>>(),
            "labels": self.labels,
            "no_cache": self.no_cache,
            "artifacts": self
                .artifacts
                .iter()
                .map(|a| serde_json::json!({"name": a.name.as_str(), "path": a.path.as_str()}))
                .collect::<Vec<_>>(),
            "has_token": self.token.is_some(),
            "rebuild_on_base_update": self.rebuild_on_base_update,
            "base_update": self.base_update.as_ref().map(BaseUpdate::to_json),
        })
    }

    /// The one way to make a `BuildRequest`. `fallback_id` names a request without an `id` (the
    /// worker passes the id it generated on first receipt, so retries keep it).
    pub fn parse(
        body: &[u8],
        policy: &RequestPolicy,
        fallback_id: Option<RequestId>,
    ) -> Result<Self, Rejection> {
        if body.len() > policy.max_body_bytes {
            return Err(Rejection::new(
                "body",
                format!(
                    "is {} bytes; the limit is {}",
                    body.len(),
                    policy.max_body_bytes
                ),
            ));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Rejection::new("body", format!("is not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(Rejection::new("body", "must be a JSON object"));
        };
        let mut f = Fields::new(map);

        let id = match f.string("id")? {
            Some(raw) => RequestId::parse(&raw).map_err(|r| Rejection::new("id", r))?,
            None => fallback_id.unwrap_or_else(RequestId::generate),
        };
        let ref_kind = parse_type(f.string("type")?)?;
        let connector = match f.string("connector")? {
            Some(raw) => Connector::parse(&raw).map_err(|r| Rejection::new("connector", r))?,
            None => Connector::Github,
        };
        let repo_raw = f
            .string("repo")?
            .ok_or_else(|| Rejection::new("repo", "is required"))?;
        let repo = RepoSpec::parse(&repo_raw, connector, &policy.allowed_schemes)
            .map_err(|r| Rejection::new("repo", r))?;
        let git_ref = parse_opt(f.string("ref")?, "ref", GitRef::parse)?;
        if ref_kind == RefKind::Tag && git_ref.is_none() {
            return Err(Rejection::new(
                "ref",
                "is required with type \"tag\" (the tag to build)",
            ));
        }
        if ref_kind != RefKind::Repo && git_ref.as_ref().is_some_and(GitRef::is_full_sha) {
            return Err(Rejection::new(
                "ref",
                "must be a tag name with type \"tag\" or \"release\", not a commit",
            ));
        }
        let token = f.string("token")?.map(SecretString::from);
        let user_raw = f
            .string_aliased("user_id", "userID")?
            .ok_or_else(|| Rejection::new("user_id", "is required"))?;
        let user_id = UserId::parse(&user_raw).map_err(|r| Rejection::new("user_id", r))?;
        let context = parse_opt(f.string("context")?, "context", RelPath::parse)?
            .unwrap_or_else(RelPath::root);
        let dockerfile = parse_opt(f.string("dockerfile")?, "dockerfile", RelPath::parse)?;
        let target = parse_opt(f.string("target")?, "target", StageName::parse)?;
        let builder = match f.string("builder")?.as_deref() {
            None | Some("auto") => BuilderKind::Auto,
            Some("dockerfile") => BuilderKind::Dockerfile,
            Some("nixpacks") => BuilderKind::Nixpacks,
            Some(other) => {
                return Err(Rejection::new(
                    "builder",
                    format!(
                        "unknown builder {:?}; expected auto, dockerfile or nixpacks",
                        truncate(other, 40)
                    ),
                ));
            }
        };
        let build_args = parse_build_args(f.string_map("build_args", MAX_MAP)?)?;
        let secrets = parse_secrets(f.string_map("secrets", MAX_MAP)?)?;
        let platforms = parse_list(
            f.string_list("platforms", MAX_LIST)?,
            "platforms",
            Platform::parse,
        )?;
        let image = parse_opt(f.string("image")?, "image", ImageName::parse)?;
        let tags = parse_list(f.string_list("tags", MAX_LIST)?, "tags", Tag::parse)?;
        let labels = parse_labels(f.string_map("labels", MAX_MAP)?)?;
        let no_cache = f.boolean("no_cache")?.unwrap_or(false);
        let artifacts = artifacts::parse_artifacts(&mut f)?;
        let rebuild_on_base_update = f.boolean("rebuild_on_base_update")?.unwrap_or(true);
        let base_update = base_update::parse_base_update(&mut f)?;
        f.finish()?;

        Ok(Self {
            id,
            repo,
            connector,
            git_ref,
            ref_kind,
            token,
            user_id,
            context,
            dockerfile,
            target,
            builder,
            build_args,
            secrets,
            platforms,
            image,
            tags,
            labels,
            no_cache,
            artifacts,
            rebuild_on_base_update,
            base_update,
        })
    }
}

/// The seed format's `type`: "repo" (the default), "tag" or "release".
fn parse_type(kind: Option<String>) -> Result<RefKind, Rejection> {
    match kind.as_deref() {
        None | Some("repo") => Ok(RefKind::Repo),
        Some("tag") => Ok(RefKind::Tag),
        Some("release") => Ok(RefKind::Release),
        Some(other) => Err(Rejection::new(
            "type",
            format!(
                "unknown type {:?}; expected \"repo\", \"tag\" or \"release\"",
                truncate(other, 40)
            ),
        )),
    }
}

fn parse_opt<T>(
    raw: Option<String>,
    field: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, Rejection> {
    raw.map(|r| parse(&r).map_err(|reason| Rejection::new(field, reason)))
        .transpose()
}

fn parse_list<T>(
    raw: Vec<String>,
    field: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, Rejection> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| parse(r).map_err(|reason| Rejection::new(&format!("{field}[{i}]"), reason)))
        .collect()
}

/// Secret ids as podman's `--secret id=` takes them; values are never quoted back.
fn parse_secrets(raw: BTreeMap<String, String>) -> Result<BuildSecrets, Rejection> {
    let mut secrets = BTreeMap::new();
    for (id, value) in raw {
        let mut chars = id.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && id.len() <= 64;
        if !ok {
            return Err(Rejection::new(
                &format!("secrets.{}", truncate(&id, 64)),
                "id must match [A-Za-z0-9][A-Za-z0-9_.-]* and be at most 64 characters",
            ));
        }
        if value.is_empty() || value.len() > 65536 {
            return Err(Rejection::new(
                &format!("secrets.{id}"),
                "value must be 1 to 65536 bytes",
            ));
        }
        secrets.insert(id, SecretString::from(value));
    }
    Ok(BuildSecrets(secrets))
}

fn parse_build_args(raw: BTreeMap<String, String>) -> Result<BuildArgs, Rejection> {
    for (key, value) in &raw {
        let mut chars = key.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && key.len() <= 128;
        if !ok {
            return Err(Rejection::new(
                &format!("build_args.{}", truncate(key, 64)),
                "key must match [A-Za-z_][A-Za-z0-9_]*",
            ));
        }
        if let Some(reason) = reserved_env::reserved(key) {
            return Err(Rejection::new(&format!("build_args.{key}"), reason));
        }
        if value.contains('\0') || value.len() > 8192 {
            // The value is never quoted back: it may be a secret.
            return Err(Rejection::new(
                &format!("build_args.{key}"),
                "value must not contain NUL and must be at most 8192 bytes",
            ));
        }
    }
    Ok(BuildArgs(raw))
}

fn parse_labels(raw: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Rejection> {
    for (key, value) in &raw {
        let key_ok = !key.is_empty()
            && key.len() <= 128
            && !key.starts_with('-')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok {
            return Err(Rejection::new(
                &format!("labels.{}", truncate(key, 64)),
                "key must be 1 to 128 of letters, digits, '.', '_', '-', '/'",
            ));
        }
        if value.chars().any(char::is_control) || value.len() > 1024 {
            return Err(Rejection::new(
                &format!("labels.{key}"),
                "value must be at most 1024 characters without control characters",
            ));
        }
    }
    Ok(raw)
}

#[cfg(test)]
mod tests;
