//! `.dockerignore` / `.containerignore`, as far as it can be evaluated exactly without a
//! pattern engine: literal paths (`secret.txt`, `/logs/`, `build/out`), each excluding itself
//! and everything beneath it, as moby's matcher does for a pattern or any parent. A wildcard,
//! an escape or a `!` exception is refused, with the line that has it.

#[derive(Debug, Default, PartialEq, Eq)]
pub struct IgnoreFile {
    /// Cleaned context paths, no leading or trailing "/".
    paths: Vec<String>,
}

impl IgnoreFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut paths = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let pattern = line.trim();
            if pattern.is_empty() || pattern.starts_with('#') {
                continue;
            }
            let refused = |what: &str| format!("line {} ({pattern}) {what}", n + 1);
            if pattern.starts_with('!') {
                return Err(refused("is an exception"));
            }
            if pattern.contains(['*', '?', '[', '\\']) {
                return Err(refused("is a pattern"));
            }
            let mut parts = Vec::new();
            for part in pattern.split('/') {
                match part {
                    "" | "." => {}
                    ".." => return Err(refused("leaves the context")),
                    part => parts.push(part),
                }
            }
            if parts.is_empty() {
                return Err(refused("ignores the whole context"));
            }
            paths.push(parts.join("/"));
        }
        Ok(Self { paths })
    }

    /// Whether context path `path` (normalised, relative) is left out of the context.
    pub fn ignores(&self, path: &str) -> bool {
        self.paths.iter().any(|p| {
            path == p
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_paths_ignore_themselves_and_what_is_beneath() {
        let ignore =
            IgnoreFile::parse("# comment\n\nsecret.txt\n /logs/ \n./build/out\n").expect("parses");
        assert!(ignore.ignores("secret.txt"));
        assert!(ignore.ignores("logs"));
        assert!(ignore.ignores("logs/today/x.log"));
        assert!(ignore.ignores("build/out/bin"));
        assert!(!ignore.ignores("sub/secret.txt"), "no implicit **");
        assert!(!ignore.ignores("logs2"));
        assert!(!ignore.ignores("build"));
    }

    #[test]
    fn what_cannot_be_evaluated_exactly_is_refused() {
        for (text, why) in [
            ("*.log\n", "line 1 (*.log) is a pattern"),
            ("a\n!a/keep\n", "line 2 (!a/keep) is an exception"),
            ("a\\ b\n", "is a pattern"),
            ("../x\n", "leaves the context"),
            ("/\n", "ignores the whole context"),
        ] {
            let err = IgnoreFile::parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
