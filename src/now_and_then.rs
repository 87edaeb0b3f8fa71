//! "At most once per interval" for housekeeping that runs on the way out of a build (layer cache
//! prune, git cache eviction): cheap to ask, never twice within the interval.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct NowAndThen {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl NowAndThen {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
        }
    }

    /// True the first time, then again only once `every` has passed since the last true.
    pub(crate) fn due(&self) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        if last.is_some_and(|at| at.elapsed() < self.every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_interval() {
        let housekeeping = NowAndThen::new(Duration::from_millis(50));
        assert!(housekeeping.due());
        assert!(!housekeeping.due());
        std::thread::sleep(Duration::from_millis(60));
        assert!(housekeeping.due());
        assert!(!housekeeping.due());
    }
}
