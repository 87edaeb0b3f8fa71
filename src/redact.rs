//! Removes secrets from text before it reaches a log, an event or a stored record.

use std::borrow::Cow;

const MASK: &str = "[REDACTED]";
/// Shorter values would mask ordinary text and protect nothing.
const MIN_SECRET_LEN: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_and_ignores_tiny_values() {
        let r = Redactor::new(["gho_abcdef", "abc", "gho_abcdef_long"]);
        assert_eq!(
            r.redact("x gho_abcdef_long y gho_abcdef abc"),
            "x [REDACTED] y [REDACTED] abc"
        );
        assert!(matches!(r.redact("clean"), Cow::Borrowed(_)));
    }
}
