//! Outcomes this replica already published, so a redelivery of the same message (its ack was
//! lost with a connection) is acked instead of built and reported twice.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

type Key = [u8; 32];

/// Bounded: the oldest keys are forgotten first.
pub struct RecentOutcomes {
    capacity: usize,
    inner: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    set: HashSet<Key>,
    order: VecDeque<Key>,
}

impl RecentOutcomes {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Keys::default()),
        }
    }

    /// A delivery is identified by its body and attempt: retries are new messages, redeliveries not.
    pub fn key(body: &[u8], attempt: u32) -> Key {
        let mut hasher = Sha256::new();
        hasher.update(attempt.to_be_bytes());
        hasher.update(body);
        hasher.finalize().into()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.inner
            .lock()
            .map(|inner| inner.set.contains(key))
            .unwrap_or(false)
    }

    pub fn insert(&self, key: Key) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.set.insert(key) {
            inner.order.push_back(key);
        }
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_capacity_and_tells_attempts_apart() {
        let recent = RecentOutcomes::new(2);
        let a1 = RecentOutcomes::key(b"a", 1);
        let a2 = RecentOutcomes::key(b"a", 2);
        assert_ne!(a1, a2);
        recent.insert(a1);
        assert!(recent.contains(&a1));
        recent.insert(a2);
        recent.insert(RecentOutcomes::key(b"b", 1));
        assert!(!recent.contains(&a1), "oldest forgotten");
        assert!(recent.contains(&a2));
    }
}
