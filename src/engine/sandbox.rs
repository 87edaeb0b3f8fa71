//! The box a podman build's RUN steps run in: an OCI runtime (own PID, mount, IPC and network
//! namespaces), the build's network, a cgroup bounding memory, CPU and processes, a per-file
//! size limit, and a watch on what the steps write. Afterwards it names the limit a failed
//! build ran into, so the user is told which one instead of a bare "exit status 137".

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use super::build_net::BuildNet;
use super::cgroup::BuildCgroup;
use super::disk_watch;
use crate::config::{BridgeName, BuildLimits, BuildNetwork, BuildSubnet};
use crate::error::{BuildError, EngineError};

/// What a sandbox is made of, from `[build]`.
pub struct SandboxSettings {
    pub runtime: String,
    pub network: BuildNetwork,
    pub bridge: BridgeName,
    pub subnet: BuildSubnet,
    pub limits: BuildLimits,
}

pub struct Sandbox {
    runtime: String,
    /// podman's `--network` for the steps.
    network: String,
    limits: BuildLimits,
    cgroup: Arc<BuildCgroup>,
    /// The build's own network namespace (`isolated`); removed with the sandbox.
    _net: Option<BuildNet>,
}

impl Sandbox {
    pub async fn create(settings: &SandboxSettings) -> Result<Self, BuildError> {
        let cgroup =
            BuildCgroup::create(&super::cgroup::new_name(), &settings.limits).map_err(|e| {
                EngineError::Sandbox {
                    what: "cgroup",
                    source: e.into(),
                }
            })?;
        let (network, net) = match settings.network {
            // One namespace for all the build's steps, on the bridge the firewall fences (NAT
            // egress; this host, private ranges and other builds closed).
            BuildNetwork::Isolated => {
                let net = BuildNet::create(&settings.bridge, &settings.subnet)
                    .await
                    .map_err(|e| EngineError::Sandbox {
                        what: "network namespace",
                        source: e.into(),
                    })?;
                (net.podman_network(), Some(net))
            }
            BuildNetwork::None => ("none".to_owned(), None),
            BuildNetwork::Host => ("host".to_owned(), None),
        };
        Ok(Self {
            runtime: settings.runtime.clone(),
            network,
            limits: settings.limits.clone(),
            cgroup: Arc::new(cgroup),
            _net: net,
        })
    }

    /// `podman build` flags that put every RUN step in the box.
    pub fn podman_args(&self) -> Vec<String> {
        let network = &self.network;
        let file_bytes = self.disk_bytes();
        vec![
            "--isolation=oci".to_owned(),
            format!("--runtime={}", self.runtime),
            format!("--network={network}"),
            format!("--cgroup-parent={}", self.cgroup.parent_for_steps()),
            format!("--ulimit=fsize={file_bytes}:{file_bytes}"),
        ]
    }

    fn disk_bytes(&self) -> u64 {
        self.limits.disk_mb.saturating_mul(1024 * 1024)
    }

    /// Starts watching the steps' writes, and what they add beneath `also` (directories the
    /// steps mount, such as the tenant's cache mounts); the build runs under the returned token.
    pub fn watch(&self, cancel: &CancellationToken, also: Vec<PathBuf>) -> Watched<'_> {
        let kill = cancel.child_token();
        let stop = CancellationToken::new();
        let disk_exceeded = disk_watch::watch(
            self.cgroup.clone(),
            disk_watch::Bound {
                bytes: self.disk_bytes(),
                also,
            },
            kill.clone(),
            stop.clone(),
        );
        Watched {
            sandbox: self,
            kill,
            stop,
            disk_exceeded,
        }
    }
}

/// A build running in the sandbox.
pub struct Watched<'a> {
    sandbox: &'a Sandbox,
    kill: CancellationToken,
    stop: CancellationToken,
    disk_exceeded: Arc<AtomicBool>,
}

impl Watched<'_> {
    /// Cancelled by the build's own cancel, or by the sandbox when a limit is passed.
    pub fn cancel(&self) -> &CancellationToken {
        &self.kill
    }

    /// After a failed build: the limit it ran into, if any (`tail` is the end of its log).
    pub fn finish(self, tail: &[String]) -> Option<String> {
        self.stop.cancel();
        let disk_mb = self.sandbox.limits.disk_mb;
        if self.disk_exceeded.load(Ordering::SeqCst) {
            return Some(format!(
                "the RUN steps wrote more than build.limits.disk_mb = {disk_mb} MiB"
            ));
        }
        // RLIMIT_FSIZE: a process dies of SIGXFSZ (its shell says "File size limit exceeded"),
        // or, as a container's PID 1 (immune to that signal), its write fails with EFBIG,
        // which tools report as "File too large" or, busybox, a plain "I/O error".
        const FILE_LIMIT: [&str; 3] = ["File size limit exceeded", "File too large", "I/O error"];
        if tail
            .iter()
            .any(|line| FILE_LIMIT.iter().any(|m| line.contains(m)))
        {
            return Some(format!(
                "a RUN step failed writing a file; one file may hold at most \
                 build.limits.disk_mb = {disk_mb} MiB"
            ));
        }
        self.sandbox.cgroup.exceeded()
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
