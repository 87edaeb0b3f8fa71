//! A writer that gzips on a thread of its own: a layer's tar is made (the files walked and read)
//! on the caller's thread while the previous chunks are hashed (the diff_id), compressed, hashed
//! again (the blob's digest) and written on this one, so a layer costs about the longer of the
//! two rather than their sum.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::digest_writer::{DigestWriter, Digested};

/// Bytes handed over at once.
const CHUNK: usize = 256 * 1024;
/// Chunks waiting at most: the tar side waits when compression falls behind.
const QUEUED: usize = 4;

pub(super) struct Compressing {
    buf: Vec<u8>,
    /// Bytes taken so far (where the next one lands in the uncompressed stream).
    written: u64,
    chunks: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<io::Result<Compressed>>>,
}

/// What a `Compressing` wrote.
pub(super) struct Compressed {
    /// The gzip file: the blob's digest and size.
    pub blob: Digested,
    /// What went in: the layer's diff_id.
    pub uncompressed: Digested,
    /// What went in, when it was asked for and no larger than asked.
    pub kept: Option<Vec<u8>>,
}

impl Compressing {
    /// Writes what it is given to `file`, gzip-compressed (fast, no timestamp), and keeps it
    /// uncompressed too while it is no larger than `keep_up_to` bytes.
    pub(super) fn new(file: File, keep_up_to: usize) -> io::Result<Self> {
        let (chunks, received) = sync_channel::<Vec<u8>>(QUEUED);
        let thread = std::thread::Builder::new()
            .name("layer-gzip".into())
            .spawn(move || {
                let compressed = DigestWriter::new(BufWriter::new(file));
                let mut hashing =
                    DigestWriter::new(GzEncoder::new(compressed, Compression::fast()));
                let mut kept = Some(Vec::new());
                for chunk in received {
                    hashing.write_all(&chunk)?;
                    kept = kept
                        .filter(|k: &Vec<u8>| k.len() + chunk.len() <= keep_up_to)
                        .map(|mut k| {
                            k.extend_from_slice(&chunk);
                            k
                        });
                }
                let (gz, uncompressed) = hashing.into_parts();
                let mut compressed = gz.finish()?;
                compressed.flush()?;
                let (buffered, digested) = compressed.into_parts();
                // No fsync: the file is uploaded from the page cache and removed, and a worker
                // that dies before the upload builds again.
                buffered
                    .into_inner()
                    .map_err(io::IntoInnerError::into_error)?;
                Ok(Compressed {
                    blob: digested,
                    uncompressed,
                    kept,
                })
            })?;
        Ok(Self {
            buf: Vec::with_capacity(CHUNK),
            written: 0,
            chunks: Some(chunks),
            thread: Some(thread),
        })
    }

    /// How many bytes it was given so far.
    pub(super) fn written(&self) -> u64 {
        self.written
    }

    /// Compresses what is left and waits for the file: the digests and sizes of the gzip blob
    /// and of what went in.
    pub(super) fn finish(mut self) -> io::Result<Compressed> {
        self.hand_over()?;
        self.chunks = None;
        self.join()
    }

    fn hand_over(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let sent = self.chunks.as_ref().map(|chunks| chunks.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: its error says why.
            _ => {
                self.chunks = None;
                self.join()
                    .and(Err(io::Error::other("the layer's compression stopped")))
            }
        }
    }

    fn join(&mut self) -> io::Result<Compressed> {
        let thread = self
            .thread
            .take()
            .ok_or_else(|| io::Error::other("the layer's compression already ended"))?;
        thread
            .join()
            .map_err(|_| io::Error::other("the layer's compression panicked"))?
    }
}

impl Write for Compressing {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buf.len() >= CHUNK {
            self.hand_over()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Compressing {
    /// A layer abandoned halfway (a refused source): the thread ends with what it was given.
    fn drop(&mut self) {
        self.chunks = None;
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn what_goes_in_comes_out_of_the_file_gunzipped_with_the_file_s_digest() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("out.gz");
        let mut writer =
            Compressing::new(File::create(&path).expect("create"), 4 * CHUNK).expect("writer");
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(1000) {
            writer.write_all(piece).expect("write");
        }
        assert_eq!(writer.written(), data.len() as u64);
        let Compressed {
            blob,
            uncompressed,
            kept,
        } = writer.finish().expect("finish");
        assert_eq!(kept.as_deref(), Some(&data[..]), "kept while it fits");
        let file = std::fs::read(&path).expect("read");
        assert_eq!(blob.size, file.len() as u64);
        assert_eq!(blob.digest, crate::ports::content_digest(&file));
        assert_eq!(uncompressed.size, data.len() as u64);
        assert_eq!(uncompressed.digest, crate::ports::content_digest(&data));
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(file.as_slice())
            .read_to_end(&mut out)
            .expect("gunzip");
        assert_eq!(out, data);

        // Larger than asked: nothing kept, the file as before.
        let mut writer = Compressing::new(File::create(&path).expect("create"), CHUNK).expect("w");
        writer.write_all(&data).expect("write");
        let done = writer.finish().expect("finish");
        assert!(done.kept.is_none());
        assert_eq!(done.uncompressed.size, data.len() as u64);
    }
}
