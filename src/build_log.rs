//! The output of one build: redacted as it arrives, bounded in memory, tail available for events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::redact::Redactor;

/// Beyond this many bytes the oldest lines are dropped (a counter says how many).
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of one line shown; the rest is cut and the line says so.
pub const MAX_LINE: usize = 8 * 1024;

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
    sink: Option<LogSink>,
}

/// Where a log's lines are streamed (the build store). Bounded, and never waited on: a build
/// that prints faster than the store writes loses lines from the stored copy (counted in
/// `not_sent`, which the store reports), never memory or time.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<String>,
    not_sent: Arc<AtomicUsize>,
}

/// The store's end of a `LogSink`.
pub struct LogSource {
    pub lines: mpsc::Receiver<String>,
    /// Lines that found the channel full since the store last looked.
    pub not_sent: Arc<AtomicUsize>,
}

impl LogSink {
    /// A sink holding at most `capacity` lines the store has not taken yet.
    pub fn channel(capacity: usize) -> (LogSink, LogSource) {
        let (tx, lines) = mpsc::channel(capacity);
        let not_sent = Arc::new(AtomicUsize::new(0));
        let sink = LogSink {
            tx,
            not_sent: not_sent.clone(),
        };
        (sink, LogSource { lines, not_sent })
    }

    fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.not_sent.fetch_add(1, Ordering::Relaxed);
            }
            // A closed receiver only means the store stopped taking lines.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl BuildLog {
    pub fn new(redactor: Redactor) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Lines::default())),
            redactor: Arc::new(redactor),
        }
    }

    /// A log whose lines are also sent to `sink` until `detach_sink`.
    pub fn with_sink(redactor: Redactor, sink: LogSink) -> Self {
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
        self.push_cut(line, 0);
    }

    /// Appends a line of which the reader already dropped `dropped` bytes after `line` (see
    /// `process::pump`). The whole of `line` is redacted before any of it is cut; a line that
    /// was cut shows none of its last `MAX_LINE` bytes, so a secret that straddled the reader's
    /// cut (shorter than `MAX_LINE`) shows no fragment either.
    pub fn push_cut(&self, line: &str, dropped: usize) {
        let mut line = self
            .redactor
            .redact(line.trim_end_matches(['\r', '\n']))
            .into_owned();
        let shown = if dropped > 0 {
            MAX_LINE.min(line.len().saturating_sub(MAX_LINE))
        } else {
            MAX_LINE
        };
        if line.len() > shown {
            let mut cut = shown;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            let hidden = dropped.saturating_add(line.len() - cut);
            line.truncate(cut);
            line.push_str(&format!(" [line truncated: {hidden} more bytes]"));
        }
        tracing::debug!(target: "image_builder::build_output", "{line}");
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some(sink) = &inner.sink {
            sink.send(line.clone());
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

    #[test]
    fn a_line_cut_by_the_reader_shows_no_fragment_of_a_secret_at_either_cut() {
        let log = BuildLog::new(Redactor::new(["s3cr3t-token"]));
        // A secret across the log's own cut, and the start of one at the reader's cut.
        let line = format!(
            "{}s3cr3t-token{}s3cr3t",
            "a".repeat(MAX_LINE - 3),
            "b".repeat(MAX_LINE - 15)
        );
        log.push_cut(&line, 100);
        let shown = &log.tail(1)[0];
        assert!(!shown.contains("s3c"), "{}", &shown[MAX_LINE - 10..]);
        assert!(shown.starts_with(&"a".repeat(MAX_LINE - 3)));
        assert!(
            shown.ends_with(" more bytes]"),
            "{}",
            &shown[MAX_LINE - 10..]
        );
    }

    #[test]
    fn lines_beyond_a_full_sink_are_counted_not_queued() {
        let (sink, mut source) = LogSink::channel(2);
        let log = BuildLog::with_sink(Redactor::default(), sink);
        for i in 0..5 {
            log.push(&format!("line {i}"));
        }
        assert_eq!(source.not_sent.load(Ordering::Relaxed), 3);
        assert_eq!(source.lines.try_recv().ok().as_deref(), Some("line 0"));
        assert_eq!(source.lines.try_recv().ok().as_deref(), Some("line 1"));
        assert!(source.lines.try_recv().is_err());
        assert_eq!(log.tail(10).len(), 5, "the in-memory log keeps them all");
    }
}
