//! Artifacts: paths of a pushed image exported from its layers in the registry, without running
//! a container, and stored next to it as OCI artifacts (`overlay` reads the layers as the runtime
//! would see them).

mod overlay;

pub use overlay::{ExportError, Exported, export};
