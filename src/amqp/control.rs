//! Commands for every replica, on the control fanout exchange. Only the replica running the named
//! build acts on one; the others ignore it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Control {
    /// Stop this build: kill its process tree, push nothing, report `build.cancelled`.
    Cancel { build_id: String },
}

impl Control {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_round_trips() {
        let cancel = Control::Cancel {
            build_id: "b-1".into(),
        };
        assert_eq!(Control::parse(&cancel.to_json()), Some(cancel));
        assert_eq!(Control::parse(b"{\"command\":\"reboot\"}"), None);
    }
}
