//! A writer that hashes (SHA-256) and counts the bytes on their way to the writer it wraps: a
//! blob's digest and size, or a layer's diff_id, known as soon as it is written, without reading
//! the file back.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

/// What went through a `DigestWriter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digested {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

impl<W> DigestWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The wrapped writer back, and the digest and size of everything written through.
    pub fn into_parts(self) -> (W, Digested) {
        let digested = Digested {
            digest: format!("sha256:{}", hex::encode(self.hasher.finalize())),
            size: self.bytes,
        };
        (self.inner, digested)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Only what the inner writer took is hashed: a short write is written again later.
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use crate::digest_writer::DigestWriter;

    #[test]
    fn the_digest_and_size_are_of_what_went_through() {
        let mut writer = DigestWriter::new(Vec::new());
        writer.write_all(b"hello ").expect("write");
        writer.write_all(b"world").expect("write");
        let (inner, digested) = writer.into_parts();
        assert_eq!(inner, b"hello world");
        assert_eq!(digested.size, 11);
        assert_eq!(
            digested.digest,
            "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }
}
