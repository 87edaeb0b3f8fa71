//! The retry policy, separate from the work: given whose fault and which attempt, what next.

use serde_json::Value;

use crate::config::RetrySettings;
use crate::error::Fault;
use crate::request::BuildRequest;

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
            "token":"gho_s3cret","build_args":{"KEY":"v4lue-s3cret"}}"#;
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
    }

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
