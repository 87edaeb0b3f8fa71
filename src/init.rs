//! A tiny init for when the worker is PID 1 (the entry point of a container).
//!
//! Why: PID 1 inherits every orphan in its PID namespace and must reap it, or it stays a zombie
//! for good. The worker makes orphans: a build that times out or is cancelled is killed at its
//! `unshare` wrapper, whose child (podman) is then reparented to PID 1 as it dies. PID 1 also
//! gets no default signal actions, so SIGTERM would not stop it. Rather than mix `waitpid(-1)`
//! into a tokio program (it would steal the exit statuses tokio waits for), PID 1 stays this
//! small loop: it runs the same binary with the same arguments as its only child, forwards the
//! stop signals to it, reaps whatever dies, and exits with the child's status, tini-style.

use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Passed on to the worker as they arrive.
const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// When this process is PID 1, runs the worker as its child until it exits and returns its
/// status; otherwise returns `None` at once. Call first thing in `main`, before any thread.
pub fn supervise_if_pid1() -> Option<ExitCode> {
    if std::process::id() != 1 {
        // A child inherits its parent's signal mask (std does not clear it; seen: the worker
        // started by this init ignored SIGTERM). The worker needs these, and so do its children.
        if let Err(e) = awaited().thread_unblock() {
            eprintln!("warning: failed to unblock the stop signals: {e}");
        }
        return None;
    }
    Some(supervise().unwrap_or_else(|e| {
        eprintln!("error: init: {e:#}");
        ExitCode::FAILURE
    }))
}

/// The signals the init takes with `sigwait`.
fn awaited() -> SigSet {
    let mut set = SigSet::empty();
    for signal in FORWARDED {
        set.add(signal);
    }
    set.add(Signal::SIGCHLD);
    set
}

fn supervise() -> anyhow::Result<ExitCode> {
    let awaited = awaited();
    // Blocked before the child exists, so no signal is missed; they are taken with `wait`.
    // The child inherits the mask and unblocks them itself (above).
    awaited.thread_block()?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .spawn()?;
    let child = Pid::from_raw(i32::try_from(child.id())?);
    loop {
        match awaited.wait()? {
            Signal::SIGCHLD => {
                if let Some(code) = reap(child) {
                    return Ok(code);
                }
            }
            // ESRCH: the child is exiting already; its SIGCHLD follows.
            signal => drop(kill(child, signal)),
        }
    }
}

/// Reaps every child that has exited (several SIGCHLDs can arrive as one); returns the exit
/// code once `main` is among them.
fn reap(main: Pid) -> Option<ExitCode> {
    let mut code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, status)) if pid == main => {
                code = Some(ExitCode::from(u8::try_from(status).unwrap_or(1)));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == main => {
                code = Some(ExitCode::from(
                    u8::try_from(128 + signal as i32).unwrap_or(u8::MAX),
                ));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return code,
            Ok(_) => {}
        }
    }
}
