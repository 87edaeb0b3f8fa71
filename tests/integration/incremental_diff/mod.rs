//! Differential test of incremental registry edits. Each corpus chain is a repository whose
//! commits the worker builds in turn (the first one fully, its final COPYs made by the worker
//! where they qualify); every commit is a pair: the worker's image (an incremental edit of the
//! previous commit's image, or a full build when it must not edit) against
//! `podman build --no-cache` of the same commit's tree, compared
//! file by file (kind, mode, owner, content, symlink target) and in config (see
//! `support::image_tree::config` for what is left out and why). Any difference fails, and so
//! does a pair that took another route than the corpus says.
//!
//! Chains run side by side in rounds (commit k of every chain at once); the reference builds
//! and comparisons run while the worker builds.

mod corpus;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;

use crate::support::image_tree;
use crate::support::{GitServer, REGISTRY, RepoFixture, Stack, Worker, expect_image, unique};
use corpus::{Chain, Pair, Route};

const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Applies a pair's changes to the work tree and commits them; returns the commit.
fn commit(repo: &RepoFixture, pair: &Pair) -> String {
    let work = repo.work_dir();
    for path in &pair.remove {
        let path = work.join(path);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("remove dir");
        } else {
            std::fs::remove_file(&path).expect("remove file");
        }
    }
    for (path, target) in &pair.symlink {
        let link = work.join(path);
        if link.is_dir() && !link.is_symlink() {
            std::fs::remove_dir_all(&link).expect("remove dir");
        } else if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).expect("remove");
        }
        repo.symlink(path, target);
    }
    for (path, content) in &pair.write {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
        std::fs::write(&file, content).expect("write");
    }
    for (path, on) in &pair.executable {
        use std::os::unix::fs::PermissionsExt;
        let mode = if *on { 0o755 } else { 0o644 };
        std::fs::set_permissions(work.join(path), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    }
    repo.commit(&[], pair.what);
    repo.head()
}

/// The route the worker's log shows for `build_id`: "incremental" or "full: <reason>".
fn route_taken(log: &str, build_id: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(build_id)).collect();
    if lines.iter().any(|l| l.contains("incremental rebuild of")) {
        return "incremental".into();
    }
    let reason = lines
        .iter()
        .find_map(|l| l.split("full build: no incremental rebuild (").nth(1))
        .unwrap_or("no reason logged");
    format!("full: {reason}")
}

fn route_matches(expected: Route, log: &str, build_id: &str) -> Result<(), String> {
    let taken = route_taken(log, build_id);
    let ok = match expected {
        Route::Incremental => taken == "incremental",
        Route::Full(why) => taken.starts_with("full: ") && taken.contains(why),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {expected:?}, took {taken}"))
    }
}

/// `IBT_DIFF_CHAINS=bind,stages` runs only those chains (to look at one shape closely).
fn selected_chains() -> Vec<Chain> {
    let all = corpus::chains();
    let pairs: usize = all.iter().map(|c| c.pairs.len()).sum();
    assert!(pairs >= 40, "the corpus has {pairs} pairs");
    match std::env::var("IBT_DIFF_CHAINS") {
        Ok(names) => all
            .into_iter()
            .filter(|c| names.split(',').any(|n| n == c.name))
            .collect(),
        Err(_) => all,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn incremental_edits_equal_full_builds() {
    let started = std::time::Instant::now();
    let chains = selected_chains();
    let pairs: usize = chains.iter().map(|c| c.pairs.len()).sum();
    // Built again each run: a rebuild only moves its name.
    let (tag, dockerfile) = corpus::ONBUILD_BASE;
    image_tree::build_docker_format_base(dockerfile, tag);
    let git = GitServer::start().await;
    let repos: Vec<RepoFixture> = chains
        .iter()
        .map(|chain| {
            let repo = RepoFixture::create(git.root.path(), &format!("acme/{}", chain.name));
            for (path, target) in &chain.symlinks {
                repo.symlink(path, target);
            }
            let mut files = chain.files.clone();
            files.push(("Dockerfile", chain.dockerfile));
            repo.commit(&files, "first");
            repo.push();
            repo
        })
        .collect();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    let request = |chain: &Chain, round: usize| {
        json!({"id": format!("{}-{round}", chain.name), "repo": format!("acme/{}", chain.name),
               "user_id": user})
    };

    // Only the worker's outcomes gate the next round (its next edit starts from them):
    // reference builds and comparisons run beside it, two podman jobs at a time. Round 0 is
    // every chain's first commit: a full build, its final COPYs made by the worker where
    // they can be (`incremental::split`), compared like the rest.
    let podman_jobs = Arc::new(Semaphore::new(2));
    let rounds = chains.iter().map(|c| c.pairs.len()).max().unwrap_or(0);
    let mut failures = Vec::new();
    let mut checks = Vec::new();
    let mut split = 0;
    // Edits that took unchanged files from the layer they replace (`incremental::layer_memo`).
    let mut unread_edits = 0;
    for round in 0..=rounds {
        let mut published = Vec::new();
        for (chain, repo) in chains.iter().zip(&repos) {
            let pair = match round.checked_sub(1) {
                None => None,
                Some(n) => match chain.pairs.get(n) {
                    Some(pair) => Some(pair),
                    None => continue,
                },
            };
            let sha = match pair {
                Some(pair) => {
                    let sha = commit(repo, pair);
                    repo.push();
                    sha
                }
                None => repo.head(),
            };
            stack.publish_json(&request(chain, round)).await;
            let tag = format!("localhost/ibt-ref-{}:{}", chain.name, unique(""));
            let (work, jobs, built) =
                (repo.work_dir().to_owned(), podman_jobs.clone(), tag.clone());
            let reference = tokio::spawn(async move {
                let _job = jobs.acquire_owned().await.expect("semaphore");
                tokio::task::spawn_blocking(move || {
                    image_tree::reference_build(&work, &sha, &built, &[])
                        .unwrap_or_else(|e| panic!("reference build of {built}: {e}"))
                })
                .await
            });
            published.push((chain, pair, reference, tag));
        }
        for (chain, pair, reference, tag) in published {
            let id = format!("{}-{round}", chain.name);
            let updated = expect_image(stack.outcome(&id, BUILD_TIMEOUT).await);
            let what = pair.map_or("first commit", |p| p.what);
            let name = format!("{}/{}: {what}", chain.name, round);
            let log = worker.log();
            let build_id = &updated.build.build_id;
            let made_here = log
                .lines()
                .any(|l| l.contains(build_id.as_str()) && l.contains("COPY layer(s) made from"));
            split += usize::from(made_here);
            let unread = log
                .lines()
                .filter(|l| l.contains(build_id.as_str()))
                .find_map(|l| {
                    let after = l.split(" file(s) (").nth(1)?;
                    after.split(' ').next()?.parse::<usize>().ok()
                })
                .unwrap_or(0);
            unread_edits += usize::from(unread > 0);
            // `updir`'s destination is found out of reach only once the engine built the rest.
            if chain.name == "updir"
                && !log.lines().any(|l| {
                    l.contains(build_id.as_str())
                        && l.contains("the engine builds every step after all")
                })
            {
                failures.push(format!(
                    "{name}: the engine did not build every step after all"
                ));
            }
            eprintln!(
                "{name}: {}{}{}",
                route_taken(&log, build_id),
                if made_here {
                    " (final COPYs made by the worker)"
                } else {
                    ""
                },
                if unread > 0 {
                    format!(" ({unread} files taken unread)")
                } else {
                    String::new()
                }
            );
            if let Some(pair) = pair
                && let Err(why) = route_matches(pair.route, &log, build_id)
            {
                failures.push(format!("{name}: {why}"));
            }
            let image = format!("{REGISTRY}/{user}/{}@{}", chain.name, updated.digest);
            let jobs = podman_jobs.clone();
            checks.push(tokio::spawn(async move {
                reference
                    .await
                    .expect("reference task")
                    .expect("reference build");
                let _job = jobs.acquire_owned().await.expect("semaphore");
                let differences =
                    tokio::task::spawn_blocking(move || image_tree::compare(&image, &tag))
                        .await
                        .expect("comparison");
                (name, differences)
            }));
        }
        eprintln!("round {round} built after {:?}", started.elapsed());
    }
    let mut checked = 0;
    for check in checks {
        let (name, differences) = check.await.expect("pair check");
        if !differences.is_empty() {
            failures.push(format!("{name}: differs\n  {}", differences.join("\n  ")));
        }
        checked += 1;
    }
    eprintln!("all pairs compared after {:?}", started.elapsed());
    worker.stop().await;
    stack.cleanup().await;
    assert_eq!(checked, pairs + chains.len());
    // The first commits of the dir, dot and metadata chains qualify, at least.
    if chains.len() == corpus::chains().len() {
        assert!(
            split >= 5,
            "only {split} full builds had their final COPYs made here"
        );
        eprintln!("{unread_edits} edits took unchanged files from the layer they replace");
        assert!(
            unread_edits >= 5,
            "only {unread_edits} edits took unchanged files from the layers they replace"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {pairs} pairs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
