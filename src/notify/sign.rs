//! What a receiver checks: `X-Image-Builder-Signature: sha256=<hex>`, the HMAC-SHA256 under the
//! webhook's secret of `<X-Image-Builder-Timestamp>.<body>`. The timestamp is signed so a
//! captured request cannot be replayed later as new (a receiver refuses old timestamps); the
//! body is signed byte for byte as sent.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const SIGNATURE: &str = "X-Image-Builder-Signature";
pub const TIMESTAMP: &str = "X-Image-Builder-Timestamp";
pub const EVENT: &str = "X-Image-Builder-Event";
/// The failed attempts before this one (0 on the first).
pub const RETRIES: &str = "X-Image-Builder-Retries";
/// The recorded event's id: the same on every attempt, from every replica.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The `X-Image-Builder-Signature` value of `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body_and_matches_openssl() {
        // printf '%s' '1700000000.{"event":"image.updated"}' | openssl dgst -sha256 -hmac s3cret
        let body = br#"{"event":"image.updated"}"#;
        let sig = signature(b"s3cret", 1_700_000_000, body);
        let expected = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-hmac", "s3cret", "-r"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(b"1700000000.{\"event\":\"image.updated\"}")?;
                child.wait_with_output()
            })
            .expect("openssl runs");
        let hex = String::from_utf8_lossy(&expected.stdout);
        let hex = hex.split_whitespace().next().expect("digest");
        assert_eq!(sig, format!("sha256={hex}"));
        assert_ne!(
            sig,
            signature(b"s3cret", 1_700_000_001, body),
            "timestamp signed"
        );
        assert_ne!(sig, signature(b"other", 1_700_000_000, body), "key used");
        assert_ne!(
            sig,
            signature(b"s3cret", 1_700_000_000, br#"{"event":"image.updatee"}"#),
            "body signed"
        );
    }
}
