//! A base image's `ONBUILD` triggers as `buildah inspect` prints them. They run at the base's
//! `FROM` inside the build that uses it, with that build's rights, so the engine checks them
//! like the Dockerfile's own steps before podman builds (`cache_mounts::trigger_refusal`).
//! podman's own inspect shows the OCI config, which has no triggers; buildah shows the Docker
//! config podman builds from.

use crate::build_log::MAX_LINE;

/// `buildah inspect --format` printing each trigger Go-quoted on its own line.
pub(super) const FORMAT: &str = "{{range .Docker.Config.OnBuild}}{{printf \"%q\" .}}\n{{end}}";

/// The triggers from the inspect's output lines. A line the log may have cut, or one that is
/// not a quoted string, cannot be checked: that is an error naming why.
pub(super) fn parse(lines: &[String]) -> Result<Vec<String>, String> {
    lines
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            if line.len() >= MAX_LINE / 2 {
                return Err("an ONBUILD trigger too long to check".to_owned());
            }
            unquote(line.trim()).ok_or_else(|| format!("an unreadable ONBUILD trigger: {line}"))
        })
        .collect()
}

/// The text of a Go `%q` string literal.
fn unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
            }
            'u' | 'U' => return None,
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_triggers_are_read_back() {
        let lines = vec![
            r#""RUN --mount=type=cache,id=x/../../etc,target=/h cat /h/hostname""#.to_owned(),
            r#""RUN echo \"a\\b\"\ttab""#.to_owned(),
            String::new(),
        ];
        assert_eq!(
            parse(&lines).expect("parsed"),
            [
                "RUN --mount=type=cache,id=x/../../etc,target=/h cat /h/hostname",
                "RUN echo \"a\\b\"\ttab"
            ]
        );
    }

    #[test]
    fn what_cannot_be_read_whole_is_an_error() {
        assert!(parse(&["RUN unquoted".to_owned()]).is_err());
        assert!(parse(&[format!("\"{}\"", "a".repeat(MAX_LINE))]).is_err());
        assert!(parse(&[r#""\u00e9""#.to_owned()]).is_err());
    }
}
