//! One cgroup per build, made by the worker and handed to podman as `--cgroup-parent`: the OCI
//! runtime puts every RUN step's container beneath it, so the limits set here bound the whole
//! build (podman 4.3's build has no `--pids-limit`, and a parent limit also covers steps the
//! per-container flags would not). Its counters then say which limit a failed build ran into.
//!
//! Works on cgroup v1 (one hierarchy per controller, as on the hosts here) and v2 (unified).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::BuildLimits;

const ROOT: &str = "/sys/fs/cgroup";
/// Every build's cgroup lives under this name, in every hierarchy the runtime touches.
const PARENT: &str = "image-builder";
/// The CFS period the CPU quota is expressed in (the kernel's default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// A hierarchy per controller: `/sys/fs/cgroup/<controller>/...`.
    V1,
    /// One hierarchy: `/sys/fs/cgroup/...` with `cgroup.controllers`.
    V2,
}

fn layout() -> Layout {
    if Path::new(ROOT).join("cgroup.controllers").is_file() {
        Layout::V2
    } else {
        Layout::V1
    }
}

/// A build's cgroup; removed (in every hierarchy) when dropped.
pub struct BuildCgroup {
    /// Relative to each hierarchy's root, e.g. `image-builder/b1234`.
    relative: String,
    layout: Layout,
    memory_bytes: u64,
    limits: BuildLimits,
}

impl BuildCgroup {
    /// Creates `image-builder/<name>` with the memory, CPU and process limits of `limits`.
    pub fn create(name: &str, limits: &BuildLimits) -> io::Result<Self> {
        let cgroup = Self {
            relative: format!("{PARENT}/{name}"),
            layout: layout(),
            memory_bytes: limits.memory_mb.saturating_mul(1024 * 1024),
            limits: limits.clone(),
        };
        // Dropped (and so removed) if a limit cannot be written: a build never runs unbounded.
        match cgroup.layout {
            Layout::V1 => cgroup.create_v1()?,
            Layout::V2 => cgroup.create_v2()?,
        }
        Ok(cgroup)
    }

    /// What podman's `--cgroup-parent` gets: the runtime makes each step's cgroup beneath it
    /// (and removes it after the step, which is why the limits sit one level up).
    pub fn parent_for_steps(&self) -> String {
        format!("/{}/steps", self.relative)
    }

    fn dir(&self, controller: &str) -> PathBuf {
        match self.layout {
            Layout::V1 => Path::new(ROOT).join(controller).join(&self.relative),
            Layout::V2 => Path::new(ROOT).join(&self.relative),
        }
    }

    fn create_v1(&self) -> io::Result<()> {
        let quota = cpu_quota_us(self.limits.cpus);
        for controller in ["memory", "pids", "cpu"] {
            fs::create_dir_all(self.dir(controller))?;
        }
        let memory = self.dir("memory");
        write(&memory, "memory.limit_in_bytes", self.memory_bytes)?;
        // Without swap accounting the file is absent and there is no swap to bound.
        if memory.join("memory.memsw.limit_in_bytes").exists() {
            write(&memory, "memory.memsw.limit_in_bytes", self.memory_bytes)?;
        }
        write(&self.dir("pids"), "pids.max", self.limits.pids)?;
        write(&self.dir("cpu"), "cpu.cfs_period_us", CPU_PERIOD_US)?;
        write(&self.dir("cpu"), "cpu.cfs_quota_us", quota)
    }

    fn create_v2(&self) -> io::Result<()> {
        // Controllers must be delegated down to where the limits are written.
        let parent = Path::new(ROOT).join(PARENT);
        fs::create_dir_all(&parent)?;
        for dir in [Path::new(ROOT), parent.as_path()] {
            fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
        }
        let dir = self.dir("");
        fs::create_dir_all(&dir)?;
        write(&dir, "memory.max", self.memory_bytes)?;
        if dir.join("memory.swap.max").exists() {
            write(&dir, "memory.swap.max", 0)?;
        }
        write(&dir, "pids.max", self.limits.pids)?;
        fs::write(
            dir.join("cpu.max"),
            format!("{} {CPU_PERIOD_US}", cpu_quota_us(self.limits.cpus)),
        )
    }

    /// The limit a failed build ran into, named as the operator configures it; None when no
    /// counter shows one. Memory is judged by the peak reaching the limit: v1 keeps no OOM
    /// count for a limit set on a parent of the container's cgroup.
    pub fn exceeded(&self) -> Option<String> {
        if self.pids_refused() {
            return Some(format!(
                "a RUN step tried to start more than build.limits.pids = {} processes",
                self.limits.pids
            ));
        }
        if self.memory_reached() {
            return Some(format!(
                "a RUN step used all of build.limits.memory_mb = {} MiB and was killed",
                self.limits.memory_mb
            ));
        }
        None
    }

    fn pids_refused(&self) -> bool {
        let dir = self.dir("pids");
        // v2 counts refused forks beneath a cgroup in its `pids.events`; v1 counts them only in
        // the forking (step) cgroup, which the runtime has removed by now: there the peak
        // reaching the limit says it.
        let refused = read(&dir, "pids.events")
            .and_then(|text| counter(&text, "max"))
            .is_some_and(|n| n > 0);
        let peaked = read(&dir, "pids.peak")
            .and_then(|text| text.trim().parse::<u64>().ok())
            .is_some_and(|peak| peak >= self.limits.pids);
        refused || peaked
    }

    fn memory_reached(&self) -> bool {
        let dir = self.dir("memory");
        match self.layout {
            Layout::V2 => read(&dir, "memory.events")
                .and_then(|text| counter(&text, "oom_kill"))
                .is_some_and(|n| n > 0),
            Layout::V1 => read(&dir, "memory.max_usage_in_bytes")
                .and_then(|text| text.trim().parse::<u64>().ok())
                // The kernel reclaims from a few pages below the limit.
                .is_some_and(|peak| peak + 256 * 1024 >= self.memory_bytes),
        }
    }

    /// Processes in the build's cgroup and beneath it (the RUN steps running now).
    pub fn processes(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        collect_procs(&self.dir("pids"), &mut pids);
        pids
    }
}

impl Drop for BuildCgroup {
    fn drop(&mut self) {
        // Two dozen rmdirs on a v1 host (tens of ms): off the build's path, before its push.
        let relative = std::mem::take(&mut self.relative);
        let remove = move || remove_everywhere(&relative);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// Removes `relative` (deepest first) from every hierarchy: the runtime creates the step's
/// parent in each controller it uses, not only in the three limited here.
fn remove_everywhere(relative: &str) {
    let roots: Vec<PathBuf> = match layout() {
        Layout::V2 => vec![PathBuf::from(ROOT)],
        Layout::V1 => fs::read_dir(ROOT)
            .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    for root in roots {
        remove_tree(&root.join(relative));
    }
}

/// cgroup directories can only be removed empty of children, bottom up (rmdir, not remove_dir_all:
/// the control files are not real files). A cgroup still holding a process stays.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Leftovers of builds whose worker died. A cgroup is empty between RUN steps too, so only
/// those older than any build can run (`max_age`, from the creation time in their name) go:
/// replicas on one host share this directory.
pub fn remove_stale(max_age: std::time::Duration) {
    let dir = match layout() {
        Layout::V1 => Path::new(ROOT).join("pids").join(PARENT),
        Layout::V2 => Path::new(ROOT).join(PARENT),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = unix_now();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let created = name
            .strip_prefix('b')
            .and_then(|rest| rest.split('-').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|at| now.saturating_sub(at) > max_age.as_secs()) {
            remove_everywhere(&format!("{PARENT}/{name}"));
        }
    }
}

/// A name for a new build's cgroup: its creation time (read back by `remove_stale`) and a
/// random part.
pub fn new_name() -> String {
    format!("b{}-{}", unix_now(), uuid::Uuid::new_v4().simple())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn collect_procs(dir: &Path, pids: &mut Vec<u32>) {
    if let Some(text) = read(dir, "cgroup.procs") {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_procs(&entry.path(), pids);
            }
        }
    }
}

fn cpu_quota_us(cpus: f64) -> u64 {
    // At least 1 ms per period, the kernel's minimum quota.
    ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)
}

fn write(dir: &Path, file: &str, value: u64) -> io::Result<()> {
    fs::write(dir.join(file), value.to_string()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("failed to write {}: {e}", dir.join(file).display()),
        )
    })
}

fn read(dir: &Path, file: &str) -> Option<String> {
    fs::read_to_string(dir.join(file)).ok()
}

/// The value of `key N` in a flat-keyed cgroup file (`pids.events`, `memory.events`).
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BuildLimits {
        BuildLimits {
            memory_mb: 96,
            cpus: 1.5,
            pids: 77,
            disk_mb: 10,
            cache_mounts_mb: 10,
            checkout_mb: 10,
            fetch_mb: 10,
            git_stall_secs: 10,
        }
    }

    /// Real cgroupfs (the worker runs as root with a writable hierarchy, as the tests do).
    #[test]
    fn limits_are_written_where_steps_go_and_removed_after() {
        let name = new_name();
        let cgroup = BuildCgroup::create(&name, &limits()).expect("cgroup created");
        assert_eq!(
            cgroup.parent_for_steps(),
            format!("/image-builder/{name}/steps")
        );
        let value = |controller: &str, file: &str| {
            read(&cgroup.dir(controller), file).map(|v| v.trim().to_owned())
        };
        match cgroup.layout {
            Layout::V1 => {
                assert_eq!(value("pids", "pids.max").as_deref(), Some("77"));
                assert_eq!(
                    value("memory", "memory.limit_in_bytes").as_deref(),
                    Some("100663296")
                );
                assert_eq!(value("cpu", "cpu.cfs_quota_us").as_deref(), Some("150000"));
            }
            Layout::V2 => {
                assert_eq!(value("", "pids.max").as_deref(), Some("77"));
                assert_eq!(value("", "memory.max").as_deref(), Some("100663296"));
                assert_eq!(value("", "cpu.max").as_deref(), Some("150000 100000"));
            }
        }
        assert_eq!(cgroup.exceeded(), None, "a fresh cgroup hit nothing");
        let dirs = [cgroup.dir("pids"), cgroup.dir("memory"), cgroup.dir("cpu")];
        drop(cgroup);
        for dir in dirs {
            assert!(!dir.exists(), "{} removed", dir.display());
        }
    }

    #[test]
    fn counters_and_quota() {
        assert_eq!(counter("max 3\n", "max"), Some(3));
        assert_eq!(counter("low 0\noom 1\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(counter("oom 1\n", "oom_kill"), None);
        assert_eq!(cpu_quota_us(1.5), 150_000);
        assert_eq!(cpu_quota_us(0.001), 1000);
    }
}
