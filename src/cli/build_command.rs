//! `image-builder build [DIR]`: one build here and now, no broker, no API, with a progress line
//! while it fetches, builds and pushes, and the engine's output above it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use image_builder::config::Settings;
use image_builder::error::BuildError;
use image_builder::startup::local_build;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Map;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
#[command(after_help = "Examples:
  image-builder build                      # the current directory, as it is now
  image-builder build ./services/api --dockerfile Containerfile
  image-builder build --repo acme/app --ref v1.2.0
  GH_TOKEN=... image-builder build --repo acme/private --token-env GH_TOKEN

The directory's files are taken as they are (uncommitted and git-ignored files too; .dockerignore
decides). The image is pushed to the configured registry as <registry>/<user id>/<name>, tagged
with the commit, `local` and `latest` for a directory. Needs what a worker needs: podman and the
registry (`make services`), usually root for the build sandbox.")]
pub struct BuildArgs {
    /// The directory to build. Default: the current directory (when --repo is not given).
    #[arg(value_name = "DIR", conflicts_with = "repo")]
    pub dir: Option<PathBuf>,
    /// Build a repository instead: owner/name on the connector, or a full URL.
    #[arg(long)]
    pub repo: Option<String>,
    /// With --repo: the branch, tag or commit (default: the default branch).
    #[arg(long = "ref", value_name = "REF", requires = "repo")]
    pub git_ref: Option<String>,
    /// With --repo: the connector whose base URL `owner/name` is resolved on (github, gitlab, git).
    #[arg(long, requires = "repo")]
    pub connector: Option<String>,
    /// The user id the image is built for: its registry namespace.
    #[arg(long, default_value = "local")]
    pub user_id: String,
    /// The build context inside the directory or repository.
    #[arg(long, value_name = "PATH")]
    pub context: Option<String>,
    /// The Dockerfile, relative to the context (default: Dockerfile, or nixpacks without one).
    #[arg(long, value_name = "PATH")]
    pub dockerfile: Option<String>,
    /// Name of an environment variable holding the repository token (never a flag: command
    /// lines are visible to every user of the host).
    #[arg(long, value_name = "VAR", requires = "repo")]
    pub token_env: Option<String>,
    /// Print the outcome (`image.updated`) as JSON on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// What the progress line says, from the build's own lines (display only).
fn stage_of(line: &str) -> Option<&'static str> {
    if line.starts_with("fetching ") || line.starts_with("snapshot of ") {
        Some("fetching")
    } else if line.starts_with("pulling base image") || line.starts_with("STEP ") {
        Some("building")
    } else if line.starts_with("pushing ") {
        Some("pushing")
    } else {
        None
    }
}

pub async fn build(args: BuildArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let mut body = Map::new();
    body.insert("user_id".into(), args.user_id.clone().into());
    super::request_fields(
        &mut body,
        &[
            ("repo", &args.repo),
            ("ref", &args.git_ref),
            ("connector", &args.connector),
            ("context", &args.context),
            ("dockerfile", &args.dockerfile),
        ],
        args.token_env.as_deref(),
    )?;
    let dir = match (&args.repo, args.dir) {
        (Some(_), _) => None,
        (None, Some(dir)) => Some(dir),
        (None, None) => Some(std::env::current_dir().context("no current directory")?),
    };

    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {prefix:9} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_prefix("starting");
        bar
    } else {
        // Not a terminal (CI, a pipe): plain lines, no redrawn bar.
        ProgressBar::hidden()
    };
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        }
    });
    let shown = progress.clone();
    let outcome = local_build::build(settings, body, dir.as_deref(), cancel, move |line| {
        if let Some(stage) = stage_of(line) {
            shown.set_prefix(stage);
        }
        if shown.is_hidden() {
            eprintln!("{line}");
        } else {
            shown.set_message(line.to_owned());
            shown.println(line);
        }
    })
    .await;
    progress.finish_and_clear();
    match outcome? {
        Ok(updated) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&updated)?);
            } else {
                let how = if updated.cached {
                    " (already in the registry)"
                } else {
                    ""
                };
                println!("image  {}@{}{how}", updated.image, updated.digest);
                println!("how    {}: {}", updated.how.as_str(), updated.why);
                println!("tags   {}", updated.tags.join(", "));
                println!("pull   podman pull {}@{}", updated.image, updated.digest);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(BuildError::Cancelled) => {
            eprintln!("cancelled");
            Ok(ExitCode::from(130))
        }
        Err(error) => {
            eprintln!(
                "build failed ({} fault): {}",
                error.classify().as_str(),
                error.chain()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_follows_the_builds_own_lines() {
        assert_eq!(stage_of("fetching file:///tmp/x/app.git"), Some("fetching"));
        assert_eq!(stage_of("STEP 2/3: RUN make"), Some("building"));
        assert_eq!(
            stage_of("pushing 127.0.0.1:5000/local/app:abc"),
            Some("pushing")
        );
        assert_eq!(stage_of("some output of make"), None);
    }
}
