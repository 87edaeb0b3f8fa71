//! The request's token for one fetch: offered only to the scheme, host and port the fetch was
//! given, and at most once without an answer. Both libgit2's credential callback (http, through
//! the relay) and the pinned https transport ask here, so they refuse alike.

use std::sync::Mutex;

use secrecy::SecretString;
use url::Url;

use crate::ports::SourceSpec;

/// What asking for the token came to, to tell "no token" from "token refused" afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthSeen {
    NotAsked,
    Asked,
    NoToken,
    Refused,
    /// Asked for credentials by a host other than the request's remote (a redirect).
    OtherHost,
}

pub(super) struct Token {
    /// The URL the fetch was given (the relay's for an http remote).
    origin: Url,
    username: String,
    token: Option<SecretString>,
    seen: Mutex<AuthSeen>,
}

impl Token {
    pub(super) fn new(spec: &SourceSpec, origin: &Url) -> Self {
        Self {
            origin: origin.clone(),
            username: spec.username.clone(),
            token: spec.token.clone(),
            seen: Mutex::new(AuthSeen::NotAsked),
        }
    }

    pub(super) fn seen(&self) -> AuthSeen {
        self.seen.lock().map_or(AuthSeen::NotAsked, |seen| *seen)
    }

    fn set(&self, seen: AuthSeen) {
        if let Ok(mut slot) = self.seen.lock() {
            *slot = seen;
        }
    }

    /// The user name and token, once a host asked and got them (the same origin asks again
    /// only when it refused them).
    pub(super) fn granted(&self) -> Option<(&str, &SecretString)> {
        let token = self.token.as_ref()?;
        (self.seen() == AuthSeen::Asked).then_some((self.username.as_str(), token))
    }

    /// The user name and token for `asked_by`, which accepts a plain user and password when
    /// `plaintext`; or why not (a message without the token).
    pub(super) fn ask(
        &self,
        asked_by: &str,
        plaintext: bool,
    ) -> Result<(&str, &SecretString), &'static str> {
        if !same_origin(&self.origin, asked_by) {
            self.set(AuthSeen::OtherHost);
            return Err("a host other than the request's remote asked for the token");
        }
        if self.seen() == AuthSeen::Asked {
            // Asked again: the first answer was refused. Do not loop.
            self.set(AuthSeen::Refused);
            return Err("the git host refused the token");
        }
        let Some(token) = self.token.as_ref() else {
            self.set(AuthSeen::NoToken);
            return Err("the git host asks for credentials and the request has no token");
        };
        if !plaintext {
            self.set(AuthSeen::Refused);
            return Err("the git host wants a credential type other than a token");
        }
        self.set(AuthSeen::Asked);
        Ok((&self.username, token))
    }
}

/// Whether `asked_by` is the remote's scheme, host and port (an unparsable URL is not).
pub(super) fn same_origin(remote: &Url, asked_by: &str) -> bool {
    Url::parse(asked_by).is_ok_and(|asked| {
        asked.scheme() == remote.scheme()
            && asked.host() == remote.host()
            && asked.port_or_known_default() == remote.port_or_known_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(remote: &str) -> Token {
        let spec = SourceSpec {
            remote: Url::parse(remote).expect("test URL"),
            username: "x-access-token".into(),
            token: Some("gho_s3cret".to_owned().into()),
            git_ref: None,
            ref_kind: Default::default(),
        };
        Token::new(&spec, &spec.remote)
    }

    #[test]
    fn the_token_goes_only_to_the_remotes_origin() {
        for other in [
            "https://evil.example.com/acme/app.git",
            "https://git.example.com:8443/acme/app.git",
            "http://git.example.com/acme/app.git",
            "not a url",
        ] {
            let token = token("https://git.example.com/acme/app.git");
            assert!(token.ask(other, true).is_err(), "{other}");
            assert_eq!(token.seen(), AuthSeen::OtherHost, "{other}");
        }
        let token = token("https://git.example.com/acme/app.git");
        let same = "https://git.example.com:443/acme/app.git/info/refs";
        assert!(token.ask(same, true).is_ok());
    }

    #[test]
    fn a_second_ask_is_a_refusal_and_a_non_plaintext_ask_gets_nothing() {
        let token = token("https://git.example.com/a.git");
        let url = "https://git.example.com/a.git";
        assert!(token.ask(url, true).is_ok());
        assert!(token.ask(url, true).is_err());
        assert_eq!(token.seen(), AuthSeen::Refused);
        let token = self::token(url);
        assert!(token.ask(url, false).is_err());
        assert_eq!(token.seen(), AuthSeen::Refused);
    }
}
