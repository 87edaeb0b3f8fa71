//! A Dockerfile written for docker (BuildKit) fitted to podman 4.3 (buildah 1.28), which reads
//! the same syntax but builds less of it. Each rule is what podman did when tried:
//!
//! - heredocs (`RUN <<EOF`, `COPY <<EOF /f`) are misread as instructions or paths, with an
//!   error that names neither the line nor the cause: refused before podman runs;
//! - `--link` on COPY/ADD is refused by podman, yet it only changes how BuildKit caches and
//!   rebases the layer, never its files: dropped from a rewritten copy (line numbers kept);
//! - the other flags BuildKit has and podman lacks change what a step does: refused;
//! - HEALTHCHECK, SHELL and ONBUILD are dropped, with a mere warning, from podman's default OCI
//!   config (and SHELL from the RUN steps after it): such a Dockerfile builds `--format docker`.
//!
//! A Dockerfile the parser cannot read is left as it is: podman's own error then says why.

use std::path::{Path, PathBuf};

use crate::build_log::BuildLog;
use crate::dockerfile::{Body, Dockerfile, Keyword, Source, Step};
use crate::error::BuildError;

/// What podman is given for one Dockerfile.
#[derive(Debug)]
pub(super) struct Fit {
    /// The text podman reads, when it is not the original.
    rewritten: Option<String>,
    /// Why the build needs `--format docker`, when it does.
    docker_format: Option<String>,
    /// The flags dropped, as a build log line.
    dropped: Option<String>,
}

impl Fit {
    /// The fit of `text`, parsed as `dockerfile`; `Unsupported` names every line podman cannot
    /// build.
    pub(super) fn of(dockerfile: &Dockerfile, text: &str) -> Result<Self, BuildError> {
        let steps: Vec<&Step> = dockerfile.stages.iter().flat_map(|s| &s.steps).collect();
        let refused: Vec<String> = steps.iter().filter_map(|s| refusal(s)).collect();
        if !refused.is_empty() {
            return Err(BuildError::Unsupported(refused.join("; ")));
        }
        let links: Vec<(&Step, std::ops::Range<usize>)> = steps
            .iter()
            .flat_map(|s| s.flags.iter().map(move |f| (*s, f)))
            .filter(|(_, f)| f.name == "link")
            .map(|(s, f)| (s, f.span.clone()))
            .collect();
        let (rewritten, dropped) = if links.is_empty() {
            (None, None)
        } else {
            let mut out = text.to_owned();
            // From the end, so earlier spans stay valid.
            for (_, span) in links.iter().rev() {
                out.replace_range(span.clone(), "");
            }
            let named: Vec<String> = links.iter().map(|(s, _)| s.shown()).collect();
            let line = format!(
                "dropped --link from {}: podman does not know it, and it changes only how \
                 BuildKit caches the layer, never its files",
                named.join(", ")
            );
            (Some(out), Some(line))
        };
        let kept: Vec<String> = steps
            .iter()
            .filter(|s| {
                matches!(
                    s.keyword,
                    Keyword::Healthcheck | Keyword::Shell | Keyword::Onbuild
                )
            })
            .map(|s| s.shown())
            .collect();
        let docker_format = (!kept.is_empty()).then(|| {
            format!(
                "building with --format docker: podman's default OCI format would drop {}",
                kept.join(", ")
            )
        });
        Ok(Self {
            rewritten,
            docker_format,
            dropped,
        })
    }

    /// The text podman builds.
    pub(super) fn text<'a>(&'a self, original: &'a str) -> &'a str {
        self.rewritten.as_deref().unwrap_or(original)
    }

    /// Arguments for `podman build`.
    pub(super) fn podman_args(&self) -> Vec<&'static str> {
        if self.docker_format.is_some() {
            vec!["--format", "docker"]
        } else {
            Vec::new()
        }
    }

    /// One line for each change made to what was asked.
    pub(super) fn log(&self, log: &BuildLog) {
        for line in [&self.dropped, &self.docker_format].into_iter().flatten() {
            log.push(line);
        }
    }

    /// The Dockerfile podman reads: `original`, or the rewritten text in `<scratch>/Containerfile`.
    pub(super) fn dockerfile(
        &self,
        original: &Path,
        scratch: &Path,
    ) -> Result<PathBuf, BuildError> {
        let Some(text) = &self.rewritten else {
            return Ok(original.to_owned());
        };
        let path = scratch.join("Containerfile");
        std::fs::write(&path, text).map_err(|e| {
            BuildError::Internal(anyhow::anyhow!("failed to write the Containerfile: {e}"))
        })?;
        Ok(path)
    }
}

/// The flags podman 4.3 takes, per instruction (BuildKit's are `Keyword::known_flags`).
fn podman_flags(keyword: Keyword) -> &'static [&'static str] {
    match keyword {
        Keyword::Copy => &["from", "chown", "chmod"],
        Keyword::Add => &["chown", "chmod"],
        Keyword::Run => &["mount"],
        Keyword::Healthcheck => &["interval", "timeout", "start-period", "retries"],
        _ => &[],
    }
}

/// Why podman cannot build `step`, and what to write instead.
fn refusal(step: &Step) -> Option<String> {
    let shown = step.shown();
    match &step.body {
        Body::Run { heredocs, .. } if *heredocs > 0 => {
            return Some(format!(
                "{shown} uses a heredoc (<<), which podman does not support: put the script in \
                 a file, COPY it and RUN it, or join the commands with && in one RUN"
            ));
        }
        Body::Transfer { sources, .. } if sources.contains(&Source::HereDoc) => {
            return Some(format!(
                "{shown} copies a heredoc (<<), which podman does not support: commit the file \
                 and {} it, or write it with printf in a RUN",
                step.keyword.name()
            ));
        }
        _ => {}
    }
    // Flags BuildKit does not know either are podman's to report.
    let missing = step.flags.iter().find(|f| {
        f.name != "link"
            && step.keyword.known_flags().contains(&f.name.as_str())
            && !podman_flags(step.keyword).contains(&f.name.as_str())
    })?;
    Some(format!(
        "{} --{} (line {}) is BuildKit's only: podman does not support it; remove the flag",
        step.keyword.name(),
        missing.name,
        step.line
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Dockerfile {
        Dockerfile::parse(text).unwrap_or_else(|e| panic!("parses: {e}"))
    }

    fn unsupported(text: &str) -> String {
        match Fit::of(&parsed(text), text) {
            Err(BuildError::Unsupported(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn fitted(text: &str) -> Fit {
        Fit::of(&parsed(text), text).unwrap_or_else(|e| panic!("refused: {e}"))
    }

    #[test]
    fn heredocs_are_refused_naming_the_line_and_what_to_do() {
        let run = unsupported("FROM x\n\nRUN <<EOF\necho hi\nEOF\n");
        assert!(run.starts_with("RUN (line 3) uses a heredoc"), "{run}");
        assert!(run.contains("COPY it and RUN it"), "{run}");
        let copy = unsupported("FROM x\nCOPY <<EOT /hi\nhello\nEOT\n");
        assert!(copy.starts_with("COPY (line 2) copies a heredoc"), "{copy}");
        assert!(copy.contains("commit the file and COPY it"), "{copy}");
        // Both at once: the user fixes them in one go.
        let both = unsupported("FROM x\nRUN <<A\nA\nADD <<B /b\nB\n");
        assert!(both.contains("RUN (line 2)") && both.contains("ADD (line 4)"));
    }

    #[test]
    fn buildkit_only_flags_are_refused_by_name_and_line() {
        for (text, want) in [
            (
                "FROM x\nRUN --network=none true\n",
                "RUN --network (line 2)",
            ),
            (
                "FROM x\nRUN --security=insecure true\n",
                "RUN --security (line 2)",
            ),
            (
                "FROM x\nADD --checksum=sha256:00 a /a\n",
                "ADD --checksum (line 2)",
            ),
            (
                "FROM x\nADD --keep-git-dir=true a /a\n",
                "ADD --keep-git-dir (line 2)",
            ),
            (
                "FROM x\nCOPY --parents a/b /c/\n",
                "COPY --parents (line 2)",
            ),
            (
                "FROM x\nCOPY --exclude=*.md . /c/\n",
                "COPY --exclude (line 2)",
            ),
            (
                "FROM x\nHEALTHCHECK --start-interval=1s CMD true\n",
                "HEALTHCHECK --start-interval (line 2)",
            ),
        ] {
            let why = unsupported(text);
            assert!(why.starts_with(want), "{text:?}: {why}");
            assert!(why.contains("remove the flag"), "{why}");
        }
    }

    #[test]
    fn what_podman_builds_is_left_alone() {
        let text = "# syntax=docker/dockerfile:1\nARG BASE=x\nFROM --platform=linux/amd64 $BASE AS a\n\
                    RUN --mount=type=cache,target=/c true\nCOPY --chmod=755 --chown=1:1 a /a\n\
                    ADD --chmod=600 b.tar.gz /b/\nFROM a\nCOPY --from=a /a /a\nUSER 1\nWORKDIR /w\n\
                    HEALTHCHECK NONE\n";
        let fit = fitted(text);
        assert_eq!(fit.text(text), text);
        assert!(fit.rewritten.is_none() && fit.dropped.is_none());
        // Unknown to BuildKit as well: podman says what is wrong.
        let bogus = "FROM x\nCOPY --bogus a /a\n";
        assert!(Fit::of(&parsed(bogus), bogus).is_ok());
    }

    #[test]
    fn link_is_dropped_keeping_every_line() {
        let text = "FROM x AS a\nCOPY --link a /a\nFROM x\nADD --chmod=644 --link=true b /b\n\
                    COPY --from=a --link /a /a\n";
        let fit = fitted(text);
        assert_eq!(
            fit.text(text),
            "FROM x AS a\nCOPY  a /a\nFROM x\nADD --chmod=644  b /b\nCOPY --from=a  /a /a\n"
        );
        let line = fit.dropped.as_deref().unwrap_or_default();
        assert!(
            line.contains("COPY (line 2), ADD (line 4), COPY (line 5)"),
            "{line}"
        );
        assert!(fit.podman_args().is_empty());
    }

    #[test]
    fn link_on_a_continuation_line_with_crlf_bom_and_backtick_escape() {
        let text = "\u{feff}# escape=`\r\nFROM x\r\nCOPY `\r\n  --link `\r\n  a /a\r\n";
        let fit = fitted(text);
        assert_eq!(
            fit.text(text),
            "\u{feff}# escape=`\r\nFROM x\r\nCOPY `\r\n   `\r\n  a /a\r\n"
        );
        let line = fit.dropped.as_deref().unwrap_or_default();
        assert!(line.contains("COPY (line 3)"), "{line}");
        let heredoc = unsupported("\u{feff}FROM x\r\n\r\nRUN <<EOF\r\ntrue\r\nEOF\r\n");
        assert!(heredoc.starts_with("RUN (line 3)"), "{heredoc}");
    }

    #[test]
    fn healthcheck_shell_and_onbuild_build_in_docker_format() {
        for (text, named) in [
            ("FROM x\nHEALTHCHECK CMD true\n", "HEALTHCHECK (line 2)"),
            (
                "FROM x AS a\nSHELL [\"/bin/sh\", \"-ec\"]\nFROM x\n",
                "SHELL (line 2)",
            ),
            ("FROM x\nONBUILD COPY a /a\n", "ONBUILD (line 2)"),
        ] {
            let fit = fitted(text);
            assert_eq!(fit.podman_args(), ["--format", "docker"]);
            let why = fit.docker_format.as_deref().unwrap_or_default();
            assert!(why.contains(named), "{why}");
        }
        assert!(fitted("FROM x\nUSER 1\n").podman_args().is_empty());
    }

    #[test]
    fn only_a_rewrite_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let original = dir.path().join("Dockerfile");
        let plain = fitted("FROM x\nCOPY a /a\n");
        assert_eq!(
            plain.dockerfile(&original, dir.path()).expect("path"),
            original
        );
        let linked = fitted("FROM x\nCOPY --link a /a\n");
        let written = linked.dockerfile(&original, dir.path()).expect("written");
        assert_eq!(
            std::fs::read_to_string(written).expect("read"),
            "FROM x\nCOPY  a /a\n"
        );
    }
}
