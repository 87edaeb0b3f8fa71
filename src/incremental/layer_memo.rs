//! The uncompressed tars of COPY layers this worker made lately, with where each file's bytes
//! lie and which context file they came from. The next incremental edit of the same COPY finds
//! the layer it replaces here by its diff_id and takes every file that did not change between
//! the two commits from it, instead of opening, measuring and reading each: a one-file change
//! in a large tree then reads one file.
//!
//! Keyed by diff_id, the SHA-256 of the very bytes kept, so what is found is exactly the layer
//! the previous image holds; the memo is process-wide for that reason (an entry cannot be
//! another image's layer, and a build only reads the layer of its own previous image). Bounded:
//! small layers only, the oldest dropped first. A restarted worker or another replica has none
//! and reads every file, as without it.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

/// A layer larger than this is not kept (its edit reads every file, as without the memo).
pub(super) const MAX_LAYER_BYTES: usize = 16 * 1024 * 1024;
/// All kept layers together.
const MAX_TOTAL_BYTES: usize = 64 * 1024 * 1024;

/// One regular file of a kept layer.
#[derive(Debug, Clone)]
pub(super) struct KeptFile {
    /// Relative to the context: the file the bytes were read from.
    pub source: String,
    pub mode: u32,
    /// Where its bytes lie in the tar.
    pub data: Range<usize>,
}

/// A kept layer: its tar and its files by entry name.
#[derive(Debug)]
pub(super) struct KeptLayer {
    tar: Vec<u8>,
    files: HashMap<String, KeptFile>,
}

impl KeptLayer {
    /// `files` as they were appended, in order; a name met twice (two sources copied to one
    /// place) is left out, since its bytes are only the last one's.
    pub(super) fn new(tar: Vec<u8>, appended: Vec<(String, KeptFile)>) -> Option<Self> {
        let mut files: HashMap<String, KeptFile> = HashMap::with_capacity(appended.len());
        let mut twice = Vec::new();
        for (name, file) in appended {
            if file.data.end > tar.len() {
                return None;
            }
            if files.insert(name.clone(), file).is_some() {
                twice.push(name);
            }
        }
        for name in twice {
            files.remove(&name);
        }
        Some(Self { tar, files })
    }

    /// The mode and bytes of entry `name` when they were read from context file `source`.
    pub(super) fn file(&self, name: &str, source: &str) -> Option<(u32, &[u8])> {
        let file = self.files.get(name).filter(|f| f.source == source)?;
        Some((file.mode, self.tar.get(file.data.clone())?))
    }
}

#[derive(Default)]
struct Memo {
    layers: HashMap<String, Arc<KeptLayer>>,
    order: VecDeque<String>,
    bytes: usize,
}

impl Memo {
    fn keep(&mut self, diff_id: &str, layer: KeptLayer) {
        let size = layer.tar.len();
        if size > MAX_LAYER_BYTES || self.layers.contains_key(diff_id) {
            return;
        }
        while self.bytes + size > MAX_TOTAL_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(dropped) = self.layers.remove(&oldest) {
                self.bytes -= dropped.tar.len();
            }
        }
        self.bytes += size;
        self.order.push_back(diff_id.to_owned());
        self.layers.insert(diff_id.to_owned(), Arc::new(layer));
    }

    fn find(&self, diff_id: &str) -> Option<Arc<KeptLayer>> {
        self.layers.get(diff_id).cloned()
    }
}

fn memo() -> &'static Mutex<Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    MEMO.get_or_init(Mutex::default)
}

/// Keeps `layer` under `diff_id`, dropping the oldest layers past the bound.
pub(super) fn keep(diff_id: &str, layer: KeptLayer) {
    if let Ok(mut memo) = memo().lock() {
        memo.keep(diff_id, layer);
    }
}

/// The layer kept under `diff_id`, if this worker made it lately.
pub(super) fn find(diff_id: &str) -> Option<Arc<KeptLayer>> {
    memo().lock().ok()?.find(diff_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(source: &str, data: Range<usize>) -> KeptFile {
        KeptFile {
            source: source.into(),
            mode: 0o644,
            data,
        }
    }

    #[test]
    fn files_are_found_by_name_and_source_and_a_name_met_twice_is_not() {
        let tar = b"aaaabbbbcccc".to_vec();
        let layer = KeptLayer::new(
            tar,
            vec![
                ("app/a".into(), file("src/a", 0..4)),
                ("app/x".into(), file("one/x", 4..8)),
                ("app/x".into(), file("two/x", 8..12)),
            ],
        )
        .expect("layer");
        assert_eq!(layer.file("app/a", "src/a"), Some((0o644, &b"aaaa"[..])));
        assert_eq!(layer.file("app/a", "other/a"), None, "another source");
        assert_eq!(layer.file("app/x", "two/x"), None, "met twice");
        assert!(KeptLayer::new(vec![0; 3], vec![("a".into(), file("a", 0..4))]).is_none());
    }

    #[test]
    fn the_oldest_layers_go_first_past_the_bound() {
        // A memo of its own: the process-wide one serves the layer tests meanwhile.
        let mut memo = Memo::default();
        let big = || KeptLayer::new(vec![0; MAX_LAYER_BYTES], Vec::new()).expect("layer");
        let ids: Vec<String> = (0..5).map(|n| format!("sha256:{n}")).collect();
        for id in &ids {
            memo.keep(id, big());
        }
        assert!(memo.find(&ids[0]).is_none(), "dropped");
        assert!(memo.find(&ids[4]).is_some());
        assert_eq!(memo.bytes, MAX_TOTAL_BYTES);
        let too_big = KeptLayer::new(vec![0; MAX_LAYER_BYTES + 1], Vec::new()).expect("layer");
        memo.keep("sha256:too-big", too_big);
        assert!(memo.find("sha256:too-big").is_none());
    }
}
