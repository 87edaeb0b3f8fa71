//! Outcomes this replica already published, so a redelivery of the same message (its ack was
//! lost with a connection) is acked instead of built and reported twice. A redelivery that arrives
//! while the first delivery is still building waits for it (see `claim`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use sha2::{Digest, Sha256};

/// Identifies one delivery of one message: see `RecentOutcomes::key`.
pub type Key = [u8; 32];

/// Bounded: the oldest keys are forgotten first.
pub struct RecentOutcomes {
    capacity: usize,
    inner: Mutex<Keys>,
    /// One lock per delivery being handled, so two deliveries of one message never run at once.
    running: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a delivery is handled; dropping it lets a waiting redelivery go on.
pub struct Claim<'a> {
    owner: &'a RecentOutcomes,
    key: Key,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.guard.take();
        if let Ok(mut running) = self.owner.running.lock() {
            // Only the map still holds the lock: nobody waits, forget it.
            if running
                .get(&self.key)
                .is_some_and(|l| Arc::strong_count(l) == 1)
            {
                running.remove(&self.key);
            }
        }
    }
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
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until no other delivery of the same message is being handled here, then holds it.
    pub async fn claim(&self, key: Key) -> Claim<'_> {
        let lock = self
            .running
            .lock()
            .map(|mut running| running.entry(key).or_default().clone())
            .unwrap_or_default();
        let guard = lock.lock_owned().await;
        Claim {
            owner: self,
            key,
            guard: Some(guard),
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

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first() {
        let recent = Arc::new(RecentOutcomes::new(10));
        let key = RecentOutcomes::key(b"m", 1);
        let first = recent.claim(key).await;
        let waiter = {
            let recent = recent.clone();
            tokio::spawn(async move {
                let _claim = recent.claim(key).await;
                recent.contains(&key)
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the redelivery waits");
        recent.insert(key);
        drop(first);
        assert!(
            waiter.await.expect("join"),
            "and then sees the published outcome"
        );
        assert!(
            recent.running.lock().expect("lock").is_empty(),
            "no lock left behind"
        );
    }

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
