//! The context's ignore file, which decides what COPY (and ADD) can see: podman reads
//! `.containerignore`, else `.dockerignore`. Only literal paths are evaluated
//! (`dockerfile::IgnoreFile`); anything else is a reason to build with the engine.

use std::io::Read;
use std::path::Path;

use crate::confined::{Node, Tree};
use crate::dockerfile::IgnoreFile;

/// Ignore files are a few lines; a larger one is left to the engine.
const MAX_IGNORE_BYTES: u64 = 1024 * 1024;

const NAMES: [&str; 2] = [".containerignore", ".dockerignore"];

#[derive(Default)]
pub(super) struct Ignore {
    /// The file's name, when the context has one.
    pub name: Option<String>,
    pub file: IgnoreFile,
}

pub(super) fn read(context: &Tree) -> Result<Ignore, String> {
    let present: Vec<&str> = NAMES
        .into_iter()
        .filter(|name| context.has_entry(Path::new(name)))
        .collect();
    let name = match present.as_slice() {
        [] => return Ok(Ignore::default()),
        [name] => *name,
        _ => return Err("the context has both a .containerignore and a .dockerignore".into()),
    };
    // A symlink (or anything but a plain file) is not followed here.
    let opened = match context.open_nofollow(Path::new(name)) {
        Ok(Node::File(opened)) => opened,
        Ok(Node::Dir(_)) => return Err(format!("the {name} is a directory")),
        Err(why) => return Err(format!("the {name}: {why}")),
    };
    if opened.meta.len() > MAX_IGNORE_BYTES {
        return Err(format!(
            "the {name} is larger than {MAX_IGNORE_BYTES} bytes"
        ));
    }
    let mut text = String::new();
    opened
        .exact()
        .read_to_string(&mut text)
        .map_err(|e| format!("the {name} cannot be read: {e}"))?;
    let file = IgnoreFile::parse(&text).map_err(|why| format!("the {name}: {why}"))?;
    Ok(Ignore {
        name: Some(name.to_owned()),
        file,
    })
}
