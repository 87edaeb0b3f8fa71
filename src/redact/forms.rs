//! The forms a secret may be printed in besides its own: percent-encoded (a URL or a form body),
//! base64 (HTTP basic auth `user:token`, or the bare token), and line by line when it spans
//! lines (a PEM key, while logs are line-based).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::percent::encode_component;

/// Shorter values would mask ordinary text and protect nothing.
pub(super) const MIN_SECRET_LEN: usize = 4;
/// A line of a multi-line secret shorter than this (a PEM key's last line, an empty line) is
/// left alone: it would mask ordinary text, and gives away a few bytes at most.
const MIN_LINE_LEN: usize = 8;
/// A base64 form shorter than this is too likely to be ordinary text.
const MIN_BASE64_LEN: usize = 8;

/// Every form of `secret` to mask, itself included; none shorter than the limits above.
pub(super) fn forms_of(secret: &str) -> Vec<String> {
    let pieces: Vec<&str> = if secret.contains('\n') {
        secret
            .lines()
            .map(|line| line.trim_end_matches('\r'))
            .filter(|line| line.len() >= MIN_LINE_LEN)
            .collect()
    } else if secret.len() >= MIN_SECRET_LEN {
        vec![secret]
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    for piece in pieces {
        out.push(piece.to_owned());
        out.extend(percent_forms(piece));
        out.extend(base64_forms(piece.as_bytes()));
    }
    out.sort();
    out.dedup();
    out
}

/// The encodings URL libraries, form encoders and shell loops produce, in both hex cases.
fn percent_forms(piece: &str) -> Vec<String> {
    let component = encode_component(piece);
    let strict = utf8_percent_encode(piece, NON_ALPHANUMERIC).to_string();
    let form: String = url::form_urlencoded::byte_serialize(piece.as_bytes()).collect();
    let every_byte: String = piece.bytes().map(|b| format!("%{b:02X}")).collect();
    let mut out = Vec::new();
    for form in [component, strict, form, every_byte] {
        if form != piece {
            out.push(lower_hex(&form));
            out.push(form);
        }
    }
    out
}

/// `%2F` -> `%2f`: the hex digits after each '%' in lower case.
fn lower_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_left = 0;
    for c in encoded.chars() {
        if hex_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_left -= 1;
        } else {
            out.push(c);
            hex_left = usize::from(c == '%') * 2;
        }
    }
    out
}

/// Base64 of the secret at each of the three alignments it can have in an encoded stream: as
/// a bare token (offset 0), or after `user:` in basic auth, whatever the user name's length.
/// Only whole 3-byte groups are kept, since the characters at either end also encode the
/// neighbouring bytes; at most two bytes at each end stay unmasked.
fn base64_forms(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for skip in 0..3 {
        let Some(rest) = bytes.get(skip..) else {
            break;
        };
        let whole = &rest[..rest.len() / 3 * 3];
        for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
            let encoded = engine.encode(whole);
            if encoded.len() >= MIN_BASE64_LEN {
                out.push(encoded);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(forms: &[String], form: &str) -> bool {
        forms.iter().any(|f| f == form)
    }

    #[test]
    fn percent_forms_cover_libraries_forms_and_shell_loops() {
        let forms = forms_of("a/b c");
        for form in [
            "a/b c",
            "a%2Fb%20c",
            "a%2fb%20c",
            "a%2Fb+c",
            "%61%2F%62%20%63",
            "%61%2f%62%20%63",
        ] {
            assert!(has(&forms, form), "{form} missing from {forms:?}");
        }
    }

    #[test]
    fn base64_forms_cover_every_alignment() {
        let forms = forms_of("gho_s3cret");
        for (prefix, secret) in [
            ("", "gho_s3cret"),
            ("u:", "gho_s3cret"),
            ("us:", "gho_s3cret"),
        ] {
            let encoded = STANDARD_NO_PAD.encode(format!("{prefix}{secret}\n"));
            assert!(
                forms
                    .iter()
                    .any(|f| f.len() >= 8 && encoded.contains(f.as_str())),
                "no form of {prefix}{secret} found in {encoded}"
            );
        }
    }

    #[test]
    fn multi_line_secrets_are_masked_line_by_line() {
        let pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\r\nabc\n-----END KEY-----\n";
        let forms = forms_of(pem);
        assert!(has(&forms, "MIIBOgIBAAJBAKj34GkxFhD9"));
        assert!(has(&forms, "-----END KEY-----"));
        assert!(!has(&forms, "abc"), "short lines are left alone");
        assert!(!forms.iter().any(|f| f.contains('\n')));
    }

    #[test]
    fn tiny_values_have_no_forms() {
        assert!(forms_of("abc").is_empty());
        assert!(forms_of("a\nb\n").is_empty());
    }
}
