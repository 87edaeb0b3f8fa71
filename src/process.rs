//! Every external command goes through here: its own process group (so a timeout or cancel kills
//! the whole tree), output streamed line by line into the build log, and errors that name the
//! command.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::build_log::BuildLog;

/// One command line. `env` values may be secrets: they go to the child only, never to logs or argv.
pub struct Invocation {
    pub program: String,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

impl Invocation {
    pub fn new(program: impl Into<String>, timeout: Duration) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            timeout,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{program} is not installed (or not on PATH)")]
    NotInstalled { program: String },
    #[error("failed to run {program}: {source}")]
    Io {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} timed out after {after:?}")]
    TimedOut { program: String, after: Duration },
    #[error("{program} was cancelled")]
    Cancelled { program: String },
    #[error("{program} exited with {status}")]
    Failed { program: String, status: ExitStatus },
}

/// Kills the process group if the run is abandoned (timeout, cancel, or the future dropped).
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH just means the group is already gone.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `inv` to completion, streaming stdout and stderr lines into `log`.
pub async fn run(
    inv: Invocation,
    log: &BuildLog,
    cancel: &CancellationToken,
) -> Result<(), ProcessError> {
    let program = inv.program.clone();
    let mut cmd = Command::new(&inv.program);
    cmd.args(&inv.args)
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &inv.cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ProcessError::NotInstalled {
            program: program.clone(),
        },
        _ => ProcessError::Io {
            program: program.clone(),
            source,
        },
    })?;
    let mut guard = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );

    let stdout = child.stdout.take().map(|s| pump(s, log.clone()));
    let stderr = child.stderr.take().map(|s| pump(s, log.clone()));

    let waited = tokio::select! {
        status = child.wait() => Some(status),
        _ = tokio::time::sleep(inv.timeout) => None,
        _ = cancel.cancelled() => {
            guard.kill();
            let _ = child.wait().await;
            return Err(ProcessError::Cancelled { program });
        }
    };
    let Some(status) = waited else {
        guard.kill();
        let _ = child.wait().await;
        return Err(ProcessError::TimedOut {
            program,
            after: inv.timeout,
        });
    };
    // Finished by itself: its group is no longer ours to kill.
    guard.0 = None;
    for pumped in [stdout, stderr].into_iter().flatten() {
        let _ = pumped.await;
    }
    let status = status.map_err(|source| ProcessError::Io {
        program: program.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ProcessError::Failed { program, status })
    }
}

fn pump<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    log: BuildLog,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => log.push(&String::from_utf8_lossy(&buf)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Redactor;

    fn log() -> BuildLog {
        BuildLog::new(Redactor::default())
    }

    #[tokio::test]
    async fn output_lands_in_the_log_and_env_reaches_the_child() {
        let log = log();
        let inv = Invocation::new("sh", Duration::from_secs(5))
            .args(["-c", "echo out; echo err >&2; echo \"$X\""])
            .env("X", "from-env");
        run(inv, &log, &CancellationToken::new())
            .await
            .expect("runs");
        let mut lines = log.tail(10);
        lines.sort();
        assert_eq!(lines, vec!["err", "from-env", "out"]);
    }

    #[tokio::test]
    async fn missing_program_says_not_installed() {
        let inv = Invocation::new("no-such-tool-xyz", Duration::from_secs(1));
        let err = run(inv, &log(), &CancellationToken::new())
            .await
            .expect_err("fails");
        assert_eq!(
            err.to_string(),
            "no-such-tool-xyz is not installed (or not on PATH)"
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_tree() {
        let marker = tempfile::tempdir().expect("tempdir");
        let pidfile = marker.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let inv = Invocation::new("sh", Duration::from_millis(300)).args(["-c", &script]);
        let err = run(inv, &log(), &CancellationToken::new())
            .await
            .expect_err("times out");
        assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid written")
            .trim()
            .parse()
            .expect("pid");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "grandchild {pid} survived the timeout");
    }

    #[tokio::test]
    async fn failure_reports_the_status() {
        let inv = Invocation::new("sh", Duration::from_secs(5)).args(["-c", "exit 3"]);
        let err = run(inv, &log(), &CancellationToken::new())
            .await
            .expect_err("fails");
        assert!(err.to_string().starts_with("sh exited with"), "{err}");
    }
}
