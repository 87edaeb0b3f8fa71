//! The settings that weaken a deployment. Outside the `local` environment each needs its own
//! `security.allow_*` switch, so a production host that forgets a variable refuses to start
//! instead of running with a public key or plain-text fetches. Wherever one is in effect, start
//! logs one line naming it.

use serde::Deserialize;

use super::Settings;

/// SHA-256 of `local-dev-key`, the key the repository publishes for the demo and tests.
pub const PUBLISHED_DEV_KEY_HASH: &str =
    "ed5a18fb8f807f996d649e379d3f35f39c543a91bdbf88c492f2ebd10d4df86c";

/// Repository URL schemes that travel unencrypted.
const PLAINTEXT_SCHEMES: [&str; 2] = ["http", "git"];

/// `[security]`: explicit consent to each weakening outside the `local` environment.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SecuritySettings {
    /// Accept `registry.insecure = true` (plain HTTP, credentials and images unencrypted).
    pub allow_insecure_registry: bool,
    /// Accept `http` or `git` in `request.allowed_schemes` (fetches readable and alterable on
    /// the way).
    pub allow_plaintext_git: bool,
    /// Accept the published `local-dev-key` among the API keys (anyone can read its hash here).
    pub allow_published_dev_key: bool,
}

/// One weakening in effect: the setting, what it costs, and what allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relaxation {
    pub setting: String,
    pub risk: &'static str,
    pub allowed_by: String,
}

impl Relaxation {
    /// The start-up warning line.
    pub fn warning(&self) -> String {
        format!(
            "security relaxed: {} ({}), allowed by {}",
            self.setting, self.risk, self.allowed_by
        )
    }
}

/// The weakenings in `settings`: those allowed (to be warned about), or the refusals of those
/// that are not, each naming the setting and the switch that would allow it.
pub fn review(settings: &Settings, local: bool) -> Result<Vec<Relaxation>, Vec<String>> {
    let security = &settings.security;
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    let mut judge = |setting: String, risk: &'static str, switch: &str, on: bool| {
        if local {
            allowed.push(Relaxation {
                setting,
                risk,
                allowed_by: "IMAGE_BUILDER_ENV=local".to_owned(),
            });
        } else if on {
            allowed.push(Relaxation {
                setting,
                risk,
                allowed_by: format!("{switch} = true"),
            });
        } else {
            refused.push(format!(
                "{setting} is refused outside the local environment ({risk}): set {switch} = true \
                 to run with it anyway"
            ));
        }
    };
    if settings.registry.insecure {
        judge(
            "registry.insecure = true".to_owned(),
            "images and registry credentials travel over plain HTTP",
            "security.allow_insecure_registry",
            security.allow_insecure_registry,
        );
    }
    for (i, entry) in settings.base_images.registries.iter().enumerate() {
        let places = entry.insecure_places();
        if !places.is_empty() {
            judge(
                format!("base_images.registries[{i}] pulls from {places:?} insecurely"),
                "base images travel over plain HTTP or unverified TLS and can be altered on the way",
                "security.allow_insecure_registry",
                security.allow_insecure_registry,
            );
        }
    }
    let plaintext: Vec<&str> = settings
        .request
        .allowed_schemes
        .iter()
        .map(String::as_str)
        .filter(|s| PLAINTEXT_SCHEMES.contains(s))
        .collect();
    if !plaintext.is_empty() {
        judge(
            format!("request.allowed_schemes includes {plaintext:?}"),
            "repositories are fetched unencrypted and can be altered on the way",
            "security.allow_plaintext_git",
            security.allow_plaintext_git,
        );
    }
    if let Some(setting) = dev_key_setting(settings) {
        judge(
            format!("{setting} holds the published key `local-dev-key`"),
            "its hash is in the public repository, anyone can use it",
            "security.allow_published_dev_key",
            security.allow_published_dev_key,
        );
    }
    if refused.is_empty() {
        Ok(allowed)
    } else {
        Err(refused)
    }
}

/// The setting that configures the published key, if one does (compared as digests, so case
/// and spacing of the hex do not matter).
fn dev_key_setting(settings: &Settings) -> Option<&'static str> {
    let dev = hex::decode(PUBLISHED_DEV_KEY_HASH).ok()?;
    let is_dev = |hash: &str| hex::decode(hash.trim()).is_ok_and(|d| d == dev);
    if settings.api.key_hashes.iter().any(|h| is_dev(h)) {
        return Some("api.key_hashes");
    }
    let scopes = settings.api.key_scopes().ok()?;
    scopes
        .iter()
        .any(|scope| scope.digest[..] == dev[..])
        .then_some("api.keys")
}
