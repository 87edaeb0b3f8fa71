//! Reading the Engine API's JSON progress streams: every line into the build log, the failing
//! line into the error, the pushed digest out of the push stream.

use bollard::models::{BuildInfo, PushImageInfo};

use crate::build_log::BuildLog;
use crate::error::{BuildError, EngineError};

/// Collects a build stream into the log. `stream` chunks are not always whole lines (a RUN step
/// may print without a newline), so the unfinished tail waits for the next chunk.
pub struct BuildOutput<'a> {
    log: &'a BuildLog,
    partial: String,
}

impl<'a> BuildOutput<'a> {
    pub fn new(log: &'a BuildLog) -> Self {
        Self {
            log,
            partial: String::new(),
        }
    }

    /// Logs one message; an `errorDetail` in it is the build's failure.
    pub fn on_info(&mut self, info: &BuildInfo) -> Result<(), BuildError> {
        if let Some(text) = &info.stream {
            self.partial.push_str(text);
            while let Some(end) = self.partial.find('\n') {
                let line: String = self.partial.drain(..=end).collect();
                if !line.trim().is_empty() {
                    self.log.push(&line);
                }
            }
        }
        if let Some(status) = &info.status {
            log_status(self.log, info.id.as_deref(), status, is_progress(info));
        }
        match info
            .error_detail
            .as_ref()
            .and_then(|d| d.message.as_deref())
        {
            Some(message) => Err(self.failed(message)),
            None => Ok(()),
        }
    }

    /// The build's failure as the daemon wrote it (bollard turns `errorDetail` into an error
    /// before we see the message, so both paths end here).
    pub fn failed(&mut self, message: &str) -> BuildError {
        self.flush();
        self.log.push(&format!("error: {}", message.trim_end()));
        build_failure(message)
    }

    /// Logs what is left of an unfinished line.
    pub fn flush(&mut self) {
        if !self.partial.trim().is_empty() {
            self.log.push(&self.partial);
        }
        self.partial.clear();
    }
}

/// Collects a push stream into the log and remembers the digest it reports.
#[derive(Default)]
pub struct PushOutput {
    digest: Option<String>,
}

impl PushOutput {
    /// Logs one message; an `errorDetail` in it is the push's failure.
    pub fn on_info(
        &mut self,
        info: &PushImageInfo,
        log: &BuildLog,
        reference: &str,
    ) -> Result<(), BuildError> {
        if let Some(status) = &info.status {
            if let Some(digest) = digest_in(status) {
                self.digest = Some(digest);
            }
            let progress = info
                .progress_detail
                .as_ref()
                .is_some_and(|p| p.current.is_some());
            log_status(log, None, status, progress);
        }
        match info
            .error_detail
            .as_ref()
            .and_then(|d| d.message.as_deref())
        {
            Some(message) => Err(push_failure(message, log, reference)),
            None => Ok(()),
        }
    }

    /// The digest the daemon reported, or why there is none.
    pub fn digest(self, reference: &str) -> Result<String, BuildError> {
        self.digest.ok_or_else(|| {
            BuildError::PushFailed(EngineError::Said(format!(
                "{reference}: the daemon reported no digest for the pushed image"
            )))
        })
    }
}

/// A failed push as the daemon wrote it: ours to retry (registry down, TLS, auth setup).
pub fn push_failure(message: &str, log: &BuildLog, reference: &str) -> BuildError {
    log.push(&format!("error: {}", message.trim_end()));
    BuildError::PushFailed(EngineError::Said(format!(
        "{reference}: {}",
        message.trim()
    )))
}

/// Pull and push progress repeats one status per layer many times: only the changes of state
/// are logged, not every progress tick.
fn is_progress(info: &BuildInfo) -> bool {
    info.progress_detail
        .as_ref()
        .is_some_and(|p| p.current.is_some())
}

fn log_status(log: &BuildLog, id: Option<&str>, status: &str, progress: bool) {
    if progress || status.trim().is_empty() {
        return;
    }
    match id {
        Some(id) => log.push(&format!("{id}: {status}")),
        None => log.push(status),
    }
}

/// `<tag>: digest: sha256:<64 hex> size: <n>`: the line docker and podman's compat service
/// both end a successful push with (podman sends no `aux` record, so this is the one source).
pub fn digest_in(status: &str) -> Option<String> {
    let (_, rest) = status.split_once("digest: ")?;
    let hex = rest.strip_prefix("sha256:")?;
    let hex: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    (hex.len() == 64).then(|| format!("sha256:{hex}"))
}

/// An `errorDetail` of a build: the user's Dockerfile failed, unless the daemon could not
/// pull a base image, which is a registry we could not reach (ours to retry).
pub fn build_failure(message: &str) -> BuildError {
    let line = message.trim();
    // podman's wording (seen through its compat service), then the network errors under any
    // daemon's failed pull; a RUN step's own network trouble is reported as a failed step.
    let podman_pull =
        line.contains("creating build container") || line.contains("initializing source docker://");
    let network = !line.starts_with("building at STEP")
        && [
            "pinging container registry",
            "dial tcp",
            "i/o timeout",
            "TLS handshake timeout",
        ]
        .iter()
        .any(|m| line.contains(m));
    if podman_pull || network {
        let image = line
            .split_once("docker://")
            .map(|(_, rest)| rest.split(": ").next().unwrap_or(rest).trim())
            .unwrap_or("the base image");
        return BuildError::Engine(EngineError::Said(format!(
            "failed to pull base image {image}: {line}"
        )));
    }
    BuildError::StepFailed(line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Fault;
    use crate::redact::Redactor;

    // Captured from podman 4.3.1's Docker-compatible service (`podman system service`) on a CI
    // host of this project: the API the test suite runs the docker engine against.
    const BUILD_OK: &str = include_str!("fixtures/build_ok.jsonl");
    const BUILD_COPY_MISSING: &str = include_str!("fixtures/build_copy_missing.jsonl");
    const BUILD_UNKNOWN_INSTRUCTION: &str =
        include_str!("fixtures/build_unknown_instruction.jsonl");
    const BUILD_RUN_NO_ISOLATION: &str = include_str!("fixtures/build_run_no_isolation.jsonl");
    const BUILD_PULL_UNREACHABLE: &str = include_str!("fixtures/build_pull_unreachable.jsonl");
    const PUSH_OK: &str = include_str!("fixtures/push_ok.jsonl");
    const PUSH_TLS_REFUSED: &str = include_str!("fixtures/push_tls_refused.jsonl");

    fn log() -> BuildLog {
        BuildLog::new(Redactor::new(["s3cr3t-value"]))
    }

    /// Feeds a captured stream line by line, as bollard decodes it; returns the first error.
    fn run_build(fixture: &str, log: &BuildLog) -> Result<(), BuildError> {
        let mut output = BuildOutput::new(log);
        for line in fixture.lines() {
            let info: BuildInfo = serde_json::from_str(line).expect("fixture line parses");
            output.on_info(&info)?;
        }
        output.flush();
        Ok(())
    }

    fn run_push(fixture: &str, log: &BuildLog) -> Result<String, BuildError> {
        let mut output = PushOutput::default();
        for line in fixture.lines() {
            let info: PushImageInfo = serde_json::from_str(line).expect("fixture line parses");
            output.on_info(&info, log, "reg/ns/app:t1")?;
        }
        output.digest("reg/ns/app:t1")
    }

    #[test]
    fn successful_build_logs_every_line() {
        let log = log();
        run_build(BUILD_OK, &log).expect("succeeds");
        let lines = log.tail(100);
        assert_eq!(
            lines.first().map(String::as_str),
            Some("STEP 1/4: FROM localhost/busybox:latest")
        );
        assert!(
            lines
                .iter()
                .any(|l| l == "Successfully tagged localhost/ibtest/x:1"),
            "{lines:#?}"
        );
        assert_eq!(lines.len(), 12, "one log line per stream line: {lines:#?}");
    }

    #[test]
    fn failing_steps_are_the_users_fault_with_the_failing_line() {
        for fixture in [
            BUILD_COPY_MISSING,
            BUILD_UNKNOWN_INSTRUCTION,
            BUILD_RUN_NO_ISOLATION,
        ] {
            let log = log();
            let err = run_build(fixture, &log).expect_err("fails");
            assert_eq!(err.classify(), Fault::User, "{err}");
            assert!(err.to_string().contains("building at STEP"), "{err}");
            assert!(
                log.tail(1)[0].starts_with("error: building at STEP"),
                "{:?}",
                log.tail(1)
            );
        }
        let err = run_build(BUILD_COPY_MISSING, &log()).expect_err("fails");
        assert!(err.to_string().contains("COPY missing.txt"), "{err}");
    }

    #[test]
    fn unreachable_base_image_is_ours_and_named() {
        let err = run_build(BUILD_PULL_UNREACHABLE, &log()).expect_err("fails");
        assert_eq!(err.classify(), Fault::Service, "{err}");
        assert!(
            err.chain()
                .contains("failed to pull base image localhost/nosuch:latest"),
            "{err}"
        );
    }

    #[test]
    fn partial_stream_chunks_become_whole_lines() {
        let log = log();
        let mut output = BuildOutput::new(&log);
        for chunk in ["hel", "lo\nwor", "ld s3cr3t-value\n", "tail"] {
            let info = BuildInfo {
                stream: Some(chunk.into()),
                ..Default::default()
            };
            output.on_info(&info).expect("no error");
        }
        output.flush();
        assert_eq!(log.tail(10), vec!["hello", "world [REDACTED]", "tail"]);
    }

    #[test]
    fn push_digest_comes_from_the_status_line() {
        let log = log();
        let digest = run_push(PUSH_OK, &log).expect("pushed");
        assert_eq!(
            digest,
            "sha256:4ad5af8a8ab582bfe6b32bfd125f5922d5e6b0338228aac3955b9a26ea88bb40"
        );
        assert_eq!(log.tail(10).len(), 2);
        // dockerd ends a push the same way (plus an `aux` record bollard does not decode).
        assert_eq!(
            digest_in("latest: digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef size: 528").as_deref(),
            Some("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_eq!(digest_in("digest: sha256:abc size: 1"), None);
        assert_eq!(digest_in("Pushed"), None);
    }

    #[test]
    fn push_errors_are_push_failures() {
        let err = run_push(PUSH_TLS_REFUSED, &log()).expect_err("refused");
        assert!(matches!(err, BuildError::PushFailed(_)), "{err:?}");
        assert_eq!(err.classify(), Fault::Service);
        assert!(err.chain().contains("reg/ns/app:t1"), "{err}");
        assert!(
            err.chain()
                .contains("server gave HTTP response to HTTPS client"),
            "{err}"
        );

        let silent = run_push(r#"{"status":"The push refers to repository [x]"}"#, &log())
            .expect_err("no digest");
        assert!(silent.chain().contains("no digest"), "{silent}");
    }
}
