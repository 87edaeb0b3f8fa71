//! podman CLI adapter. Build args reach podman through its environment (`--build-arg KEY` takes
//! the value from there), registry credentials through a 0600 auth file: no secret is in argv.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

use super::ImageEngine;
use crate::config::{BuildSettings, RegistrySettings};
use crate::error::BuildError;
use crate::pipeline::BuildCtx;
use crate::plan::BuildSpec;
use crate::process::{self, Invocation, ProcessError};

pub struct Podman {
    program: String,
    isolation: String,
    registry_host: String,
    tls_verify: bool,
    credentials: Option<(String, SecretString)>,
}

impl Podman {
    pub fn new(build: &BuildSettings, registry: &RegistrySettings) -> Self {
        let credentials = (!registry.username.is_empty())
            .then(|| (registry.username.clone(), registry.password.clone()));
        Self {
            program: build.podman.clone(),
            isolation: build.isolation.clone(),
            registry_host: registry.host.clone(),
            tls_verify: !registry.insecure,
            credentials,
        }
    }

    /// The registry credentials in `<dir>/auth.json`, readable by the owner only; written once
    /// per build.
    fn auth_file(&self, dir: &Path) -> Result<Option<PathBuf>, BuildError> {
        let Some((user, password)) = &self.credentials else {
            return Ok(None);
        };
        let path = dir.join("auth.json");
        if path.exists() {
            return Ok(Some(path));
        }
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", password.expose_secret()));
        let body = serde_json::json!({ "auths": { &self.registry_host: { "auth": auth } } });
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                BuildError::Internal(anyhow::anyhow!("failed to create the auth file: {e}"))
            })?;
        file.write_all(body.to_string().as_bytes()).map_err(|e| {
            BuildError::Internal(anyhow::anyhow!("failed to write the auth file: {e}"))
        })?;
        Ok(Some(path))
    }

    fn invocation(&self, ctx: &BuildCtx) -> Invocation {
        Invocation::new(&self.program, ctx.remaining())
    }
}

#[async_trait]
impl ImageEngine for Podman {
    async fn build(&self, spec: &BuildSpec, ctx: &BuildCtx) -> Result<(), BuildError> {
        let mut inv = self
            .invocation(ctx)
            .args(["build", "--layers", "--isolation", &self.isolation])
            .arg("--file")
            .arg(&spec.dockerfile);
        if let Some(auth) = self.auth_file(&ctx.scratch_dir)? {
            inv = inv.arg("--authfile").arg(auth);
        }
        for (key, value) in &spec.labels {
            inv = inv.arg(format!("--label={key}={value}"));
        }
        for tag in spec.push_tags() {
            inv = inv.arg(format!("--tag={}:{tag}", spec.image));
        }
        for (key, value) in spec.build_args.iter() {
            inv = inv.arg(format!("--build-arg={key}")).env(key, value);
        }
        if let [platform] = spec.platforms.as_slice() {
            inv = inv.arg(format!("--platform={}", platform.as_str()));
        } else if spec.platforms.len() > 1 {
            return Err(BuildError::NoRecipe(
                "multi-platform builds are not available on this worker yet".into(),
            ));
        }
        inv = inv.arg(&spec.context_dir);
        ctx.log
            .push(&format!("building {} with podman", spec.image));
        process::run(inv, &ctx.log, &ctx.cancel)
            .await
            .map_err(|e| build_error(e, &ctx.log.tail(20)))
    }

    async fn push(&self, spec: &BuildSpec, ctx: &BuildCtx) -> Result<String, BuildError> {
        let auth = self.auth_file(&ctx.scratch_dir)?;
        let mut digest = None;
        for tag in spec.push_tags() {
            let reference = format!("{}:{tag}", spec.image);
            let digest_file = ctx.scratch_dir.join("digest");
            let mut inv = self
                .invocation(ctx)
                .args(["push", "--quiet"])
                .arg(format!("--tls-verify={}", self.tls_verify))
                .arg("--digestfile")
                .arg(&digest_file);
            if let Some(auth) = &auth {
                inv = inv.arg("--authfile").arg(auth);
            }
            inv = inv.arg(&reference);
            ctx.log.push(&format!("pushing {reference}"));
            process::run(inv, &ctx.log, &ctx.cancel)
                .await
                .map_err(|e| match e {
                    ProcessError::Cancelled { .. } => BuildError::Cancelled,
                    ProcessError::TimedOut { after, .. } => BuildError::TimedOut(after),
                    other => BuildError::PushFailed(format!("{reference}: {other}")),
                })?;
            if digest.is_none() {
                let read = std::fs::read_to_string(&digest_file).map_err(|e| {
                    BuildError::PushFailed(format!("podman wrote no digest for {reference}: {e}"))
                })?;
                digest = Some(read.trim().to_owned());
            }
        }
        digest.ok_or_else(|| BuildError::Internal(anyhow::anyhow!("the build has no tags to push")))
    }
}

/// podman exits non-zero both for a failing Dockerfile step (the user's) and for its own trouble.
fn build_error(err: ProcessError, tail: &[String]) -> BuildError {
    match err {
        ProcessError::Cancelled { .. } => BuildError::Cancelled,
        ProcessError::TimedOut { after, .. } => BuildError::TimedOut(after),
        ProcessError::Failed { .. } => {
            let user_fault = tail.iter().rev().find(|line| {
                line.contains("building at STEP")
                    || line.contains("dockerfile parse error")
                    || line.contains("no such file or directory")
                        && (line.contains("COPY") || line.contains("ADD"))
            });
            match user_fault {
                Some(line) => BuildError::StepFailed(line.trim().to_owned()),
                None => BuildError::Engine(format!(
                    "{err}: {}",
                    tail.last().map(String::as_str).unwrap_or("no output")
                )),
            }
        }
        other => BuildError::Engine(other.to_string()),
    }
}
