//! Docker Engine API adapter (bollard), for hosts that run dockerd (or podman's
//! Docker-compatible service). The context travels as a tar; labels, build args and registry
//! credentials as API fields and headers: nothing is on a command line. bollard logs request
//! URLs (build args included) at debug level: `telemetry` caps its target at warn.

mod context;
mod host;
mod push;
mod stream;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;
use secrecy::ExposeSecret;

use stream::BuildOutput;

use super::ImageEngine;
use crate::config::{BuildSettings, DockerHost, RegistryCredentials, RegistrySettings};
use crate::error::{BuildError, EngineError};
use crate::now_and_then::NowAndThen;
use crate::ports::{BuildCtx, BuildSpec, Built};
use crate::request::Rejection;

/// Builds and pushes through one Docker Engine API daemon. Holds the registry password, so it
/// has no Debug.
pub struct DockerEngine {
    host: DockerHost,
    nixpacks: String,
    registry_host: String,
    credentials: Option<RegistryCredentials>,
    /// The build timeout: reported when a deadline passes, and bollard's per-request bound.
    timeout: Duration,
    layer_cache_max_age: Duration,
    pruning: NowAndThen,
}

impl DockerEngine {
    /// `registry.insecure` has no say here: the Engine API has no TLS switch per request, so a
    /// plain-HTTP registry must be marked insecure in the daemon's own configuration (dockerd's
    /// `insecure-registries`, podman's registries.conf).
    pub fn new(build: &BuildSettings, registry: &RegistrySettings) -> Self {
        Self {
            host: build.docker_host.clone(),
            nixpacks: build.nixpacks.clone(),
            registry_host: registry.host.clone(),
            credentials: registry.credentials(),
            timeout: Duration::from_secs(build.timeout_secs),
            layer_cache_max_age: Duration::from_secs(build.layer_cache_max_age_secs),
            pruning: NowAndThen::new(super::PRUNE_EVERY),
        }
    }

    /// A client that has spoken to the daemon once, to settle the API version (podman's compat
    /// service speaks 1.41, bollard starts higher): an unreachable daemon shows up here.
    async fn connect(&self) -> Result<Docker, BuildError> {
        let unreachable = |e: DockerError| {
            BuildError::Engine(EngineError::Docker {
                doing: format!("failed to reach the docker daemon at {}", self.host),
                source: e,
            })
        };
        let docker =
            host::client(&self.host, self.timeout.as_secs().max(1)).map_err(unreachable)?;
        docker.negotiate_version().await.map_err(unreachable)
    }

    /// An error that is not the daemon's answer about the image: the connection failed.
    fn lost(&self, e: DockerError) -> BuildError {
        BuildError::Engine(EngineError::Docker {
            doing: format!("lost the docker daemon at {}", self.host),
            source: e,
        })
    }

    /// Runs `work` until the build's deadline or its cancellation. Giving up drops the request
    /// and with it the connection. dockerd runs a build under the request's context (moby's
    /// build router hands it to the builder), which a closed connection cancels: the build
    /// stops. podman 4.3's compat service does not stop: seen here with an `ADD` of a slowly
    /// served URL, still downloading 24 s after the client had gone; such a build ends on its
    /// own and, if it succeeds, leaves its `local_ref` tag behind.
    async fn within<T>(
        &self,
        ctx: &BuildCtx,
        work: impl Future<Output = Result<T, BuildError>>,
    ) -> Result<T, BuildError> {
        tokio::select! {
            result = work => result,
            () = tokio::time::sleep(ctx.remaining()) => Err(BuildError::TimedOut(self.timeout)),
            () = ctx.cancel.cancelled() => Err(BuildError::Cancelled),
        }
    }

    /// Registry credentials for the daemon: bollard sends them base64-encoded in the
    /// X-Registry-Auth (push) or X-Registry-Config (build: base image pulls) header.
    fn credentials(&self) -> Option<DockerCredentials> {
        self.credentials.as_ref().map(|login| DockerCredentials {
            username: Some(login.username.clone()),
            password: Some(login.password.expose_secret().to_owned()),
            serveraddress: Some(self.registry_host.clone()),
            ..Default::default()
        })
    }

    async fn run_build(
        &self,
        spec: &BuildSpec,
        ctx: &BuildCtx,
        platform: Option<&str>,
    ) -> Result<(), BuildError> {
        let input = super::Input::new(spec, &self.nixpacks, ctx).await?;
        let (source_dockerfile, context_dir) = (&input.dockerfile, &input.context);
        let archive = {
            let (dir, text) = (context_dir.clone(), input.text.clone());
            let scratch = ctx.scratch_dir.clone();
            tokio::task::spawn_blocking(move || context::archive(&dir, text.as_bytes(), &scratch))
                .await
                .map_err(|e| BuildError::Internal(anyhow::anyhow!("context task failed: {e}")))??
        };
        let docker = self.connect().await?;

        let build_args: HashMap<&str, &str> = spec.build_args.iter().collect();
        // In order, so the builder's own labels (last) win over a request's.
        let labels: HashMap<&str, &str> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut options = BuildImageOptionsBuilder::new()
            .dockerfile(&archive.dockerfile)
            .t(&spec.local_ref)
            .rm(true)
            .forcerm(true)
            .buildargs(&build_args)
            .labels(&labels);
        if let Some(platform) = platform {
            options = options.platform(platform);
        }
        if let Some(target) = &spec.target {
            options = options.target(target);
        }
        let tar = tokio::fs::File::open(&archive.path).await.map_err(|e| {
            BuildError::Internal(anyhow::anyhow!("failed to open the context archive: {e}"))
        })?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(tar));

        ctx.log.push(&format!(
            "building {} with the docker daemon at {} from {}",
            spec.image,
            self.host,
            super::shown_dockerfile(source_dockerfile, context_dir)
        ));
        let mut output = BuildOutput::new(&ctx.log);
        let mut stream = docker.build_image(options.build(), self.pull_credentials(), Some(body));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => output.on_info(&info)?,
                Err(DockerError::DockerStreamError { error }) => return Err(output.failed(&error)),
                // dockerd answers a Dockerfile it cannot parse with 400 before any output.
                Err(DockerError::DockerResponseServerError {
                    status_code: 400,
                    message,
                }) => return Err(output.failed(&message)),
                Err(e) => {
                    output.flush();
                    return Err(self.lost(e));
                }
            }
        }
        output.flush();
        // A stream cut short without an error must not pass for a build.
        docker.inspect_image(&spec.local_ref).await.map_err(|e| {
            BuildError::Engine(EngineError::Docker {
                doing: format!(
                    "the docker daemon at {} ended the build without an image",
                    self.host
                ),
                source: e,
            })
        })?;
        Ok(())
    }

    fn pull_credentials(&self) -> Option<HashMap<String, DockerCredentials>> {
        self.credentials()
            .map(|c| HashMap::from([(self.registry_host.clone(), c)]))
    }
}

#[async_trait]
impl ImageEngine for DockerEngine {
    /// The bases are not reported: dockerd's classic builder names no digest it pulled.
    async fn build_and_push(
        &self,
        spec: &BuildSpec,
        tag: &str,
        ctx: &BuildCtx,
    ) -> Result<Built, BuildError> {
        no_secrets(spec)?;
        let platform = one_platform(spec)?;
        self.within(ctx, self.run_build(spec, ctx, platform))
            .await?;
        let digest = self.push(spec, tag, ctx).await?;
        Ok(Built {
            bases: Vec::new(),
            digest,
        })
    }
}

impl DockerEngine {
    async fn push(
        &self,
        spec: &BuildSpec,
        tag: &str,
        ctx: &BuildCtx,
    ) -> Result<String, BuildError> {
        let reference = format!("{}:{tag}", spec.image);
        let docker = self.within(ctx, self.connect()).await?;
        let pushed = self
            .within(ctx, self.run_push(&docker, spec, tag, &reference, ctx))
            .await;
        // Pushed or not, the local names go: the registry has the image, or a retry builds it
        // again (from the cached layers).
        self.forget(&docker, &[&reference, &spec.local_ref]).await;
        self.prune_layer_cache_now_and_then(docker);
        pushed
    }
}

/// The build API makes one image per request: several platforms would need a manifest list,
/// which only the podman engine assembles. Refused before any work, naming the field.
/// dockerd's classic builder, which this engine drives, mounts no build secrets.
fn no_secrets(spec: &BuildSpec) -> Result<(), BuildError> {
    if spec.secrets.is_empty() {
        return Ok(());
    }
    Err(BuildError::Rejected(Rejection::new(
        "secrets",
        "the docker engine's classic builder cannot mount build secrets; use a worker with the \
         podman engine",
    )))
}

fn one_platform(spec: &BuildSpec) -> Result<Option<&str>, BuildError> {
    match spec.platforms.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.as_str())),
        _ => Err(BuildError::Rejected(Rejection::new(
            "platforms",
            "lists several platforms, but the docker engine builds one platform per image \
             (no manifest list); request one platform, or use a worker with the podman engine",
        ))),
    }
}
