//! How a child is started: from an empty environment, and inside a PID namespace of its own
//! whose processes all die with the worker.
//!
//! The command runs as `setpriv --pdeathsig KILL -- unshare --pid --fork --kill-child
//! --mount-proc -- <program> <args>` (util-linux). The worker dying (even by SIGKILL) kills
//! `unshare` (pdeathsig); `--kill-child` then kills the program, which is PID 1 of the new PID
//! namespace, and the kernel kills every process left in it: podman, buildah, runc and the RUN
//! step (in a nested namespace) alike. A process that starts a session of its own (runc does
//! for the RUN step) cannot leave a PID namespace the way it leaves a process group.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

use super::{Invocation, ProcessError};

const SETPRIV: &str = "setpriv";
const UNSHARE: &str = "unshare";

/// Variables a child gets from the worker's environment; nothing else passes (the worker's own
/// settings, `IMAGE_BUILDER__*`, hold passwords). Locale and time zone keep tool output
/// readable; the rest point podman at the operator's configuration, storage and run directory.
const PASSED_ON: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "CONTAINERS_REGISTRIES_CONF",
    "REGISTRIES_CONFIG_PATH",
    "REGISTRY_AUTH_FILE",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
];

/// Whether the worker's variable `key` is passed on to children.
pub(super) fn passed_on(key: &str) -> bool {
    PASSED_ON.contains(&key) || key.starts_with("LC_")
}

/// The confined command for `inv`, its output piped, in a process group of its own (so a
/// timeout can also kill what runs outside the namespace: `setpriv` and `unshare`).
pub(super) fn confined(inv: &Invocation) -> Result<Command, ProcessError> {
    let program = locate(&inv.program)?;
    let setpriv = locate(SETPRIV)?;
    let unshare = locate(UNSHARE)?;
    let mut cmd = Command::new(setpriv);
    cmd.args(["--pdeathsig", "KILL", "--"])
        .arg(unshare)
        .args(["--pid", "--fork", "--kill-child", "--mount-proc", "--"])
        .arg(program)
        .args(&inv.args)
        .env_clear()
        .envs(std::env::vars_os().filter(|(key, _)| key.to_str().is_some_and(passed_on)))
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &inv.cwd {
        cmd.current_dir(dir);
    }
    Ok(cmd)
}

/// The program's path on the worker's `PATH` (which children get too): a missing program is
/// named as such, rather than as a failure of the `unshare` that would have run it.
fn locate(program: &str) -> Result<PathBuf, ProcessError> {
    which::which(OsString::from(program)).map_err(|_| ProcessError::NotInstalled {
        program: program.to_owned(),
    })
}
