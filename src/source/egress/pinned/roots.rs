//! Certificate authorities https git hosts are verified against besides the system's
//! (`request.git_ca_file`): an internal CA, or a test's.

use std::path::Path;
use std::sync::Arc;

/// Extra trusted roots; none by default. Cheap to clone.
#[derive(Clone, Default)]
pub struct ExtraRoots(Arc<Vec<reqwest::Certificate>>);

impl ExtraRoots {
    /// Every certificate of a PEM file (a bundle may hold several). Errors name the setting.
    pub fn from_pem_file(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let pem = std::fs::read(path)
            .map_err(|e| format!("request.git_ca_file: failed to read {shown}: {e}"))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("request.git_ca_file: {shown} is not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "request.git_ca_file: {shown} holds no PEM certificate"
            ));
        }
        Ok(Self(Arc::new(certs)))
    }

    pub(super) fn certificates(&self) -> Vec<reqwest::Certificate> {
        self.0.as_ref().clone()
    }
}

impl std::fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExtraRoots({} certificates)", self.0.len())
    }
}
