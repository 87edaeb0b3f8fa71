//! Secret scans: a secret, in every form it could be printed in, is in no log, event or file.

use std::path::{Path, PathBuf};

use super::{Stack, Worker};

/// Asserts `secret` is nowhere, in none of the forms it could be printed in (see
/// `encoded_forms`): not in the worker's log, not in any event, not in any file the worker left
/// in its data dir.
pub fn assert_secret_absent(secret: &str, worker: &Worker, stack: &Stack) {
    let log = worker.log();
    assert!(
        !log.is_empty(),
        "the worker log is empty: nothing was checked"
    );
    let forms = encoded_forms(secret);
    let files: Vec<(PathBuf, Vec<u8>)> = files_under(&worker.data_dir.path().join("data"))
        .into_iter()
        .map(|file| {
            let bytes = std::fs::read(&file).unwrap_or_default();
            (file, bytes)
        })
        .collect();
    for form in &forms {
        assert!(
            !log.contains(form.as_str()),
            "the worker log leaked the secret as {form:?}:\n{log}"
        );
        for raw in &stack.raw_events {
            let text = String::from_utf8_lossy(raw);
            assert!(
                !text.contains(form.as_str()),
                "an event leaked the secret as {form:?}: {text}"
            );
        }
        for (file, bytes) in &files {
            let found = bytes.windows(form.len()).any(|w| w == form.as_bytes());
            assert!(!found, "{} contains the secret as {form:?}", file.display());
        }
    }
}

/// The secret, each line of a multi-line one, and their percent-encoded and base64 forms. A
/// base64 form is the encoding of whole 3-byte groups at each of the three offsets the secret
/// can have in an encoded stream (bare, or after `user:` in basic auth).
pub fn encoded_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let pieces: Vec<&str> = if secret.contains('\n') {
        secret.lines().filter(|l| l.len() >= 8).collect()
    } else {
        vec![secret]
    };
    let mut forms = Vec::new();
    for piece in pieces {
        forms.push(piece.to_owned());
        let every_byte: String = piece.bytes().map(|b| format!("%{b:02x}")).collect();
        let mut component = String::new();
        for b in piece.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                component.push(char::from(b));
            } else {
                component.push_str(&format!("%{b:02X}"));
            }
        }
        forms.extend([every_byte.clone(), every_byte.to_uppercase(), component]);
        for skip in 0..3.min(piece.len()) {
            let rest = &piece.as_bytes()[skip..];
            let whole = &rest[..rest.len() / 3 * 3];
            if whole.len() >= 6 {
                forms.push(base64::engine::general_purpose::STANDARD_NO_PAD.encode(whole));
            }
        }
    }
    forms
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
