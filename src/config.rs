//! Layered settings: built-in defaults (config/default.toml, compiled in) < the built-in overlay
//! of IMAGE_BUILDER_ENV (only `local`, config/local.toml) < the operator's file
//! (IMAGE_BUILDER_CONFIG) < IMAGE_BUILDER__SECTION__KEY env vars. Unknown keys and unsafe
//! combinations are refused at load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

mod base_images;
mod bridge;
mod brokers;
mod docker_host;
pub mod layers;
pub mod notify;
pub mod report;
pub mod safety;
pub mod schema;
mod tenancy;

pub use base_images::{BaseImageSettings, BaseMirror, BaseRegistry};
pub use bridge::{BridgeName, BuildSubnet};
pub use brokers::broker_endpoint;
pub use docker_host::{DockerAddress, DockerHost};
pub use layers::{Layers, Origin};
pub use notify::{NotifySettings, Webhook, Webhooks};
pub use safety::{Relaxation, SecuritySettings};
pub use tenancy::{Forge, KeyScope, KeysSetting, ReposSetting, Role};

/// Everything the daemon reads at start. Secrets are `SecretString`, whose Debug output is redacted.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Bound of the bare-mirror cache; least recently used mirrors are evicted beyond it.
    pub git_cache_max_mb: u64,
    /// Checkouts kept for the next build of their repository (one each, least recently kept
    /// go first); 0 keeps none.
    pub kept_checkouts: usize,
    /// What the kept checkouts may hold together.
    pub kept_checkouts_max_mb: u64,
    pub log: LogSettings,
    pub amqp: AmqpSettings,
    pub retry: RetrySettings,
    pub request: RequestSettings,
    pub connectors: BTreeMap<String, ConnectorSettings>,
    pub build: BuildSettings,
    pub registry: RegistrySettings,
    /// Where `FROM` images are pulled from.
    pub base_images: BaseImageSettings,
    pub store: StoreSettings,
    pub api: ApiSettings,
    pub webhooks: WebhookSettings,
    pub security: SecuritySettings,
    /// HTTP webhooks notified of every recorded event.
    pub notify: NotifySettings,
    pub artifacts: ArtifactSettings,
    /// Rebuilds when a base image moves (`api::base_updates`).
    pub bases: BaseUpdateSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BaseUpdateSettings {
    /// Off: no base update publishes a rebuild.
    pub rebuild: bool,
    /// 0: no polling (registry notifications only).
    pub poll_interval_ms: u64,
    /// The registry's notifications' bearer key; empty refuses them.
    pub notify_key: SecretString,
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

/// Time a delivery is held besides the build itself (fetch, push, waiting for a slot).
pub const CONSUMER_TIMEOUT_MARGIN_SECS: u64 = 300;

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
    /// What the broker's `consumer_timeout` is set to (it cannot be read from the broker).
    pub consumer_timeout_secs: u64,
    /// Management HTTP API base URL, for the queue policies.
    pub management_url: String,
    /// The nodes of one cluster, tried in order; when it names any, `url` is not used
    /// (`broker_urls`). May hold broker credentials: never logged.
    pub urls: Vec<SecretString>,
    /// Management APIs of those nodes; when it names any, `management_url` is not used.
    pub management_urls: Vec<String>,
    /// Cache affinity (`amqp/topology.rs`): how long a request waits for the replica its
    /// repository hashes to before any replica may take it; 0 = off.
    pub affinity_fallback_ms: u64,
    /// This replica's stable name, naming its affinity queue; empty = the host name.
    pub replica: String,
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
    /// What the `RUN --mount=type=cache` directories of one user and repository may hold
    /// between builds; past it they are emptied before that pair's next build.
    pub cache_mounts_mb: u64,
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

/// `[artifacts]`: exports of built images (see `artifacts`).
#[derive(Debug, Clone, Deserialize)]
pub struct ArtifactSettings {
    /// Bound of one artifact's uncompressed tar.
    pub max_bytes: u64,
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
    /// A build's lease on its id lapses when not renewed for this long.
    pub lease_secs: u64,
    /// Lease renewal, stored-cancel and outcome polling interval.
    pub poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub listen: String,
    /// Where `image-builder worker` answers /healthz, /readyz and /metrics (and nothing else);
    /// empty: it serves no HTTP. `serve` and `run` answer them on `listen`.
    pub probes_listen: String,
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
    /// GitLab's X-Gitlab-Token, compared in constant time; empty refuses GitLab webhooks.
    pub gitlab_secret: SecretString,
    /// Connector GitLab's pushed repositories are fetched through.
    pub gitlab_connector: String,
    /// The platform user each GitLab project (`group/.../name`) builds for.
    #[serde(default)]
    pub gitlab_repos: ReposSetting,
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
        tenancy::mapped_repos(Forge::Github, &self.github_repos)
    }

    /// `group/.../name` (lowercase) -> user id.
    pub fn gitlab_repos(&self) -> anyhow::Result<BTreeMap<String, String>> {
        tenancy::mapped_repos(Forge::Gitlab, &self.gitlab_repos)
    }
}

impl Settings {
    /// Loads the layers the process is given: IMAGE_BUILDER_ENV, IMAGE_BUILDER_CONFIG (a file)
    /// and the IMAGE_BUILDER__* variables. Nothing is read from the working directory.
    pub fn from_env() -> anyhow::Result<Self> {
        let file = std::env::var_os("IMAGE_BUILDER_CONFIG").map(PathBuf::from);
        Ok(Self::from_layers(&process_layers(file.as_deref())?)?.0)
    }

    /// The built-ins of `env` plus the process's IMAGE_BUILDER__* variables (tests, tools).
    pub fn for_env(env: &str) -> anyhow::Result<Self> {
        let layers = Layers::gather(Some(env), None, process_vars())?;
        Ok(Self::from_layers(&layers)?.0)
    }

    /// The settings and the weakenings in effect (to be warned about once at start), or every
    /// problem found, one per line.
    pub fn from_layers(layers: &Layers) -> anyhow::Result<(Self, Vec<Relaxation>)> {
        let review = Review::of(layers);
        match review.settings {
            Some(settings) if review.problems.is_empty() => Ok((settings, review.relaxations)),
            _ => anyhow::bail!("{}", review.problems.join("\n")),
        }
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
        anyhow::ensure!(
            self.amqp
                .replica
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && self.amqp.replica.len() <= 100,
            "amqp.replica: at most 100 of A-Z a-z 0-9 - _ . (it names a queue)"
        );
        let broker_problems = self.amqp.url_problems();
        anyhow::ensure!(broker_problems.is_empty(), "{}", broker_problems.join("\n"));
        anyhow::ensure!(
            self.build
                .timeout_secs
                .saturating_add(CONSUMER_TIMEOUT_MARGIN_SECS)
                <= self.amqp.consumer_timeout_secs,
            "build.timeout_secs ({}) + {CONSUMER_TIMEOUT_MARGIN_SECS} s for fetch and push exceeds \
             amqp.consumer_timeout_secs ({}): the broker would take a running build's delivery back \
             and hand it to another replica. Raise the broker's consumer_timeout (rabbitmq.conf, \
             ms) and amqp.consumer_timeout_secs with it, or lower build.timeout_secs",
            self.build.timeout_secs,
            self.amqp.consumer_timeout_secs
        );
        anyhow::ensure!(
            self.store.poll_ms > 0
                && self.store.poll_ms.saturating_mul(3)
                    <= self.store.lease_secs.saturating_mul(1000),
            "store.poll_ms must be at least 1 and at most a third of store.lease_secs \
             (a lease is renewed every poll)"
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
        let problems = self.base_images.problems();
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
        anyhow::ensure!(
            self.build.engine != EngineKind::Docker || self.base_images.is_docker_default(),
            "build.engine = \"docker\" cannot apply base_images (the daemon pulls base images \
             itself: set registry-mirrors and insecure-registries in its daemon.json); leave \
             base_images at its defaults or use build.engine = \"podman\""
        );
        self.api.key_scopes()?;
        self.webhooks.github_repos()?;
        self.webhooks.gitlab_repos()?;
        anyhow::ensure!(
            self.webhooks.max_body_bytes > 0,
            "webhooks.max_body_bytes must be at least 1"
        );
        anyhow::ensure!(
            self.webhooks.replay_window_secs > 0,
            "webhooks.replay_window_secs must be at least 1"
        );
        let problems = self.notify.problems();
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
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

    /// Beside the builds' work dirs (on their filesystem: a checkout is kept by a rename).
    pub fn kept_checkouts_dir(&self) -> PathBuf {
        self.work_dir().join(".kept")
    }

    /// Each tenant's `RUN --mount=type=cache` directories, one directory per tenant.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.data_dir.join("cache-mounts")
    }

    pub fn build_timeout(&self) -> Duration {
        Duration::from_secs(self.build.timeout_secs)
    }
}

/// Everything found in a set of layers: the settings when they parse and pass their checks,
/// the weakenings they allow, and every problem (unknown keys, bad values, unsafe combinations).
pub struct Review {
    pub settings: Option<Settings>,
    pub relaxations: Vec<Relaxation>,
    pub problems: Vec<String>,
}

impl Review {
    pub fn of(layers: &Layers) -> Self {
        let mut problems = schema::unknown_keys(&layers.entries);
        let parsed = layers
            .builder()
            .and_then(|b| b.build().map_err(anyhow::Error::from))
            .and_then(|c| c.try_deserialize::<Settings>().map_err(anyhow::Error::from))
            .map_err(|e| anyhow::anyhow!("failed to parse configuration: {e}"))
            .and_then(|s| s.check().map(|()| s));
        let (settings, relaxations) = match parsed {
            Ok(settings) => match safety::review(&settings, layers.is_local()) {
                Ok(relaxations) => (Some(settings), relaxations),
                Err(refusals) => {
                    problems.extend(refusals);
                    (Some(settings), Vec::new())
                }
            },
            Err(e) => {
                problems.push(format!("{e:#}"));
                (None, Vec::new())
            }
        };
        Self {
            settings,
            relaxations,
            problems,
        }
    }
}

/// The layers of this process: its IMAGE_BUILDER_ENV and variables, and `file` if given.
pub fn process_layers(file: Option<&Path>) -> anyhow::Result<Layers> {
    let env = std::env::var("IMAGE_BUILDER_ENV").ok();
    Layers::gather(env.as_deref(), file, process_vars())
}

/// Variables with UTF-8 names and values (others cannot be settings).
fn process_vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-ins of `env` alone, whatever this process's environment holds.
    fn builtin(env: &str) -> Settings {
        let layers = Layers::gather(Some(env), None, []).expect("gathered");
        Settings::from_layers(&layers).expect("config loads").0
    }

    #[test]
    fn project_config_loads_for_local_env() {
        let settings = builtin("local");
        assert!(
            settings.registry.insecure,
            "local env marks the registry insecure"
        );
        assert!(settings.connectors.contains_key("github"));
        assert_eq!(settings.retry.max_attempts, 5);
    }

    #[test]
    fn allowed_networks_parse_and_bad_entries_name_the_field() {
        let local = builtin("local");
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
        let settings = builtin("local");
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
        let settings = builtin("local");
        let keys = settings.api.key_scopes().expect("valid keys");
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0].role, Role::Submit);
        assert_eq!(keys[0].users, Some(vec!["demo".to_owned()]));
        assert!(settings.webhooks.github_repos().expect("valid").is_empty());
    }

    #[test]
    fn a_build_timeout_past_the_brokers_consumer_timeout_is_refused() {
        let mut settings = builtin("production");
        assert!(settings.check().is_ok(), "the defaults fit");
        settings.build.timeout_secs = 3400;
        let err = settings.check().expect_err("refused").to_string();
        assert!(err.contains("amqp.consumer_timeout_secs"), "{err}");
        settings.amqp.consumer_timeout_secs = 3700;
        assert!(settings.check().is_ok());
        settings.store.poll_ms = settings.store.lease_secs * 1000;
        assert!(
            settings.check().is_err(),
            "a lease outlives several renewals"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let settings = builtin("local");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("guest:guest"), "broker URL leaked: {shown}");
    }

    #[test]
    fn the_defaults_alone_are_safe() {
        let settings = builtin("production");
        assert!(!settings.registry.insecure);
        assert_eq!(settings.request.allowed_schemes, ["https"]);
        assert!(settings.api.key_scopes().expect("valid").is_empty());
        assert_eq!(settings.build.isolation, Isolation::Oci);
        let layers = Layers::gather(None, None, []).expect("gathered");
        assert_eq!(layers.env, "production", "local is never implicit");
        let (_, relaxations) = Settings::from_layers(&layers).expect("loads");
        assert!(relaxations.is_empty(), "{relaxations:?}");
    }

    #[test]
    fn the_published_dev_key_is_refused_outside_local_naming_it() {
        let var = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let dev = var(
            "IMAGE_BUILDER__API__KEYS",
            &format!(
                "{}:submit:demo",
                safety::PUBLISHED_DEV_KEY_HASH.to_uppercase()
            ),
        );
        let layers = Layers::gather(None, None, [dev.clone()]).expect("gathered");
        let err = Settings::from_layers(&layers).expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("api.keys holds the published key `local-dev-key`")
                && msg.contains("security.allow_published_dev_key"),
            "{msg}"
        );
        let allow = var("IMAGE_BUILDER__SECURITY__ALLOW_PUBLISHED_DEV_KEY", "true");
        let layers = Layers::gather(None, None, [dev, allow]).expect("gathered");
        let (_, relaxations) = Settings::from_layers(&layers).expect("allowed explicitly");
        assert_eq!(relaxations.len(), 1, "{relaxations:?}");
        assert!(relaxations[0].warning().contains("local-dev-key"));
    }

    #[test]
    fn base_image_settings_are_checked_at_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ib.toml");
        let mirrored = "[[base_images.registries]]\nprefix = \"docker.io\"\n\
                        location = \"hub.internal\"\n\
                        mirrors = [{ location = \"cache.internal:5000/hub\", insecure = true }]\n";
        std::fs::write(&file, mirrored).expect("written");
        // An insecure mirror is a weakening like an insecure registry.
        let layers = Layers::gather(None, Some(&file), []).expect("gathered");
        let err = Settings::from_layers(&layers).expect_err("refused outside local");
        assert!(
            err.to_string()
                .contains("base_images.registries[0] pulls from")
                && err.to_string().contains("security.allow_insecure_registry"),
            "{err}"
        );
        let var = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let allow = var("IMAGE_BUILDER__SECURITY__ALLOW_INSECURE_REGISTRY", "true");
        let layers = Layers::gather(None, Some(&file), [allow.clone()]).expect("gathered");
        let (settings, relaxations) = Settings::from_layers(&layers).expect("allowed");
        assert_eq!(
            settings.base_images.registries[0].location(),
            "hub.internal"
        );
        assert_eq!(relaxations.len(), 1, "{relaxations:?}");
        // The docker engine's daemon pulls by its own settings: refused, not ignored.
        let docker = var("IMAGE_BUILDER__BUILD__ENGINE", "docker");
        let layers = Layers::gather(None, Some(&file), [allow, docker]).expect("gathered");
        let err = Settings::from_layers(&layers).expect_err("refused");
        assert!(
            err.to_string().contains("cannot apply base_images"),
            "{err}"
        );
        // The same from a variable.
        let compact = var(
            "IMAGE_BUILDER__BASE_IMAGES__REGISTRIES",
            "prefix=docker.io,location=hub.internal,mirror=cache.internal:5000/hub",
        );
        let layers = Layers::gather(None, None, [compact]).expect("gathered");
        let (settings, _) = Settings::from_layers(&layers).expect("loads");
        assert_eq!(settings.base_images.registries[0].mirrors.len(), 1);
        // A typo inside an entry names itself.
        std::fs::write(
            &file,
            "[[base_images.registries]]\nprefix = \"x.io\"\nmirror = []\n",
        )
        .expect("written");
        let layers = Layers::gather(None, Some(&file), []).expect("gathered");
        let err = Settings::from_layers(&layers).expect_err("refused");
        assert!(err.to_string().contains("mirror"), "{err}");
    }

    #[test]
    fn a_config_file_is_layered_between_the_built_ins_and_variables() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ib.toml");
        std::fs::write(
            &file,
            "[registry]\nhost = \"from-file:5000\"\nusername = \"u\"\n",
        )
        .expect("written");
        let vars = [(
            "IMAGE_BUILDER__REGISTRY__HOST".to_owned(),
            "from-var:5000".to_owned(),
        )];
        let layers = Layers::gather(None, Some(&file), vars).expect("gathered");
        let (settings, _) = Settings::from_layers(&layers).expect("loads");
        assert_eq!(settings.registry.host, "from-var:5000");
        assert_eq!(settings.registry.username, "u");
        assert_eq!(
            layers.effective()["registry.username"].origin,
            Origin::File(file.clone())
        );
    }
}
