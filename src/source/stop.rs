//! When blocking git work must give up: the build was cancelled or its deadline passed.
//!
//! git2 runs on a blocking thread that outlives the future awaiting it, so dropping that future
//! (cancel, the pipeline's timeout) does not stop it; the work itself checks this between steps
//! (transfer callbacks, lock waits) so the thread and the mirror's lock are released.

use std::fs::{File, TryLockError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::BuildError;

/// How often a wait for a mirror's lock looks at the stop conditions.
const LOCK_POLL: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub(super) struct Stop {
    cancel: CancellationToken,
    deadline: Option<Instant>,
    /// Time the work was given, reported when the deadline passes (as a timed-out step does).
    given: Duration,
}

impl Stop {
    pub(super) fn new(cancel: &CancellationToken, deadline: Instant) -> Self {
        Self {
            cancel: cancel.clone(),
            deadline: Some(deadline),
            given: deadline.saturating_duration_since(Instant::now()),
        }
    }

    /// For work outside a build (no deadline, nobody cancels).
    pub(super) fn never() -> Self {
        Self {
            cancel: CancellationToken::new(),
            deadline: None,
            given: Duration::ZERO,
        }
    }

    /// The error to give up with, if the work must stop now.
    pub(super) fn stopped(&self) -> Option<BuildError> {
        if self.cancel.is_cancelled() {
            return Some(BuildError::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(BuildError::TimedOut(self.given));
        }
        None
    }

    /// Completes when the work must stop (cancelled or past the deadline): for async work
    /// serving the blocking fetch, such as its egress relay.
    pub(super) async fn reached(&self) {
        match self.deadline {
            Some(deadline) => tokio::select! {
                _ = self.cancel.cancelled() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            },
            None => self.cancel.cancelled().await,
        }
    }

    /// Takes a file lock, waiting for it only as long as the work may go on: a waiter must not
    /// be pinned by another build's (or replica's) fetch any more than the fetch itself.
    pub(super) fn lock(&self, file: &File, exclusive: bool) -> Result<(), BuildError> {
        loop {
            let tried = if exclusive {
                file.try_lock()
            } else {
                file.try_lock_shared()
            };
            match tried {
                Ok(()) => return Ok(()),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    return Err(BuildError::Internal(anyhow::anyhow!(
                        "failed to lock the mirror: {e}"
                    )));
                }
            }
            if let Some(err) = self.stopped() {
                return Err(err);
            }
            std::thread::sleep(LOCK_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_waited_for_only_until_cancelled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.lock");
        let open = || {
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .expect("lock file")
        };
        let (holder, waiter) = (open(), open());
        holder.lock().expect("first lock");
        let cancel = CancellationToken::new();
        let stop = Stop::new(&cancel, Instant::now() + Duration::from_secs(3600));
        let waiting = std::thread::spawn(move || stop.lock(&waiter, true));
        cancel.cancel();
        let result = waiting.join().expect("thread");
        assert!(matches!(result, Err(BuildError::Cancelled)), "{result:?}");
    }

    #[test]
    fn a_passed_deadline_stops_with_timed_out() {
        let stop = Stop::new(&CancellationToken::new(), Instant::now());
        assert!(matches!(stop.stopped(), Some(BuildError::TimedOut(_))));
        assert!(Stop::never().stopped().is_none());
    }
}
