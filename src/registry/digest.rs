//! Content digests (`<algorithm>:<hex>`): what the registry sends must hash to the digest it was
//! asked for or announced, or it is not used.

use sha2::{Digest as _, Sha256, Sha512};

use crate::error::RegistryError;

/// A running hash in the algorithm of a digest we expect, fed while the bytes arrive.
pub(super) enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    /// A hasher for the algorithm `digest` names; an algorithm we cannot check is an error,
    /// not a pass.
    pub(super) fn for_digest(digest: &str) -> Result<Self, RegistryError> {
        match digest.split_once(':') {
            Some(("sha256", _)) => Ok(Self::Sha256(Sha256::new())),
            Some(("sha512", _)) => Ok(Self::Sha512(Sha512::new())),
            _ => Err(RegistryError::Protocol(format!(
                "cannot verify digest {digest:?}: not sha256 or sha512"
            ))),
        }
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
        }
    }

    pub(super) fn finish(self) -> String {
        match self {
            Self::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Self::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }

    /// Ok when what was fed hashes to `expected`.
    pub(super) fn verify(self, what: &str, expected: &str) -> Result<(), RegistryError> {
        same(what, expected, &self.finish())
    }
}

/// Ok when `bytes` hash to `expected` (in `expected`'s algorithm).
pub(super) fn verify(what: &str, expected: &str, bytes: &[u8]) -> Result<(), RegistryError> {
    let mut hasher = Hasher::for_digest(expected)?;
    hasher.update(bytes);
    hasher.verify(what, expected)
}

/// The digest of `bytes` in the algorithm `like` names.
pub(super) fn of(like: &str, bytes: &[u8]) -> Result<String, RegistryError> {
    let mut hasher = Hasher::for_digest(like)?;
    hasher.update(bytes);
    Ok(hasher.finish())
}

/// Whether a manifest reference is a digest rather than a tag (tags cannot hold ':').
pub(super) fn is_digest(reference: &str) -> bool {
    reference.contains(':')
}

/// After a write: the digest the registry announces (if any) must be the one we sent.
pub(super) fn check_announced(
    what: &str,
    sent: &str,
    announced: Option<&str>,
) -> Result<(), RegistryError> {
    match announced {
        Some(announced) => same(what, sent, announced),
        None => Ok(()),
    }
}

fn same(what: &str, expected: &str, got: &str) -> Result<(), RegistryError> {
    // Hex case is not significant; registries answer lowercase, but don't fail on style.
    if expected.eq_ignore_ascii_case(got) {
        Ok(())
    } else {
        Err(RegistryError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.to_owned(),
            got: got.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::content_digest;

    #[test]
    fn matching_bytes_pass_and_others_fail() {
        let good = content_digest(b"hello");
        assert!(verify("blob", &good, b"hello").is_ok());
        match verify("blob", &good, b"hellO") {
            Err(RegistryError::DigestMismatch {
                what,
                expected,
                got,
            }) => {
                assert_eq!(what, "blob");
                assert_eq!(expected, good);
                assert_eq!(got, content_digest(b"hellO"));
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn hashing_in_pieces_equals_hashing_at_once() {
        let mut h = Hasher::for_digest("sha256:x").expect("sha256");
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), content_digest(b"hello"));
    }

    #[test]
    fn sha512_is_checked_too() {
        let mut h = Hasher::for_digest("sha512:x").expect("sha512");
        h.update(b"hello");
        let digest = h.finish();
        assert!(digest.starts_with("sha512:") && digest.len() == 7 + 128);
        assert!(verify("blob", &digest, b"hello").is_ok());
        assert!(verify("blob", &digest, b"bye").is_err());
    }

    #[test]
    fn unknown_algorithms_are_refused_not_trusted() {
        assert!(matches!(
            verify("blob", "md5:abc", b"x"),
            Err(RegistryError::Protocol(_))
        ));
        assert!(verify("blob", "nocolon", b"x").is_err());
    }

    #[test]
    fn announced_digests_must_match_what_was_sent() {
        assert!(check_announced("upload", "sha256:aa", None).is_ok());
        assert!(check_announced("upload", "sha256:aa", Some("sha256:AA")).is_ok());
        assert!(matches!(
            check_announced("upload", "sha256:aa", Some("sha256:bb")),
            Err(RegistryError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn digests_and_tags_are_told_apart() {
        assert!(is_digest(&content_digest(b"x")));
        assert!(!is_digest("latest"));
        assert!(!is_digest("v1.2.3"));
    }
}
