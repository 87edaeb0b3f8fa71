//! Labels as one `LABEL` instruction appended to a copy of the Dockerfile. podman 4 turns every
//! `--label` flag into its own step with its own commit; one instruction costs one commit.

use std::path::{Path, PathBuf};

use crate::dockerfile::escape_char;
use crate::error::BuildError;

/// Writes `<scratch>/Containerfile`: the original's text plus the labels; returns its path.
pub fn labelled_dockerfile(
    original: &str,
    labels: &[(String, String)],
    scratch: &Path,
) -> Result<PathBuf, BuildError> {
    let text = original.to_owned();
    let escape = escape_char(&text);
    let quote = |s: &str| {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            if c == '"' || c == '$' || c == escape {
                out.push(escape);
            }
            out.push(c);
        }
        out.push('"');
        out
    };
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
        .collect();
    let mut out = text;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    if !pairs.is_empty() {
        out.push_str("LABEL ");
        out.push_str(&pairs.join(" "));
        out.push('\n');
    }
    let path = scratch.join("Containerfile");
    std::fs::write(&path, out).map_err(|e| {
        BuildError::Internal(anyhow::anyhow!("failed to write the Containerfile: {e}"))
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_one_quoted_instruction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let labels = vec![
            ("a.b".to_owned(), "plain".to_owned()),
            ("q".to_owned(), r#"say "hi" $HOME \ ok"#.to_owned()),
        ];
        let path = labelled_dockerfile("FROM scratch", &labels, dir.path()).expect("written");
        let text = std::fs::read_to_string(path).expect("read");
        assert_eq!(
            text,
            "FROM scratch\nLABEL \"a.b\"=\"plain\" \"q\"=\"say \\\"hi\\\" \\$HOME \\\\ ok\"\n"
        );
    }
}
