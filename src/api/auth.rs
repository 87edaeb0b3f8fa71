//! Bearer API keys. Config holds only their SHA-256 digests; a presented key is hashed and compared
//! in constant time against each.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::AppState;
use super::error::ApiError;
use super::scope::Scope;
use crate::config::KeyScope;

/// Lowercase hex SHA-256 of a key, the form `api.keys` and `api.key_hashes` hold.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key (256 bits, hex) for `image-builder api-key`.
pub fn generate_key() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("ib_{}{}", a.simple(), b.simple())
}

pub struct ApiKeys {
    keys: Vec<KeyScope>,
}

impl ApiKeys {
    pub fn new(keys: Vec<KeyScope>) -> Self {
        Self { keys }
    }

    /// The scope of the key that matches, if any.
    pub fn scope_of(&self, key: &str) -> Option<Scope> {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare with every entry and pick the match without branching, so timing says nothing
        // about which entry (if any) matched.
        let mut matched = u64::MAX;
        for (i, entry) in self.keys.iter().enumerate() {
            let index = u64::try_from(i).unwrap_or(u64::MAX);
            matched.conditional_assign(&index, entry.digest.ct_eq(&presented));
        }
        let entry = self.keys.get(usize::try_from(matched).ok()?)?;
        Some(Scope::new(entry.role, entry.users.clone()))
    }
}

/// Checks the bearer key and hands its scope to the handlers as a request extension.
pub async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(key) = key else {
        return Err(ApiError::unauthorized(
            "missing API key: send `Authorization: Bearer <key>`",
        ));
    };
    let scope = state
        .keys
        .scope_of(key)
        .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))?;
    request.extensions_mut().insert(scope);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    fn entry(key: &str, role: Role, users: Option<&[&str]>) -> KeyScope {
        KeyScope {
            digest: Sha256::digest(key.as_bytes()).into(),
            role,
            users: users.map(|u| u.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn each_key_gets_its_own_scope() {
        let keys = ApiKeys::new(vec![
            entry("k1", Role::Read, Some(&["acme"])),
            entry("k2", Role::Admin, None),
        ]);
        let read = keys.scope_of("k1").expect("k1 accepted");
        assert!(read.may_see(Some("acme")) && !read.may_see(Some("other")));
        assert!(read.require(Role::Submit).is_err());
        let admin = keys.scope_of("k2").expect("k2 accepted");
        assert!(admin.may_see(Some("other")) && admin.may_see(None));
        assert!(keys.scope_of("k3").is_none() && keys.scope_of("").is_none());
        assert_eq!(
            hash_key("k1"),
            hex::encode(entry("k1", Role::Read, None).digest)
        );
    }
}
