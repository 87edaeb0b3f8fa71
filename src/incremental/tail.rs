//! Whether a Dockerfile's last layers come from plain `COPY`s of the context, and what every
//! other step of every stage reads. It says yes only to what it can prove: a construct whose
//! effect it does not model is a reason to build normally, named in one line.

use crate::dockerfile::{Body, Dockerfile, Keyword, Read, Source, Step};

/// A trailing `COPY <sources...> <dest>` with no flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CopyStep {
    pub line: usize,
    /// Relative to the context, normalised ("." = the whole context, no "./", no trailing "/").
    pub sources: Vec<String>,
    /// As written (absolute, or relative to the working directory); a trailing "/" means
    /// "into this directory" (added when there are several sources).
    pub dest: String,
    /// The destination exactly as written (buildah's history entry shows it).
    pub written_dest: String,
    /// How many metadata steps (each a history entry of its own) follow it in the stage.
    pub followed_by: usize,
}

/// The layers an incremental rebuild may replace, and what the steps before them read.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Tail {
    pub copies: Vec<CopyStep>,
    /// Context paths read by every other step, bind mounts included (see `dockerfile::reads`).
    pub earlier_reads: Vec<String>,
    /// Whether a RUN bind-mounts the context (podman 4 may not apply the ignore file there).
    pub mounts_context: bool,
}

/// Instructions that may sit between or after the tail's COPYs: they add no layer and change
/// nothing a plain COPY writes (a COPY without --chown is root's whatever USER says).
const METADATA: [Keyword; 9] = [
    Keyword::Cmd,
    Keyword::Entrypoint,
    Keyword::Expose,
    Keyword::Label,
    Keyword::Stopsignal,
    Keyword::Healthcheck,
    Keyword::User,
    Keyword::Env,
    Keyword::Maintainer,
];

/// The tail of the final stage, or why there is none this service can rebuild alone.
pub(super) fn analyse(text: &str) -> Result<Tail, String> {
    analyse_parsed(&Dockerfile::parse(text)?)
}

/// `analyse` of a Dockerfile already parsed.
pub(super) fn analyse_parsed(dockerfile: &Dockerfile) -> Result<Tail, String> {
    for stage in &dockerfile.stages {
        if let Some(flag) = stage.flags.iter().find(|f| f.name != "platform") {
            return Err(format!(
                "FROM (line {}) has flag --{}, which is not modelled",
                stage.line, flag.name
            ));
        }
        for step in &stage.steps {
            modelled(step)?;
        }
    }
    let last = dockerfile
        .stages
        .len()
        .checked_sub(1)
        .ok_or("the Dockerfile has no FROM")?;
    let steps = &dockerfile.stages[last].steps;
    let mut copies = Vec::new();
    let mut tail_start = steps.len();
    let mut stop = "the final stage makes no layer".to_owned();
    let mut metadata_after = 0;
    for (n, step) in steps.iter().enumerate().rev() {
        if METADATA.contains(&step.keyword) {
            tail_start = n;
            metadata_after += 1;
            continue;
        }
        let copy = match step.keyword {
            Keyword::Copy => plain_copy(step, metadata_after),
            _ => Err(format!("{} makes a layer", step.shown())),
        };
        match copy {
            Ok(copy) => {
                copies.push(copy);
                tail_start = n;
            }
            Err(why) => {
                stop = why;
                break;
            }
        }
    }
    if copies.is_empty() {
        return Err(format!("the last layer is not a plain COPY: {stop}"));
    }
    copies.reverse();

    let mut earlier_reads = Vec::new();
    let mut mounts_context = false;
    for (n, stage) in dockerfile.stages.iter().enumerate() {
        let before_tail = if n == last {
            &stage.steps[..tail_start]
        } else {
            &stage.steps[..]
        };
        for step in before_tail {
            for read in dockerfile.reads(n, step)? {
                match read {
                    Read::Context(path) => {
                        mounts_context |= step.keyword == Keyword::Run;
                        earlier_reads.push(path);
                    }
                    // That stage's own steps are in this loop too.
                    Read::Stage(_) => {}
                    Read::Image(image) => {
                        return Err(format!(
                            "{} reads image {image}, which can change without a commit",
                            step.shown()
                        ));
                    }
                    Read::Url(url) => return Err(format!("{} fetches {url}", step.shown())),
                }
            }
        }
    }
    earlier_reads.sort();
    earlier_reads.dedup();
    Ok(Tail {
        copies,
        earlier_reads,
        mounts_context,
    })
}

/// Refuses what no part of this analysis models, wherever it stands.
fn modelled(step: &Step) -> Result<(), String> {
    if step.keyword == Keyword::Onbuild {
        return Err(format!("{} is not modelled", step.shown()));
    }
    let known = step.keyword.known_flags();
    if let Some(flag) = step
        .flags
        .iter()
        .find(|f| !known.contains(&f.name.as_str()))
    {
        return Err(format!(
            "{} has flag --{}, which is not modelled",
            step.shown(),
            flag.name
        ));
    }
    let heredoc = match &step.body {
        // The parser takes one heredoc at the start of a RUN; any other `<<` may be one too.
        Body::Run { command, heredocs } => *heredocs > 0 || command.contains("<<"),
        Body::Transfer { sources, .. } => sources.contains(&Source::HereDoc),
        Body::Text(_) => false,
    };
    if heredoc {
        return Err(format!("{} has a heredoc", step.shown()));
    }
    Ok(())
}

/// Characters that make a path mean more than itself (variables, globs, escapes).
fn is_plain(path: &str) -> bool {
    !path.contains(['$', '*', '?', '[', ']', '\\'])
}

fn plain_copy(step: &Step, followed_by: usize) -> Result<CopyStep, String> {
    let shown = step.shown();
    if let Some(flag) = step.flags.first() {
        return Err(format!("{shown} has --{}", flag.name));
    }
    let Body::Transfer { sources, dest } = &step.body else {
        return Err(format!("{shown} has no sources"));
    };
    let dest_written = dest;
    if !is_plain(dest) {
        return Err(format!("{shown} destination {dest} is not a plain path"));
    }
    let sources = sources
        .iter()
        .map(|source| {
            let Source::Path(path) = source else {
                return Err(format!("{shown} has a heredoc"));
            };
            if !is_plain(path) {
                return Err(format!("{shown} source {path} is not a plain path"));
            }
            normalise(path).ok_or_else(|| format!("{shown} source {path} leaves the context"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dest = if sources.len() > 1 && !dest.ends_with('/') {
        format!("{dest}/")
    } else {
        dest.clone()
    };
    Ok(CopyStep {
        line: step.line,
        sources,
        dest,
        written_dest: dest_written.clone(),
        followed_by,
    })
}

/// "./a/b/" -> "a/b"; "." or "./" -> "."; None for absolute paths or "..".
fn normalise(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return None;
    }
    Some(if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "# syntax=docker/dockerfile:1\nFROM localhost/busybox:latest\n\
        COPY deps.txt /deps.txt\nRUN make \\\n  deps\nCOPY ./src/ /app/src/\nCOPY a.txt b.txt /app\n\
        CMD [\"/app/run\"]\n";

    fn copy(line: usize, sources: &[&str], dest: &str) -> CopyStep {
        CopyStep {
            line,
            sources: sources.iter().map(|s| (*s).to_owned()).collect(),
            dest: dest.into(),
            written_dest: dest.into(),
            followed_by: 0,
        }
    }

    #[test]
    fn a_plain_copy_tail_is_found_with_what_earlier_steps_read() {
        let tail = analyse(APP).expect("eligible");
        let mut src = copy(6, &["src"], "/app/src/");
        src.followed_by = 1;
        let mut two = copy(7, &["a.txt", "b.txt"], "/app/");
        two.written_dest = "/app".into();
        two.followed_by = 1;
        assert_eq!(tail.copies, [src, two]);
        assert_eq!(tail.earlier_reads, ["deps.txt"]);
    }

    #[test]
    fn bind_mounts_are_reads_of_earlier_steps() {
        let text = "FROM localhost/busybox:latest\n\
            RUN --mount=type=bind,source=b.txt,target=/m.txt cp /m.txt /b.txt\n\
            RUN --mount=target=/ctx ls /ctx\nCOPY a.txt /app/a.txt\n";
        let tail = analyse(text).expect("eligible");
        assert_eq!(tail.earlier_reads, [".", "b.txt"]);
        let text = "FROM localhost/busybox:latest\n\
            RUN --mount=type=bind,source=./conf/,target=/c true\nCOPY a.txt /a.txt\n";
        assert_eq!(analyse(text).expect("ok").earlier_reads, ["conf"]);
    }

    #[test]
    fn every_stage_counts_and_stages_are_not_images() {
        let text = "FROM localhost/busybox:latest AS Build\nCOPY gen.txt /gen.txt\n\
            FROM localhost/busybox:latest\nCOPY --from=build /gen.txt /gen.txt\n\
            RUN --mount=type=bind,from=0,source=/gen.txt,target=/g cat /g\nCOPY app.txt /app.txt\n";
        let tail = analyse(text).expect("eligible");
        assert_eq!(tail.earlier_reads, ["gen.txt"]);
        assert_eq!(tail.copies, [copy(6, &["app.txt"], "/app.txt")]);
    }

    #[test]
    fn relative_destinations_are_kept_for_the_working_directory() {
        let tail = analyse("FROM a\nWORKDIR /w\nCOPY . .\nCOPY x sub/\n").expect("ok");
        assert_eq!(tail.copies, [copy(3, &["."], "."), copy(4, &["x"], "sub/")]);
    }

    #[test]
    fn anything_unusual_builds_normally() {
        for (text, why) in [
            ("FROM a\nRUN x\n", "RUN (line 2) makes a layer"),
            (
                "FROM a\nCOPY x /x\nWORKDIR /w\n",
                "WORKDIR (line 3) makes a layer",
            ),
            ("FROM a\nCOPY --chown=1 x /x\n", "COPY (line 2) has --chown"),
            ("FROM a\nCOPY --link x /x\n", "has --link"),
            (
                "FROM a\nCOPY --bogus x /x\n",
                "flag --bogus, which is not modelled",
            ),
            (
                "FROM --bogus a\nCOPY x /x\n",
                "FROM (line 1) has flag --bogus",
            ),
            ("FROM a\nCOPY $SRC /x\n", "source $SRC is not a plain path"),
            (
                "FROM a\nARG D=/x\nCOPY x $D\n",
                "destination $D is not a plain path",
            ),
            (
                "FROM a\nCOPY *.txt /x/\n",
                "source *.txt is not a plain path",
            ),
            ("FROM a\nCOPY ../x /x\n", "leaves the context"),
            (
                "FROM a\nADD https://h/f /f\nCOPY x /x\n",
                "ADD (line 2) fetches https://h/f",
            ),
            (
                "FROM a\nARG U\nADD $U /f\nCOPY x /x\n",
                "source $U has a variable",
            ),
            (
                "FROM a\nCOPY --from=img /a /a\nRUN x\nCOPY x /x\n",
                "reads image img, which can change without a commit",
            ),
            (
                "FROM a\nRUN --mount=from=img,target=/i x\nCOPY x /x\n",
                "reads image img",
            ),
            (
                "FROM a\nRUN --mount=type=volume x\nCOPY x /x\n",
                "unknown mount type",
            ),
            (
                "FROM a\nRUN <<EOF\necho\nEOF\nCOPY x /x\n",
                "RUN (line 2) has a heredoc",
            ),
            // The parser takes heredocs only at the start of a RUN: the body is not a step.
            (
                "FROM a\nRUN cat <<EOF > /f\nhi\nEOF\nCOPY x /x\n",
                "unknown instruction",
            ),
            // Any other `<<` might be one (here it is not: a false alarm costs a full build).
            (
                "FROM a\nRUN echo $((1<<2))\nCOPY x /x\n",
                "RUN (line 2) has a heredoc",
            ),
            (
                "FROM a\nCOPY <<EOF /f\nhi\nEOF\nCOPY x /x\n",
                "COPY (line 2) has a heredoc",
            ),
            (
                "FROM a\nONBUILD COPY . /\nCOPY x /x\n",
                "ONBUILD (line 2) is not modelled",
            ),
            ("FROM a\nCOPY x\n", "the Dockerfile"),
        ] {
            let err = analyse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn globs_and_variables_earlier_read_the_directory_above_and_escape_counts() {
        let tail = analyse("FROM a\nCOPY *.lock /\nRUN i\nCOPY src /s\n").expect("ok");
        assert_eq!(tail.earlier_reads, ["."]);
        let tail = analyse("FROM a\nARG V\nCOPY conf/$V/x /c\nRUN i\nCOPY src /s\n").expect("ok");
        assert_eq!(tail.earlier_reads, ["conf"]);
        let tail = analyse("# escape=`\nFROM a\nRUN a `\n b\nCOPY src /s\n").expect("ok");
        assert_eq!(tail.copies.len(), 1);
    }

    #[test]
    fn continuations_may_hold_comments_and_blank_lines() {
        let text = "FROM a\nRUN --mount=type=bind,source=b.txt,target=/m \\\n# a comment\n\n  cp /m /b\n\
                    COPY a.txt \\\n  /a.txt\n";
        let tail = analyse(text).expect("ok");
        assert_eq!(tail.earlier_reads, ["b.txt"]);
        assert_eq!(tail.copies, [copy(6, &["a.txt"], "/a.txt")]);
    }
}
