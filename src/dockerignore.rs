//! `.dockerignore` / `.containerignore` as the docker CLI applies them when it packs a build
//! context: the rules of moby's `ignorefile` and `patternmatcher` packages, reimplemented. No
//! maintained Rust crate implements those semantics (the gitignore crates differ: no anchoring
//! at the root, `*` crossing nothing, different `**`), so this follows moby's behaviour,
//! quirks included, because a user's ignore file was written against docker:
//! - lines starting with `#` are comments; whitespace is trimmed; `!` makes an exception;
//! - each pattern is cleaned like Go's `filepath.Clean`, with a leading `/` dropped;
//! - `*` and `?` stop at `/`; `[...]` is a character class; `\` escapes; `**/` is any number of
//!   directories; a leading `**` matches any suffix; a trailing `**` any rest;
//! - a path is excluded when a pattern matches it or one of its parent directories, and the
//!   last pattern that matches decides.

use regex::Regex;

#[derive(Debug, thiserror::Error)]
#[error("line {line}: the pattern {pattern:?} is not valid: {reason}")]
pub struct IgnoreError {
    pub line: usize,
    pub pattern: String,
    pub reason: String,
}

/// The rules of one ignore file.
#[derive(Debug, Default)]
pub struct IgnoreRules {
    patterns: Vec<Pattern>,
}

#[derive(Debug)]
struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

/// moby's match types: plain comparisons where a pattern allows them, a regex otherwise. The
/// shortcuts are part of the semantics (`**file` is a suffix match, so it matches `dir/xfile`).
#[derive(Debug)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex(Regex),
}

impl IgnoreRules {
    pub fn parse(text: &str) -> Result<Self, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let Some(line) = pattern_line(raw) else {
                continue;
            };
            let refused = |reason: &str| IgnoreError {
                line: index + 1,
                pattern: raw.trim().to_owned(),
                reason: reason.to_owned(),
            };
            let (exclusion, body) = match line.strip_prefix('!') {
                Some("") => return Err(refused("a bare '!' excludes nothing")),
                Some(rest) => (true, rest.to_owned()),
                None => (false, line),
            };
            let kind = compile(&body).map_err(|e| refused(&e))?;
            patterns.push(Pattern {
                cleaned: body,
                exclusion,
                kind,
            });
        }
        Ok(Self { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (relative to the context, `/`-separated, no leading `./`) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let parent = path.rsplit_once('/').map(|(dir, _)| dir);
        let mut matched = false;
        for pattern in &self.patterns {
            // An exception only matters once excluded, an exclusion only while not.
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(path);
            if !hit && let Some(parent) = parent {
                let dirs: Vec<&str> = parent.split('/').collect();
                hit = (1..=dirs.len()).any(|n| pattern.matches(&dirs[..n].join("/")));
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/') == Some(path)
            }
            Kind::Regex(re) => re.is_match(path),
        }
    }
}

/// A line as moby's `ignorefile.ReadAll` turns it into a pattern (`!` kept in front), or None
/// for comments and blank lines.
fn pattern_line(raw: &str) -> Option<String> {
    if raw.starts_with('#') {
        return None;
    }
    let line = raw.trim();
    if line.is_empty() {
        return None;
    }
    let (invert, body) = match line.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, line),
    };
    let mut body = if body.is_empty() {
        String::new()
    } else {
        clean(body)
    };
    if body.len() > 1 && body.starts_with('/') {
        body.remove(0);
    }
    Some(if invert { format!("!{body}") } else { body })
}

/// Go's `filepath.Clean` on a `/` path: no empty or `.` elements, `..` folded where it can be.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match out.last() {
                Some(&last) if last != ".." => {
                    out.pop();
                }
                _ if rooted => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// moby's `Pattern.compile`: the match type, and the regex where one is needed.
fn compile(pattern: &str) -> Result<Kind, String> {
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut detected = Detected::Exact;
    let mut re = String::from("^");
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    let mut first = true;
    while let Some(ch) = chars.next() {
        let at_start = std::mem::replace(&mut first, false);
        match ch {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        re.push_str(".*");
                        detected = Detected::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    detected = Detected::Regex;
                }
                if at_start {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                detected = Detected::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                detected = Detected::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.next() {
                Some(next) => {
                    push_escaped(&mut re, next);
                    detected = Detected::Regex;
                }
                None => re.push_str("\\\\"),
            },
            '[' if in_class => re.push_str("\\["),
            '[' | ']' => {
                in_class = ch == '[';
                re.push(ch);
                detected = Detected::Regex;
            }
            // Go's regexp has no class set operations; Rust's would read these as ones.
            '&' | '~' if in_class => {
                re.push('\\');
                re.push(ch);
            }
            other => re.push(other),
        }
    }
    if in_class {
        return Err("a '[' is not closed".to_owned());
    }
    match detected {
        Detected::Exact => Ok(Kind::Exact),
        Detected::Prefix => Ok(Kind::Prefix),
        Detected::Suffix => Ok(Kind::Suffix),
        Detected::Regex => {
            re.push('$');
            Regex::new(&re).map(Kind::Regex).map_err(|e| e.to_string())
        }
    }
}

/// `\x` of a pattern: the character itself (Go's regexp reads `\` + a punctuation character as
/// that character; a letter escape such as `\d` keeps its regex meaning there and here).
fn push_escaped(re: &mut String, ch: char) {
    re.push('\\');
    re.push(ch);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(patterns: &str, path: &str) -> bool {
        IgnoreRules::parse(patterns)
            .unwrap_or_else(|e| panic!("{patterns:?}: {e}"))
            .excludes(path)
    }

    /// The behaviour moby's patternmatcher has for each (pattern, path), including its quirks.
    #[test]
    fn patterns_match_as_docker_matches_them() {
        let cases = [
            ("**", "file", true),
            ("**", "dir/file", true),
            ("**/", "file", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/a/b", true),
            ("abc/**", "abc", false),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**file", "dir/dir/file", true),
            ("**/file*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abc/def", false),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            ("dist/*.whl", "dist/proxy-2.4.0+g08-py3-none-any.whl", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            // Rooted, cleaned and trimmed like docker's reader.
            ("/node_modules", "node_modules/x/index.js", true),
            ("./src/../.env", ".env", true),
            ("  .env  ", ".env", true),
            ("*.md", "docs/a.md", false),
            ("*/*.md", "docs/a.md", true),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(excluded(pattern, path), want, "{pattern:?} vs {path:?}");
        }
    }

    #[test]
    fn the_last_matching_line_decides_and_exceptions_reinclude() {
        let rules = "# build output\n*.log\n!keep.log\n\n**\n!src\n";
        assert!(!excluded(rules, "src/main.rs"), "re-included directory");
        assert!(excluded(rules, "README.md"));
        assert!(!excluded("*.log\n!keep.log\n", "keep.log"));
        assert!(excluded("*.log\n!keep.log\n", "other.log"));
        assert!(excluded("**\n!util/web\nutil/web/foo\n", "util/web/foo"));
        assert!(!excluded("**\n!util/web\n", "util/web/foo"));
        // A comment only at the start of the line; '#' elsewhere is a character.
        assert!(excluded("#x\n a#b\n", "a#b"));
        assert!(!excluded("#x\n", "#x"));
    }

    #[test]
    fn a_bad_pattern_is_refused_naming_its_line() {
        for (text, line) in [("ok\n!\n", 2), ("a\n\n[abc\n", 3), ("x\\q", 1)] {
            let err = IgnoreRules::parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("line {line}:")),
                "{err}"
            );
        }
    }

    #[test]
    fn clean_folds_paths_as_go_does() {
        for (raw, cleaned) in [
            ("a//b/./c/", "a/b/c"),
            ("a/../../b", "../b"),
            ("/../a", "/a"),
            (".", "."),
            ("./", "."),
        ] {
            assert_eq!(clean(raw), cleaned, "{raw:?}");
        }
    }
}
