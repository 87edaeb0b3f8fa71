//! `list`, `status`, `logs`, `cancel` and `rebuild`: the HTTP API for people. The key comes
//! from IMAGE_BUILDER_API_KEY only, never a flag (flags are visible to every user of the host).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use image_builder::client::{ApiClient, build_path};
use serde_json::{Value, json};

/// Where the API is.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// The HTTP API's address (`image-builder serve` or `run`). The bearer key is read from
    /// IMAGE_BUILDER_API_KEY.
    #[arg(
        long,
        env = "IMAGE_BUILDER_API",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub api: String,
}

impl ApiArgs {
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        super::api_client(&self.api)
    }
}

#[derive(Args)]
#[command(after_help = "Examples:
  image-builder list
  image-builder list --repo acme/app --state failed --limit 5
  image-builder list --ref main --json")]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only builds of this repository (as requested: owner/name or URL).
    #[arg(long)]
    pub repo: Option<String>,
    /// Only builds of this ref (branch, tag or commit, as requested).
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// Only builds in this state: queued, running, succeeded, failed, cancelled or rejected.
    #[arg(long)]
    pub state: Option<String>,
    /// Only builds for this user id.
    #[arg(long)]
    pub user_id: Option<String>,
    /// How many builds, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:
  image-builder status 3f2a9c1e-...
  image-builder status my-build-42 --json")]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The build id (the request's `id`).
    pub id: String,
    /// Print the API's JSON record instead of a summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:
  image-builder logs my-build-42
  image-builder logs my-build-42 --follow")]
pub struct LogsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The build id.
    pub id: String,
    /// Keep printing lines as the build writes them, until it ends.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:
  image-builder cancel my-build-42")]
pub struct CancelArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The build id.
    pub id: String,
}

#[derive(Args)]
#[command(after_help = "Examples:
  image-builder rebuild my-build-42 --follow
  GH_TOKEN=... image-builder rebuild my-build-42 --token-env GH_TOKEN")]
pub struct RebuildArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The build to do again: same request, new id, built even when its image exists.
    pub id: String,
    /// Name of an environment variable holding the repository token (records keep no token).
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Print the new build's log until it ends; exit 1 unless it succeeded.
    #[arg(long, short)]
    pub follow: bool,
}

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let limit = args.limit.to_string();
    let mut query = vec![("limit", limit.as_str())];
    for (name, value) in [
        ("repo", &args.repo),
        ("ref", &args.git_ref),
        ("state", &args.state),
        ("user_id", &args.user_id),
    ] {
        if let Some(value) = value {
            query.push((name, value.as_str()));
        }
    }
    let page = args.api.client()?.get("/v1/builds", &query).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    let builds = page["builds"].as_array().cloned().unwrap_or_default();
    print!("{}", table(&builds));
    Ok(ExitCode::SUCCESS)
}

/// One line per build, columns padded to their widest cell.
fn table(builds: &[Value]) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut rows = vec![["ID", "STATE", "REPO", "REF", "COMMIT", "FINISHED"].map(str::to_owned)];
    for build in builds {
        let commit: String = text(&build["commit"]).chars().take(12).collect();
        rows.push([
            text(&build["id"]),
            text(&build["state"]),
            text(&build["repo"]),
            text(&build["ref"]),
            commit,
            text(&build["finished_at"]),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    let record = client
        .build(&args.id)
        .await?
        .with_context(|| format!("no build {:?} (or not one of this key's users)", args.id))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print!("{}", summary(&record));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a person asks of a build: where it stands, what it made, why it failed.
fn summary(record: &Value) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &Value| {
        if let Some(text) = value.as_str().filter(|t| !t.is_empty()) {
            out.push_str(&format!("{label:<10}{text}\n"));
        }
    };
    line("id", &record["id"]);
    line("state", &record["state"]);
    line("repo", &record["repo"]);
    line("ref", &record["ref"]);
    line("commit", &record["commit"]);
    if let (Some(image), Some(digest)) = (record["image"].as_str(), record["digest"].as_str()) {
        line("image", &json!(format!("{image}@{digest}")));
        line("pull", &json!(format!("podman pull {image}@{digest}")));
    }
    line("fault", &record["fault"]);
    line("error", &record["error"]);
    line("started", &record["started_at"]);
    line("finished", &record["finished_at"]);
    let history: Vec<&str> = record["states"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["state"].as_str()).collect())
        .unwrap_or_default();
    if !history.is_empty() {
        line("history", &json!(history.join(" -> ")));
    }
    out
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    args.api
        .client()?
        .logs(&args.id, args.follow, |line| println!("{line}"))
        .await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let answer = args
        .api
        .client()?
        .post(&build_path(&args.id, "/cancel"), &json!({}))
        .await?;
    let state = answer["state"].as_str().unwrap_or("cancelling");
    println!("{}: {state}", args.id);
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    let mut body = serde_json::Map::new();
    super::request_fields(&mut body, &[], args.token_env.as_deref())?;
    let client = args.api.client()?;
    let answer = client
        .post(&build_path(&args.id, "/rebuild"), &Value::Object(body))
        .await?;
    let id = answer["id"]
        .as_str()
        .context("the API's answer names no new build id")?
        .to_owned();
    println!("{id}");
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    client.logs(&id, true, |line| eprintln!("{line}")).await?;
    let state = client
        .build(&id)
        .await?
        .and_then(|r| r["state"].as_str().map(str::to_owned))
        .unwrap_or_default();
    eprintln!("{id}: {state}");
    Ok(if state == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_pads_columns_and_shortens_commits() {
        let builds = [
            json!({"id": "b-1", "state": "succeeded", "repo": "acme/app", "ref": "main",
                "commit": "0123456789abcdef0123", "finished_at": "2026-12-03T08:00:00Z"}),
            json!({"id": "longer-id", "state": "queued", "repo": "acme/app"}),
        ];
        let text = table(&builds);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID         STATE"), "{text}");
        assert!(lines[1].contains("0123456789ab ") && !lines[1].contains("0123456789abc"));
        assert!(lines[2].starts_with("longer-id  queued"), "{text}");
    }

    #[test]
    fn the_summary_shows_the_pull_command_and_history() {
        let record = json!({"id": "b", "state": "succeeded", "image": "r/u/app",
            "digest": "sha256:ab", "states": [{"state": "queued"}, {"state": "running"},
            {"state": "succeeded"}]});
        let text = summary(&record);
        assert!(
            text.contains("pull      podman pull r/u/app@sha256:ab"),
            "{text}"
        );
        assert!(
            text.contains("history   queued -> running -> succeeded"),
            "{text}"
        );
        assert!(
            !text.contains("fault"),
            "absent fields are left out: {text}"
        );
    }
}
