//! `submit`: publish a request on the queue; with --wait, follow it to its outcome, printing the
//! build's log from the API as the worker writes it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use image_builder::client::ApiClient;
use image_builder::config::Settings;
use image_builder::events::Event;
use serde_json::{Map, Value};

/// How often the log follower asks whether the worker has recorded the build yet.
const RECORD_POLL: Duration = Duration::from_millis(200);
/// How long the log may take to end after the outcome arrived (the record's final state is
/// written right after the outcome is published).
const LOG_DRAIN: Duration = Duration::from_secs(10);

#[derive(Args)]
#[command(after_help = "Examples:
  image-builder submit --repo acme/app --user-id 42 --wait
  image-builder submit --repo acme/app --ref v1.2.0 --user-id 42 --wait --api http://127.0.0.1:8080
  GH_TOKEN=... image-builder submit --repo acme/private --user-id 42 --token-env GH_TOKEN
  image-builder submit --file request.json --wait

Without --wait it prints the request id and returns once the broker has the request.")]
pub struct SubmitArgs {
    /// A JSON request file; the flags below override its fields.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The repository: owner/name on the connector, or a full URL.
    #[arg(long)]
    pub repo: Option<String>,
    /// The branch, tag or commit (default: the default branch).
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// How `--ref` is read: repo (branch, tag or commit), tag (a tag only) or release (a tag;
    /// without --ref, the highest version tag).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// The platform user the image is built for: its registry namespace.
    #[arg(long)]
    pub user_id: Option<String>,
    /// The connector whose base URL `owner/name` is resolved on (github, gitlab, git).
    #[arg(long)]
    pub connector: Option<String>,
    /// The build context inside the repository.
    #[arg(long, value_name = "PATH")]
    pub context: Option<String>,
    /// The Dockerfile, relative to the context.
    #[arg(long, value_name = "PATH")]
    pub dockerfile: Option<String>,
    /// Name of an environment variable holding the token (tokens never go on the command line).
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Wait for the outcome and print it; exit 1 unless the image was pushed.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: the HTTP API to stream the build's log from while waiting (key in
    /// IMAGE_BUILDER_API_KEY). Without it only the build's events are shown.
    #[arg(long, env = "IMAGE_BUILDER_API", value_name = "URL", requires = "wait")]
    pub api: Option<String>,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub timeout_secs: u64,
}

pub async fn submit(args: SubmitArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let mut body = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            match serde_json::from_str::<Value>(&text)
                .with_context(|| format!("failed to parse {}", path.display()))?
            {
                Value::Object(map) => map,
                _ => anyhow::bail!("{} must hold a JSON object", path.display()),
            }
        }
        None => Map::new(),
    };
    super::request_fields(
        &mut body,
        &[
            ("repo", &args.repo),
            ("ref", &args.git_ref),
            ("type", &args.kind),
            ("user_id", &args.user_id),
            ("connector", &args.connector),
            ("context", &args.context),
            ("dockerfile", &args.dockerfile),
        ],
        args.token_env.as_deref(),
    )?;
    let id = image_builder::submit::ensure_id(&mut body);
    let follower = match (&args.api, args.wait) {
        (Some(api), true) => {
            let client = super::api_client(api)?;
            Some(tokio::spawn(follow_log(client, id.clone())))
        }
        _ => None,
    };
    let wait = args.wait.then(|| Duration::from_secs(args.timeout_secs));
    let outcome = image_builder::submit::submit(&settings, body, wait, |event| {
        if follower.is_none() {
            eprintln!("{}: {}", event.routing_key(), event.build().build_id);
        }
    })
    .await;
    if let Some(follower) = follower {
        let abort = follower.abort_handle();
        if outcome.is_err() || tokio::time::timeout(LOG_DRAIN, follower).await.is_err() {
            abort.abort();
        }
    }
    let (id, outcome) = outcome?;
    let Some(event) = outcome else {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    };
    println!("{}", serde_json::to_string_pretty(&event)?);
    Ok(match event {
        Event::ImageUpdated(_) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// Waits for the worker to record the build, then prints its log to stderr until it ends.
/// A request refused before any worker recorded it has no log: the outcome says why.
async fn follow_log(client: ApiClient, id: String) {
    loop {
        match client.build(&id).await {
            Ok(Some(_)) => break,
            Ok(None) => tokio::time::sleep(RECORD_POLL).await,
            Err(e) => {
                eprintln!("cannot follow the log: {e:#}");
                return;
            }
        }
    }
    if let Err(e) = client.logs(&id, true, |line| eprintln!("{line}")).await {
        eprintln!("the log stream ended early: {e:#}");
    }
}
