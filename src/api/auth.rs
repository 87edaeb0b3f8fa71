//! Bearer API keys. Config holds only their SHA-256 digests; a presented key is hashed and compared
//! in constant time against each.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// Lowercase hex SHA-256 of a key, the form `api.key_hashes` holds.
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
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn from_hashes(hashes: &[String]) -> anyhow::Result<Self> {
        let digests = hashes
            .iter()
            .map(|h| {
                let bytes = hex::decode(h.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                bytes.ok_or_else(|| {
                    anyhow::anyhow!("api.key_hashes: an entry is not a 64-digit hex SHA-256")
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { digests })
    }

    pub fn accepts(&self, key: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Check every entry, so timing says nothing about which one matched.
        self.digests.iter().fold(false, |found, digest| {
            found | bool::from(digest.ct_eq(&presented))
        })
    }
}

pub async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match key {
        None => Err(ApiError::unauthorized(
            "missing API key: send `Authorization: Bearer <key>`",
        )),
        Some(key) if state.keys.accepts(key) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::unauthorized("the API key is not valid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_by_hash_only() {
        let keys = ApiKeys::from_hashes(&[hash_key("k1"), hash_key("k2")]).expect("hashes");
        assert!(keys.accepts("k1") && keys.accepts("k2"));
        assert!(!keys.accepts("k3") && !keys.accepts(""));
        assert!(ApiKeys::from_hashes(&["k1".into()]).is_err());
    }
}
