//! Concurrent identical reads of a remote (a git fetch, a registry lookup) share one round trip,
//! without anyone seeing stale data.
//!
//! A caller may only use a read that *started after it arrived*: it then sees the remote as of
//! its arrival or later, exactly as if it had asked alone. One read serves every caller that
//! arrived while the previous one ran, so a burst of N identical requests costs about two reads
//! instead of N (serialized on the git mirror's lock, or loading the registry).
//!
//! Keys must include whatever decides what the remote answers, credentials above all: a request
//! never rides on a fetch made with someone else's token.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub(crate) struct FreshGates<T> {
    gates: Mutex<HashMap<String, Arc<Gate<T>>>>,
}

struct Gate<T> {
    /// Reads started so far through this gate: the ticket a read gets when it starts.
    started: AtomicU64,
    /// Held while reading. The ticket and result of the last read that succeeded.
    last: tokio::sync::Mutex<Option<(u64, T)>>,
}

impl<T: Clone> FreshGates<T> {
    /// The result of a successful `read` that started after this call began: a finished one
    /// shared with other callers, or one this call runs. Failures are never shared.
    pub(crate) async fn fresh<E, Fut>(&self, key: &str, read: impl FnOnce() -> Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let held = Held {
            gates: self,
            key,
            gate: self.gate(key),
        };
        let gate = &held.gate;
        let arrived = gate.started.load(Ordering::SeqCst);
        let mut last = gate.last.lock().await;
        if let Some((ticket, value)) = last.as_ref()
            && *ticket > arrived
        {
            return Ok(value.clone());
        }
        let ticket = gate.started.fetch_add(1, Ordering::SeqCst) + 1;
        let result = read().await;
        if let Ok(value) = &result {
            *last = Some((ticket, value.clone()));
        }
        result
    }

    fn gate(&self, key: &str) -> Arc<Gate<T>> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(Gate {
                    started: AtomicU64::new(0),
                    last: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }

    /// Forgets an idle gate: a later caller needs a read of its own anyway, and keys (one per
    /// token, per image) would otherwise pile up.
    fn release(&self, key: &str, gate: &Arc<Gate<T>>) {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else waits on this gate.
        if Arc::strong_count(gate) == 2 {
            gates.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.gates.lock().map(|g| g.len()).unwrap_or(0)
    }
}

/// A caller's hold on its gate, released however the caller ends (a cancelled build drops it).
struct Held<'a, T: Clone> {
    gates: &'a FreshGates<T>,
    key: &'a str,
    gate: Arc<Gate<T>>,
}

impl<T: Clone> Drop for Held<'_, T> {
    fn drop(&mut self) {
        self.gates.release(self.key, &self.gate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn a_burst_shares_fetches_and_every_caller_sees_a_fetch_started_after_it() {
        let gates = Arc::new(FreshGates::<u64>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let fetch = |runs: Arc<AtomicUsize>| async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok::<_, ()>(n)
        };
        // The first caller fetches alone; 20 callers arriving during that fetch share one more.
        let first = {
            let (gates, runs) = (gates.clone(), runs.clone());
            tokio::spawn(async move { gates.fresh("repo", || fetch(runs)).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let burst: Vec<_> = (0..20)
            .map(|_| {
                let (gates, runs) = (gates.clone(), runs.clone());
                tokio::spawn(async move { gates.fresh("repo", || fetch(runs)).await })
            })
            .collect();
        assert_eq!(first.await.ok(), Some(Ok(1)));
        for call in burst {
            // Fetch 1 started before them: each got fetch 2, never the stale fetch 1.
            assert_eq!(call.await.ok(), Some(Ok(2)));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(gates.len(), 0, "idle gates are forgotten");
    }

    #[tokio::test]
    async fn a_later_caller_fetches_again_and_failures_are_not_shared() {
        let gates = FreshGates::<u64>::default();
        assert_eq!(
            gates.fresh("repo", || async { Ok::<_, ()>(1) }).await,
            Ok(1)
        );
        assert_eq!(
            gates.fresh("repo", || async { Ok::<_, ()>(2) }).await,
            Ok(2)
        );
        assert_eq!(
            gates
                .fresh("repo", || async { Err::<u64, _>("down") })
                .await,
            Err("down")
        );
        assert_eq!(
            gates.fresh("repo", || async { Ok::<_, &str>(3) }).await,
            Ok(3)
        );
    }

    #[tokio::test]
    async fn different_keys_never_share() {
        let gates = Arc::new(FreshGates::<&'static str>::default());
        let slow = {
            let gates = gates.clone();
            tokio::spawn(async move {
                gates
                    .fresh("repo|token-a", || async {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Ok::<_, ()>("a")
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let other = gates
            .fresh("repo|token-b", || async { Ok::<_, ()>("b") })
            .await;
        assert_eq!(other, Ok("b"));
        assert_eq!(slow.await.ok(), Some(Ok("a")));
    }
}
