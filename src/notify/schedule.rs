//! When a failed notification is tried next: `backon`'s exponential backoff (from
//! `notify.backoff_min_ms`, doubling, capped at `notify.backoff_max_secs`, each delay plus up to
//! as much again of jitter so receivers coming back are not hit by every row at once), and never
//! later than the give-up time, so the last attempt happens right at it.

use std::time::Duration;

use backon::ExponentialBuilder;

use crate::config::NotifySettings;

#[derive(Debug, Clone)]
pub struct Schedule {
    backoff: ExponentialBuilder,
    pub give_up_after: Duration,
}

impl Schedule {
    pub fn new(settings: &NotifySettings) -> Self {
        Self::with(
            Duration::from_millis(settings.backoff_min_ms),
            Duration::from_secs(settings.backoff_max_secs),
            Duration::from_secs(settings.give_up_after_secs),
            true,
        )
    }

    fn with(min: Duration, max: Duration, give_up_after: Duration, jitter: bool) -> Self {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        let backoff = if jitter {
            backoff.with_jitter()
        } else {
            backoff
        };
        Self {
            backoff,
            give_up_after,
        }
    }

    /// The delay after the `failures`-th failed attempt (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let n = usize::try_from(failures.max(1) - 1).unwrap_or(usize::MAX);
        backon::BackoffBuilder::build(self.backoff)
            .nth(n)
            .unwrap_or(Duration::MAX)
    }

    /// What to do after a failed attempt of a notification recorded at `created_at`, now (both
    /// Unix ms), with `failures` failed attempts counting this one.
    pub fn after_failure(&self, created_at: i64, now: i64, failures: u32) -> Next {
        let give_up_at = created_at.saturating_add(millis(self.give_up_after));
        if now >= give_up_at {
            return Next::GiveUp;
        }
        Next::RetryAt(
            now.saturating_add(millis(self.delay(failures)))
                .min(give_up_at),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Unix ms.
    RetryAt(i64),
    GiveUp,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> Schedule {
        Schedule::with(
            Duration::from_secs(1),
            Duration::from_secs(600),
            Duration::from_secs(86_400),
            false,
        )
    }

    #[test]
    fn delays_double_from_the_minimum_up_to_the_cap() {
        let schedule = plain();
        let secs: Vec<u64> = (1..=12).map(|n| schedule.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(schedule.delay(1_000), Duration::from_secs(600));
    }

    #[test]
    fn jitter_adds_at_most_as_much_again() {
        let schedule = Schedule::with(
            Duration::from_secs(1),
            Duration::from_secs(600),
            Duration::from_secs(86_400),
            true,
        );
        for n in 1..=12 {
            let base = plain().delay(n);
            let jittered = schedule.delay(n);
            assert!(
                jittered >= base && jittered <= base * 2,
                "{n}: {jittered:?}"
            );
        }
    }

    #[test]
    fn the_last_retry_is_at_the_give_up_time_and_then_it_gives_up() {
        let schedule = Schedule::with(
            Duration::from_secs(1),
            Duration::from_secs(600),
            Duration::from_secs(10),
            false,
        );
        assert_eq!(schedule.after_failure(0, 0, 1), Next::RetryAt(1_000));
        assert_eq!(schedule.after_failure(0, 8_000, 4), Next::RetryAt(10_000));
        assert_eq!(schedule.after_failure(0, 10_000, 5), Next::GiveUp);
        assert_eq!(schedule.after_failure(0, 12_000, 5), Next::GiveUp);
    }
}
