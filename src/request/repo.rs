//! The `repo` and `connector` fields: which git host, and which repository on it.

use std::borrow::Cow;

use url::Url;

use super::types::truncate;

/// A git host kind; its base URL and credential user name come from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    Github,
    Gitlab,
    Git,
}

impl Connector {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "github" => Ok(Self::Github),
            "gitlab" => Ok(Self::Gitlab),
            "git" => Ok(Self::Git),
            other => Err(format!(
                "unknown connector {:?}; expected github, gitlab or git",
                truncate(other, 40)
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Gitlab => "gitlab",
            Self::Git => "git",
        }
    }
}

/// Where the repository is: a path resolved against the connector's base URL, or a full URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoSpec {
    /// `owner/name` (GitLab: `group/sub/name`), without `.git`.
    Path(String),
    Url(Url),
}

impl RepoSpec {
    pub fn parse(
        raw: &str,
        connector: Connector,
        allowed_schemes: &[String],
    ) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 512 {
            return Err("must be 1 to 512 characters".into());
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("must not contain control or space characters".into());
        }
        if raw.starts_with('-') {
            return Err("must not start with '-'".into());
        }
        if raw.contains("://") {
            return Self::parse_url(raw, allowed_schemes);
        }
        if raw.contains(':') || raw.contains('@') {
            return Err(
                "scp-style addresses are not supported; use owner/name or an https URL".into(),
            );
        }
        Self::parse_path(raw, connector)
    }

    fn parse_url(raw: &str, allowed_schemes: &[String]) -> Result<Self, String> {
        // The URL parser would silently resolve dot segments, so look at the raw text first.
        if raw.split('/').any(|seg| seg == ".." || seg == ".") {
            return Err("must not contain '.' or '..' path segments".into());
        }
        let url = Url::parse(raw).map_err(|e| format!("is not a valid URL: {e}"))?;
        let scheme = url.scheme();
        if !allowed_schemes.iter().any(|s| s == scheme) {
            return Err(format!(
                "URL scheme '{}' is not allowed (allowed: {})",
                truncate(scheme, 20),
                allowed_schemes.join(", ")
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not embed credentials; send them in the token field".into());
        }
        if scheme != "file" && url.host_str().is_none_or(str::is_empty) {
            return Err("URL must name a host".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("URL must not have a query or fragment".into());
        }
        if url.path().trim_matches('/').is_empty() {
            return Err("URL must name a repository path".into());
        }
        Ok(Self::Url(url))
    }

    fn parse_path(raw: &str, connector: Connector) -> Result<Self, String> {
        let trimmed = raw.strip_suffix(".git").unwrap_or(raw);
        let parts: Vec<&str> = trimmed.split('/').collect();
        let count_ok = match connector {
            Connector::Github => parts.len() == 2,
            Connector::Gitlab | Connector::Git => (2..=20).contains(&parts.len()),
        };
        if !count_ok {
            return Err(match connector {
                Connector::Github => "must be owner/name or an https URL".into(),
                _ => "must be group/name (subgroups allowed) or a URL".into(),
            });
        }
        let part_ok = |p: &&str| {
            !p.is_empty()
                && !p.starts_with(['.', '-'])
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !parts.iter().all(part_ok) {
            return Err("each part must be letters, digits, '.', '_' or '-', \
                 and not start with '.' or '-'"
                .into());
        }
        Ok(Self::Path(trimmed.to_owned()))
    }

    /// The repository's own name (last path segment without `.git`), used for the image name.
    pub fn name(&self) -> &str {
        let path = match self {
            Self::Path(p) => p.as_str(),
            Self::Url(u) => u.path(),
        };
        let last = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(path);
        last.strip_suffix(".git").unwrap_or(last)
    }

    /// As the user wrote it. `parse_url` refuses credentials; stripping again keeps that true
    /// should the parser ever change.
    pub fn display(&self) -> String {
        match self {
            Self::Path(p) => p.clone(),
            Self::Url(u) => strip_userinfo(u.as_str()).into_owned(),
        }
    }
}

/// A repo string without user-info (`user:token@`), query or fragment (`?access_token=`): the
/// one sanitiser for every repo string that reaches an event, a record or a log, valid or not.
/// A URL the parser accepts is cleaned exactly; anything else loses everything up to its last
/// '@', since parsers disagree on where a user-info holding '/' or '@' ends and removing too
/// much from input that is refused anyway costs nothing.
pub fn strip_userinfo(raw: &str) -> Cow<'_, str> {
    if let Ok(mut url) = Url::parse(raw)
        && url.has_host()
    {
        if url.username().is_empty()
            && url.password().is_none()
            && url.query().is_none()
            && url.fragment().is_none()
        {
            return Cow::Borrowed(raw);
        }
        // Cannot fail on a URL with a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.set_fragment(None);
        return Cow::Owned(url.into());
    }
    let scheme_end = raw.find("://").map_or(0, |i| i + 3);
    let rest = &raw[scheme_end..];
    let rest = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    let rest = rest.find(['?', '#']).map_or(rest, |cut| &rest[..cut]);
    if rest.len() + scheme_end == raw.len() {
        return Cow::Borrowed(raw);
    }
    Cow::Owned(format!("{}{rest}", &raw[..scheme_end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn https() -> Vec<String> {
        vec!["https".into()]
    }

    #[test]
    fn github_paths_and_urls() {
        let spec = RepoSpec::parse("vano2903/testing", Connector::Github, &https()).expect("ok");
        assert_eq!(spec, RepoSpec::Path("vano2903/testing".into()));
        assert_eq!(spec.name(), "testing");
        let url =
            RepoSpec::parse("https://example.com/a/b.git", Connector::Git, &https()).expect("ok");
        assert_eq!(url.name(), "b");
    }

    #[test]
    fn hostile_repos_are_refused() {
        for bad in [
            "file:///etc",
            "http://example.com/a/b",
            "https://user:pw@example.com/a/b",
            "https://example.com/a/../../b",
            "git@github.com:a/b",
            "a/b/c",
            "--upload-pack=x/y",
            "a/-b",
            "a/.b",
            "https://example.com/a/b?x=1",
            "ext::sh -c touch% /tmp/pwned",
            "a",
        ] {
            assert!(
                RepoSpec::parse(bad, Connector::Github, &https()).is_err(),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn user_info_query_and_fragment_are_stripped() {
        for (raw, clean) in [
            (
                "https://x-access-token:gho_s3cret@github.com/acme/app",
                "https://github.com/acme/app",
            ),
            (
                "https://gho_s3cret@github.com/acme/app",
                "https://github.com/acme/app",
            ),
            (
                "https://u:gho%40s3cret@host:8443/a/b",
                "https://host:8443/a/b",
            ),
            (
                "https://host/a/b?access_token=gho_s3cret#x",
                "https://host/a/b",
            ),
            // Refused by the URL parser (a '/' in the password): everything up to the last '@'.
            ("https://u:gho/s3cret@host/a/b", "https://host/a/b"),
            ("https://u:a@b@c", "https://c/"),
            ("gho_s3cret@github.com:acme/app", "github.com:acme/app"),
        ] {
            assert_eq!(strip_userinfo(raw), clean, "{raw}");
        }
        for clean in ["acme/app", "https://github.com/acme/app", "not a url"] {
            assert!(matches!(strip_userinfo(clean), Cow::Borrowed(_)), "{clean}");
        }
    }

    #[test]
    fn schemes_follow_config() {
        let allowed = vec!["https".to_string(), "git".to_string()];
        assert!(RepoSpec::parse("git://127.0.0.1/x/y.git", Connector::Git, &allowed).is_ok());
        assert!(RepoSpec::parse("http://127.0.0.1/x/y.git", Connector::Git, &allowed).is_err());
    }
}
