//! A Dockerfile with some of its ADD/COPY steps left out, every other line where it was: the
//! worker makes those steps' layers itself and the engine builds the rest (podman's errors
//! still name the lines of the file the user wrote).

use super::Dockerfile;

impl Dockerfile {
    /// `text` (which this was parsed from) with the ADD/COPY steps starting on `lines` blanked,
    /// their continuation lines too. Err names a line that starts no such step.
    pub fn without_steps(&self, text: &str, lines: &[usize]) -> Result<String, String> {
        let mut blanked = Vec::with_capacity(lines.len());
        for &line in lines {
            let step = self
                .stages
                .iter()
                .flat_map(|stage| &stage.steps)
                .find(|step| step.line == line)
                .ok_or_else(|| format!("line {line} starts no step"))?;
            let end = step
                .end_line
                .ok_or_else(|| format!("line {line} is not an ADD or COPY"))?;
            blanked.push(line..=end);
        }
        let mut out = String::with_capacity(text.len());
        for (n, piece) in text.split_inclusive('\n').enumerate() {
            if blanked.iter().any(|range| range.contains(&(n + 1))) {
                // The line break stays, so later lines keep their numbers.
                out.extend(piece.strip_suffix('\n').map(|_| '\n'));
            } else {
                out.push_str(piece);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_go_with_their_continuation_lines_and_the_rest_keeps_its_lines() {
        let text = "FROM a\nRUN make \\\n  all\nCOPY x \\\n  # a comment\n  /x/\nCMD [\"run\"]\nCOPY [\"y\", \\\n \"/y/\"]\nENV A=1";
        let parsed = Dockerfile::parse(text).expect("parses");
        let out = parsed.without_steps(text, &[4, 8]).expect("omitted");
        assert_eq!(
            out,
            "FROM a\nRUN make \\\n  all\n\n\n\nCMD [\"run\"]\n\n\nENV A=1"
        );
        let reparsed = Dockerfile::parse(&out).expect("still a Dockerfile");
        let lines: Vec<usize> = reparsed.stages[0].steps.iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 7, 10]);
    }

    #[test]
    fn a_line_that_starts_no_transfer_is_refused() {
        let text = "FROM a\nRUN make\nCOPY a /a\n";
        let parsed = Dockerfile::parse(text).expect("parses");
        assert!(parsed.without_steps(text, &[2]).is_err());
        assert!(parsed.without_steps(text, &[4]).is_err());
        assert_eq!(
            parsed.without_steps(text, &[3]).expect("omitted"),
            "FROM a\nRUN make\n\n"
        );
    }

    #[test]
    fn crlf_and_a_byte_order_mark_keep_their_lines() {
        let text = "\u{feff}FROM a\r\nCOPY a \\\r\n /a\r\nCMD x\r\n";
        let parsed = Dockerfile::parse(text).expect("parses");
        let out = parsed.without_steps(text, &[2]).expect("omitted");
        assert_eq!(out, "\u{feff}FROM a\r\n\n\nCMD x\r\n");
        assert_eq!(
            Dockerfile::parse(&out).expect("parses").stages[0].steps[0].line,
            4
        );
    }
}
