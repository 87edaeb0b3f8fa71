//! Incremental rebuilds: when a new commit only changes files that the Dockerfile's final plain
//! `COPY` steps read, the newest image of the same configuration (its lineage tag) is edited in
//! the registry instead of built: those COPY layers are made from the checkout and uploaded, the
//! config and manifest are rewritten, every other layer stays where it is. This is what makes a
//! one-file change cost milliseconds instead of a podman build and push.
//!
//! The image edits themselves (config, manifest, upload) are `image_edit`'s, which relabelling
//! shares.
//!
//! It runs only when it can prove the result equals a full build (`tail`): plain COPYs at the
//! end of the final stage (no flags, globs or variables), no changed file that any other step
//! of any stage reads (COPY/ADD sources, RUN bind mounts, through symlinks), an ignore file of
//! literal paths only (`ignore`), nothing it does not model (unknown flags, ONBUILD in the
//! Dockerfile or a trigger in the previous image's history, heredocs, images or URLs read by a
//! step), one platform. Anything else builds normally, and the build log says why in one line.
//! `tests/integration/incremental_diff` checks a corpus of such pairs against podman.

mod base_swap;
mod compressing;
mod ignore;
mod layer;
mod layer_memo;
pub mod lineage;
mod placement;
pub mod split;
mod tail;

use std::collections::HashSet;
use std::path::Path;

pub use base_swap::swap_base;
pub use lineage::LookingUp;

use crate::build_log::BuildLog;
use crate::confined::Tree;
use crate::error::BuildError;
use crate::ports::{BuildCtx, BuildSpec, Checkout, Environment, Manifest, Recipe, SourceSpec};

use crate::image_edit::{NewLayer, Previous, publish_beside, rfc3339};

/// What the pipeline knows when it may try an incremental rebuild.
pub struct Attempt<'a> {
    pub env: &'a Environment,
    pub spec: &'a BuildSpec,
    pub source: &'a SourceSpec,
    pub checkout: &'a Checkout,
    /// Where the layers are written before their upload (removed with the build).
    pub scratch_dir: &'a Path,
    /// The registry's name for the image (`ns/name`).
    pub repository: &'a str,
    /// Every tag of the image, written at once: the user's, then the build key and (one
    /// platform) the lineage tag.
    pub tags: &'a [&'a str],
    pub created: time::OffsetDateTime,
    pub log: &'a BuildLog,
    /// Bounds what the attempt fetches (a shallow mirror deepened for the diff).
    pub ctx: &'a BuildCtx,
}

/// An image made by editing the previous one.
pub struct Edited {
    pub manifest: Manifest,
    /// Why it could be edited.
    pub why: String,
    /// The digest of the image it was edited from (whose base images it keeps).
    pub from: String,
}

/// The edited image, pushed under `tag`, with why it could be edited; or why this build needs
/// the engine.
pub async fn rebuild(
    attempt: &Attempt<'_>,
    looking_up: LookingUp,
) -> Result<Result<Edited, String>, BuildError> {
    let outcome = try_rebuild(attempt, looking_up).await?;
    if let Err(reason) = &outcome {
        attempt
            .log
            .push(&format!("full build: no incremental rebuild ({reason})"));
    }
    Ok(outcome)
}

/// "app/a.py, app/b.py and 3 more": the changed paths, named up to a few.
fn named(paths: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = paths
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        text.push_str(&format!(" and {} more", paths.len() - SHOWN));
    }
    text
}

/// Outer error: the registry or git failed (a service fault, as in any build). Inner error:
/// why this build does not qualify.
async fn try_rebuild(
    a: &Attempt<'_>,
    looking_up: LookingUp,
) -> Result<Result<Edited, String>, BuildError> {
    let spec = a.spec;
    if spec.platforms.len() > 1 {
        return Ok(Err("several platforms".into()));
    }
    // First: of all the reasons a build is full, this one says the most.
    let store = &a.env.registry;
    let Some(lineage) = lineage::found(looking_up).await? else {
        return Ok(Err("first build of this configuration".into()));
    };
    let previous = lineage.manifest;
    let dockerfile = match last_stage_dockerfile(spec) {
        Ok(dockerfile) => dockerfile,
        Err(reason) => return Ok(Err(reason)),
    };
    let (context, ignore, text) = match read_inputs(spec, dockerfile)? {
        Ok(inputs) => inputs,
        Err(reason) => return Ok(Err(reason)),
    };
    let tail = match tail::analyse(&text) {
        Ok(tail) => tail,
        Err(reason) => return Ok(Err(reason)),
    };
    if let Some(name) = &ignore.name
        && tail.mounts_context
    {
        return Ok(Err(format!(
            "a RUN bind-mounts the context, which has a {name} (not modelled together)"
        )));
    }

    if !lineage.recorded {
        return Ok(Err(format!(
            "the lineage tag points at {}, which this service did not record building",
            previous.digest
        )));
    }
    let Some(config) = lineage.config else {
        return Ok(Err("the earlier image has no config".into()));
    };
    let Some(config) = config else {
        return Ok(Err("the earlier image's config is gone".into()));
    };
    let prev = match Previous::parse(
        &previous.media_type,
        &previous.bytes,
        &config,
        tail.copies.len(),
    ) {
        Ok(prev) => prev,
        Err(reason) => return Ok(Err(reason)),
    };
    // Triggers read context files the tail analysis never sees.
    if let Some(trigger) = prev.onbuild_trigger() {
        return Ok(Err(format!(
            "the image's build ran the ONBUILD trigger `{trigger}`, which is not modelled"
        )));
    }
    let Some(prev_commit) = prev.revision().map(str::to_owned) else {
        return Ok(Err("the earlier image has no revision label".into()));
    };
    let changed = a
        .env
        .source
        .changed_paths(a.source, &prev_commit, &a.checkout.commit, a.ctx)
        .await?;
    let Some(changed) = changed else {
        return Ok(Err(format!("commit {prev_commit} is not in the mirror")));
    };
    let earlier_reads = placement::through_symlinks(&context, &tail.earlier_reads);
    if let Err(reason) = changes_fit_the_tail(a, dockerfile, &ignore, &earlier_reads, &changed) {
        return Ok(Err(reason));
    }
    let copies =
        match placement::place(store.as_ref(), a.repository, &prev, &context, tail.copies).await? {
            Ok(copies) => copies,
            Err(reason) => return Ok(Err(reason)),
        };

    let earlier = EarlierLayers::of(a, &prev, &changed, copies.len());
    let Made {
        layers: new_layers,
        files,
        unread,
        written,
    } = match made_layers(a, context, ignore, copies, earlier).await? {
        Ok(made) => made,
        Err(reason) => return Ok(Err(reason)),
    };

    let created = rfc3339(a.created);
    let note = format!("image-builder: rebuilt from {}", previous.digest);
    let media_type = prev.media_type(&previous.media_type);
    let replaced = new_layers.len();
    let (config, manifest) = match prev.relayer(&new_layers, &spec.labels, &created, &note) {
        Ok(edited) => edited,
        Err(reason) => return Ok(Err(reason)),
    };
    let edited = publish_beside(
        store.as_ref(),
        a.repository,
        a.tags,
        (media_type, config, manifest),
        upload_layers(a, written),
    )
    .await?;
    a.log.push(&format!(
        "incremental rebuild of {}@{} (commit {prev_commit}): {replaced} COPY layer(s) \
         replaced from {files} file(s) ({unread} unchanged, taken unread from the layers \
         they replace), every other layer reused",
        spec.image, previous.digest
    ));
    let why = if changed.is_empty() {
        format!("nothing changed since commit {prev_commit} but the commit")
    } else {
        format!(
            "only files no step but the final COPYs reads changed: {}",
            named(&changed)
        )
    };
    Ok(Ok(Edited {
        manifest: edited,
        why,
        from: previous.digest,
    }))
}

/// The COPY steps' layers, made from the context in the build's scratch dir, to upload.
struct Made {
    layers: Vec<NewLayer>,
    /// How many files they hold.
    files: usize,
    /// How many of them were taken from the layers they replace, unread.
    unread: usize,
    written: Vec<layer::Layer>,
}

/// What an edit may take from the layers it replaces (`layer_memo`).
struct EarlierLayers {
    /// Per COPY step: the diff_id of the layer it replaces.
    diff_ids: Vec<Option<String>>,
    /// The context files changed since the previous image's commit.
    changed: HashSet<String>,
}

impl EarlierLayers {
    /// None when a changed `.gitattributes` may change what the checkout holds of files that
    /// did not change, or when the context is not beneath the checkout.
    fn of(a: &Attempt<'_>, prev: &Previous, changed: &[String], copies: usize) -> Option<Self> {
        if changed
            .iter()
            .any(|path| path.rsplit('/').next() == Some(".gitattributes"))
        {
            return None;
        }
        let context = relative(&a.spec.checkout_dir, &a.spec.context_dir).ok()?;
        let context = context.to_str()?;
        let changed = changed
            .iter()
            .filter_map(|path| in_context(context, path))
            .map(str::to_owned)
            .collect();
        let first_replaced = prev.layer_count().saturating_sub(copies);
        let diff_ids = (0..copies)
            .map(|n| prev.diff_id(first_replaced + n).map(str::to_owned))
            .collect();
        Some(Self { diff_ids, changed })
    }
}

/// `path` (relative to the checkout) relative to the context at `context`, when inside it.
fn in_context<'p>(context: &str, path: &'p str) -> Option<&'p str> {
    if context.is_empty() {
        Some(path)
    } else {
        path.strip_prefix(context)
            .and_then(|rest| rest.strip_prefix('/'))
    }
}

/// Makes the COPY steps' layers, each from the files that changed and what `earlier` finds of
/// the layer it replaces. Inner error: a step this service cannot make (the engine must).
async fn made_layers(
    a: &Attempt<'_>,
    context: Tree,
    ignore: ignore::Ignore,
    copies: Vec<tail::CopyStep>,
    earlier: Option<EarlierLayers>,
) -> Result<Result<Made, String>, BuildError> {
    let scratch = a.scratch_dir.to_owned();
    // The commit's time in every entry: see `layer`.
    let mtime = u64::try_from(a.checkout.committed_at).unwrap_or(0);
    // The uploads' sessions start while the layers are made: one for each, one for the config.
    let sessions = a
        .env
        .registry
        .prepare_uploads(a.repository, copies.len() + 1);
    let making = tokio::task::spawn_blocking(move || {
        copies
            .iter()
            .enumerate()
            .map(|(n, step)| {
                let out = scratch.join(format!("layer-{n}.tar.gz"));
                let kept = earlier.as_ref().and_then(|e| {
                    let diff_id = e.diff_ids.get(n)?.as_deref()?;
                    Some(layer::Earlier {
                        layer: layer_memo::find(diff_id)?,
                        changed: &e.changed,
                    })
                });
                layer::build(&context, &ignore.file, step, (mtime, kept.as_ref()), &out)
            })
            .collect::<Result<Vec<_>, _>>()
    });
    let (layers, ()) = tokio::join!(making, sessions);
    let layers =
        layers.map_err(|e| BuildError::Internal(anyhow::anyhow!("layer task failed: {e}")))?;
    let written = match layers {
        Ok(layers) => layers,
        Err(reason) => return Ok(Err(reason)),
    };
    Ok(Ok(Made {
        layers: written
            .iter()
            .map(|built| NewLayer {
                digest: built.digest.clone(),
                diff_id: built.diff_id.clone(),
                size: built.size,
            })
            .collect(),
        files: written.iter().map(|l| l.files).sum(),
        unread: written.iter().map(|l| l.reused).sum(),
        written,
    }))
}

/// Uploads the made layers, each file removed once the registry has it.
async fn upload_layers(a: &Attempt<'_>, written: Vec<layer::Layer>) -> Result<(), BuildError> {
    for built in written {
        a.env
            .registry
            .upload_blob_file(a.repository, &built.digest, &built.path, built.size)
            .await?;
        // Uploaded: the scratch disk need not hold it until the build ends.
        let _ = std::fs::remove_file(&built.path);
    }
    Ok(())
}

/// Every changed file the image can see must be read by the tail's COPYs only.
fn changes_fit_the_tail(
    a: &Attempt<'_>,
    dockerfile: &Path,
    ignore: &ignore::Ignore,
    earlier_reads: &[String],
    changed: &[String],
) -> Result<(), String> {
    let root = &a.spec.checkout_dir;
    let relative = |path: &Path| {
        path.strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
            .map(str::to_owned)
    };
    let dockerfile = relative(dockerfile).ok_or("the Dockerfile is outside the checkout")?;
    let context = relative(&a.spec.context_dir).ok_or("the context is outside the checkout")?;
    for path in changed {
        if *path == dockerfile {
            return Err("the Dockerfile changed".into());
        }
        let Some(in_context) = in_context(&context, path) else {
            continue;
        };
        if ignore.name.as_deref() == Some(in_context) {
            return Err(format!("the {in_context} changed"));
        }
        if ignore.file.ignores(in_context) {
            continue; // no step sees it
        }
        if earlier_reads
            .iter()
            .any(|read| crate::dockerfile::overlaps(read, in_context))
        {
            return Err(format!("{path} is read by a step before the final COPYs"));
        }
    }
    Ok(())
}

/// The request's own Dockerfile when the image is its last stage (what the tail analysis
/// reads as the image; a target may be an earlier one), or why not.
fn last_stage_dockerfile(spec: &BuildSpec) -> Result<&Path, String> {
    let Recipe::Dockerfile(dockerfile) = &spec.recipe else {
        return Err("nixpacks generates the Dockerfile".into());
    };
    if let Some(target) = &spec.target {
        return Err(format!("the target stage '{target}' is built"));
    }
    Ok(dockerfile)
}

/// The context, its ignore file and the Dockerfile's text, read beneath the checkout. Inner
/// error: why they cannot be read here (the engine then reads them itself).
fn read_inputs(
    spec: &BuildSpec,
    dockerfile: &Path,
) -> Result<Result<(Tree, ignore::Ignore, String), String>, BuildError> {
    let tree = match Tree::open(&spec.checkout_dir) {
        Ok(tree) => tree,
        Err(e) => return Ok(Err(format!("the checkout cannot be opened: {e}"))),
    };
    let context = match tree.subtree(&relative(&spec.checkout_dir, &spec.context_dir)?) {
        Ok(tree) => tree,
        Err(why) => return Ok(Err(format!("the context cannot be read: {why}"))),
    };
    let ignore = match ignore::read(&context) {
        Ok(ignore) => ignore,
        Err(reason) => return Ok(Err(reason)),
    };
    let read = tree.read_to_string(
        &relative(&spec.checkout_dir, dockerfile)?,
        crate::dockerfile::MAX_DOCKERFILE_BYTES,
    );
    Ok(read
        .map(|text| (context, ignore, text))
        .map_err(|why| format!("the Dockerfile cannot be read: {why}")))
}

/// `path` (inside the checkout, as `plan` resolved it) relative to the checkout.
fn relative(checkout: &Path, path: &Path) -> Result<std::path::PathBuf, BuildError> {
    path.strip_prefix(checkout)
        .map(Path::to_owned)
        .map_err(|_| {
            BuildError::Internal(anyhow::anyhow!(
                "{} is not inside the checkout",
                path.display()
            ))
        })
}
