//! What every source kind gives the chunk loop ([`RowSource`]), the database sources behind it
//! ([`SqliteRows`], [`PostgresRows`]), how a source file is opened (only regular files), and
//! the quick row count used for progress ([`count_rows`]).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use super::error::{io_err, PipelineError, Result};
use super::postgres_source::PostgresSource;
use super::row::Row;
use super::sqlite_source::SqliteSource;
use super::value_kind::Kind;
use super::DataFormat;

/// A source of rows: a file (CSV, JSON lines) or a database query. The chunk loop is generic
/// over it, so the per-row calls are static.
pub(super) trait RowSource {
    /// Column names.
    fn header(&self) -> &Row;
    /// Reads the next row into `row` (with the line it starts on); `false` at the end.
    fn next_row(&mut self, row: &mut Row) -> Result<bool>;
    /// The kinds of the fields of the row read last; empty when every field is text (files).
    fn kinds(&self) -> &[Kind] {
        &[]
    }
}

/// A SQLite query's rows.
pub(super) struct SqliteRows(pub(super) SqliteSource);

impl RowSource for SqliteRows {
    fn header(&self) -> &Row {
        self.0.header()
    }
    #[inline]
    fn next_row(&mut self, row: &mut Row) -> Result<bool> {
        Ok(self.0.next_row(row)?)
    }
    #[inline]
    fn kinds(&self) -> &[Kind] {
        self.0.kinds()
    }
}

/// A PostgreSQL query's rows.
pub(super) struct PostgresRows(pub(super) PostgresSource);

impl RowSource for PostgresRows {
    fn header(&self) -> &Row {
        self.0.header()
    }
    #[inline]
    fn next_row(&mut self, row: &mut Row) -> Result<bool> {
        Ok(self.0.next_row(row)?)
    }
    #[inline]
    fn kinds(&self) -> &[Kind] {
        self.0.kinds()
    }
}

/// Opens a source file for reading; a file that is not there is [`PipelineError::SourceMissing`].
pub(super) fn open_source(path: &Path) -> Result<File> {
    // A FIFO would block the open, a device (`/dev/zero`) would never end: refused before
    // they are opened. (A directory opens and fails to read: an I/O error, as before.)
    if let Ok(meta) = fs::metadata(path) {
        if !meta.is_file() && !meta.is_dir() {
            return Err(PipelineError::NotAFile {
                path: path.to_path_buf(),
            });
        }
    }
    File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            PipelineError::SourceMissing {
                path: path.to_path_buf(),
            }
        } else {
            io_err(path)(e)
        }
    })
}

/// Counts the data rows of a source quickly, with `memchr` over its bytes.
///
/// Counts the non-empty lines (a line holding only `\r` is empty: both readers skip blank
/// lines); for CSV the header line is not counted. This is an estimate used for progress: a
/// CSV field with quoted line breaks counts once per line it spans (over-count), a JSONL line of
/// only spaces counts although the reader skips it, and old-Mac `\r`-only line ends under-count.
pub fn count_rows(path: &Path, format: DataFormat) -> Result<u64> {
    let mut file = open_source(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    // Whether the line in progress (cut by the end of the previous buffer) has content.
    let mut pending = false;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        let chunk = &buf[..n];
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            if pending || has_content(&chunk[start..nl]) {
                lines += 1;
            }
            pending = false;
            start = nl + 1;
        }
        pending |= has_content(&chunk[start..]);
    }
    if pending {
        lines += 1;
    }
    Ok(match format {
        DataFormat::Csv => lines.saturating_sub(1),
        DataFormat::Jsonl => lines,
    })
}

#[inline]
fn has_content(segment: &[u8]) -> bool {
    segment.len() > 1 || segment.first().is_some_and(|&b| b != b'\r')
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use crate::pipeline::fixture::*;
    use crate::pipeline::{count_rows, read_columns, DataFormat, PipelineError};

    #[test]
    fn missing_source() {
        let fx = Fixture::new();
        let src = fx.dir.path().join("nope.csv");
        let err = run_collect(&fx.spec(&src, DataFormat::Csv, DataFormat::Csv))
            .0
            .unwrap_err();
        assert!(
            matches!(&err, PipelineError::SourceMissing { path } if path == &src),
            "{err:?}"
        );
        assert!(err.to_string().contains("nope.csv"), "{err}");
        assert!(!err.is_transient(), "a missing source fails at once");
        assert!(matches!(
            count_rows(&src, DataFormat::Jsonl),
            Err(PipelineError::SourceMissing { .. })
        ));
        assert!(fx.result_files().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn a_device_source_is_refused_not_read_forever() {
        let path = Path::new("/dev/zero");
        for format in [DataFormat::Csv, DataFormat::Jsonl] {
            let err = count_rows(path, format).unwrap_err();
            assert!(matches!(err, PipelineError::NotAFile { .. }), "{err:?}");
            assert!(!err.is_transient());
            assert!(read_columns(path, format).is_err());
        }
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_source_is_an_io_error() {
        let fx = Fixture::new();
        // A directory opens on Unix but cannot be read.
        let src = fx.dir.path().join("a_dir");
        fs::create_dir(&src).unwrap();
        let err = run_collect(&fx.spec(&src, DataFormat::Csv, DataFormat::Csv))
            .0
            .unwrap_err();
        assert!(matches!(err, PipelineError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("a_dir"), "{err}");
        assert!(fx.result_files().is_empty());
    }

    #[test]
    fn count_rows_variants() {
        let fx = Fixture::new();
        let cases = [
            ("", 0, 0),
            ("h", 0, 1),
            ("h\n", 0, 1),
            ("h\n1\n2\n", 2, 3),
            ("h\n1\n2", 2, 3),
            ("h\r\n1\r\n2\r\n", 2, 3),
            ("h\n\n1\n\r\n2\n\n", 2, 3),
            ("h\n\"a\nb\"\n", 2, 3),
        ];
        for (content, csv_rows, lines) in cases {
            let src = fx.source("count", content);
            assert_eq!(
                count_rows(&src, DataFormat::Csv).unwrap(),
                csv_rows,
                "{content:?}"
            );
            assert_eq!(
                count_rows(&src, DataFormat::Jsonl).unwrap(),
                lines,
                "{content:?}"
            );
        }
        // Across read buffers (1 MiB).
        let big = cases_csv(40_000);
        assert!(big.len() > 2 << 20);
        let src = fx.source("big.csv", &big);
        assert_eq!(count_rows(&src, DataFormat::Csv).unwrap(), 40_000);
    }
}
