//! The `parse-dockerfile` crate's syntax tree turned into this module's owned stages and steps,
//! with 1-based line numbers.

use parse_dockerfile::{Command, Instruction, Source as ParsedSource};

use super::{Body, Dockerfile, Flag, Keyword, Source, Stage, Step};

pub(super) fn dockerfile(text: &str) -> Result<Dockerfile, String> {
    // The crate drops a byte order mark before its spans start: so do we, and shift the
    // flags' spans back onto the caller's text.
    let (text, shift) = match text.strip_prefix('\u{feff}') {
        Some(rest) => (rest, '\u{feff}'.len_utf8()),
        None => (text, 0),
    };
    let parsed = parse_dockerfile::parse(text).map_err(|e| format!("the Dockerfile: {e}"))?;
    let lines = LineIndex::new(text, shift);
    let escape = parsed
        .parser_directives
        .escape
        .as_ref()
        .map_or('\\', |d| d.value.value);
    let mut stages: Vec<Stage> = Vec::new();
    let mut global_args = Vec::new();
    for instruction in &parsed.instructions {
        if let Instruction::From(from) = instruction {
            stages.push(Stage {
                line: lines.line(from.from.span.start),
                base: from.image.value.to_string(),
                name: from
                    .as_
                    .as_ref()
                    .map(|(_, name)| name.value.to_ascii_lowercase()),
                written_name: from.as_.as_ref().map(|(_, name)| name.value.to_string()),
                flags: flags(&from.options, &lines),
                steps: Vec::new(),
            });
            continue;
        }
        // Global ARGs (before the first FROM) only feed FROM lines.
        let Some(stage) = stages.last_mut() else {
            if let Instruction::Arg(arg) = instruction {
                global_args.extend(arg_pairs(&arg.arguments.value));
            }
            continue;
        };
        stage.steps.push(step(instruction, &lines)?);
    }
    Ok(Dockerfile {
        escape,
        global_args,
        stages,
    })
}

/// `NAME[=default] ...` of an `ARG`, a default's double quotes removed.
fn arg_pairs(arguments: &str) -> Vec<(String, Option<String>)> {
    let mut words = Vec::new();
    let (mut word, mut quoted) = (String::new(), false);
    for c in arguments.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((name, default)) => (name.to_owned(), Some(default.to_owned())),
            None => (w, None),
        })
        .collect()
}

fn flags(parsed: &[parse_dockerfile::Flag<'_>], lines: &LineIndex) -> Vec<Flag> {
    parsed
        .iter()
        .map(|f| {
            let span = f.span();
            Flag {
                name: f.name.value.to_string(),
                value: f.value.as_ref().map(|v| v.value.to_string()),
                span: span.start + lines.shift..span.end + lines.shift,
            }
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
            flags(&i.options, lines),
            transfer(&i.src, &i.dest),
        ),
        Instruction::Copy(i) => (
            Keyword::Copy,
            at(&i.copy.span),
            flags(&i.options, lines),
            transfer(&i.src, &i.dest),
        ),
        Instruction::Run(i) => (
            Keyword::Run,
            at(&i.run.span),
            flags(&i.options, lines),
            Body::Run {
                command: command(&i.arguments)
                    .ok_or_else(|| format!("RUN (line {}): an unknown form", at(&i.run.span)))?,
                heredocs: i.here_docs.len(),
            },
        ),
        Instruction::Healthcheck(i) => (
            Keyword::Healthcheck,
            at(&i.healthcheck.span),
            flags(&i.options, lines),
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
    let end_line = match instruction {
        Instruction::Add(i) => Some(at(&(i.dest.span.end.saturating_sub(1)..i.dest.span.end))),
        Instruction::Copy(i) => Some(at(&(i.dest.span.end.saturating_sub(1)..i.dest.span.end))),
        _ => None,
    };
    Ok(Step {
        line,
        end_line,
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
    /// Bytes before the parsed text in the caller's (a byte order mark).
    shift: usize,
}

impl LineIndex {
    fn new(text: &str, shift: usize) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts, shift }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}
