//! What travels with a request between attempts, in AMQP headers: the attempt number (counted by
//! us, not the broker), the ids assigned on first receipt, and the last error.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

const ATTEMPT: &str = "x-attempt";
const REQUEST_ID: &str = "x-request-id";
const BUILD_ID: &str = "x-build-id";
const LAST_ERROR: &str = "x-last-error";

/// 1-based attempt number.
pub type Attempt = u32;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageMeta {
    pub attempt: Attempt,
    pub request_id: Option<String>,
    pub build_id: Option<String>,
    pub last_error: Option<String>,
}

impl MessageMeta {
    pub fn from_properties(props: &BasicProperties) -> Self {
        let Some(headers) = props.headers() else {
            return Self {
                attempt: 1,
                ..Self::default()
            };
        };
        let map = headers.inner();
        let text = |key: &str| match map.get(&ShortString::from(key)) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        };
        let attempt = match map.get(&ShortString::from(ATTEMPT)) {
            Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).ok(),
            Some(AMQPValue::LongInt(n)) => u32::try_from(*n).ok(),
            Some(AMQPValue::LongUInt(n)) => Some(*n),
            _ => None,
        };
        Self {
            attempt: attempt.unwrap_or(1).max(1),
            request_id: text(REQUEST_ID),
            build_id: text(BUILD_ID),
            last_error: text(LAST_ERROR),
        }
    }

    pub fn to_headers(&self) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert(ATTEMPT.into(), AMQPValue::LongLongInt(self.attempt.into()));
        for (key, value) in [
            (REQUEST_ID, &self.request_id),
            (BUILD_ID, &self.build_id),
            (LAST_ERROR, &self.last_error),
        ] {
            if let Some(value) = value {
                table.insert(key.into(), AMQPValue::LongString(value.as_str().into()));
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_defaults() {
        let meta = MessageMeta {
            attempt: 3,
            request_id: Some("r".into()),
            build_id: Some("b".into()),
            last_error: Some("registry down".into()),
        };
        let props = BasicProperties::default().with_headers(meta.to_headers());
        assert_eq!(MessageMeta::from_properties(&props), meta);
        let bare = MessageMeta::from_properties(&BasicProperties::default());
        assert_eq!(bare.attempt, 1);
        assert_eq!(bare.build_id, None);
    }
}
