//! A child's output into the build log, in fixed-size chunks: memory stays bounded whatever the
//! child prints (`RUN cat /dev/zero` is one endless line), and every line is whole when it is
//! redacted, however the pipe split it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use crate::build_log::{BuildLog, MAX_LINE};

/// One read from the pipe.
const CHUNK: usize = 64 * 1024;
/// Bytes of an over-long line that are kept: the log shows at most `MAX_LINE` of them, and the
/// rest lets it see a secret that starts just before its cut whole (see `BuildLog::push_cut`).
const KEEP: usize = 2 * MAX_LINE;

/// The last words of one stream: its last few lines, redacted and each cut to a few hundred
/// bytes.
#[derive(Clone, Default)]
pub(super) struct LastLine(Arc<Mutex<VecDeque<String>>>);

impl LastLine {
    const MAX: usize = 512;
    /// Lines kept: a podman pull error with a few mirrors.
    const LINES: usize = 8;
    /// Where a Go program's (podman's) final error starts.
    const ERROR: &'static str = "Error: ";

    fn set(&self, log: &BuildLog, line: &str) {
        let mut line = log.redactor().redact(line).into_owned();
        if line.len() > Self::MAX {
            let mut cut = Self::MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        if let Ok(mut last) = self.0.lock() {
            if last.len() == Self::LINES {
                last.pop_front();
            }
            last.push_back(line);
        }
    }

    /// The last line, or the last `Error: ` line and those after it on one line.
    pub(super) fn get(&self) -> Option<String> {
        let last = self.0.lock().ok()?;
        let start = last
            .iter()
            .rposition(|l| l.trim_start().starts_with(Self::ERROR))
            .unwrap_or(last.len().saturating_sub(1));
        let words: Vec<&str> = last.iter().skip(start).map(|l| l.trim()).collect();
        (!words.is_empty()).then(|| words.join(" "))
    }
}

/// Reads `reader` to its end into `log` (and its last line into `last`). The task holds one
/// chunk and one line at most.
pub(super) fn pump<R: AsyncRead + Unpin + Send + 'static>(
    mut reader: R,
    log: BuildLog,
    last: Option<LastLine>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut chunk = vec![0u8; CHUNK];
        let mut lines = LineSplitter::default();
        let mut emit = |line: &[u8], dropped: usize| {
            let line = String::from_utf8_lossy(line);
            if let Some(last) = &last
                && !line.trim().is_empty()
            {
                last.set(&log, &line);
            }
            log.push_cut(&line, dropped);
        };
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => lines.feed(&chunk[..n], &mut emit),
            }
        }
        lines.finish(&mut emit);
    })
}

/// Cuts a byte stream into lines of at most `KEEP` bytes; the rest of a longer line is counted
/// and discarded, never accumulated.
#[derive(Default)]
struct LineSplitter {
    line: Vec<u8>,
    /// Bytes of the current line beyond `KEEP`.
    dropped: usize,
}

impl LineSplitter {
    /// Emits every line that `bytes` completes: (its kept bytes without the newline, bytes dropped).
    fn feed(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&[u8], usize)) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.keep(&bytes[..end]);
            self.emit(emit);
            bytes = &bytes[end + 1..];
        }
        self.keep(bytes);
    }

    /// Emits the last line if the stream did not end with a newline.
    fn finish(&mut self, emit: &mut impl FnMut(&[u8], usize)) {
        if !self.line.is_empty() || self.dropped > 0 {
            self.emit(emit);
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = KEEP - self.line.len();
        let kept = room.min(bytes.len());
        self.line.extend_from_slice(&bytes[..kept]);
        self.dropped = self.dropped.saturating_add(bytes.len() - kept);
    }

    fn emit(&mut self, emit: &mut impl FnMut(&[u8], usize)) {
        emit(&self.line, self.dropped);
        self.line.clear();
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut splitter = LineSplitter::default();
        let mut emit = |line: &[u8], dropped: usize| out.push((line.to_vec(), dropped));
        for chunk in chunks {
            splitter.feed(chunk, &mut emit);
        }
        splitter.finish(&mut emit);
        out
    }

    #[test]
    fn lines_split_across_chunks_come_out_whole() {
        let out = split(&[b"one\ntw", b"o\n\nthr", b"ee"]);
        let lines: Vec<&[u8]> = out.iter().map(|(l, _)| l.as_slice()).collect();
        assert_eq!(lines, vec![&b"one"[..], b"two", b"", b"three"]);
        assert!(out.iter().all(|(_, dropped)| *dropped == 0));
    }

    #[test]
    fn an_endless_line_keeps_a_bounded_prefix_and_counts_the_rest() {
        let zeros = vec![0u8; CHUNK];
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        let mut emit = |line: &[u8], dropped: usize| out.push((line.len(), dropped));
        for _ in 0..100 {
            splitter.feed(&zeros, &mut emit);
            assert!(splitter.line.capacity() <= 2 * KEEP, "the line buffer grew");
        }
        splitter.feed(b"\nnext\n", &mut emit);
        assert_eq!(out, vec![(KEEP, 100 * CHUNK - KEEP), (4, 0)]);
    }

    #[test]
    fn the_last_error_spans_the_lines_after_it() {
        let log = BuildLog::new(crate::redact::Redactor::default());
        let last = LastLine::default();
        assert_eq!(last.get(), None);
        for line in [
            "step output",
            "Error: pulling x: (Mirrors also failed: [m: down]",
            "[n: down]): x: gone",
        ] {
            last.set(&log, line);
        }
        assert_eq!(
            last.get().as_deref(),
            Some("Error: pulling x: (Mirrors also failed: [m: down] [n: down]): x: gone")
        );
        let plain = LastLine::default();
        for line in ["one", "two"] {
            plain.set(&log, line);
        }
        assert_eq!(plain.get().as_deref(), Some("two"));
    }
}
