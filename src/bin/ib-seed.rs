//! Fills the configured build store with finished builds, for the API benchmark
//! (scripts/bench-api.sh): realistic rows spread over repositories, users, refs and states.
//!
//!   ib-seed --n 10000

use clap::Parser;
use image_builder::config::Settings;
use image_builder::events::{BuildRef, ImageUpdated};
use image_builder::store::{BuildState, BuildStore, Lease, NewBuild};
use serde_json::json;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    #[arg(long, default_value_t = 50)]
    repos: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::from_env()?;
    let store = BuildStore::open(&settings).await?;
    for i in 0..args.n {
        let repo = format!("acme/service-{}", i % args.repos.max(1));
        let user = format!("user{}", i % 7);
        let git_ref = if i % 3 == 0 { "main" } else { "feature" };
        let id = format!("seed-{i:06}-{}", uuid::Uuid::new_v4().simple());
        let new = NewBuild {
            id: id.clone(),
            request_id: id.clone(),
            user_id: Some(user.clone()),
            repo: Some(repo.clone()),
            git_ref: Some(git_ref.into()),
            request: json!({"id": id, "repo": repo, "user_id": user, "ref": git_ref,
                "context": ".", "builder": "auto", "build_args": {}, "platforms": [],
                "tags": [], "labels": {}, "has_token": false}),
            rebuild_of: None,
            fingerprint: Some(format!("seed:{id}")),
        };
        store.create(&new, BuildState::Queued).await?;
        store
            .start(
                &new,
                1,
                false,
                &Lease::new("seed:1", Duration::from_secs(60)),
                None,
            )
            .await?;
        if i % 10 == 9 {
            store
                .failed(&id, 1, "user", "build step failed: RUN exited 1", None)
                .await?;
            continue;
        }
        let commit = format!("{:040x}", i as u128 * 7_919 + 1);
        let out = ImageUpdated {
            build: BuildRef {
                build_id: id.clone(),
                request_id: id.clone(),
                user_id: Some(user.clone()),
                repo: Some(repo.clone()),
                git_ref: Some(git_ref.into()),
            },
            image: format!("registry.example/{user}/service-{}", i % args.repos.max(1)),
            tags: vec![commit[..12].to_owned(), git_ref.to_owned()],
            digest: format!("sha256:{:064x}", i as u128 * 104_729 + 3),
            commit,
            platforms: vec![],
            cached: i % 4 == 0,
            duration_ms: 1_000,
            finished_at: time::OffsetDateTime::now_utc(),
            how: Default::default(),
            why: String::new(),
            bases: Vec::new(),
            artifacts: vec![],
        };
        store.succeeded(&id, 1, &out, None).await?;
    }
    println!("seeded {} builds", args.n);
    Ok(())
}
