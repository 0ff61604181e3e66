//! Where rows go: the [`RowSink`] trait of the CSV and JSON lines encoders, and the [`Out`]
//! buffer they encode into, which hashes and writes the result as it fills.

use std::fs::File;
use std::io::{self, Write};

use sha2::{Digest, Sha256};

use super::row::Row;
use super::value_kind::Kind;
use super::IO_BUFFER;

/// The output buffer. Rows are encoded straight into `buf`; every [`IO_BUFFER`] bytes it is
/// hashed (the result's SHA-256, with no second read) and written to the file.
pub(super) struct Out {
    pub(super) buf: Vec<u8>,
    file: File,
    hasher: Sha256,
    bytes: u64,
}

/// What a finished sink hands back: the result file, its SHA-256 and its size in bytes.
pub(super) type Finished = (File, [u8; 32], u64);

impl Out {
    pub(super) fn new(file: File) -> Out {
        Out {
            buf: Vec::with_capacity(IO_BUFFER + 4096),
            file,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Call after each row: drains the buffer when it is full.
    #[inline]
    pub(super) fn row_done(&mut self) -> io::Result<()> {
        if self.buf.len() >= IO_BUFFER {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        self.hasher.update(&self.buf);
        self.file.write_all(&self.buf)?;
        self.bytes += self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > 16 * IO_BUFFER {
            // One huge row grew the buffer: give the memory back.
            self.buf.shrink_to(IO_BUFFER + 4096);
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> io::Result<Finished> {
        self.drain()?;
        Ok((self.file, self.hasher.finalize().into(), self.bytes))
    }
}

/// An encoder of rows into the result.
pub(super) trait RowSink {
    /// Writes `row`, whose fields have `kinds` (empty: every field is text).
    fn write_row(&mut self, row: &Row, kinds: &[Kind]) -> io::Result<()>;
    fn finish(self) -> io::Result<Finished>;
}
