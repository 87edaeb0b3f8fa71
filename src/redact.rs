//! Removes secrets from text before it reaches a log, an event or a stored record, in every
//! form `forms` knows (plain, percent-encoded, base64, line by line).

mod forms;

use std::borrow::Cow;
use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};

const MASK: &str = "[REDACTED]";

/// Matches every form of every secret at once (Aho-Corasick: one pass per line, whatever the
/// number of secrets).
#[derive(Clone, Default)]
pub struct Redactor {
    matcher: Option<AhoCorasick>,
}

impl Redactor {
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut patterns: Vec<String> = secrets
            .into_iter()
            .flat_map(|s| forms::forms_of(&s.into()))
            .collect();
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Self::default();
        }
        // Leftmost-longest: a secret containing another is masked whole.
        let built = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns);
        match built {
            Ok(matcher) => Self {
                matcher: Some(matcher),
            },
            Err(e) => {
                // Only a pattern set beyond the automaton's size limit gets here. Failing closed
                // (masking every line) would blank the log; keep the plain values at least.
                tracing::warn!("secret matcher too large ({e}); masking plain values only");
                Self::plain_only(patterns)
            }
        }
    }

    fn plain_only(mut patterns: Vec<String>) -> Self {
        patterns.retain(|p| !p.contains('%'));
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok();
        Self { matcher }
    }

    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.matcher {
            Some(matcher) if matcher.is_match(text) => {
                let mut out = String::with_capacity(text.len());
                matcher.replace_all_with(text, &mut out, |_, _, dst| {
                    dst.push_str(MASK);
                    true
                });
                Cow::Owned(out)
            }
            _ => Cow::Borrowed(text),
        }
    }
}

/// Never shows the secrets.
impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let forms = self.matcher.as_ref().map_or(0, AhoCorasick::patterns_len);
        f.debug_struct("Redactor").field("forms", &forms).finish()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    #[test]
    fn masks_every_occurrence_and_ignores_tiny_values() {
        let r = Redactor::new(["gho_abcdef", "abc", "gho_abcdef_long"]);
        assert_eq!(
            r.redact("x gho_abcdef_long y gho_abcdef abc"),
            "x [REDACTED] y [REDACTED] abc"
        );
        assert!(matches!(r.redact("clean"), Cow::Borrowed(_)));
        assert!(!format!("{r:?}").contains("gho_"));
    }

    #[test]
    fn masks_url_encoded_forms() {
        let r = Redactor::new(["p@ss/w0rd+x"]);
        for line in [
            "GET https://host/?t=p%40ss%2Fw0rd%2Bx",
            "body: t=p%40ss%2fw0rd%2bx&x=1",
            "od: %70%40%73%73%2f%77%30%72%64%2b%78",
        ] {
            let out = r.redact(line);
            assert!(
                out.contains(MASK) && !out.contains("w0rd"),
                "{line} -> {out}"
            );
        }
    }

    #[test]
    fn masks_base64_of_basic_auth_and_of_the_bare_token() {
        let token = "ghp_1234567890abcdefXYZ";
        let r = Redactor::new([token]);
        for plain in [
            format!("x-access-token:{token}"),
            format!("git:{token}"),
            token.to_owned(),
            format!("{token}\n"),
        ] {
            let line = format!("Authorization: Basic {}", STANDARD.encode(&plain));
            let out = r.redact(&line);
            assert!(out.contains(MASK), "{plain}: {out}");
            // What is left cannot be decoded back into most of the token.
            assert!(out.len() < line.len(), "{out}");
            assert!(!out.contains(&STANDARD.encode(&token[3..18])), "{out}");
        }
    }

    #[test]
    fn masks_each_line_of_a_pem_key() {
        let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----";
        let r = Redactor::new([key]);
        for line in key.lines() {
            assert_eq!(r.redact(&format!("step: {line}")), format!("step: {MASK}"));
        }
    }
}
