//! Reads just enough of a Dockerfile to know whether its last layers come from plain `COPY`
//! instructions, and what every earlier `COPY`/`ADD` reads. Anything unusual is a reason to
//! build normally: this analysis only ever says "yes" to the simple, common shape.

/// A trailing `COPY <sources...> <dest>` with no flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CopyStep {
    /// Relative to the context, normalised ("." = the whole context, no "./", no trailing "/").
    pub sources: Vec<String>,
    /// Absolute path in the image; a trailing "/" means "into this directory".
    pub dest: String,
}

/// The layers an incremental rebuild may replace, and what the steps before them read.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Tail {
    pub copies: Vec<CopyStep>,
    /// Context paths read by `COPY`/`ADD` before the tail (normalised like `CopyStep::sources`).
    pub earlier_sources: Vec<String>,
}

/// Instructions that may sit between or after the tail's COPYs: they add no layer.
const METADATA: [&str; 8] = [
    "CMD",
    "ENTRYPOINT",
    "EXPOSE",
    "LABEL",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "USER",
    "ENV",
];

/// The tail of a single-stage Dockerfile, or why it has none we can rebuild alone.
pub(super) fn analyse(text: &str, escape: char) -> Result<Tail, String> {
    let instructions = instructions(text, escape)?;
    let froms = instructions.iter().filter(|(i, _)| i == "FROM").count();
    if froms != 1 {
        return Err(format!(
            "{froms} FROM instructions (only single-stage builds)"
        ));
    }
    let tail_start = instructions
        .iter()
        .rposition(|(i, _)| i != "COPY" && !METADATA.contains(&i.as_str()))
        .map_or(0, |i| i + 1);
    let mut copies = Vec::new();
    for (instruction, args) in &instructions[tail_start..] {
        if instruction == "COPY" {
            copies.push(plain_copy(args)?);
        }
    }
    if copies.is_empty() {
        return Err("the Dockerfile does not end with COPY instructions".into());
    }
    let mut earlier_sources = Vec::new();
    for (instruction, args) in &instructions[..tail_start] {
        if instruction == "COPY" || instruction == "ADD" {
            earlier_sources.extend(earlier_step_sources(instruction, args)?);
        }
    }
    Ok(Tail {
        copies,
        earlier_sources,
    })
}

/// (INSTRUCTION, arguments) per logical line: continuations joined, comments dropped.
fn instructions(text: &str, escape: char) -> Result<Vec<(String, String)>, String> {
    if text.contains("<<") {
        return Err("heredocs are not analysed".into());
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix(escape) {
            Some(continued) => {
                current.push_str(continued);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                push_instruction(&mut out, &current);
                current.clear();
            }
        }
    }
    if !current.is_empty() {
        push_instruction(&mut out, &current);
    }
    Ok(out)
}

fn push_instruction(out: &mut Vec<(String, String)>, line: &str) {
    let line = line.trim();
    let (word, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    out.push((word.to_ascii_uppercase(), args.trim().to_owned()));
}

/// Characters that make a path mean more than itself (variables, globs, quoting, JSON form).
fn is_plain(token: &str) -> bool {
    !token.contains(['$', '*', '?', '[', ']', '"', '\'', '\\'])
}

fn plain_copy(args: &str) -> Result<CopyStep, String> {
    let tokens: Vec<&str> = args.split_whitespace().collect();
    if tokens.iter().any(|t| t.starts_with("--")) {
        return Err(format!("a final COPY has flags: COPY {args}"));
    }
    let Some((dest, sources)) = tokens.split_last() else {
        return Err("a final COPY has no arguments".into());
    };
    if sources.is_empty() || !tokens.iter().all(|t| is_plain(t)) || !dest.starts_with('/') {
        return Err(format!("a final COPY is not plain: COPY {args}"));
    }
    let sources = sources
        .iter()
        .map(|s| normalise(s).ok_or_else(|| format!("COPY source {s} leaves the context")))
        .collect::<Result<Vec<_>, _>>()?;
    let dest = if sources.len() > 1 && !dest.ends_with('/') {
        format!("{dest}/")
    } else {
        (*dest).to_owned()
    };
    Ok(CopyStep { sources, dest })
}

/// What an earlier COPY/ADD reads from the context. URLs and other images may change without a
/// commit, so they rule an incremental rebuild out.
fn earlier_step_sources(instruction: &str, args: &str) -> Result<Vec<String>, String> {
    let tokens: Vec<&str> = args.split_whitespace().collect();
    if tokens.first().is_some_and(|t| t.starts_with('[')) {
        return Err(format!("{instruction} in JSON form is not analysed"));
    }
    if tokens.iter().any(|t| t.starts_with("--from")) {
        return Err(format!("{instruction} --from reads another image"));
    }
    let paths: Vec<&str> = tokens
        .iter()
        .copied()
        .filter(|t| !t.starts_with("--"))
        .collect();
    let Some((_, sources)) = paths.split_last() else {
        return Err(format!("{instruction} has no arguments"));
    };
    sources
        .iter()
        .map(|s| {
            if s.contains("://") {
                return Err(format!("{instruction} fetches {s}"));
            }
            if !is_plain(s) {
                // A glob or variable could match anything: treat it as the whole context.
                return Ok(".".to_owned());
            }
            normalise(s).ok_or_else(|| format!("{instruction} source {s} leaves the context"))
        })
        .collect()
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

/// Whether context path `path` is read by `source` (itself or inside it).
pub(super) fn reads(source: &str, path: &str) -> bool {
    source == "."
        || path == source
        || path
            .strip_prefix(source)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "# syntax=docker/dockerfile:1\nFROM localhost/busybox:latest\n\
        COPY deps.txt /deps.txt\nRUN make \\\n  deps\nCOPY ./src/ /app/src/\nCOPY a.txt b.txt /app\n\
        CMD [\"/app/run\"]\n";

    #[test]
    fn a_plain_copy_tail_is_found_with_what_earlier_steps_read() {
        let tail = analyse(APP, '\\').expect("eligible");
        assert_eq!(
            tail.copies,
            [
                CopyStep {
                    sources: vec!["src".into()],
                    dest: "/app/src/".into()
                },
                CopyStep {
                    sources: vec!["a.txt".into(), "b.txt".into()],
                    dest: "/app/".into()
                },
            ]
        );
        assert_eq!(tail.earlier_sources, ["deps.txt"]);
    }

    #[test]
    fn anything_unusual_builds_normally() {
        for (text, why) in [
            ("FROM a\nRUN x\n", "does not end with COPY"),
            ("FROM a AS b\nFROM c\nCOPY x /x\n", "2 FROM"),
            ("FROM a\nCOPY --chown=1 x /x\n", "flags"),
            ("FROM a\nCOPY $SRC /x\n", "not plain"),
            ("FROM a\nCOPY *.txt /x/\n", "not plain"),
            ("FROM a\nCOPY x y\n", "not plain"),
            ("FROM a\nCOPY ../x /x\n", "leaves the context"),
            ("FROM a\nADD https://h/f /f\nCOPY x /x\n", "fetches"),
            (
                "FROM a\nCOPY --from=img /a /a\nRUN x\nCOPY x /x\n",
                "another image",
            ),
            ("FROM a\nRUN <<EOF\necho\nEOF\nCOPY x /x\n", "heredocs"),
            ("FROM a\nCOPY x /x\nWORKDIR /w\n", "does not end with COPY"),
        ] {
            let err = analyse(text, '\\').expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn a_glob_earlier_reads_the_whole_context_and_escape_directives_count() {
        let tail = analyse("FROM a\nCOPY *.lock /\nRUN i\nCOPY src /s\n", '\\').expect("ok");
        assert_eq!(tail.earlier_sources, ["."]);
        let tail = analyse("FROM a\nRUN a `\n b\nCOPY src /s\n", '`').expect("ok");
        assert_eq!(tail.copies.len(), 1);
    }

    #[test]
    fn reading_is_by_path_component() {
        assert!(reads("src", "src/main.rs"));
        assert!(reads("src", "src"));
        assert!(reads(".", "anything"));
        assert!(!reads("src", "src2/x"));
        assert!(!reads("src/a", "src"));
    }
}
