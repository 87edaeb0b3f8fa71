//! `base_update`: marks a request published because a base image moved (`api::base_updates`).
//! Such a build never answers from its build key (the configuration is unchanged, the base is
//! not), pulls the moved base again and builds the recorded commit.

use super::Rejection;
use super::fields::Fields;

/// The base that moved and the image it is rebuilt from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUpdate {
    /// The base image's full reference (`registry/repository:tag`), as recorded.
    pub reference: String,
    /// The manifest digest it moved to.
    pub digest: String,
    /// The commit the configuration's newest image was built from: built again.
    pub commit: String,
}

impl BaseUpdate {
    /// The `why` of the image it makes.
    pub fn why(&self) -> String {
        format!("base {} moved to {}", self.reference, self.digest)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "reference": self.reference,
            "digest": self.digest,
            "commit": self.commit,
        })
    }
}

pub(super) fn parse_base_update(f: &mut Fields) -> Result<Option<BaseUpdate>, Rejection> {
    let Some(mut item) = f.object("base_update")? else {
        return Ok(None);
    };
    let mut required = |name: &str, check: fn(&str) -> Result<(), String>| {
        let field = format!("base_update.{name}");
        let value = item
            .string(name)?
            .ok_or_else(|| Rejection::new(&field, "is required"))?;
        check(&value).map_err(|reason| Rejection::new(&field, reason))?;
        Ok::<_, Rejection>(value)
    };
    let reference = required("reference", reference)?;
    let digest = required("digest", digest)?;
    let commit = required("commit", commit)?;
    item.finish()?;
    Ok(Some(BaseUpdate {
        reference,
        digest,
        commit,
    }))
}

fn reference(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 512
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    ok.then_some(()).ok_or_else(|| {
        "must be an image reference (registry/repository:tag), at most 512 characters".to_owned()
    })
}

fn digest(value: &str) -> Result<(), String> {
    let hex = value.strip_prefix("sha256:").unwrap_or("");
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then_some(())
        .ok_or_else(|| "must be sha256: and 64 hex digits".to_owned())
}

fn commit(value: &str) -> Result<(), String> {
    (matches!(value.len(), 40 | 64) && value.chars().all(|c| c.is_ascii_hexdigit()))
        .then_some(())
        .ok_or_else(|| "must be a full commit id (40 or 64 hex digits)".to_owned())
}
