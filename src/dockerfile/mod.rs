//! The one reading of Dockerfiles in the service, with BuildKit's syntax: parser directives
//! (`# escape=`), line continuations with comments and blank lines inside them, JSON and shell
//! forms, heredocs (`RUN <<EOF`, `COPY <<EOF`), instruction flags. The lexing is the
//! `parse-dockerfile` crate's (a BuildKit-compatible parser); this module turns it into owned
//! stages and steps, and adds the semantics the service needs: stage references, `RUN --mount`
//! (`mount`), what each step reads (`reads`), ignore files (`ignore`), the base images, the
//! escape character.

mod base_use;
mod expand;
mod ignore;
mod mount;
mod omit;
mod parse;
mod reads;

pub use expand::StageBase;
pub use ignore::IgnoreFile;
pub use mount::{Mount, MountKind};
pub use reads::{Read, context_path, overlaps};

/// Dockerfiles are text of a few KiB; one past this size is refused rather than read.
pub const MAX_DOCKERFILE_BYTES: u64 = 4 * 1024 * 1024;

/// The names a Dockerfile is found by in the context when the request names none, in the
/// order podman and the docker CLI look for them.
pub const DISCOVERED_NAMES: [&str; 3] = ["Containerfile", "Dockerfile", "dockerfile"];

/// A parsed Dockerfile: its stages in order (the last one is the image).
#[derive(Debug)]
pub struct Dockerfile {
    pub escape: char,
    /// `ARG`s before the first `FROM` (name, default as written): they feed only `FROM` lines.
    pub global_args: Vec<(String, Option<String>)>,
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
    /// As the Dockerfile spells it: podman 4.3's `--target` matches it exactly.
    pub written_name: Option<String>,
    pub flags: Vec<Flag>,
    pub steps: Vec<Step>,
}

/// One instruction of a stage.
#[derive(Debug)]
pub struct Step {
    /// 1-based line of the instruction's keyword.
    pub line: usize,
    /// The line an ADD or COPY ends on (its destination's); None for other instructions.
    pub end_line: Option<usize>,
    pub keyword: Keyword,
    pub flags: Vec<Flag>,
    pub body: Body,
}

/// `--name[=value]` before an instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
    /// Its bytes in the text given to `Dockerfile::parse`, so a rewrite can cut it out.
    pub span: std::ops::Range<usize>,
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
    /// The stages of `text`; an error says where it is not a Dockerfile.
    pub fn parse(text: &str) -> Result<Self, String> {
        parse::dockerfile(text)
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
    Dockerfile::parse(text).ok()?.layer_cache_blind_spot()
}

impl Dockerfile {
    /// `layer_cache_blind_spot` of a parsed Dockerfile.
    pub fn layer_cache_blind_spot(&self) -> Option<String> {
        let mut steps = self.stages.iter().flat_map(|s| &s.steps);
        steps.find_map(|step| {
            let bind = step
                .mounts()
                .ok()?
                .into_iter()
                .any(|m| m.kind == MountKind::Bind);
            bind.then(|| format!("{} bind-mounts files", step.shown()))
        })
    }
}

#[cfg(test)]
mod tests;
