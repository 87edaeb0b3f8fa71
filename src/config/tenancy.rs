//! Who may act for which tenant: scoped API keys (`api.keys`, plus the older `api.key_hashes` as
//! admin keys) and the GitHub and GitLab repositories mapped to platform users
//! (`webhooks.github_repos`, `webhooks.gitlab_repos`).
//! Both come as TOML tables or, for operators' env vars, as one compact string; both are checked
//! at load with errors naming the field.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::request::UserId;

/// What a key may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// List, details, logs, images, repos.
    Read,
    /// Read, plus submit, cancel and rebuild.
    Submit,
    /// Everything, delete included, for its user ids (an admin key may also have ["*"]: every
    /// user id).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Submit => "submit",
            Self::Admin => "admin",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "read" => Some(Self::Read),
            "submit" => Some(Self::Submit),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// A checked key: its SHA-256, its role, and the user ids it acts for (`None`: every one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyScope {
    pub digest: [u8; 32],
    pub role: Role,
    pub users: Option<Vec<String>>,
}

/// `[[api.keys]] hash, role, users` as written in TOML.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyEntry {
    pub hash: String,
    pub role: String,
    #[serde(default)]
    pub users: Vec<String>,
}

/// `api.keys`: tables, or `<hash>:<role>:<user>,<user>;...` (from IMAGE_BUILDER__API__KEYS).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeysSetting {
    Tables(Vec<KeyEntry>),
    Compact(String),
}

impl Default for KeysSetting {
    fn default() -> Self {
        Self::Tables(Vec::new())
    }
}

/// `webhooks.github_repos` / `gitlab_repos`: `"path" = "user"` pairs, or `path=user,...` from
/// IMAGE_BUILDER__WEBHOOKS__GITHUB_REPOS (or __GITLAB_REPOS).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ReposSetting {
    Table(BTreeMap<String, String>),
    Compact(String),
}

impl Default for ReposSetting {
    fn default() -> Self {
        Self::Table(BTreeMap::new())
    }
}

/// Every accepted key: `key_hashes` (admin, every user id) then `keys`.
pub fn key_scopes(key_hashes: &[String], keys: &KeysSetting) -> anyhow::Result<Vec<KeyScope>> {
    let mut scopes = Vec::new();
    for (i, hash) in key_hashes.iter().enumerate() {
        scopes.push(KeyScope {
            digest: digest(hash).map_err(|why| anyhow::anyhow!("api.key_hashes[{i}] {why}"))?,
            role: Role::Admin,
            users: None,
        });
    }
    let entries = match keys {
        KeysSetting::Tables(entries) => entries.clone(),
        KeysSetting::Compact(raw) => compact_keys(raw)?,
    };
    for (i, entry) in entries.iter().enumerate() {
        scopes.push(key_scope(entry).map_err(|why| anyhow::anyhow!("api.keys[{i}].{why}"))?);
    }
    Ok(scopes)
}

fn compact_keys(raw: &str) -> anyhow::Result<Vec<KeyEntry>> {
    raw.split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
        .map(|(i, entry)| {
            let mut parts = entry.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(hash), Some(role), Some(users)) => Ok(KeyEntry {
                    hash: hash.trim().to_owned(),
                    role: role.trim().to_owned(),
                    users: users.split(',').map(|u| u.trim().to_owned()).collect(),
                }),
                _ => Err(anyhow::anyhow!(
                    "api.keys[{i}] must be <sha256>:<role>:<user>[,<user>...] (entries separated \
                     by ';')"
                )),
            }
        })
        .collect()
}

/// Checks one entry; the error starts with the name of the field it is about.
fn key_scope(entry: &KeyEntry) -> Result<KeyScope, String> {
    let digest = digest(&entry.hash).map_err(|why| format!("hash {why}"))?;
    let role = Role::parse(&entry.role).ok_or_else(|| {
        format!(
            "role must be \"read\", \"submit\" or \"admin\", not {:?}",
            entry.role
        )
    })?;
    let every_user = entry.users.iter().any(|u| u == "*");
    let users = if every_user || (role == Role::Admin && entry.users.is_empty()) {
        if role != Role::Admin {
            return Err("users may be [\"*\"] (every user id) only for an admin key".into());
        }
        if entry.users.len() > 1 {
            return Err("users: \"*\" already means every user id; list no others".into());
        }
        None
    } else {
        if entry.users.is_empty() {
            return Err(
                "users must name at least one user id (or [\"*\"] for an admin key)".into(),
            );
        }
        for user in &entry.users {
            UserId::parse(user).map_err(|why| format!("users: {user:?} {why}"))?;
        }
        Some(entry.users.clone())
    };
    Ok(KeyScope {
        digest,
        role,
        users,
    })
}

fn digest(hash: &str) -> Result<[u8; 32], String> {
    hex::decode(hash.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| "must be a 64-digit hex SHA-256 (`image-builder api-key` makes one)".into())
}

/// Which forge a repository mapping is for: their repository paths differ in shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// `owner/name`.
    Github,
    /// `group/name` or `group/subgroup/.../name`.
    Gitlab,
}

impl Forge {
    fn key(self) -> &'static str {
        match self {
            Self::Github => "webhooks.github_repos",
            Self::Gitlab => "webhooks.gitlab_repos",
        }
    }

    fn valid_path(self, repo: &str) -> bool {
        let parts: Vec<&str> = repo.split('/').collect();
        let shape = match self {
            Self::Github => parts.len() == 2,
            Self::Gitlab => parts.len() >= 2,
        };
        shape && parts.iter().all(|p| !p.is_empty())
    }
}

/// The mapping with lowercase repository paths (both forges treat them case-insensitively),
/// each user id checked.
pub fn mapped_repos(
    forge: Forge,
    setting: &ReposSetting,
) -> anyhow::Result<BTreeMap<String, String>> {
    let key = forge.key();
    let pairs: Vec<(String, String)> = match setting {
        ReposSetting::Table(map) => map.iter().map(|(r, u)| (r.clone(), u.clone())).collect(),
        ReposSetting::Compact(raw) => raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|pair| {
                pair.split_once('=')
                    .map(|(r, u)| (r.trim().to_owned(), u.trim().to_owned()))
                    .ok_or_else(|| anyhow::anyhow!("{key}: {pair:?} must be path=user_id"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let mut repos = BTreeMap::new();
    for (repo, user) in pairs {
        anyhow::ensure!(
            forge.valid_path(&repo),
            "{key}: {repo:?} must be {}",
            match forge {
                Forge::Github => "a GitHub owner/name",
                Forge::Gitlab => "a GitLab group/name (subgroups allowed)",
            }
        );
        UserId::parse(&user).map_err(|why| anyhow::anyhow!("{key}.{repo:?}: {user:?} {why}"))?;
        repos.insert(repo.to_ascii_lowercase(), user);
    }
    Ok(repos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "ed5a18fb8f807f996d649e379d3f35f39c543a91bdbf88c492f2ebd10d4df86c";

    fn compact(raw: &str) -> anyhow::Result<Vec<KeyScope>> {
        key_scopes(&[], &KeysSetting::Compact(raw.into()))
    }

    #[test]
    fn compact_keys_carry_role_and_users() {
        let scopes = compact(&format!("{HASH}:submit:acme,42; {HASH}:admin:*")).expect("valid");
        assert_eq!(scopes[0].role, Role::Submit);
        assert_eq!(scopes[0].users, Some(vec!["acme".into(), "42".into()]));
        assert_eq!(
            (scopes[1].role, scopes[1].users.clone()),
            (Role::Admin, None)
        );
        let old = key_scopes(&[HASH.into()], &KeysSetting::default()).expect("valid");
        assert_eq!((old[0].role, old[0].users.clone()), (Role::Admin, None));
    }

    #[test]
    fn bad_keys_name_the_field() {
        let err = |raw: &str| compact(raw).expect_err("refused").to_string();
        assert!(err(&format!("{HASH}:root:acme")).starts_with("api.keys[0].role"));
        assert!(err(&format!("{HASH}:read:*")).starts_with("api.keys[0].users"));
        assert!(err(&format!("{HASH}:read:Acme")).starts_with("api.keys[0].users"));
        assert!(err(&format!("{HASH}:admin:*,acme")).starts_with("api.keys[0].users"));
        let scoped_admin = compact(&format!("{HASH}:admin:acme")).expect("valid");
        assert_eq!(scoped_admin[0].users, Some(vec!["acme".into()]));
        assert!(err(&format!("{HASH}:read:a;abc:read:a")).starts_with("api.keys[1].hash"));
        assert!(err("nocolons").starts_with("api.keys[0] must be"));
        let old = key_scopes(&["zz".into()], &KeysSetting::default()).expect_err("refused");
        assert!(old.to_string().starts_with("api.key_hashes[0]"));
    }

    #[test]
    fn repos_map_lowercased_to_valid_users() {
        let compact = |raw: &str| ReposSetting::Compact(raw.into());
        let repos =
            mapped_repos(Forge::Github, &compact("Acme/App=42, acme/web=acme")).expect("valid");
        assert_eq!(repos.get("acme/app").map(String::as_str), Some("42"));
        assert_eq!(repos.len(), 2);
        for bad in ["acme=42", "acme/app=Not Valid", "nobody"] {
            let err = mapped_repos(Forge::Github, &compact(bad)).expect_err(bad);
            assert!(
                err.to_string().starts_with("webhooks.github_repos"),
                "{err}"
            );
        }
        // GitLab nests groups; GitHub has none.
        let nested = compact("Group/Sub/App=acme");
        assert!(mapped_repos(Forge::Github, &nested).is_err());
        let gitlab = mapped_repos(Forge::Gitlab, &nested).expect("subgroups are GitLab paths");
        assert_eq!(
            gitlab.get("group/sub/app").map(String::as_str),
            Some("acme")
        );
        let err = mapped_repos(Forge::Gitlab, &compact("group//app=acme")).expect_err("empty");
        assert!(
            err.to_string().starts_with("webhooks.gitlab_repos"),
            "{err}"
        );
    }
}
