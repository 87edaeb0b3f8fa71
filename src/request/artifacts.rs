//! `artifacts`: paths of the built image to export, each stored as an OCI artifact next to the
//! image. Checked here so nothing downstream sees a path that leaves the image's root.

use std::collections::BTreeSet;

use super::Rejection;
use super::fields::Fields;
use super::types::{ArtifactName, ImagePath};

/// At most this many artifacts per request: each is a registry read of every layer.
pub const MAX_ARTIFACTS: usize = 16;

/// One path to export as `<name>.tar.gz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSpec {
    pub name: ArtifactName,
    pub path: ImagePath,
}

pub(super) fn parse_artifacts(f: &mut Fields) -> Result<Vec<ArtifactSpec>, Rejection> {
    let mut seen = BTreeSet::new();
    let mut specs = Vec::new();
    for (at, mut item) in f.object_list("artifacts", MAX_ARTIFACTS)? {
        let name_field = format!("{at}.name");
        let path_field = format!("{at}.path");
        let name = item
            .string("name")?
            .ok_or_else(|| Rejection::new(&name_field, "is required"))?;
        let name = ArtifactName::parse(&name).map_err(|r| Rejection::new(&name_field, r))?;
        let path = item
            .string("path")?
            .ok_or_else(|| Rejection::new(&path_field, "is required"))?;
        let path = ImagePath::parse(&path).map_err(|r| Rejection::new(&path_field, r))?;
        item.finish()?;
        if !seen.insert(name.clone()) {
            return Err(Rejection::new(
                &name_field,
                format!("{:?} is used by an earlier artifact", name.as_str()),
            ));
        }
        specs.push(ArtifactSpec { name, path });
    }
    Ok(specs)
}
