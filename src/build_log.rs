//! The output of one build: redacted as it arrives, bounded in memory, tail available for events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use crate::redact::Redactor;

/// Beyond this many bytes the oldest lines are dropped (a counter says how many).
const MAX_BYTES: usize = 4 * 1024 * 1024;
const MAX_LINE: usize = 8 * 1024;

#[derive(Clone)]
pub struct BuildLog {
    inner: Arc<Mutex<Lines>>,
    redactor: Arc<Redactor>,
}

#[derive(Default)]
struct Lines {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: usize,
    /// Where lines are also streamed (the build store), in order, while attached.
    sink: Option<UnboundedSender<String>>,
}

impl BuildLog {
    pub fn new(redactor: Redactor) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Lines::default())),
            redactor: Arc::new(redactor),
        }
    }

    /// A log whose lines are also sent to `sink` until `detach_sink`.
    pub fn with_sink(redactor: Redactor, sink: UnboundedSender<String>) -> Self {
        let log = Self::new(redactor);
        if let Ok(mut inner) = log.inner.lock() {
            inner.sink = Some(sink);
        }
        log
    }

    /// Stops streaming lines, so the receiver sees the end of the log.
    pub fn detach_sink(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.sink = None;
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Appends one line (redacted, cut to a sane length) and echoes it at debug level.
    pub fn push(&self, line: &str) {
        let mut line = self
            .redactor
            .redact(line.trim_end_matches(['\r', '\n']))
            .into_owned();
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" [line truncated]");
        }
        tracing::debug!(target: "image_builder::build_output", "{line}");
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some(sink) = &inner.sink {
            // A closed receiver only means the store stopped taking lines.
            let _ = sink.send(line.clone());
        }
        inner.bytes += line.len();
        inner.lines.push_back(line);
        while inner.bytes > MAX_BYTES {
            match inner.lines.pop_front() {
                Some(old) => {
                    inner.bytes -= old.len();
                    inner.dropped += 1;
                }
                None => break,
            }
        }
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        let skip = inner.lines.len().saturating_sub(n);
        inner.lines.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_redacted_and_tail_is_ordered() {
        let log = BuildLog::new(Redactor::new(["s3cr3t-token"]));
        log.push("cloning with s3cr3t-token\n");
        log.push("step 2");
        log.push("step 3");
        assert_eq!(log.tail(2), vec!["step 2", "step 3"]);
        assert_eq!(log.tail(10)[0], "cloning with [REDACTED]");
    }
}
