//! nixpacks hand-off: `nixpacks build <context> --out <dir>` writes the app and a generated
//! `.nixpacks/Dockerfile` into `<dir>`, which podman then builds like any other Dockerfile.
//!
//! nixpacks reads the context by path and follows symlinks, wherever they lead. So it never
//! sees the checkout: it gets a copy made through `confined::Tree` (regular files, directories,
//! and only the symlinks that resolve inside the context; special files refuse the build).

use std::path::{Path, PathBuf};

use crate::confined::Tree;
use crate::error::{BuildError, EngineError};
use crate::ports::BuildCtx;
use crate::process::{self, Invocation, ProcessError};

/// Returns (Dockerfile, build context) generated for `context`.
pub async fn generate(
    program: &str,
    context: &Path,
    ctx: &BuildCtx,
) -> Result<(PathBuf, PathBuf), BuildError> {
    let out = ctx.scratch_dir.join("nixpacks");
    ctx.log.push("no Dockerfile: generating one with nixpacks");
    let input = confined_copy(context, &ctx.scratch_dir.join("nixpacks-input"), ctx).await?;
    let inv = Invocation::new(program, ctx.remaining())
        .arg("build")
        .arg(&input)
        .arg("--out")
        .arg(&out);
    process::run(inv, &ctx.log, &ctx.cancel)
        .await
        .map_err(|e| match e {
            // nixpacks' own verdict on the repository: the user's to change.
            ProcessError::Failed { .. } => BuildError::NoRecipe(format!(
                "no {} in the context, and nixpacks could not plan a build for this \
                 repository: {}",
                crate::dockerfile::DISCOVERED_NAMES.join(", "),
                ctx.log.tail(1).join(" ")
            )),
            other => super::program_failed(
                other,
                "the repository has no Dockerfile, and generating one with nixpacks",
                &ctx.log.tail(1),
            ),
        })?;
    let dockerfile = out.join(".nixpacks").join("Dockerfile");
    if !dockerfile.is_file() {
        return Err(EngineError::Said(format!(
            "nixpacks wrote no Dockerfile to {}",
            dockerfile.display()
        ))
        .into());
    }
    Ok((dockerfile, out))
}

/// Copies `context` into `dest` for nixpacks; symlinks left out are named in the build log.
async fn confined_copy(context: &Path, dest: &Path, ctx: &BuildCtx) -> Result<PathBuf, BuildError> {
    let (source, target) = (context.to_owned(), dest.to_owned());
    let (stats, skipped) = tokio::task::spawn_blocking(move || {
        let tree = Tree::open(&source).map_err(|e| {
            BuildError::Internal(anyhow::anyhow!("failed to open the build context: {e}"))
        })?;
        let mut skipped = Vec::new();
        let stats = tree.copy_into(&target, &mut |line| skipped.push(line))?;
        Ok::<_, BuildError>((stats, skipped))
    })
    .await
    .map_err(|e| BuildError::Internal(anyhow::anyhow!("context copy task failed: {e}")))??;
    for line in &skipped {
        ctx.log.push(line);
    }
    ctx.log.push(&format!(
        "nixpacks reads a copy of the context: {} file(s), {} symlink(s), {} left out",
        stats.files,
        stats.symlinks,
        skipped.len()
    ));
    Ok(dest.to_owned())
}
