//! Layered settings: config/default.toml < config/<env>.toml < IMAGE_BUILDER__SECTION__KEY env vars.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use serde::Deserialize;

mod bridge;
mod docker_host;
mod tenancy;

pub use bridge::{BridgeName, BuildSubnet};
pub use docker_host::{DockerAddress, DockerHost};
pub use tenancy::{KeyScope, KeysSetting, ReposSetting, Role};

/// Everything the daemon reads at start. Secrets are `SecretString`, whose Debug output is redacted.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Bound of the bare-mirror cache; least recently used mirrors are evicted beyond it.
    pub git_cache_max_mb: u64,
    pub log: LogSettings,
    pub amqp: AmqpSettings,
    pub retry: RetrySettings,
    pub request: RequestSettings,
    pub connectors: BTreeMap<String, ConnectorSettings>,
    pub build: BuildSettings,
    pub registry: RegistrySettings,
    pub store: StoreSettings,
    pub api: ApiSettings,
    pub webhooks: WebhookSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    /// May hold broker credentials: never logged.
    pub url: SecretString,
    pub prefix: String,
    /// Build slots per replica.
    pub prefetch: u16,
    /// Deliveries taken beyond the build slots, for answers that need no slot (cached ones).
    pub lookahead: u16,
    pub delivery_limit: u32,
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub delays_ms: Vec<u64>,
    pub retry_user_faults: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestSettings {
    pub max_body_bytes: usize,
    pub allowed_schemes: Vec<String>,
    /// Non-public networks a repository URL may resolve to (CIDR; public addresses are always
    /// allowed). A cloud metadata address needs an entry naming it alone.
    #[serde(default)]
    pub allowed_networks: AllowedNetworks,
    /// PEM file of CA certificates https git hosts are also verified against, besides the
    /// system's roots (empty: none).
    #[serde(default)]
    pub git_ca_file: PathBuf,
}

/// `request.allowed_networks`, parsed; an empty item (an empty env override) is ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct AllowedNetworks(pub Vec<ipnet::IpNet>);

impl TryFrom<Vec<String>> for AllowedNetworks {
    type Error = String;

    fn try_from(items: Vec<String>) -> Result<Self, Self::Error> {
        let parse = |item: &str| {
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    let item: String = item.chars().take(60).collect();
                    format!("request.allowed_networks: '{item}' is not a CIDR network (like 127.0.0.0/8)")
                })
        };
        items
            .iter()
            .map(|item| item.trim())
            .filter(|item| !item.is_empty())
            .map(parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConnectorSettings {
    /// Empty means "no base": only full URLs are accepted for this connector.
    pub base_url: String,
    /// User name sent with the request's token (GitHub ignores it, GitLab wants "oauth2").
    pub username: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BuildSettings {
    /// Which engine builds and pushes images.
    pub engine: EngineKind,
    /// Where the docker engine's daemon listens (`unix:///path`, `tcp://host:port`,
    /// `http://host:port`); checked at load, used only when `engine` is docker.
    pub docker_host: DockerHost,
    pub podman: String,
    pub nixpacks: String,
    /// How RUN steps are isolated: `oci` (own PID and network namespaces, cgroup limits) or
    /// `chroot` (shares the host's network and PIDs: an explicit operator choice, warned at start).
    pub isolation: Isolation,
    /// OCI runtime for `oci` isolation (runc works on hybrid cgroups; crun does not).
    pub runtime: String,
    /// The network a RUN step gets.
    pub network: BuildNetwork,
    /// With `isolated`: the bridge each build's own network namespace is attached to.
    pub bridge: BridgeName,
    /// With `isolated`: the bridge's subnet (gateway first, then one address per build).
    pub subnet: BuildSubnet,
    pub limits: BuildLimits,
    pub timeout_secs: u64,
    pub log_tail_lines: usize,
    /// Local build-cache images unused for this long are pruned.
    pub layer_cache_max_age_secs: u64,
    /// Edit the previous image in the registry when only the final COPY steps' files changed.
    pub incremental: bool,
}

/// The image engine a worker uses: the podman CLI, or a Docker Engine API daemon (dockerd, or
/// podman's Docker-compatible service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum EngineKind {
    Podman,
    Docker,
}

impl TryFrom<String> for EngineKind {
    type Error = String;

    // By hand rather than serde's enum error, so the message names the field.
    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "podman" => Ok(Self::Podman),
            "docker" => Ok(Self::Docker),
            other => Err(format!(
                "build.engine must be \"podman\" or \"docker\", not {other:?}"
            )),
        }
    }
}

/// How RUN steps are isolated from the worker's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Isolation {
    /// An OCI runtime: own PID, network, mount and IPC namespaces and a cgroup per build.
    Oci,
    /// podman's chroot: the host's network and PID namespace. Only as an operator's choice.
    Chroot,
}

impl TryFrom<String> for Isolation {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "oci" => Ok(Self::Oci),
            "chroot" => Ok(Self::Chroot),
            other => Err(format!(
                "build.isolation must be \"oci\" or \"chroot\", not {other:?}"
            )),
        }
    }
}

/// The network namespace of a RUN step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum BuildNetwork {
    /// A private namespace with outbound access (package installs work); the host and private
    /// ranges are closed by the firewall rules `scripts/sandbox-firewall.sh` installs.
    Isolated,
    /// Loopback only.
    None,
    /// The host's network: every service on the host is reachable. Only as an operator's choice.
    Host,
}

impl TryFrom<String> for BuildNetwork {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "isolated" => Ok(Self::Isolated),
            "none" => Ok(Self::None),
            "host" => Ok(Self::Host),
            other => Err(format!(
                "build.network must be \"isolated\", \"none\" or \"host\", not {other:?}"
            )),
        }
    }
}

/// Bounds of one build. Going past one ends the build as a user fault naming the limit.
#[derive(Debug, Clone, Deserialize)]
pub struct BuildLimits {
    /// Memory of a build's RUN steps (RAM; no swap beyond it).
    pub memory_mb: u64,
    /// CPUs a build's RUN steps may use (CFS quota), e.g. 1.5.
    pub cpus: f64,
    /// Processes and threads a build's RUN steps may have at once.
    pub pids: u64,
    /// Disk a build may write: any one file a step writes, and what its steps add to the image.
    pub disk_mb: u64,
    /// Size of the checked-out tree (a git bomb fails before it is written).
    pub checkout_mb: u64,
    /// Bytes one fetch may receive from the git host.
    pub fetch_mb: u64,
    /// A git host that sends nothing for this long fails the fetch.
    pub git_stall_secs: u64,
}

impl BuildLimits {
    pub fn git_stall(&self) -> Duration {
        Duration::from_secs(self.git_stall_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegistrySettings {
    pub host: String,
    pub insecure: bool,
    pub username: String,
    pub password: SecretString,
}

/// A registry login, when `registry.username` is set.
#[derive(Debug, Clone)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: SecretString,
}

impl RegistrySettings {
    /// The login every client of the registry uses; none without a user name.
    pub fn credentials(&self) -> Option<RegistryCredentials> {
        (!self.username.is_empty()).then(|| RegistryCredentials {
            username: self.username.clone(),
            password: self.password.clone(),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoreSettings {
    /// `postgres://...` or `sqlite://...`; empty: SQLite file `<data_dir>/builds.db`. May hold a
    /// password: never logged.
    pub url: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub listen: String,
    /// SHA-256 (hex) of admin bearer keys (every user id, every route); kept from before scoped
    /// keys. The keys themselves are never stored.
    #[serde(default)]
    pub key_hashes: Vec<String>,
    /// Scoped keys: a SHA-256, a role and the user ids the key acts for.
    #[serde(default)]
    pub keys: KeysSetting,
    /// Largest `limit` of a list request.
    pub max_page: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Shared secret of GitHub's X-Hub-Signature-256; empty refuses every webhook.
    pub github_secret: SecretString,
    /// Connector the pushed repositories are fetched through (its base URL comes from config).
    pub github_connector: String,
    /// The platform user each GitHub repository (`owner/name`) builds for; pushes of any other
    /// repository build nothing.
    #[serde(default)]
    pub github_repos: ReposSetting,
    /// Largest webhook body read (and so signed-checked); larger ones answer 413 unread.
    pub max_body_bytes: usize,
    /// How long a delivery id or a signed body is remembered to refuse its replay.
    pub replay_window_secs: u64,
}

impl ApiSettings {
    /// Every accepted key with its scope (checked at load, so this fails only on a changed copy).
    pub fn key_scopes(&self) -> anyhow::Result<Vec<KeyScope>> {
        tenancy::key_scopes(&self.key_hashes, &self.keys)
    }
}

impl WebhookSettings {
    /// `owner/name` (lowercase) -> user id.
    pub fn github_repos(&self) -> anyhow::Result<BTreeMap<String, String>> {
        tenancy::github_repos(&self.github_repos)
    }
}

impl Settings {
    /// Loads settings from `config_dir` for environment `env` plus process env overrides.
    pub fn load(config_dir: &Path, env: &str) -> anyhow::Result<Self> {
        let base = config_dir.join("default.toml");
        anyhow::ensure!(
            base.is_file(),
            "failed to find {} (run from the project directory or set IMAGE_BUILDER_CONFIG_DIR)",
            base.display()
        );
        let settings = config::Config::builder()
            .add_source(config::File::from(base))
            .add_source(config::File::from(config_dir.join(format!("{env}.toml"))).required(false))
            .add_source(
                config::Environment::with_prefix("IMAGE_BUILDER")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("retry.delays_ms")
                    .with_list_parse_key("request.allowed_schemes")
                    .with_list_parse_key("request.allowed_networks")
                    .with_list_parse_key("api.key_hashes")
                    .try_parsing(true),
            )
            .build()
            .context("failed to read configuration")?
            .try_deserialize::<Settings>()
            .context("failed to parse configuration")?;
        settings.check()?;
        Ok(settings)
    }

    /// Loads from IMAGE_BUILDER_CONFIG_DIR (default `config`) and IMAGE_BUILDER_ENV (default `local`).
    pub fn from_env() -> anyhow::Result<Self> {
        let dir = std::env::var_os("IMAGE_BUILDER_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        let env = std::env::var("IMAGE_BUILDER_ENV").unwrap_or_else(|_| "local".into());
        Self::load(&dir, &env)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.amqp.prefetch > 0, "amqp.prefetch must be at least 1");
        anyhow::ensure!(
            self.retry.max_attempts > 0,
            "retry.max_attempts must be at least 1"
        );
        anyhow::ensure!(
            !self.retry.delays_ms.is_empty(),
            "retry.delays_ms needs at least one tier"
        );
        anyhow::ensure!(
            !self.amqp.prefix.is_empty(),
            "amqp.prefix must not be empty"
        );
        let limits = &self.build.limits;
        anyhow::ensure!(
            limits.cpus > 0.0 && limits.cpus.is_finite(),
            "build.limits.cpus must be a positive number"
        );
        for (name, value) in [
            ("memory_mb", limits.memory_mb),
            ("pids", limits.pids),
            ("disk_mb", limits.disk_mb),
            ("checkout_mb", limits.checkout_mb),
            ("fetch_mb", limits.fetch_mb),
            ("git_stall_secs", limits.git_stall_secs),
        ] {
            anyhow::ensure!(value > 0, "build.limits.{name} must be at least 1");
        }
        anyhow::ensure!(
            !(self.build.isolation == Isolation::Chroot
                && self.build.network != BuildNetwork::Host),
            "build.isolation = \"chroot\" shares the host's network: set build.network = \"host\" \
             to say so, or use isolation \"oci\""
        );
        self.api.key_scopes()?;
        self.webhooks.github_repos()?;
        anyhow::ensure!(
            self.webhooks.max_body_bytes > 0,
            "webhooks.max_body_bytes must be at least 1"
        );
        anyhow::ensure!(
            self.webhooks.replay_window_secs > 0,
            "webhooks.replay_window_secs must be at least 1"
        );
        Ok(())
    }

    /// One line per way the operator loosened the build sandbox, logged at start.
    pub fn sandbox_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.build.engine == EngineKind::Podman && self.build.isolation == Isolation::Chroot {
            warnings.push(
                "build.isolation = \"chroot\": RUN steps share this host's PID namespace and run \
                 without cgroup limits (build.limits apply to oci isolation only)"
                    .to_owned(),
            );
        }
        if self.build.network == BuildNetwork::Host {
            warnings.push(
                "build.network = \"host\": RUN steps reach every service listening on this host, \
                 loopback included"
                    .to_owned(),
            );
        }
        if self.build.engine == EngineKind::Docker {
            warnings.push(
                "build.engine = \"docker\": isolation and build.limits are the daemon's own \
                 configuration, not image-builder's"
                    .to_owned(),
            );
        }
        warnings
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("git-cache")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.data_dir.join("work")
    }

    pub fn build_timeout(&self) -> Duration {
        Duration::from_secs(self.build.timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_config_loads_for_local_env() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let settings = Settings::load(&dir, "local").expect("config loads");
        assert!(
            settings.registry.insecure,
            "local env marks the registry insecure"
        );
        assert!(settings.connectors.contains_key("github"));
        assert_eq!(settings.retry.max_attempts, 5);
    }

    #[test]
    fn allowed_networks_parse_and_bad_entries_name_the_field() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let local = Settings::load(&dir, "local").expect("config loads");
        let nets: Vec<String> = local
            .request
            .allowed_networks
            .0
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["127.0.0.0/8", "::1/128"]);

        let parsed =
            AllowedNetworks::try_from(vec!["".into(), " 10.0.0.0/8 ".into(), "::1".into()]);
        let parsed: Vec<String> = parsed
            .expect("parsed")
            .0
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            parsed,
            ["10.0.0.0/8", "::1/128"],
            "a bare address is a /32 or /128"
        );
        let err = AllowedNetworks::try_from(vec!["10.0.0.0/33".into()]).expect_err("refused");
        assert!(
            err.starts_with("request.allowed_networks: '10.0.0.0/33'"),
            "{err}"
        );
    }

    #[test]
    fn engine_defaults_to_podman_and_bad_values_name_the_field() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let settings = Settings::load(&dir, "local").expect("config loads");
        assert_eq!(settings.build.engine, EngineKind::Podman);
        assert_eq!(
            settings.build.docker_host.to_string(),
            "unix:///var/run/docker.sock"
        );

        let err = EngineKind::try_from("buildkit".to_owned()).expect_err("refused");
        assert!(err.starts_with("build.engine must be"), "{err}");
        assert_eq!(
            EngineKind::try_from("docker".to_owned()),
            Ok(EngineKind::Docker)
        );

        let err = DockerHost::try_from("ssh://builder".to_owned()).expect_err("refused");
        assert!(err.starts_with("build.docker_host must be"), "{err}");
    }

    #[test]
    fn local_dev_key_submits_for_the_demo_user_only() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let settings = Settings::load(&dir, "local").expect("config loads");
        let keys = settings.api.key_scopes().expect("valid keys");
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0].role, Role::Submit);
        assert_eq!(keys[0].users, Some(vec!["demo".to_owned()]));
        assert!(settings.webhooks.github_repos().expect("valid").is_empty());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let settings = Settings::load(&dir, "local").expect("config loads");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("guest:guest"), "broker URL leaked: {shown}");
    }
}
