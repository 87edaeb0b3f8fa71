//! Whose fault a failed `podman build` is, read from the stage podman itself reports as failed,
//! and how a base image that could not be pulled is named: as written, as resolved, and where
//! it was looked for.

use std::time::Duration;

use super::base_images::BaseImages;
use crate::error::{BuildError, EngineError, ProcessError};

/// podman 4.3's cache lookup failing on an image removed while it looked (see `store_lock`).
pub(super) fn lost_cache_lookup_race(e: &BuildError) -> bool {
    matches!(e, BuildError::Engine(EngineError::Program { said, .. })
        if said.contains("checking if cached image exists") && said.contains("layer not known"))
}

/// Decided by podman's own last word on stderr (its final `Error:`, after anything a RUN step
/// printed there: a step that prints podman's pull error and exits 1 is still a failing step,
/// not a registry to retry). A step's exit status is its own and says nothing about podman.
pub(super) fn build_error(
    err: ProcessError,
    tail: &[String],
    bases: &[String],
    timeout: Duration,
    images: &BaseImages,
) -> BuildError {
    let last = match &err {
        // The build's steps ran out of the build's time: the repository's to fix, not retried.
        ProcessError::TimedOut { .. } => {
            return BuildError::LimitExceeded(format!(
                "the build ran longer than build.timeout_secs = {} s (timed out)",
                timeout.as_secs()
            ));
        }
        ProcessError::Failed { last_stderr, .. } => last_stderr.as_deref().unwrap_or("").trim(),
        _ => return super::program_failed(err, "building", tail),
    };
    match failed_stage(last) {
        Stage::Instruction => BuildError::StepFailed(last.to_owned()),
        Stage::BaseImage { missing } => {
            // The longest name podman's words contain (`alpine:3` is in `x/alpine:3`).
            let named = bases
                .iter()
                .filter(|b| last.contains(b.as_str()))
                .max_by_key(|b| b.len());
            let image = named
                .or(bases.first())
                .map_or_else(|| "?".to_owned(), |b| images.lookup(b).describe());
            if missing {
                BuildError::StepFailed(format!("the base image does not exist: {image}: {last}"))
            } else {
                super::program_failed(err, format!("failed to pull base image {image}"), tail)
            }
        }
        Stage::Podman => super::program_failed(err, "building", tail),
    }
}

/// Where a `podman build` failed, from podman's own last word.
#[derive(Debug, PartialEq, Eq)]
enum Stage {
    /// A Dockerfile instruction failed (a RUN step's exit, a missing COPY source, a parse error).
    Instruction,
    /// Getting the base image failed: a name the registry does not have is the user's, an
    /// unreachable registry ours.
    BaseImage { missing: bool },
    /// podman itself (storage, runtime): ours.
    Podman,
}

fn failed_stage(last: &str) -> Stage {
    if last.contains("building at STEP") || last.contains("dockerfile parse error") {
        Stage::Instruction
    } else if last.contains("creating build container")
        || last.contains("initializing source docker://")
        || last.contains("pinging container registry")
    {
        // With mirrors podman says `(Mirrors also failed: [...]): <location>: <why>`: the
        // location has the last word (a mirror is a cache; one that is down proves nothing).
        let location = last.rsplit_once("]): ").map_or(last, |(_, after)| after);
        let missing = ["manifest unknown", "name unknown", "not found"]
            .iter()
            .any(|m| location.contains(m));
        Stage::BaseImage { missing }
    } else {
        Stage::Podman
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BaseMirror, BaseRegistry};

    fn failed(last: &str) -> ProcessError {
        ProcessError::Failed {
            program: "podman".to_owned(),
            status: std::os::unix::process::ExitStatusExt::from_raw(125 << 8),
            last_stderr: Some(last.to_owned()),
        }
    }

    fn mapped() -> BaseImages {
        BaseImages {
            short_name_registry: "docker.io".into(),
            entries: vec![BaseRegistry {
                prefix: "docker.io".into(),
                location: "127.0.0.1:5998/hub".into(),
                insecure: true,
                mirrors: vec![BaseMirror {
                    location: "127.0.0.1:5999/cache".into(),
                    insecure: true,
                }],
            }],
        }
    }

    #[test]
    fn the_stage_comes_from_podmans_last_line_not_from_what_a_step_printed() {
        let step = r#"Error: building at STEP "RUN echo 'Error: creating build container: initializing source docker://x'; exit 1": while running runtime: exit status 1"#;
        assert_eq!(failed_stage(step), Stage::Instruction);
        let unreachable = "Error: creating build container: initializing source \
                           docker://127.0.0.1:5999/a:1: pinging container registry 127.0.0.1:5999: \
                           connect: connection refused";
        assert_eq!(
            failed_stage(unreachable),
            Stage::BaseImage { missing: false }
        );
        let missing = "Error: creating build container: initializing source docker://r/a:1: \
                       reading manifest 1 in r/a: manifest unknown";
        assert_eq!(failed_stage(missing), Stage::BaseImage { missing: true });
        assert_eq!(failed_stage("Error: layer not known"), Stage::Podman);
    }

    #[test]
    fn with_mirrors_the_location_decides_and_every_place_is_named() {
        // podman's words (joined lines) when the mirror is down and the location has no image.
        let gone = "Error: creating build container: initializing source docker://app:2: \
                    (Mirrors also failed: [127.0.0.1:5999/cache/library/app:2: pinging container \
                    registry 127.0.0.1:5999: connect: connection refused]): \
                    127.0.0.1:5998/hub/library/app:2: reading manifest 2 in \
                    127.0.0.1:5998/hub/library/app: manifest unknown";
        let timeout = Duration::from_secs(60);
        let bases = ["app:2".to_owned()];
        let err = build_error(failed(gone), &[], &bases, timeout, &mapped());
        let BuildError::StepFailed(reason) = err else {
            panic!("a missing image is the user's: {err:?}");
        };
        assert!(
            reason.starts_with(
                "the base image does not exist: app:2 (docker.io/library/app:2), looked for at \
                 127.0.0.1:5999/cache/library/app:2 (mirror), then \
                 127.0.0.1:5998/hub/library/app:2: Error:"
            ),
            "{reason}"
        );
        // The other way round: the mirror lacks it, the location is down.
        let down = "Error: creating build container: initializing source docker://app:2: \
                    (Mirrors also failed: [127.0.0.1:5999/cache/library/app:2: manifest unknown]): \
                    127.0.0.1:5998/hub/library/app:2: pinging container registry 127.0.0.1:5998: \
                    connect: connection refused";
        let err = build_error(failed(down), &[], &bases, timeout, &mapped());
        let chain = err.chain();
        assert!(
            matches!(err, BuildError::Engine(_))
                && chain.contains(
                    "failed to pull base image app:2 (docker.io/library/app:2), looked for at \
                     127.0.0.1:5999/cache/library/app:2 (mirror), then \
                     127.0.0.1:5998/hub/library/app:2: Error: creating build container"
                ),
            "{chain}"
        );
    }

    #[test]
    fn only_podmans_own_cache_lookup_race_builds_again() {
        let tail = ["STEP 2/2: RUN exit 3".to_owned()];
        let raced = failed(
            "Error: checking if cached image exists from a previous build: getting top \
             layer info: layer not known",
        );
        let timeout = Duration::from_secs(60);
        let images = BaseImages::default();
        assert!(lost_cache_lookup_race(&build_error(
            raced,
            &tail,
            &[],
            timeout,
            &images
        )));
        // A step that prints the same words and fails is the repository's failure.
        let printed = ProcessError::Failed {
            program: "podman".to_owned(),
            status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
            last_stderr: Some(
                "Error: building at STEP \"RUN echo checking if cached image exists: layer not \
                 known; exit 1\": while running runtime: exit status 1"
                    .to_owned(),
            ),
        };
        assert!(!lost_cache_lookup_race(&build_error(
            printed,
            &tail,
            &[],
            timeout,
            &images
        )));
    }
}
