//! The one reading of Dockerfiles in the service, with BuildKit's syntax: parser directives
//! (`# escape=`), line continuations with comments and blank lines inside them, JSON and shell
//! forms, heredocs (`RUN <<EOF`, `COPY <<EOF`), instruction flags. The lexing is the
//! `parse-dockerfile` crate's (a BuildKit-compatible parser); this module turns it into owned
//! stages and steps, and adds the semantics the service needs: stage references, `RUN --mount`
//! (`mount`), what each step reads (`reads`), ignore files (`ignore`), the base images, the
//! escape character.

mod ignore;
mod mount;
mod reads;

pub use ignore::IgnoreFile;
pub use mount::{Mount, MountKind};
pub use reads::{Read, context_path, overlaps};

use parse_dockerfile::{Command, Instruction, Source as ParsedSource};

/// A parsed Dockerfile: its stages in order (the last one is the image).
#[derive(Debug)]
pub struct Dockerfile {
    pub escape: char,
    pub stages: Vec<Stage>,
}

/// `FROM <base> [AS <name>]` and the steps up to the next `FROM`.
#[derive(Debug)]
pub struct Stage {
    pub line: usize,
    /// An image, or an earlier stage's name, as written (variables unexpanded).
    pub base: String,
    /// Lowercase: BuildKit matches stage names without regard to case.
    pub name: Option<String>,
    pub flags: Vec<Flag>,
    pub steps: Vec<Step>,
}

/// One instruction of a stage.
#[derive(Debug)]
pub struct Step {
    /// 1-based line of the instruction's keyword.
    pub line: usize,
    pub keyword: Keyword,
    pub flags: Vec<Flag>,
    pub body: Body,
}

/// `--name[=value]` before an instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    Healthcheck,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    Stopsignal,
    User,
    Volume,
    Workdir,
}

/// The arguments of a step, in the shape the service reads them.
#[derive(Debug)]
pub enum Body {
    /// `COPY`/`ADD`: sources (paths or heredocs) and the destination, unescaped.
    Transfer { sources: Vec<Source>, dest: String },
    /// `RUN`: the shell text (or the exec form's words joined) and how many heredocs it has.
    Run { command: String, heredocs: usize },
    /// Anything else, as written.
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(String),
    HereDoc,
}

impl Keyword {
    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Arg => "ARG",
            Self::Cmd => "CMD",
            Self::Copy => "COPY",
            Self::Entrypoint => "ENTRYPOINT",
            Self::Env => "ENV",
            Self::Expose => "EXPOSE",
            Self::Healthcheck => "HEALTHCHECK",
            Self::Label => "LABEL",
            Self::Maintainer => "MAINTAINER",
            Self::Onbuild => "ONBUILD",
            Self::Run => "RUN",
            Self::Shell => "SHELL",
            Self::Stopsignal => "STOPSIGNAL",
            Self::User => "USER",
            Self::Volume => "VOLUME",
            Self::Workdir => "WORKDIR",
        }
    }

    /// The flags BuildKit's Dockerfile frontend defines for the instruction.
    pub fn known_flags(self) -> &'static [&'static str] {
        match self {
            Self::Copy => &["from", "chown", "chmod", "link", "parents", "exclude"],
            Self::Add => &[
                "chown",
                "chmod",
                "link",
                "checksum",
                "keep-git-dir",
                "exclude",
            ],
            Self::Run => &["mount", "network", "security"],
            Self::Healthcheck => &[
                "interval",
                "timeout",
                "start-period",
                "start-interval",
                "retries",
            ],
            _ => &[],
        }
    }
}

impl Step {
    /// `KEYWORD` and its line, as a build log names a step.
    pub fn shown(&self) -> String {
        format!("{} (line {})", self.keyword.name(), self.line)
    }

    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.name == name)
    }

    /// Every `RUN --mount`, parsed; an error names the first one not understood.
    pub fn mounts(&self) -> Result<Vec<Mount>, String> {
        self.flags
            .iter()
            .filter(|f| f.name == "mount")
            .map(|f| {
                Mount::parse(f.value.as_deref().unwrap_or(""))
                    .map_err(|why| format!("{} --mount: {why}", self.shown()))
            })
            .collect()
    }
}

impl Dockerfile {
    pub fn parse(text: &str) -> Result<Self, String> {
        // The crate drops a byte order mark before its spans start: so do we.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let parsed = parse_dockerfile::parse(text).map_err(|e| format!("the Dockerfile: {e}"))?;
        let lines = LineIndex::new(text);
        let escape = parsed
            .parser_directives
            .escape
            .as_ref()
            .map_or('\\', |d| d.value.value);
        let mut stages: Vec<Stage> = Vec::new();
        for instruction in &parsed.instructions {
            if let Instruction::From(from) = instruction {
                stages.push(Stage {
                    line: lines.line(from.from.span.start),
                    base: from.image.value.to_string(),
                    name: from
                        .as_
                        .as_ref()
                        .map(|(_, name)| name.value.to_ascii_lowercase()),
                    flags: flags(&from.options),
                    steps: Vec::new(),
                });
                continue;
            }
            // Global ARGs (before the first FROM) only feed FROM lines.
            let Some(stage) = stages.last_mut() else {
                continue;
            };
            stage.steps.push(step(instruction, &lines)?);
        }
        Ok(Self { escape, stages })
    }

    /// The stage `reference` names as seen from stage `current` (a `--from` value or a `FROM`
    /// base): an earlier stage's name or index. None for anything else (an image).
    pub fn stage_ref(&self, current: usize, reference: &str) -> Option<usize> {
        let earlier = self.stages.get(..current)?;
        if let Ok(index) = reference.parse::<usize>() {
            return (index < current).then_some(index);
        }
        let wanted = reference.to_ascii_lowercase();
        earlier
            .iter()
            .rposition(|s| s.name.as_deref() == Some(wanted.as_str()))
    }

    /// The images the Dockerfile builds `FROM` (stage names excluded).
    pub fn base_images(&self) -> Vec<String> {
        let mut images = Vec::new();
        for (n, stage) in self.stages.iter().enumerate() {
            if self.stage_ref(n, &stage.base).is_none() && !images.contains(&stage.base) {
                images.push(stage.base.clone());
            }
        }
        images
    }
}

/// The `# escape=` directive's character (`\` when there is none or the text does not parse).
pub fn escape_char(text: &str) -> char {
    Dockerfile::parse(text).map_or('\\', |d| d.escape)
}

/// The images `text` builds `FROM`; none when it does not parse (the engine then says why).
pub fn base_images(text: &str) -> Vec<String> {
    Dockerfile::parse(text)
        .map(|d| d.base_images())
        .unwrap_or_default()
}

/// Why podman's layer cache cannot be trusted for this Dockerfile, if it cannot: podman 4
/// keys a RUN step on its text and parent layer only, so a step that bind-mounts files (from
/// the context or another stage) is reused after those files changed (seen: a stale file in
/// a "rebuilt" image).
pub fn layer_cache_blind_spot(text: &str) -> Option<String> {
    let dockerfile = Dockerfile::parse(text).ok()?;
    let mut steps = dockerfile.stages.iter().flat_map(|s| &s.steps);
    steps.find_map(|step| {
        let bind = step
            .mounts()
            .ok()?
            .into_iter()
            .any(|m| m.kind == MountKind::Bind);
        bind.then(|| format!("{} bind-mounts files", step.shown()))
    })
}

fn flags(parsed: &[parse_dockerfile::Flag<'_>]) -> Vec<Flag> {
    parsed
        .iter()
        .map(|f| Flag {
            name: f.name.value.to_string(),
            value: f.value.as_ref().map(|v| v.value.to_string()),
        })
        .collect()
}

fn step(instruction: &Instruction<'_>, lines: &LineIndex) -> Result<Step, String> {
    let at = |span: &std::ops::Range<usize>| lines.line(span.start);
    let text = |s: &parse_dockerfile::UnescapedString<'_>| s.value.to_string();
    let (keyword, line, flag_list, body) = match instruction {
        Instruction::Add(i) => (
            Keyword::Add,
            at(&i.add.span),
            flags(&i.options),
            transfer(&i.src, &i.dest),
        ),
        Instruction::Copy(i) => (
            Keyword::Copy,
            at(&i.copy.span),
            flags(&i.options),
            transfer(&i.src, &i.dest),
        ),
        Instruction::Run(i) => (
            Keyword::Run,
            at(&i.run.span),
            flags(&i.options),
            Body::Run {
                command: command(&i.arguments)
                    .ok_or_else(|| format!("RUN (line {}): an unknown form", at(&i.run.span)))?,
                heredocs: i.here_docs.len(),
            },
        ),
        Instruction::Healthcheck(i) => (
            Keyword::Healthcheck,
            at(&i.healthcheck.span),
            flags(&i.options),
            Body::Text(String::new()),
        ),
        Instruction::Arg(i) => (Keyword::Arg, at(&i.arg.span), vec![], plain(&i.arguments)),
        Instruction::Cmd(i) => (
            Keyword::Cmd,
            at(&i.cmd.span),
            vec![],
            Body::Text(command(&i.arguments).unwrap_or_default()),
        ),
        Instruction::Entrypoint(i) => (
            Keyword::Entrypoint,
            at(&i.entrypoint.span),
            vec![],
            Body::Text(command(&i.arguments).unwrap_or_default()),
        ),
        Instruction::Env(i) => (Keyword::Env, at(&i.env.span), vec![], plain(&i.arguments)),
        Instruction::Expose(i) => (
            Keyword::Expose,
            at(&i.expose.span),
            vec![],
            Body::Text(i.arguments.iter().map(text).collect::<Vec<_>>().join(" ")),
        ),
        Instruction::Label(i) => (
            Keyword::Label,
            at(&i.label.span),
            vec![],
            plain(&i.arguments),
        ),
        Instruction::Maintainer(i) => (
            Keyword::Maintainer,
            at(&i.maintainer.span),
            vec![],
            plain(&i.name),
        ),
        Instruction::Onbuild(i) => (
            Keyword::Onbuild,
            at(&i.onbuild.span),
            vec![],
            Body::Text(String::new()),
        ),
        Instruction::Shell(i) => (
            Keyword::Shell,
            at(&i.shell.span),
            vec![],
            Body::Text(i.arguments.iter().map(text).collect::<Vec<_>>().join(" ")),
        ),
        Instruction::Stopsignal(i) => (
            Keyword::Stopsignal,
            at(&i.stopsignal.span),
            vec![],
            plain(&i.arguments),
        ),
        Instruction::User(i) => (Keyword::User, at(&i.user.span), vec![], plain(&i.arguments)),
        Instruction::Volume(i) => (
            Keyword::Volume,
            at(&i.volume.span),
            vec![],
            Body::Text(String::new()),
        ),
        Instruction::Workdir(i) => (
            Keyword::Workdir,
            at(&i.workdir.span),
            vec![],
            plain(&i.arguments),
        ),
        Instruction::From(_) => return Err("FROM is not a step".into()),
        // The crate's enum is non-exhaustive: an instruction it learns later is not ours yet.
        other => {
            return Err(format!(
                "an instruction this service does not know: {other:?}"
            ));
        }
    };
    Ok(Step {
        line,
        keyword,
        flags: flag_list,
        body,
    })
}

fn plain(s: &parse_dockerfile::UnescapedString<'_>) -> Body {
    Body::Text(s.value.to_string())
}

fn transfer(sources: &[ParsedSource<'_>], dest: &parse_dockerfile::UnescapedString<'_>) -> Body {
    Body::Transfer {
        sources: sources
            .iter()
            .map(|s| match s {
                ParsedSource::Path(p) => Source::Path(p.value.to_string()),
                _ => Source::HereDoc,
            })
            .collect(),
        dest: dest.value.to_string(),
    }
}

/// The shell text, or the exec form's words joined; None for a form the crate adds later.
fn command(c: &Command<'_>) -> Option<String> {
    match c {
        Command::Exec(words) => Some(
            words
                .value
                .iter()
                .map(|w| w.value.as_ref())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Command::Shell(text) => Some(text.value.to_owned()),
        _ => None,
    }
}

/// Byte offset -> 1-based line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

#[cfg(test)]
mod tests;
