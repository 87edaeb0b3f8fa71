//! What a step reads besides the layers beneath it: context paths, earlier stages, images,
//! URLs. Paths are over-approximated where BuildKit would evaluate something this service does
//! not (a variable or a glob reads the directory it cannot see into), never under.

use super::{Body, Dockerfile, Keyword, MountKind, Source, Step};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// A context path, normalised by `context_path` ("." = the whole context).
    Context(String),
    /// An earlier stage's result (what that stage reads is its own steps' reads).
    Stage(usize),
    /// An image, which may change without a commit.
    Image(String),
    /// A URL `ADD` fetches.
    Url(String),
}

impl Dockerfile {
    /// What `step` of stage `stage` reads. An error names a construct whose reads cannot be
    /// told from the text.
    pub fn reads(&self, stage: usize, step: &Step) -> Result<Vec<Read>, String> {
        let from = |reference: &str, what: &str| {
            if reference.contains('$') {
                return Err(format!("{} {what} has a variable", step.shown()));
            }
            Ok(match self.stage_ref(stage, reference) {
                Some(index) => Read::Stage(index),
                None => Read::Image(reference.to_owned()),
            })
        };
        match (&step.keyword, &step.body) {
            (Keyword::Copy | Keyword::Add, Body::Transfer { sources, .. }) => {
                if let Some(flag) = step.flag("from") {
                    return Ok(vec![from(flag.value.as_deref().unwrap_or(""), "--from")?]);
                }
                let mut reads = Vec::new();
                for source in sources {
                    let Source::Path(path) = source else {
                        continue; // a heredoc's text is the Dockerfile's
                    };
                    if step.keyword == Keyword::Add {
                        if is_url(path) {
                            reads.push(Read::Url(path.clone()));
                            continue;
                        }
                        if path.contains('$') {
                            return Err(format!("{} source {path} has a variable", step.shown()));
                        }
                    }
                    reads.push(Read::Context(context_path(path)));
                }
                Ok(reads)
            }
            (Keyword::Run, _) => {
                let mut reads = Vec::new();
                for mount in step.mounts()? {
                    match (mount.kind, &mount.from) {
                        (MountKind::Bind | MountKind::Cache, Some(reference)) => {
                            reads.push(from(reference, "--mount from")?);
                        }
                        (MountKind::Bind, None) => reads.push(Read::Context(context_path(
                            mount.source.as_deref().unwrap_or("."),
                        ))),
                        _ => {}
                    }
                }
                Ok(reads)
            }
            _ => Ok(Vec::new()),
        }
    }
}

fn is_url(path: &str) -> bool {
    path.contains("://") || path.starts_with("git@")
}

/// A source path as the context path it reads: relative to the context root ("/" is the root
/// too), cleaned; "." for the whole context. A variable or a glob reads the directory above
/// it; ".." the whole context.
pub fn context_path(path: &str) -> String {
    let mut parts = Vec::new();
    for part in path.split('/') {
        if part.is_empty() || part == "." {
            continue;
        }
        if part == ".." {
            return ".".to_owned();
        }
        if part.contains(['$', '*', '?', '[', '\\']) {
            break;
        }
        parts.push(part);
    }
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

/// Whether two context paths share a file: one is the other or lies inside it.
pub fn overlaps(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| x.strip_prefix(y).is_some_and(|r| r.starts_with('/'));
    a == "." || b == "." || a == b || inside(a, b) || inside(b, a)
}
