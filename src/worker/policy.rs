//! The retry policy, separate from the work: given whose fault and which attempt, what next.

use crate::config::RetrySettings;
use crate::error::Fault;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Final: publish the outcome and ack.
    Done,
    /// Park in a retry tier; it comes back as attempt `next_attempt`.
    Retry { next_attempt: u32 },
    /// Out of attempts: to the dead queue with a `build.failed`.
    Dead,
}

pub fn decide(fault: Fault, attempt: u32, retry: &RetrySettings) -> Disposition {
    let retryable = match fault {
        Fault::Service => true,
        Fault::User => retry.retry_user_faults,
        Fault::Rejected | Fault::Cancelled => false,
    };
    if !retryable {
        return Disposition::Done;
    }
    if attempt < retry.max_attempts {
        Disposition::Retry {
            next_attempt: attempt + 1,
        }
    } else {
        Disposition::Dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(retry_user_faults: bool) -> RetrySettings {
        RetrySettings {
            max_attempts: 3,
            delays_ms: vec![10, 20],
            retry_user_faults,
        }
    }

    #[test]
    fn service_faults_retry_until_the_last_attempt() {
        let s = settings(false);
        assert_eq!(
            decide(Fault::Service, 1, &s),
            Disposition::Retry { next_attempt: 2 }
        );
        assert_eq!(
            decide(Fault::Service, 2, &s),
            Disposition::Retry { next_attempt: 3 }
        );
        assert_eq!(decide(Fault::Service, 3, &s), Disposition::Dead);
    }

    #[test]
    fn user_faults_are_final_unless_enabled() {
        assert_eq!(decide(Fault::User, 1, &settings(false)), Disposition::Done);
        assert_eq!(
            decide(Fault::User, 1, &settings(true)),
            Disposition::Retry { next_attempt: 2 }
        );
        assert_eq!(
            decide(Fault::Rejected, 1, &settings(true)),
            Disposition::Done
        );
    }
}
