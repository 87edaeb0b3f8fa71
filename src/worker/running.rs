//! The builds this replica runs now, by build id, so a cancel command can stop one.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct RunningBuilds {
    builds: Mutex<HashMap<String, CancellationToken>>,
}

/// Removes its build from the registry when dropped, however the build ends.
pub struct RunningGuard<'a> {
    owner: &'a RunningBuilds,
    build_id: String,
    pub token: CancellationToken,
}

impl RunningBuilds {
    /// Registers a build; `token` is cancelled by `cancel(build_id)`.
    pub fn register(&self, build_id: &str, token: CancellationToken) -> RunningGuard<'_> {
        if let Ok(mut builds) = self.builds.lock() {
            builds.insert(build_id.to_owned(), token.clone());
        }
        RunningGuard {
            owner: self,
            build_id: build_id.to_owned(),
            token,
        }
    }

    /// Returns whether this replica was running the build.
    pub fn cancel(&self, build_id: &str) -> bool {
        let token = self
            .builds
            .lock()
            .ok()
            .and_then(|builds| builds.get(build_id).cloned());
        match token {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut builds) = self.owner.builds.lock() {
            builds.remove(&self.build_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_reaches_only_registered_builds() {
        let running = RunningBuilds::default();
        let guard = running.register("b1", CancellationToken::new());
        assert!(!running.cancel("b2"));
        assert!(running.cancel("b1"));
        assert!(guard.token.is_cancelled());
        drop(guard);
        assert!(!running.cancel("b1"), "a finished build is forgotten");
    }
}
