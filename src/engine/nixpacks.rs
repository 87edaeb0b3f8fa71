//! nixpacks hand-off: `nixpacks build <context> --out <dir>` writes the app and a generated
//! `.nixpacks/Dockerfile` into `<dir>`, which podman then builds like any other Dockerfile.

use std::path::{Path, PathBuf};

use crate::error::BuildError;
use crate::pipeline::BuildCtx;
use crate::process::{self, Invocation, ProcessError};

/// Returns (Dockerfile, build context) generated for `context`.
pub async fn generate(
    program: &str,
    context: &Path,
    ctx: &BuildCtx,
) -> Result<(PathBuf, PathBuf), BuildError> {
    let out = ctx.scratch_dir.join("nixpacks");
    let inv = Invocation::new(program, ctx.remaining())
        .arg("build")
        .arg(context)
        .arg("--out")
        .arg(&out);
    ctx.log.push("no Dockerfile: generating one with nixpacks");
    process::run(inv, &ctx.log, &ctx.cancel)
        .await
        .map_err(|e| match e {
            ProcessError::NotInstalled { .. } => BuildError::Engine(
                "the repository has no Dockerfile and nixpacks is not installed on this worker"
                    .into(),
            ),
            ProcessError::Cancelled { .. } => BuildError::Cancelled,
            ProcessError::TimedOut { after, .. } => BuildError::TimedOut(after),
            ProcessError::Failed { .. } => BuildError::NoRecipe(format!(
                "nixpacks could not plan a build for this repository: {}",
                ctx.log.tail(1).join(" ")
            )),
            other => BuildError::Engine(other.to_string()),
        })?;
    let dockerfile = out.join(".nixpacks").join("Dockerfile");
    if !dockerfile.is_file() {
        return Err(BuildError::Engine(format!(
            "nixpacks wrote no Dockerfile to {}",
            dockerfile.display()
        )));
    }
    Ok((dockerfile, out))
}

/// The images a Dockerfile builds `FROM` (stage names excluded), to name them when a pull fails.
pub fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages = Vec::new();
    let mut images = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
        let Some(image) = rest.first() else { continue };
        if !stages
            .iter()
            .any(|s: &String| s.eq_ignore_ascii_case(image))
        {
            images.push((*image).to_owned());
        }
        if let [_, as_kw, name] = rest.as_slice()
            && as_kw.eq_ignore_ascii_case("AS")
        {
            stages.push((*name).to_owned());
        }
    }
    images
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_skip_stage_names_and_flags() {
        let text = "FROM --platform=linux/amd64 ghcr.io/railwayapp/nixpacks:ubuntu-1 AS base\n\
                    RUN x\nFROM base\nFROM scratch\n";
        assert_eq!(
            base_images(text),
            vec!["ghcr.io/railwayapp/nixpacks:ubuntu-1", "scratch"]
        );
    }
}
