//! Upload sessions started ahead of their uploads. Starting one is a registry round trip (a
//! POST, 3–7 ms on a local registry) that needs nothing of the blob: an incremental rebuild
//! starts its sessions while it makes its layers, and the uploads that follow only PUT.
//!
//! A session is used once, within `FRESH` of its start; a stale one is forgotten (the registry
//! expires abandoned uploads by itself). An upload whose session the registry no longer knows
//! starts a new one (`blobs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A session older than this is not used.
const FRESH: Duration = Duration::from_secs(30);
/// Sessions kept per repository at most.
const MAX_PER_REPOSITORY: usize = 8;
/// Repositories with sessions kept at most (the oldest sessions go first past it).
const MAX_REPOSITORIES: usize = 64;

#[derive(Default)]
pub(super) struct UploadSessions {
    /// Repository -> session URLs with their start, oldest first.
    started: Mutex<HashMap<String, Vec<(url::Url, Instant)>>>,
}

impl UploadSessions {
    /// Keeps a session started in `repository` for a later upload there.
    pub(super) fn keep(&self, repository: &str, session: url::Url) {
        let Ok(mut started) = self.started.lock() else {
            return;
        };
        if !started.contains_key(repository) && started.len() >= MAX_REPOSITORIES {
            forget_oldest(&mut started);
        }
        let sessions = started.entry(repository.to_owned()).or_default();
        sessions.retain(|(_, at)| at.elapsed() < FRESH);
        if sessions.len() < MAX_PER_REPOSITORY {
            sessions.push((session, Instant::now()));
        }
    }

    /// A fresh session of `repository`, used by no one else.
    pub(super) fn take(&self, repository: &str) -> Option<url::Url> {
        let mut started = self.started.lock().ok()?;
        let sessions = started.get_mut(repository)?;
        sessions.retain(|(_, at)| at.elapsed() < FRESH);
        let session = sessions.pop().map(|(url, _)| url);
        if sessions.is_empty() {
            started.remove(repository);
        }
        session
    }
}

fn forget_oldest(started: &mut HashMap<String, Vec<(url::Url, Instant)>>) {
    let oldest = started
        .iter()
        .filter_map(|(repository, sessions)| sessions.first().map(|(_, at)| (*at, repository)))
        .min()
        .map(|(_, repository)| repository.clone());
    if let Some(repository) = oldest {
        started.remove(&repository);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(n: usize) -> url::Url {
        url::Url::parse(&format!("http://r.invalid/v2/a/blobs/uploads/{n}")).expect("url")
    }

    #[test]
    fn a_session_is_taken_once_by_its_repository_and_the_bounds_hold() {
        let sessions = UploadSessions::default();
        sessions.keep("a", url(1));
        assert_eq!(sessions.take("b"), None);
        assert_eq!(sessions.take("a"), Some(url(1)));
        assert_eq!(sessions.take("a"), None, "used once");
        for n in 0..20 {
            sessions.keep("a", url(n));
        }
        let mut taken = 0;
        while sessions.take("a").is_some() {
            taken += 1;
        }
        assert_eq!(taken, MAX_PER_REPOSITORY);
        for n in 0..(MAX_REPOSITORIES + 5) {
            sessions.keep(&format!("r{n}"), url(n));
        }
        let kept = sessions.started.lock().expect("lock").len();
        assert_eq!(kept, MAX_REPOSITORIES);
    }
}
