//! What goes wrong running a child program (`process::run`): the process boundary. What a
//! failure means for the build is the engine's to say (`engine::program_failed`).

use std::process::ExitStatus;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{program} is not installed (or not on PATH)")]
    NotInstalled { program: String },
    #[error("failed to run {program}")]
    Io {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} timed out after {after:?}")]
    TimedOut { program: String, after: Duration },
    #[error("{program} was cancelled")]
    Cancelled { program: String },
    #[error("{program} exited with {status}")]
    Failed {
        program: String,
        status: ExitStatus,
        /// The program's last word on stderr (redacted, cut): where a failing program says why,
        /// after anything its own children printed there. Its last line, or from its last line
        /// starting `Error: ` on, joined with spaces (podman's pull errors span lines, one per
        /// mirror tried).
        last_stderr: Option<String>,
    },
}
