//! A full build whose final plain COPYs the worker makes itself. The engine builds the
//! Dockerfile without them (`BuildSpec::omitted_steps`); their layers are made from the
//! checkout as an incremental rebuild makes them (`layer`) and appended to the engine's image
//! in the registry, each history entry where the engine would have written it. podman's COPY
//! of a 2,000-file context and its commit cost about a second; the layer costs milliseconds.
//!
//! It runs under the same proof as an incremental rebuild's tail (`tail::analyse`), minus the
//! diff: the engine still reads every file the earlier steps read. A source that is or passes
//! through a symlink, a single file copied to a path without a trailing "/" (a directory there
//! or not is the engine's to see), a final stage `FROM scratch` and one with no step but its
//! COPYs (podman commits nothing then) go to the engine whole.

use std::path::Path;

use super::ignore::Ignore;
use super::tail::{self, CopyStep};
use super::{Attempt, placement};
use crate::confined::{Entry, Kind, Node, Refused, Tree};
use crate::error::BuildError;
use crate::image_edit::{Appended, Previous, config_digest, publish_beside, rfc3339};
use crate::ports::Manifest;

/// What the worker makes of a build the engine builds the rest of.
pub struct Split {
    copies: Vec<CopyStep>,
    context: Tree,
    ignore: Ignore,
}

impl Split {
    /// The lines of the steps the engine leaves out.
    pub fn lines(&self) -> Vec<usize> {
        self.copies.iter().map(|c| c.line).collect()
    }
}

/// The final COPYs of this build the worker can make, or why the engine builds every step.
pub fn plan(a: &Attempt<'_>) -> Result<Split, String> {
    let (env, spec) = (a.env, a.spec);
    if !env.settings.incremental {
        return Err("incremental rebuilds are off (build.incremental)".into());
    }
    if !env.engine.omits_steps() {
        return Err("the engine cannot leave steps out".into());
    }
    if env.engine.labels_at_build(spec) {
        return Err("the engine labels while building".into());
    }
    if spec.platforms.len() > 1 {
        return Err("several platforms".into());
    }
    let dockerfile = super::last_stage_dockerfile(spec)?;
    let (context, ignore, text) =
        super::read_inputs(spec, dockerfile).map_err(|e| e.to_string())??;
    Ok(Split {
        copies: final_copies(&text, &context)?,
        context,
        ignore,
    })
}

/// The Dockerfile's final plain COPYs when the worker can make their layers from `context`.
fn final_copies(text: &str, context: &Tree) -> Result<Vec<CopyStep>, String> {
    let parsed = crate::dockerfile::Dockerfile::parse(text)?;
    let tail = tail::analyse_parsed(&parsed)?;
    let Some(last) = parsed.stages.last() else {
        return Err("the Dockerfile has no FROM".into());
    };
    if last.base == "scratch" {
        return Err("the final stage is FROM scratch".into());
    }
    // With nothing else to do, podman hands back the base itself, without the PATH and
    // label its commit would add.
    if last.steps.len() == tail.copies.len() {
        return Err("the final stage has no step but its COPYs".into());
    }
    for copy in &tail.copies {
        let mut single_file = copy.sources.len() == 1;
        for source in &copy.sources {
            match context.open_nofollow(Path::new(source)) {
                // What `layer` refuses, found before the engine runs (ignored or not).
                Ok(Node::Dir(dir)) => {
                    single_file = false;
                    dir.walk(&mut |rel: &Path, entry| match entry {
                        Entry::Symlink(_) => Err(Unmade(format!("{} is a symlink", rel.display()))),
                        _ => Ok(()),
                    })
                    .map_err(|Unmade(why)| {
                        format!("COPY (line {}) source {source}: {why}", copy.line)
                    })?;
                }
                Ok(Node::File(_)) => {}
                Err(Refused::Missing(_)) => {
                    return Err(format!("COPY (line {}): {source} is missing", copy.line));
                }
                Err(why) => {
                    return Err(format!("COPY (line {}) source {source}: {why}", copy.line));
                }
            }
        }
        let into_dir = copy.dest.ends_with('/') || copy.dest == "." || copy.dest.ends_with("/.");
        if single_file && !into_dir {
            return Err(format!(
                "COPY (line {}) writes one file to {}, which may be a directory",
                copy.line, copy.dest
            ));
        }
    }
    Ok(tail.copies)
}

/// The engine's image `pushed` (built without the split's steps) with their layers appended,
/// put under `a.tags`. Outer error: the registry failed; inner: why the engine must build
/// every step after all.
pub async fn finish(
    a: &Attempt<'_>,
    split: Split,
    pushed: &str,
) -> Result<Result<Manifest, String>, BuildError> {
    let store = &a.env.registry;
    let Some(built) = store.manifest(a.repository, pushed).await? else {
        return Ok(Err(format!(
            "the registry does not know {pushed} just pushed"
        )));
    };
    let Some(config) = config_digest(&built) else {
        return Ok(Err("the engine's image has no config".into()));
    };
    let Some(config) = store.blob(a.repository, &config).await? else {
        return Ok(Err("the engine's image's config is missing".into()));
    };
    let image = match Previous::parse(&built.media_type, &built.bytes, &config, 0) {
        Ok(image) => image,
        Err(why) => return Ok(Err(why)),
    };
    let workdir = image.working_dir().to_owned();
    let mut copies = split.copies;
    for copy in &mut copies {
        copy.dest = match placement::absolute(&copy.dest, &workdir) {
            Some(dest) => dest,
            None => {
                return Ok(Err(format!(
                    "COPY (line {}) destination {} in working directory {workdir:?} is not modelled",
                    copy.line, copy.dest
                )));
            }
        };
    }
    let steps: Vec<(&str, String, usize)> = copies
        .iter()
        .map(|c| {
            (
                kind(&split.context, c),
                c.written_dest.clone(),
                c.followed_by,
            )
        })
        .collect();
    let made = match super::made_layers(a, split.context, split.ignore, copies, None).await? {
        Ok(made) => made,
        Err(why) => return Ok(Err(why)),
    };
    let (files, written) = (made.files, made.written);
    let appended: Vec<Appended> = made
        .layers
        .into_iter()
        .zip(steps)
        .map(|(layer, (kind, dest, followed_by))| Appended {
            created_by: format!(
                "/bin/sh -c #(nop) COPY {kind}:{} in {dest} ",
                layer.diff_id.trim_start_matches("sha256:")
            ),
            layer,
            followed_by,
        })
        .collect();
    let count = appended.len();
    let media_type = image.media_type(&built.media_type);
    let note = "image-builder: made from the checkout";
    let (config, manifest) =
        match image.append(&appended, &a.spec.labels, &rfc3339(a.created), note) {
            Ok(edited) => edited,
            Err(why) => return Ok(Err(why)),
        };
    let manifest = publish_beside(
        store.as_ref(),
        a.repository,
        a.tags,
        (media_type, config, manifest),
        super::upload_layers(a, written),
    )
    .await?;
    a.log.push(&format!(
        "the final {count} COPY layer(s) made from {files} file(s) of the checkout, the \
         engine's image {pushed} beneath them"
    ));
    Ok(Ok(manifest))
}

/// Why a source's layer cannot be made here.
struct Unmade(String);

impl From<Refused> for Unmade {
    fn from(why: Refused) -> Self {
        Self(why.to_string())
    }
}

/// How buildah names a COPY's sources in its history entry: one file, one directory, or
/// several sources.
fn kind(context: &Tree, copy: &CopyStep) -> &'static str {
    match copy.sources.as_slice() {
        [one] => match context.kind(Path::new(one)) {
            Ok(Some(Kind::File)) => "file",
            _ => "dir",
        },
        _ => "multi",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("src/sub")).expect("dirs");
        std::fs::write(dir.path().join("src/sub/a.txt"), "a").expect("write");
        std::fs::write(dir.path().join("one.txt"), "1").expect("write");
        let tree = Tree::open(dir.path()).expect("tree");
        (dir, tree)
    }

    const FROM: &str = "FROM localhost/busybox:latest\nRUN make\n";

    #[test]
    fn directory_and_into_directory_copies_are_made_here() {
        let (_dir, tree) = context();
        let text = format!("{FROM}COPY src/ /app/\nCMD run\nCOPY one.txt .\n");
        let copies = final_copies(&text, &tree).expect("split");
        let lines: Vec<usize> = copies.iter().map(|c| c.line).collect();
        assert_eq!(lines, [3, 5]);
        assert_eq!(copies[0].followed_by, 1);
    }

    #[test]
    fn what_only_the_engine_can_tell_is_left_to_it() {
        let (dir, tree) = context();
        let refused = |text: String| final_copies(&text, &tree).expect_err("engine");
        assert!(refused(format!("{FROM}COPY one.txt /etc/one\n")).contains("may be a directory"));
        assert!(refused(format!("{FROM}COPY gone/ /app/\n")).contains("missing"));
        assert!(refused("FROM scratch\nCOPY src/ /\n".into()).contains("scratch"));
        assert!(
            refused("FROM localhost/busybox:latest\nCOPY src/ /app/\n".into())
                .contains("no step but its COPYs")
        );
        assert!(refused(format!("{FROM}RUN late\n")).contains("not a plain COPY"));
        std::os::unix::fs::symlink("a.txt", dir.path().join("src/sub/link")).expect("symlink");
        let tree = Tree::open(dir.path()).expect("tree");
        let text = format!("{FROM}COPY src/ /app/\n");
        assert!(
            final_copies(&text, &tree)
                .expect_err("engine")
                .contains("sub/link is a symlink")
        );
    }
}
