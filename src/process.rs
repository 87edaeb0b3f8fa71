//! Every external command goes through here: started from an empty environment inside a PID
//! namespace that dies with the worker (`command`), forked on a thread that lives as long as the
//! worker (`spawner`), its output read in bounded chunks into the build log (`pump`), killed
//! whole on timeout or cancel, and errors that name the command.

mod command;
mod pump;
mod spawner;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::build_log::BuildLog;
pub use crate::error::ProcessError;

/// One command line. `env` values may be secrets: they go to the child only, never to logs or argv.
#[derive(Clone)]
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

/// How long the output of a killed child is still read.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);

/// Kills the process group if the run is abandoned (timeout, cancel, or the future dropped).
/// The group holds `setpriv`/`unshare` and the program; everything the program started dies
/// with its PID namespace when the program does.
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

/// The output readers of one child: stopped when the run ends, however it ends.
struct Pumps(Vec<JoinHandle<()>>);

impl Pumps {
    async fn finish(&mut self) {
        for pump in &mut self.0 {
            let _ = pump.await;
        }
        self.0.clear();
    }
}

impl Drop for Pumps {
    fn drop(&mut self) {
        for pump in &self.0 {
            pump.abort();
        }
    }
}

enum Stopped {
    TimedOut,
    Cancelled,
}

/// Runs `inv` to completion, streaming stdout and stderr lines into `log`. The timeout covers
/// reading the output to its end too.
pub async fn run(
    inv: Invocation,
    log: &BuildLog,
    cancel: &CancellationToken,
) -> Result<(), ProcessError> {
    let deadline = Instant::now() + inv.timeout;
    let program = inv.program.clone();
    let cmd = command::confined(&inv)?;
    let mut child = spawner::spawn(cmd)
        .await
        .map_err(|source| ProcessError::Io {
            program: program.clone(),
            source,
        })?;
    let mut guard = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let last_stderr = pump::LastLine::default();
    let mut pumps = Pumps(
        [
            child
                .stdout
                .take()
                .map(|s| pump::pump(s, log.clone(), None)),
            child
                .stderr
                .take()
                .map(|s| pump::pump(s, log.clone(), Some(last_stderr.clone()))),
        ]
        .into_iter()
        .flatten()
        .collect(),
    );

    let stopped = |why: Stopped| match why {
        Stopped::TimedOut => ProcessError::TimedOut {
            program: program.clone(),
            after: inv.timeout,
        },
        Stopped::Cancelled => ProcessError::Cancelled {
            program: program.clone(),
        },
    };
    let waited = tokio::select! {
        status = child.wait() => Ok(status),
        _ = tokio::time::sleep_until(deadline) => Err(Stopped::TimedOut),
        _ = cancel.cancelled() => Err(Stopped::Cancelled),
    };
    let status = match waited {
        Ok(status) => status,
        Err(why) => {
            guard.kill();
            let _ = child.wait().await;
            // Its last lines (an endless line's cut prefix) while the namespace dies; a process
            // stuck in the kernel could hold the pipe open, so this wait is bounded.
            let _ = tokio::time::timeout(DRAIN_AFTER_KILL, pumps.finish()).await;
            return Err(stopped(why));
        }
    };
    // Exited by itself: its group is no longer ours to kill, and its namespace is gone, so
    // nothing holds the pipes open for long.
    guard.0 = None;
    tokio::select! {
        _ = pumps.finish() => {}
        _ = tokio::time::sleep_until(deadline) => return Err(stopped(Stopped::TimedOut)),
        _ = cancel.cancelled() => return Err(stopped(Stopped::Cancelled)),
    }
    let status = status.map_err(|source| ProcessError::Io {
        program: program.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ProcessError::Failed {
            program,
            status,
            last_stderr: last_stderr.get(),
        })
    }
}
