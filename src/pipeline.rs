//! One build, start to finish: source -> plan -> build -> push -> the `image.updated` body.
//! Plain code over the ports (`ports::Environment`); it never touches AMQP or a concrete adapter.

use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::build_log::BuildLog;
use crate::error::{BuildError, RegistryError};
use crate::events::{BaseImage, BuildRef, How, ImageUpdated};
use crate::plan::{self, PlanInput};
use crate::ports::{BuildCtx, BuildSpec, Environment, Manifest, SourceSpec, recorded};
use crate::redact::Redactor;
use crate::request::BuildRequest;
use crate::{artifacts, image_edit, incremental};

/// A request on its way through the worker: identity that survives retries, and the attempt.
pub struct Job {
    pub request: BuildRequest,
    pub build_id: String,
    pub attempt: u32,
}

impl Job {
    /// The identifiers every event carries; `git_ref` is the requested ref until resolved.
    pub fn build_ref(&self, resolved_ref: Option<&str>) -> BuildRef {
        let req = &self.request;
        BuildRef {
            build_id: self.build_id.clone(),
            request_id: req.id.as_str().to_owned(),
            user_id: Some(req.user_id.as_str().to_owned()),
            repo: Some(req.repo.display()),
            git_ref: resolved_ref
                .map(str::to_owned)
                .or_else(|| req.git_ref.as_ref().map(|r| r.as_str().to_owned())),
        }
    }

    /// Everything its log must never show: the token, build arg and secret values, the
    /// registry password.
    pub fn redactor(&self, registry_password: &SecretString) -> Redactor {
        let req = &self.request;
        let mut secrets: Vec<String> = req.build_args.values().map(str::to_owned).collect();
        secrets.extend(
            req.secrets
                .iter()
                .map(|(_, value)| value.expose_secret().to_owned()),
        );
        if let Some(token) = &req.token {
            secrets.push(token.expose_secret().to_owned());
        }
        secrets.push(registry_password.expose_secret().to_owned());
        Redactor::new(secrets)
    }
}

/// Runs one build. The work dir (checkout and scratch files) is removed whatever happens.
pub async fn run(
    env: &Environment,
    job: &Job,
    log: &BuildLog,
    cancel: &CancellationToken,
) -> Result<ImageUpdated, BuildError> {
    let started = Instant::now();
    let settings = &env.settings;
    let spec = SourceSpec::for_request(&job.request, &settings.connectors)?;
    let work_root = &settings.work_dir;
    tokio::fs::create_dir_all(work_root)
        .await
        .map_err(|e| BuildError::Internal(anyhow::anyhow!("failed to create the work dir: {e}")))?;
    let work = tempfile::Builder::new()
        .prefix(&format!("build-{}-", job.build_id))
        .tempdir_in(work_root)
        .map_err(|e| BuildError::Internal(anyhow::anyhow!("failed to create the work dir: {e}")))?;
    let scratch_dir = work.path().join("scratch");
    std::fs::create_dir(&scratch_dir).map_err(|e| {
        BuildError::Internal(anyhow::anyhow!("failed to create the scratch dir: {e}"))
    })?;
    let mut ctx = BuildCtx {
        log: log.clone(),
        cancel: cancel.clone(),
        deadline: started + settings.build_timeout,
        scratch_dir,
    };

    // The bases of this repository's last build start pulling now, beside the fetch.
    let scope = plan::cache_scope(&job.request, spec.remote.as_str());
    env.engine.prefetch_bases(&scope, &ctx);
    let mut stages = stages::Stages::new(&job.build_id);
    let (fetching, fetched_commit) = tokio::sync::oneshot::channel();
    let resolving = async {
        tokio::select! {
            result = env.source.resolve_telling(&spec, &ctx, fetching) => result,
            _ = tokio::time::sleep(ctx.remaining()) => Err(BuildError::TimedOut(settings.build_timeout)),
        }
    };
    let beside = async {
        let commit = fetched_commit.await.ok()?;
        Some(beside_the_fetch(env, job, spec.remote.as_str(), commit, log).await)
    };
    let (resolved, beside) = tokio::join!(resolving, beside);
    let mut checkout = resolved?;
    stages.done("resolve");
    // A base update rebuilds the commit its configuration's newest image was built from.
    if let Some(moved) = &job.request.base_update
        && moved.commit != checkout.commit
    {
        log.push(&format!(
            "{} is at {} now; building {} again, the commit of the image on the old base",
            checkout.ref_name, checkout.commit, moved.commit
        ));
        checkout.commit = moved.commit.clone();
    }
    let naming = plan::naming(
        &job.request,
        &checkout,
        &settings.registry_host,
        spec.remote.as_str(),
    )?;
    let image = naming.image.clone();
    let repository = repository_path(&image, &settings.registry_host);
    let platforms: Vec<String> = job
        .request
        .platforms
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    let updated =
        |digest: String, tags: Vec<String>, (how, why): (How, String), artifacts, bases| {
            ImageUpdated {
                build: job.build_ref(Some(&checkout.ref_name)),
                commit: checkout.commit.clone(),
                image: image.clone(),
                tags,
                digest,
                platforms: platforms.clone(),
                cached: how == How::Cached,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                finished_at: time::OffsetDateTime::now_utc(),
                artifacts,
                how,
                why,
                bases,
            }
        };

    // Built before with this exact configuration: point the tags at it, build nothing. Not
    // for a base update: the configuration is the same, the base is not.
    let (checked, looking_up) = match beside {
        Some(b) if b.commit == checkout.commit => (b.built, b.looking_up),
        _ => (None, None),
    };
    let existing = match checked {
        Some(built) => built?,
        None if !key_checked(&job.request) => None,
        None => built_before(env, (&image, repository), &naming.key_tag, log).await?,
    };
    stages.done("cached check");
    if let Some(manifest) = existing {
        let names: Vec<&str> = naming.tags.iter().map(String::as_str).collect();
        env.registry.tag_all(repository, &names, &manifest).await?;
        log.push(&format!(
            "{image}@{} already built for this commit and configuration",
            manifest.digest
        ));
        // The build key names the image, not its exports: read them from the image there is.
        let exported = export(env, job, (&image, repository), &manifest, &ctx).await?;
        let why = format!(
            "this commit and configuration were built before ({})",
            manifest.digest
        );
        let bases = env
            .recorded_images
            .recorded_bases(&image, &manifest.digest)
            .await?;
        return Ok(updated(
            manifest.digest,
            naming.tags,
            (How::Cached, why),
            exported,
            bases,
        ));
    }

    // Only real builds take a slot, and the timeout runs from when the build does.
    if env.build_slots.available_permits() == 0 {
        log.push("waiting for a build slot");
    }
    let _slot = tokio::select! {
        slot = env.build_slots.acquire() => slot
            .map_err(|e| BuildError::Internal(anyhow::anyhow!("no build slot: {e}")))?,
        _ = ctx.cancel.cancelled() => return Err(BuildError::Cancelled),
    };
    ctx.deadline = Instant::now() + settings.build_timeout;
    stages.done("slot");

    let checkout_dir = work.path().join("src");
    env.source
        .checkout(&spec, &checkout.commit, &checkout_dir, &ctx)
        .await?;
    stages.done("checkout");
    let build_spec = plan::plan(
        &job.request,
        &PlanInput {
            checkout: &checkout,
            checkout_dir: &checkout_dir,
            source_url: spec.remote.as_str(),
            build_id: &job.build_id,
            created: time::OffsetDateTime::now_utc(),
        },
        naming,
    )?;
    // Every tag goes at once, with the image (`produce`): the user's, the build key and the
    // lineage tag (the base of the next commit's incremental rebuild). Neither internal tag needs
    // the others first: a build key is answered from only once its digest is recorded, and an
    // edit starts only from a recorded image; the record follows the push.
    let lineage = (build_spec.platforms.len() <= 1).then_some(build_spec.lineage_tag.as_str());
    let all_tags: Vec<&str> = build_spec
        .tags
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(build_spec.key_tag.as_str()))
        .chain(lineage)
        .collect();
    let attempt = incremental::Attempt {
        env,
        spec: &build_spec,
        source: &spec,
        checkout: &checkout,
        scratch_dir: &ctx.scratch_dir,
        repository,
        tags: &all_tags,
        created: time::OffsetDateTime::now_utc(),
        log,
        ctx: &ctx,
    };
    let (manifest, how, bases) = produce(&attempt, &job.request, looking_up).await?;
    stages.done("produce");
    let digest = manifest.digest.clone();
    log.push(&format!("pushed {}@{digest}", build_spec.image));
    let exported = export(env, job, (&build_spec.image, repository), &manifest, &ctx).await?;
    env.source
        .keep_checkout(&spec, &checkout.commit, &checkout_dir);
    Ok(updated(digest, build_spec.tags, how, exported, bases))
}

/// Puts the image under `a.tags` and returns its manifest with how and why it was made and the
/// base images it stands on: edited in the registry when only files of the final COPYs changed,
/// else built and pushed by the engine (and labelled in the registry when the engine did not
/// label it).
async fn produce(
    a: &incremental::Attempt<'_>,
    request: &BuildRequest,
    looking_up: Option<incremental::LookingUp>,
) -> Result<(Manifest, (How, String), Vec<BaseImage>), BuildError> {
    let env = a.env;
    let why = if let Some(moved) = &request.base_update {
        // The incremental edit would keep the old base; a base swap moves the image onto it.
        match incremental::swap_base(a, moved).await? {
            Ok((edited, bases)) => return Ok((edited.manifest, (How::Rebased, edited.why), bases)),
            Err(reason) => a.log.push(&format!("full build: no base swap ({reason})")),
        }
        moved.why()
    } else if request.no_cache {
        "the request asked for no_cache".to_owned()
    } else if !env.settings.incremental {
        "incremental rebuilds are off (build.incremental)".to_owned()
    } else {
        // Read beside the fetch when there was one; else now.
        let looking_up = looking_up.unwrap_or_else(|| {
            let spec = a.spec;
            incremental::lineage::look_up(env, &spec.image, a.repository, &spec.lineage_tag)
        });
        match incremental::rebuild(a, looking_up).await? {
            Ok(edited) => {
                let bases = env
                    .recorded_images
                    .recorded_bases(&a.spec.image, &edited.from)
                    .await?;
                return Ok((edited.manifest, (How::Incremental, edited.why), bases));
            }
            Err(reason) => reason,
        }
    };
    let (manifest, bases) = full_build(a, a.ctx).await?;
    Ok((manifest, (How::Full, why), bases))
}

/// What ran while the commit was fetched.
struct BesideTheFetch {
    /// The commit fetched: what follows holds for it alone.
    commit: String,
    /// The build key's image (`built_before`), when the request may be answered by one.
    built: Option<Result<Option<Manifest>, BuildError>>,
    /// The image an incremental edit would start from, still being read.
    looking_up: Option<incremental::LookingUp>,
}

/// The registry lookups that need only the commit, started while it is fetched (a commit in
/// the mirror already is most likely a cached answer, which needs neither the edit's image
/// nor anything beside a fetch). None of it when the image name is bad: `naming` says so.
async fn beside_the_fetch(
    env: &Environment,
    job: &Job,
    source_url: &str,
    commit: String,
    log: &BuildLog,
) -> BesideTheFetch {
    let (request, host) = (&job.request, &env.settings.registry_host);
    let Ok(image) = plan::image_name(request, host) else {
        return BesideTheFetch {
            commit,
            built: None,
            looking_up: None,
        };
    };
    let repository = repository_path(&image, host);
    let looking_up = edits_tried(request, &env.settings).then(|| {
        let lineage_tag = plan::lineage_tag(request, source_url);
        incremental::lineage::look_up(env, &image, repository, &lineage_tag)
    });
    let built = if key_checked(request) {
        let key_tag = plan::build_key(request, source_url, &commit);
        Some(built_before(env, (&image, repository), &key_tag, log).await)
    } else {
        None
    };
    BesideTheFetch {
        commit,
        built,
        looking_up,
    }
}

/// Whether a build key's image answers the request (`no_cache` and base updates build).
fn key_checked(request: &BuildRequest) -> bool {
    !request.no_cache && request.base_update.is_none()
}

/// The image `repository:key_tag` names, when this service recorded building it (of `image`).
async fn built_before(
    env: &Environment,
    (image, repository): (&str, &str),
    key_tag: &str,
    log: &BuildLog,
) -> Result<Option<Manifest>, BuildError> {
    let Some(manifest) = env.registry.manifest(repository, key_tag).await? else {
        return Ok(None);
    };
    if recorded(env, image, &manifest.digest).await? {
        return Ok(Some(manifest));
    }
    log.push(&format!(
        "{image}:{key_tag} points at {}, which this service did not record building: built again",
        manifest.digest
    ));
    Ok(None)
}

/// Whether `produce` tries an incremental rebuild (when the tail analysis allows it).
fn edits_tried(request: &BuildRequest, settings: &crate::ports::PipelineSettings) -> bool {
    key_checked(request) && settings.incremental
}

/// The engine's build and push, labelled in the registry when the engine did not label it.
async fn full_build(
    a: &incremental::Attempt<'_>,
    ctx: &BuildCtx,
) -> Result<(Manifest, Vec<BaseImage>), BuildError> {
    let (env, spec) = (a.env, a.spec);
    // The final plain COPYs made here, the engine building the rest; else every step.
    if let Ok(split) = incremental::split::plan(a) {
        let mut stages = stages::Stages::new(&spec.local_ref);
        let without = BuildSpec {
            omitted_steps: split.lines(),
            ..spec.clone()
        };
        // Under the internal lineage tag, never a tag a user reads (as below).
        let built = env
            .engine
            .build_and_push(&without, &spec.lineage_tag, ctx)
            .await?;
        stages.done("engine build and push");
        match incremental::split::finish(a, split, &built.digest).await? {
            Ok(manifest) => return Ok((manifest, built.bases)),
            Err(why) => a
                .log
                .push(&format!("the engine builds every step after all: {why}")),
        }
    }
    let mut stages = stages::Stages::new(&spec.local_ref);
    if env.engine.labels_at_build(spec) {
        // The engine pushes under the first tag; the others follow through the registry.
        let (first, others) = match a.tags.split_first() {
            Some((first, others)) => (*first, others),
            None => (spec.lineage_tag.as_str(), &[][..]),
        };
        let built = env.engine.build_and_push(spec, first, ctx).await?;
        stages.done("engine build and push");
        // Only the engine's push leaves the manifest to be read back.
        let manifest = env
            .registry
            .manifest(a.repository, &built.digest)
            .await?
            .ok_or_else(|| {
                BuildError::Registry(RegistryError::Protocol(format!(
                    "the registry does not know {} just pushed",
                    built.digest
                )))
            })?;
        image_edit::put_under(env.registry.as_ref(), a.repository, others, &manifest).await?;
        return Ok((manifest, built.bases));
    }
    // Unlabelled, so under the internal lineage tag (rewritten beside the build key), never
    // under a tag a user reads.
    let built = env
        .engine
        .build_and_push(spec, &spec.lineage_tag, ctx)
        .await?;
    stages.done("engine build and push");
    let labelled = image_edit::relabel(&image_edit::Relabel {
        registry: env.registry.as_ref(),
        repository: a.repository,
        digest: &built.digest,
        labels: &spec.labels,
        tags: a.tags,
        created: a.created,
    })
    .await?;
    a.log.push(&format!(
        "labelled {} in the registry: {}",
        built.digest, labelled.digest
    ));
    Ok((labelled, built.bases))
}

/// The request's artifacts, read from the image in the registry and stored next to it.
async fn export(
    env: &Environment,
    job: &Job,
    (image_name, repository): (&str, &str),
    image: &Manifest,
    ctx: &BuildCtx,
) -> Result<Vec<crate::events::ArtifactRef>, BuildError> {
    if job.request.artifacts.is_empty() {
        return Ok(Vec::new());
    }
    // Records of this image's exports: a cached answer reuses them instead of reading layers.
    let recorded = env
        .recorded_images
        .recorded_artifacts(image_name, &image.digest)
        .await?;
    let export = artifacts::Export {
        recorded: &recorded,
        registry: env.registry.as_ref(),
        repository,
        image,
        specs: &job.request.artifacts,
        max_bytes: env.settings.artifact_max_bytes,
        scratch_dir: &ctx.scratch_dir,
        log: &ctx.log,
    };
    tokio::select! {
        result = artifacts::export_all(&export) => result,
        _ = ctx.cancel.cancelled() => Err(BuildError::Cancelled),
        _ = tokio::time::sleep(ctx.remaining()) => Err(BuildError::TimedOut(env.settings.build_timeout)),
    }
}

/// `registry/ns/name` -> `ns/name`, the repository path of the distribution API.
fn repository_path<'a>(image: &'a str, registry: &str) -> &'a str {
    image
        .strip_prefix(registry)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(image)
}

mod stages;
#[cfg(test)]
mod tests;
