//! Registry authentication: which scheme the registry asked for, the basic login, and bearer
//! tokens by scope with their expiry (distribution token spec).
//!
//! The scheme a registry challenged with is remembered, so later requests carry credentials on
//! the first try instead of paying a 401 round trip each. Credentials only ever go to the
//! configured registry's origin (never to an upload location elsewhere), and to a token realm
//! only over https or on the registry's own host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::RegistryCredentials;
use crate::error::RegistryError;

/// A token's lifetime when the token server does not say (distribution token spec).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// Refresh this much before expiry at most: a request must not arrive with a token that
/// expired on the way.
const MAX_MARGIN: Duration = Duration::from_secs(10);

/// How credentials went on a request, which decides what a 401 to it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    Basic,
    /// A token from the cache: the registry may have stopped accepting it.
    CachedToken,
    /// A token fetched for this very request: asking again would not help.
    FreshToken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    /// Not challenged yet (or an anonymous registry).
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct Token {
    value: SecretString,
    refresh_at: Instant,
}

pub(super) struct Auth {
    credentials: Option<RegistryCredentials>,
    registry: url::Url,
    scheme: Mutex<Scheme>,
    tokens: Mutex<HashMap<String, Token>>,
}

impl Auth {
    pub(super) fn new(registry: url::Url, credentials: Option<RegistryCredentials>) -> Self {
        Self {
            credentials,
            registry,
            scheme: Mutex::new(Scheme::Unknown),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Puts on `request` the credentials the registry is known to want for `scope`, if any:
    /// the basic login, or a token for the scope (cached while valid, else fetched now).
    pub(super) async fn authorize(
        &self,
        http: &reqwest::Client,
        request: &mut reqwest::Request,
        scope: &str,
    ) -> Result<Option<Sent>, RegistryError> {
        if !self.is_registry(request.url()) {
            return Ok(None);
        }
        let scheme = self.scheme();
        let (header, sent) = match scheme {
            Scheme::Unknown => return Ok(None),
            Scheme::Basic => match self.basic_header() {
                Some(header) => (header, Sent::Basic),
                None => return Ok(None),
            },
            Scheme::Bearer { realm, service } => match self.cached_token(scope) {
                Some(token) => (bearer_header(&token)?, Sent::CachedToken),
                None => {
                    let token = self
                        .fetch_token(http, &realm, service.as_deref(), scope)
                        .await?;
                    (bearer_header(&token)?, Sent::FreshToken)
                }
            },
        };
        request.headers_mut().insert(AUTHORIZATION, header);
        Ok(Some(sent))
    }

    /// After a 401 with `challenge` to a request that went out with `sent`: the Authorization
    /// to send it again with, or None when another try would not help (give the 401 back).
    pub(super) async fn answer(
        &self,
        http: &reqwest::Client,
        url: &url::Url,
        challenge: &str,
        sent: Option<Sent>,
        scope: &str,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        if matches!(sent, Some(Sent::CachedToken | Sent::FreshToken)) {
            // Rejected: never offer it again.
            self.forget_token(scope);
        }
        if !self.is_registry(url) {
            return Ok(None);
        }
        match parse_challenge(challenge) {
            Some(Scheme::Bearer { realm, service }) => {
                self.remember(Scheme::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                });
                if sent == Some(Sent::FreshToken) {
                    return Ok(None);
                }
                let token = self
                    .fetch_token(http, &realm, service.as_deref(), scope)
                    .await?;
                Ok(Some(bearer_header(&token)?))
            }
            Some(Scheme::Basic) => {
                self.remember(Scheme::Basic);
                if sent == Some(Sent::Basic) {
                    return Ok(None);
                }
                Ok(self.basic_header())
            }
            _ => Ok(None),
        }
    }

    fn scheme(&self) -> Scheme {
        self.scheme
            .lock()
            .map(|s| s.clone())
            .unwrap_or(Scheme::Unknown)
    }

    fn remember(&self, scheme: Scheme) {
        if let Ok(mut current) = self.scheme.lock() {
            *current = scheme;
        }
    }

    /// Same scheme, host and port as the configured registry.
    fn is_registry(&self, url: &url::Url) -> bool {
        url.origin() == self.registry.origin()
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let login = self.credentials.as_ref()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            login.username,
            login.password.expose_secret()
        ));
        let mut header = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        header.set_sensitive(true);
        Some(header)
    }

    fn cached_token(&self, scope: &str) -> Option<SecretString> {
        let tokens = self.tokens.lock().ok()?;
        let token = tokens.get(scope)?;
        (Instant::now() < token.refresh_at).then(|| token.value.clone())
    }

    fn forget_token(&self, scope: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(scope);
        }
    }

    /// Asks the token server for a token for `scope` and caches it until shortly before it
    /// expires.
    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<SecretString, RegistryError> {
        let realm_url = url::Url::parse(realm).map_err(|e| {
            RegistryError::Protocol(format!("the registry's token realm is not a URL: {e}"))
        })?;
        let mut request = http.get(realm_url.clone()).query(&[("scope", scope)]);
        if let Some(service) = service {
            request = request.query(&[("service", service)]);
        }
        if self.may_log_in_at(&realm_url)
            && let Some(header) = self.basic_header()
        {
            request = request.header(AUTHORIZATION, header);
        }
        let received = Instant::now();
        let response = request.send().await.map_err(RegistryError::Unreachable)?;
        if !response.status().is_success() {
            return Err(RegistryError::Status {
                status: response.status(),
                doing: format!("from the token server for {scope}"),
            });
        }
        let body: serde_json::Value =
            response
                .json()
                .await
                .map_err(|source| RegistryError::Unreadable {
                    what: "a token",
                    source,
                })?;
        let value = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Protocol("the registry gave no token".into()))?;
        let value = SecretString::from(value.to_owned());
        let valid_for = remaining(
            body.get("expires_in").and_then(|v| v.as_u64()),
            body.get("issued_at").and_then(|v| v.as_str()),
            OffsetDateTime::now_utc(),
        );
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                scope.to_owned(),
                Token {
                    value: value.clone(),
                    refresh_at: received + refresh_after(valid_for),
                },
            );
        }
        Ok(value)
    }

    /// The login may go to a token realm over https, or on the registry's own host (a local
    /// registry without TLS); never in clear text to somewhere else.
    fn may_log_in_at(&self, realm: &url::Url) -> bool {
        realm.scheme() == "https" || realm.host() == self.registry.host()
    }
}

fn bearer_header(token: &SecretString) -> Result<HeaderValue, RegistryError> {
    let mut header = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
        .map_err(|_| RegistryError::Protocol("the token server gave an unusable token".into()))?;
    header.set_sensitive(true);
    Ok(header)
}

/// How long a token is still valid at `now`: `expires_in` (60 s if absent) counted from
/// `issued_at` when given and not in the future (clock skew), else from receipt.
fn remaining(expires_in: Option<u64>, issued_at: Option<&str>, now: OffsetDateTime) -> Duration {
    let lifetime = expires_in
        .filter(|secs| *secs > 0)
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    let issued = issued_at.and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok());
    match issued {
        Some(issued) if issued <= now => lifetime.saturating_sub((now - issued).unsigned_abs()),
        _ => lifetime,
    }
}

/// When to stop using a token valid for `remaining`: a tenth before expiry, at most 10 s.
fn refresh_after(remaining: Duration) -> Duration {
    remaining.saturating_sub((remaining / 10).min(MAX_MARGIN))
}

/// The scheme of a `WWW-Authenticate` challenge, with a bearer challenge's realm and service.
fn parse_challenge(challenge: &str) -> Option<Scheme> {
    let (scheme, params) = challenge
        .trim()
        .split_once(' ')
        .unwrap_or((challenge.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Scheme::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    Some(Scheme::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
    })
}

/// `realm="https://auth",service="registry",scope="..."` -> its key/value pairs.
fn parse_params(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params;
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = match after.trim_start().strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((value, next)) => (value, next),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.insert(key, value.trim().to_owned());
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> OffsetDateTime {
        OffsetDateTime::parse(rfc3339, &Rfc3339).expect("timestamp")
    }

    #[test]
    fn bearer_challenges_give_realm_and_service() {
        let parsed = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            parsed,
            Some(Scheme::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
            })
        );
        let p =
            parse_params(r#"realm="r", scope="repository:a/b:pull,push",error=insufficient_scope"#);
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert_eq!(p["error"], "insufficient_scope");
    }

    #[test]
    fn basic_and_unknown_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Scheme::Basic)
        );
        assert_eq!(parse_challenge("basic"), Some(Scheme::Basic));
        assert_eq!(parse_challenge(r#"Negotiate abc"#), None);
        // A bearer challenge without a realm cannot be answered.
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn lifetimes_default_to_sixty_seconds_from_receipt() {
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(remaining(None, None, now), Duration::from_secs(60));
        assert_eq!(remaining(Some(0), None, now), Duration::from_secs(60));
        assert_eq!(remaining(Some(300), None, now), Duration::from_secs(300));
        assert_eq!(
            remaining(Some(300), Some("not a time"), now),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn lifetimes_count_from_issued_at() {
        let now = at("2026-01-01T00:01:00Z");
        assert_eq!(
            remaining(Some(300), Some("2026-01-01T00:00:00Z"), now),
            Duration::from_secs(240)
        );
        assert_eq!(
            remaining(None, Some("2026-01-01T00:00:30Z"), now),
            Duration::from_secs(30)
        );
        // Long expired: nothing left, never negative.
        assert_eq!(
            remaining(Some(10), Some("2025-12-31T00:00:00Z"), now),
            Duration::ZERO
        );
        // Issued "in the future" (clock skew): count from receipt instead.
        assert_eq!(
            remaining(Some(300), Some("2026-01-01T00:05:00Z"), now),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn tokens_are_refreshed_a_little_before_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(60)),
            Duration::from_secs(54)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3590)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(2)),
            Duration::from_millis(1800)
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    fn auth(base: &str) -> Auth {
        Auth::new(
            url::Url::parse(base).expect("url"),
            Some(RegistryCredentials {
                username: "u".into(),
                password: SecretString::from("p".to_owned()),
            }),
        )
    }

    #[test]
    fn credentials_stay_with_the_registry() {
        let a = auth("http://127.0.0.1:5000");
        let url = |s: &str| url::Url::parse(s).expect("url");
        assert!(a.is_registry(&url("http://127.0.0.1:5000/v2/a/manifests/x")));
        assert!(!a.is_registry(&url("http://127.0.0.1:5001/v2/a/manifests/x")));
        assert!(!a.is_registry(&url("https://127.0.0.1:5000/v2/")));
        assert!(!a.is_registry(&url("http://storage.example.com/upload")));
        assert!(a.may_log_in_at(&url("http://127.0.0.1:9999/token")));
        assert!(a.may_log_in_at(&url("https://auth.example.com/token")));
        assert!(!a.may_log_in_at(&url("http://auth.example.com/token")));
    }

    #[test]
    fn the_basic_header_is_sensitive_and_encoded() {
        let header = auth("http://127.0.0.1:5000").basic_header().expect("login");
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().ok(), Some("Basic dTpw"));
        assert!(
            Auth::new(url::Url::parse("http://r").expect("url"), None)
                .basic_header()
                .is_none()
        );
    }

    #[tokio::test]
    async fn basic_goes_on_the_first_try_once_challenged() {
        let a = auth("http://127.0.0.1:5000");
        let http = reqwest::Client::new();
        let mut request = http
            .get("http://127.0.0.1:5000/v2/")
            .build()
            .expect("request");
        let scope = "repository:a:pull";
        assert_eq!(
            a.authorize(&http, &mut request, scope).await.ok(),
            Some(None)
        );
        assert!(request.headers().get(AUTHORIZATION).is_none());
        let url = request.url().clone();
        let resend = a
            .answer(&http, &url, r#"Basic realm="x""#, None, scope)
            .await
            .expect("answer");
        assert!(resend.is_some());
        assert_eq!(
            a.authorize(&http, &mut request, scope).await.ok(),
            Some(Some(Sent::Basic))
        );
        assert!(request.headers().get(AUTHORIZATION).is_some());
        // Refused basic credentials are not sent again and again.
        let again = a
            .answer(&http, &url, r#"Basic realm="x""#, Some(Sent::Basic), scope)
            .await
            .expect("answer");
        assert!(again.is_none());
        // Nor to another host.
        let mut elsewhere = http
            .put("http://127.0.0.2:5000/upload")
            .build()
            .expect("request");
        assert_eq!(
            a.authorize(&http, &mut elsewhere, scope).await.ok(),
            Some(None)
        );
        assert!(elsewhere.headers().get(AUTHORIZATION).is_none());
    }
}
