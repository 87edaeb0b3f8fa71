//! Domain newtypes parsed at the edge. Each `parse` returns the reason a value is refused; the
//! caller attaches the field name.

use std::fmt;

/// Idempotency key of a request: at most 128 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 128 {
            return Err("must be 1 to 128 characters".into());
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err("may only contain letters, digits, '.', '_' and '-'".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Owner of a build and the image namespace, so it must be a valid OCI path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() > 64 {
            return Err("must be at most 64 characters".into());
        }
        if !is_path_component(raw) {
            return Err(
                "must be lowercase letters and digits, optionally separated by '.', '_' or '-' \
                 (it is the image namespace)"
                    .into(),
            );
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A branch, tag or commit SHA. Refuses anything git could read as an option or a revision
/// expression, following `git check-ref-format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRef(String);

impl GitRef {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 255 {
            return Err("must be 1 to 255 characters".into());
        }
        if raw.starts_with('-') {
            return Err("must not start with '-'".into());
        }
        if let Some(c) = raw.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "must not contain control or space characters ({c:?})"
            ));
        }
        if let Some(c) = raw.chars().find(|c| "~^:?*[\\".contains(*c)) {
            return Err(format!("must not contain '{c}'"));
        }
        if raw.contains("..") || raw.contains("@{") || raw.contains("//") {
            return Err("must not contain '..', '@{' or '//'".into());
        }
        if raw.starts_with('/') || raw.ends_with('/') || raw.ends_with('.') || raw == "@" {
            return Err("must not start or end with '/', end with '.', or be '@'".into());
        }
        if raw
            .split('/')
            .any(|part| part.starts_with('.') || part.ends_with(".lock"))
        {
            return Err("no component may start with '.' or end with '.lock'".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// A full SHA-1 or SHA-256 object name.
    pub fn is_full_sha(&self) -> bool {
        matches!(self.0.len(), 40 | 64) && self.0.chars().all(|c| c.is_ascii_hexdigit())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A relative path inside the checkout: no absolute paths, no `..`, no option-looking or control
/// characters. Symlinks are checked again after checkout, where they can be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath(String);

impl RelPath {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 1024 {
            return Err("must be 1 to 1024 characters".into());
        }
        if raw.starts_with('/') {
            return Err("must be relative to the repository, not absolute".into());
        }
        if raw.starts_with('-') {
            return Err("must not start with '-'".into());
        }
        if raw.chars().any(|c| c.is_control()) {
            return Err("must not contain control characters".into());
        }
        if raw.split('/').any(|part| part == "..") {
            return Err("must not contain '..' (it would leave the checkout)".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn root() -> Self {
        Self(".".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Dockerfile stage to build (`target`), lowercase: BuildKit and podman match stage names
/// without regard to case. The characters BuildKit allows in `FROM ... AS <name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageName(String);

impl StageName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut chars = raw.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !first_ok || !rest_ok || raw.len() > 128 {
            return Err(
                "must be a stage name: [A-Za-z][A-Za-z0-9_.-]*, at most 128 characters".into(),
            );
        }
        Ok(Self(raw.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `os/arch[/variant]` from the set registries and podman agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform(String);

impl Platform {
    const KNOWN: &'static [&'static str] = &[
        "linux/amd64",
        "linux/arm64",
        "linux/arm64/v8",
        "linux/arm/v7",
        "linux/arm/v6",
        "linux/386",
        "linux/ppc64le",
        "linux/s390x",
        "linux/riscv64",
    ];

    pub fn parse(raw: &str) -> Result<Self, String> {
        if Self::KNOWN.contains(&raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "unknown platform {:?}; expected one of {}",
                truncate(raw, 40),
                Self::KNOWN.join(", ")
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An image repository name below the user's namespace, e.g. `web` or `team/web`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName(String);

impl ImageName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 128 {
            return Err("must be 1 to 128 characters".into());
        }
        if !raw.split('/').all(is_path_component) {
            return Err(
                "each '/'-separated part must be lowercase letters and digits, \
                 optionally separated by '.', '_' or '-'"
                    .into(),
            );
        }
        Ok(Self(raw.to_owned()))
    }

    /// Derives a valid name from a repository name: lowercased, other characters become '-'.
    pub fn from_repo_name(repo: &str) -> Option<Self> {
        let lowered: String = repo
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let trimmed = lowered.trim_matches('-');
        let collapsed = trimmed
            .split('-')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        Self::parse(&collapsed).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An artifact's name: `[a-z0-9][a-z0-9._-]*`, at most 64 characters. It names the file
/// (`<name>.tar.gz`), the API path segment and the OCI title, so it stays URL- and file-safe.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ArtifactName(String);

impl ArtifactName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut chars = raw.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        if !first_ok || !rest_ok || raw.len() > 64 {
            return Err(format!(
                "{:?} must match [a-z0-9][a-z0-9._-]* and be at most 64 characters",
                truncate(raw, 70)
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute path inside an image, normalised (`.` and empty parts dropped, `..` applied):
/// `/app/dist`. A `..` that would climb above `/` is refused, as is `/` itself (the whole
/// image is an image, not an artifact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePath(String);

impl ImagePath {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 1024 {
            return Err("must be 1 to 1024 characters".into());
        }
        if !raw.starts_with('/') {
            return Err(format!(
                "{:?} must be absolute (start with '/')",
                truncate(raw, 70)
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(format!(
                            "{:?} leaves the image's root through '..'",
                            truncate(raw, 70)
                        ));
                    }
                }
                other => parts.push(other),
            }
        }
        if parts.is_empty() {
            return Err("must name a file or directory below '/', not the root".into());
        }
        Ok(Self(format!("/{}", parts.join("/"))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path as tar entries of a layer name it: without the leading '/'.
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }
}

/// An image tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(String);

/// Tags image-builder writes itself (`ib-<key>`, `ib-line-<key>`): whoever could write them
/// could plant an image a later identical request receives as built.
pub const RESERVED_PREFIX: &str = "ib-";

fn is_reserved(tag: &str) -> bool {
    tag.get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
}

impl Tag {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut chars = raw.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !first_ok || !rest_ok || raw.len() > 128 {
            return Err(
                "must match [A-Za-z0-9_][A-Za-z0-9_.-]* and be at most 128 characters".into(),
            );
        }
        if is_reserved(raw) {
            return Err(format!(
                "tags starting with {RESERVED_PREFIX} are reserved for image-builder's build keys"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Turns a ref such as `feature/login` into a tag such as `feature-login`.
    pub fn sanitized(raw: &str) -> Option<Self> {
        let mapped: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let trimmed = mapped.trim_start_matches(['.', '-']);
        // A branch may be called `ib-line-...`: its tag must not land in the reserved names.
        let unreserved = if is_reserved(trimmed) {
            format!("ref-{trimmed}")
        } else {
            trimmed.to_owned()
        };
        let short: String = unreserved.chars().take(128).collect();
        Self::parse(&short).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// OCI path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.is_empty() || !is_alnum_lower(bytes[0]) || !is_alnum_lower(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum_lower(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum_lower(bytes[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let dashes = sep.bytes().all(|b| b == b'-');
        if !(sep == "." || sep == "_" || sep == "__" || dashes) {
            return false;
        }
    }
    true
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Shortens untrusted text before it is quoted back in an error.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_that_could_inject_are_refused() {
        for bad in [
            "--upload-pack=touch /tmp/x",
            "-x",
            "a..b",
            "main\0",
            "main\n",
            "a b",
            "HEAD~1",
            "x^{}",
            "a:b",
            "@{-1}",
            "/abs",
            "end/",
            ".hidden",
            "x.lock",
            "",
        ] {
            assert!(GitRef::parse(bad).is_err(), "accepted {bad:?}");
        }
        for good in ["main", "feature/login", "v1.2.3", "release-2026.11"] {
            assert!(GitRef::parse(good).is_ok(), "refused {good:?}");
        }
    }

    #[test]
    fn sha_detection() {
        let sha = GitRef::parse(&"a".repeat(40)).expect("valid");
        assert!(sha.is_full_sha());
        assert!(!GitRef::parse("abc123").expect("valid").is_full_sha());
    }

    #[test]
    fn paths_cannot_escape() {
        for bad in ["../x", "a/../../etc", "/etc/passwd", "-f", "a\u{1}b", ".."] {
            assert!(RelPath::parse(bad).is_err(), "accepted {bad:?}");
        }
        for good in [".", "services/api", "docker/Dockerfile.prod", "a..b"] {
            assert!(RelPath::parse(good).is_ok(), "refused {good:?}");
        }
    }

    #[test]
    fn user_ids_are_namespaces() {
        assert!(UserId::parse("18008").is_ok());
        assert!(UserId::parse("team-a.b").is_ok());
        for bad in ["Alice", "a/b", "-a", "a-", "", "a..b"] {
            assert!(UserId::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn image_names_and_tags() {
        assert!(ImageName::parse("team/web").is_ok());
        assert!(ImageName::parse("Web").is_err());
        assert_eq!(
            ImageName::from_repo_name("My_Repo.Name").map(|n| n.0),
            Some("my-repo-name".to_owned())
        );
        assert!(Tag::parse("v1.0").is_ok());
        assert!(Tag::parse(".x").is_err());
        assert_eq!(
            Tag::sanitized("feature/login").map(|t| t.0),
            Some("feature-login".into())
        );
        // A branch named like a build key gets a tag outside the reserved names.
        assert_eq!(
            Tag::sanitized("ib-line-0123").map(|t| t.0),
            Some("ref-ib-line-0123".into())
        );
        assert!(Tag::parse("ib-0123").is_err());
    }

    #[test]
    fn image_paths_are_normalised_and_stay_inside() {
        let ok = |raw: &str| ImagePath::parse(raw).map(|p| p.0);
        assert_eq!(ok("/app/dist"), Ok("/app/dist".into()));
        assert_eq!(ok("/app//./dist/"), Ok("/app/dist".into()));
        assert_eq!(ok("/app/x/../dist"), Ok("/app/dist".into()));
        assert_eq!(ok("/app/../etc"), Ok("/etc".into()));
        assert_eq!(
            ImagePath::parse("/app/dist").map(|p| p.relative().to_owned()),
            Ok("app/dist".into())
        );
        for bad in [
            "",
            "app/dist",
            "/..",
            "/app/../../etc",
            "/",
            "/.",
            "/a\nb",
            "./x",
        ] {
            assert!(ImagePath::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn artifact_names() {
        for good in ["dist", "web-1.0", "a_b", "0"] {
            assert!(ArtifactName::parse(good).is_ok(), "refused {good:?}");
        }
        for bad in ["", "Dist", "-x", ".x", "a/b", "a b", &"a".repeat(65)] {
            assert!(ArtifactName::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn platforms() {
        assert!(Platform::parse("linux/amd64").is_ok());
        assert!(Platform::parse("windows/amd64").is_err());
    }
}
