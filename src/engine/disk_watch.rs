//! Bounds what a build's RUN steps write to disk. RLIMIT_FSIZE (`--ulimit fsize`) stops any one
//! file past the limit; many smaller files are caught here: while a build runs, the writable
//! layer of each running step (the overlay `upperdir` of its root, read from the step's own
//! mount table) is measured now and then, and the build is stopped once they pass the limit.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::cgroup::BuildCgroup;

/// How often the writable layers are measured.
const EVERY: Duration = Duration::from_secs(1);

/// What a build may write: `bytes` in its steps' writable layers and beneath the `also`
/// directories together (those counted by their growth since the watch began).
pub struct Bound {
    pub bytes: u64,
    pub also: Vec<PathBuf>,
}

/// Watches until `stop` is cancelled; cancels `kill` and sets the returned flag when the
/// build's RUN steps have written more than the bound.
pub fn watch(
    cgroup: Arc<BuildCgroup>,
    bound: Bound,
    kill: CancellationToken,
    stop: CancellationToken,
) -> Arc<AtomicBool> {
    let exceeded = Arc::new(AtomicBool::new(false));
    let flag = exceeded.clone();
    let also = Arc::new(bound.also);
    let limit_bytes = bound.bytes;
    tokio::spawn(async move {
        let before = {
            let also = also.clone();
            tokio::task::spawn_blocking(move || also.iter().map(|d| allocated(d)).sum::<u64>())
                .await
                .unwrap_or(0)
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
            let (cgroup, also) = (cgroup.clone(), also.clone());
            let used = tokio::task::spawn_blocking(move || {
                let grown = also.iter().map(|d| allocated(d)).sum::<u64>();
                written_bytes(&cgroup) + grown.saturating_sub(before)
            })
            .await
            .unwrap_or(0);
            if used > limit_bytes {
                flag.store(true, Ordering::SeqCst);
                kill.cancel();
                return;
            }
        }
    });
    exceeded
}

/// Bytes allocated in the writable layers of the steps running in `cgroup` now.
fn written_bytes(cgroup: &BuildCgroup) -> u64 {
    let uppers: BTreeSet<PathBuf> = cgroup
        .processes()
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok())
        .filter_map(|table| root_upperdir(&table))
        .collect();
    uppers.iter().map(|dir| allocated(dir)).sum()
}

/// The `upperdir=` of the overlay mounted at `/` in a mount table (`/proc/PID/mountinfo`).
fn root_upperdir(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4)?;
        if mount_point != "/" {
            return None;
        }
        let (_, after) = line.split_once(" - ")?;
        let mut rest = after.split(' ');
        if rest.next()? != "overlay" {
            return None;
        }
        let options = rest.nth(1)?;
        options
            .split(',')
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
    })
}

/// Disk blocks allocated beneath `dir` (sparse files count what they occupy), never following
/// a symlink.
pub(super) fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_root_overlays_upperdir() {
        let table = "101 75 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/s/l/A,\
                     upperdir=/s/overlay/abc/diff,workdir=/s/overlay/abc/work\n\
                     102 101 0:43 / /proc rw,nosuid - proc proc rw\n";
        assert_eq!(
            root_upperdir(table),
            Some(PathBuf::from("/s/overlay/abc/diff"))
        );
        let host = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n";
        assert_eq!(root_upperdir(host), None);
    }

    #[test]
    fn allocated_counts_nested_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        std::fs::write(dir.path().join("a/f"), vec![1u8; 64 * 1024]).expect("write");
        assert!(allocated(dir.path()) >= 64 * 1024);
    }
}
