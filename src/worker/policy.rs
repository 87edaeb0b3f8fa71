//! The retry policy, separate from the work: given whose fault and which attempt, what next.

use std::time::Duration;

use serde_json::Value;

use crate::config::RetrySettings;
use crate::error::Fault;
use crate::request::BuildRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Final: publish the outcome and ack.
    Done,
    /// Park in retry tier `tier` (1-based) for `delay`; it comes back as attempt `next_attempt`.
    Retry {
        next_attempt: u32,
        tier: usize,
        delay: Duration,
    },
    /// Out of attempts: to the dead queue with a `build.failed`.
    Dead,
}

/// `retry` settings as a decision: whether a failure is retried, in which tier, after how long.
/// The tiers' delays are also the TTLs `amqp::Topology` declares on the retry queues.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    retry_user_faults: bool,
    /// Tier n's delay at index n - 1; never empty (`Settings::from_layers` checks).
    delays: Vec<Duration>,
}

impl RetryPolicy {
    pub fn new(retry: &RetrySettings) -> Self {
        Self {
            max_attempts: retry.max_attempts,
            retry_user_faults: retry.retry_user_faults,
            delays: retry
                .delays_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        }
    }

    pub fn decide(&self, fault: Fault, attempt: u32) -> Disposition {
        let retryable = match fault {
            Fault::Service => true,
            Fault::User => self.retry_user_faults,
            Fault::Rejected | Fault::Cancelled => false,
        };
        if !retryable {
            return Disposition::Done;
        }
        if attempt >= self.max_attempts {
            return Disposition::Dead;
        }
        // Tier n for failed attempt n; attempts past the last tier wait in the last one.
        let tier = usize::try_from(attempt)
            .unwrap_or(usize::MAX)
            .clamp(1, self.delays.len().max(1));
        Disposition::Retry {
            next_attempt: attempt + 1,
            tier,
            delay: self.delays.get(tier - 1).copied().unwrap_or_default(),
        }
    }
}

/// The body parked in the dead queue. A retry needs the token to fetch again, so retry tiers
/// carry the request as sent; the dead queue is a parking lot that people read, so it gets the
/// request without secrets (`public_view`: no token, build arg values null, `has_token`) plus
/// what the connector manager needs to ask the user again and resubmit.
pub fn dead_message(
    request: &BuildRequest,
    build_id: &str,
    attempts: u32,
    last_error: &str,
) -> Vec<u8> {
    let mut body = request.public_view();
    if let Value::Object(map) = &mut body {
        map.insert("build_id".into(), build_id.into());
        map.insert("attempts".into(), attempts.into());
        map.insert("last_error".into(), last_error.into());
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestPolicy;

    #[test]
    fn the_dead_message_keeps_no_secret() {
        let policy = RequestPolicy {
            max_body_bytes: 65536,
            allowed_schemes: vec!["https".into()],
        };
        let body = br#"{"id":"r1","repo":"acme/app","ref":"main","user_id":"u1",
            "token":"gho_s3cret","build_args":{"KEY":"v4lue-s3cret"},
            "secrets":{"npmrc":"npm-s3cret"}}"#;
        let request = BuildRequest::parse(body, &policy, None).expect("valid request");
        let dead = dead_message(&request, "b1", 5, "push failed");
        let text = String::from_utf8_lossy(&dead);
        assert!(!text.contains("s3cret"), "{text}");
        let value: Value = serde_json::from_slice(&dead).expect("JSON");
        for (key, expected) in [
            ("id", Value::from("r1")),
            ("user_id", "u1".into()),
            ("repo", "acme/app".into()),
            ("ref", "main".into()),
            ("build_id", "b1".into()),
            ("attempts", 5.into()),
            ("last_error", "push failed".into()),
            ("has_token", true.into()),
        ] {
            assert_eq!(value[key], expected, "{key}");
        }
        assert!(value["build_args"]["KEY"].is_null());
        assert!(
            value["secrets"]
                .as_object()
                .is_some_and(|s| s.contains_key("npmrc") && s["npmrc"].is_null()),
            "the ids stay (a rebuild asks for them), the values go: {value}"
        );
    }

    fn policy(retry_user_faults: bool) -> RetryPolicy {
        RetryPolicy::new(&RetrySettings {
            max_attempts: 4,
            delays_ms: vec![10, 20],
            retry_user_faults,
        })
    }

    fn retry(next_attempt: u32, tier: usize, ms: u64) -> Disposition {
        Disposition::Retry {
            next_attempt,
            tier,
            delay: Duration::from_millis(ms),
        }
    }

    #[test]
    fn service_faults_retry_through_the_tiers_until_the_last_attempt() {
        let p = policy(false);
        assert_eq!(p.decide(Fault::Service, 1), retry(2, 1, 10));
        assert_eq!(p.decide(Fault::Service, 2), retry(3, 2, 20));
        assert_eq!(
            p.decide(Fault::Service, 3),
            retry(4, 2, 20),
            "past the last tier: the last tier again"
        );
        assert_eq!(p.decide(Fault::Service, 4), Disposition::Dead);
    }

    #[test]
    fn user_faults_are_final_unless_enabled() {
        assert_eq!(policy(false).decide(Fault::User, 1), Disposition::Done);
        assert_eq!(policy(true).decide(Fault::User, 1), retry(2, 1, 10));
        assert_eq!(policy(true).decide(Fault::Rejected, 1), Disposition::Done);
        assert_eq!(policy(true).decide(Fault::Cancelled, 1), Disposition::Done);
    }
}
