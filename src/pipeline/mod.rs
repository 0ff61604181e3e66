//! The report pipeline: the seed's `processDataInChunksStreaming`.
//!
//! [`run`] counts the source rows (unless the engine already counted this version of the file),
//! then streams the source (CSV or JSON lines) in chunks of `chunk_size` rows — memory stays flat whatever the source size — keeps the rows of the
//! principal's county, masks fields by the principal's role ([`crate::masking`]), and writes CSV
//! or JSON lines to a temporary file beside the result. After the last chunk the file is flushed,
//! `sync_all`ed, moved into place without ever replacing a file (link, then unlink the temporary
//! name) and the directory is synced: a reader never sees a partial result, and no attempt
//! overwrites another's. On any error, on cancellation, and on a panic in the observer, the temporary file is
//! removed and nothing appears at the result path.
//!
//! The observer is called after every chunk (progress, cancellation). A chunk is `chunk_size`
//! *source* rows, whether or not the county filter keeps them, so progress and cancellation
//! latency do not depend on how selective the filter is; the last chunk may be shorter. A source
//! without data rows gives no chunk and an output with the header only (CSV) or empty (JSONL).
//!
//! Formats:
//! - CSV in: first record is the header, every record must have as many fields as the header
//!   (else [`PipelineError::Csv`] with the line). A UTF-8 BOM is stripped. The dialect is the
//!   `csv` crate's, read by `csv_source` with a fast path for lines without quotes. Bytes pass
//!   through unchanged to CSV output; JSONL output requires UTF-8 (else an error with the line).
//! - JSONL in: one JSON object per line; blank lines are skipped. The columns are the keys of the
//!   first object, in order; a later object lacking a key gives an empty value, keys the first
//!   object did not have are ignored. Strings are taken as is, numbers and booleans as their JSON
//!   text (floats in shortest round-trip form: `1.50` becomes `1.5`), `null` as empty, nested
//!   arrays/objects as compact JSON text.
//! - CSV out: header then rows, `\n` line ends, fields quoted only when needed.
//! - JSONL out: one object per row, keys = header names in order, every value a string except
//!   columns masked with `null`, which are JSON `null`.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::masking::{MaskBuf, MaskMethod, Masker};

mod csv_source;
#[allow(dead_code)]
mod postgres_source;
mod row;
#[allow(dead_code)]
mod sql_placeholders;
#[allow(dead_code)] // wired into `run` with the database sources (issue 13)
mod sqlite_source;
#[allow(dead_code)]
mod value_kind;

use csv_source::CsvSource;
use row::Row;

/// Size of the read and write buffers (fits in L2 next to the working set).
const IO_BUFFER: usize = 64 * 1024;

/// Format of a source or of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Comma-separated values with a header record.
    Csv,
    /// JSON lines: one object per line.
    Jsonl,
}

impl DataFormat {
    /// The names used in workflow files.
    pub const NAMES: [&'static str; 2] = ["csv", "jsonl"];

    /// Parses a format name (`csv`, `jsonl`).
    pub fn from_name(s: &str) -> Option<DataFormat> {
        match s {
            "csv" => Some(DataFormat::Csv),
            "jsonl" => Some(DataFormat::Jsonl),
            _ => None,
        }
    }

    /// The format's name, also the file extension of results.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Csv => "csv",
            DataFormat::Jsonl => "jsonl",
        }
    }

    /// File extension of a result in this format (no dot).
    pub fn extension(self) -> &'static str {
        self.name()
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to run: one report job's data step.
#[derive(Clone)]
pub struct PipelineSpec {
    /// The data source file.
    pub source_path: PathBuf,
    /// Its format.
    pub source_format: DataFormat,
    /// Column holding the county id (required when `county` is set).
    pub county_column: Option<String>,
    /// Keep only rows whose county column equals this exactly; `None` keeps all rows.
    pub county: Option<String>,
    /// Format of the result.
    pub output_format: DataFormat,
    /// Source rows per chunk, at least 1.
    pub chunk_size: usize,
    /// Masking rules already resolved for the principal's role: `(field name, method)`.
    pub masks: Vec<(String, MaskMethod)>,
    /// Every column a mask rule of the report names, for any role. A source that lacks one of
    /// them (or a column of `masks`) fails the run before a row is written: the rules no longer
    /// describe the data, and a renamed column would otherwise pass through in clear.
    pub mask_columns: Vec<String>,
    /// Key of the `hash` masking method.
    pub hash_key: [u8; 32],
    /// Final path of the result: `<results>/<REPORT_TYPE>/<job_id>.<ext>`.
    pub result_path: PathBuf,
    /// The source's row count when the caller already knows it for this version of the file
    /// (for progress); `None`: [`count_rows`] counts it first.
    pub rows_total: Option<u64>,
}

impl fmt::Debug for PipelineSpec {
    // Like a derived Debug, without the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineSpec")
            .field("source_path", &self.source_path)
            .field("source_format", &self.source_format)
            .field("county_column", &self.county_column)
            .field("county", &self.county)
            .field("output_format", &self.output_format)
            .field("chunk_size", &self.chunk_size)
            .field("masks", &self.masks)
            .field("mask_columns", &self.mask_columns)
            .field("hash_key", &"<redacted>")
            .field("result_path", &self.result_path)
            .field("rows_total", &self.rows_total)
            .finish()
    }
}

/// The observer's answer after a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on with the next chunk.
    Continue,
    /// Stop now: the run ends with [`PipelineError::Cancelled`] and leaves no result.
    Cancel,
}

/// Progress after a chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Source rows read so far.
    pub rows_read: u64,
    /// Source rows in total: [`count_rows`]'s estimate, raised to `rows_read` if that is
    /// larger, so `rows_read <= rows_total` always holds.
    pub rows_total: u64,
    /// Rows written to the result so far (after the county filter).
    pub rows_written: u64,
    /// Chunks done so far (1 at the first call).
    pub chunks: u64,
}

impl Progress {
    /// Percentage done, 0–100 (100 for an empty source).
    pub fn percent(&self) -> u8 {
        if self.rows_total == 0 {
            return 100;
        }
        (self.rows_read.min(self.rows_total) * 100 / self.rows_total) as u8
    }
}

/// Receives progress after each chunk is written, and may cancel the run.
pub trait Observer {
    /// Called after each chunk; [`Control::Cancel`] stops the run at this chunk boundary.
    fn on_chunk(&mut self, progress: &Progress) -> Control;
}

impl<F: FnMut(&Progress) -> Control> Observer for F {
    fn on_chunk(&mut self, progress: &Progress) -> Control {
        self(progress)
    }
}

/// A completed result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Where the result is: the spec's `result_path`.
    pub path: PathBuf,
    /// Data rows written (the CSV header is not counted).
    pub rows_written: u64,
    /// Lowercase hex SHA-256 of the result file's bytes.
    pub sha256: String,
    /// Size of the result file in bytes.
    pub bytes: u64,
}

/// Why a run failed. Messages name the file (and line) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source file does not exist.
    #[error("source file {} does not exist", path.display())]
    SourceMissing { path: PathBuf },
    /// The source is a FIFO, a device or a socket: never read.
    #[error("source {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    /// Reading the source or writing the result failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The CSV source is malformed (or not UTF-8 where JSON output needs it).
    #[error("{}:{line}: bad CSV record: {message}", path.display())]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// A line of the JSONL source is not a JSON object.
    #[error("{}:{line}: bad JSON line: {message}", path.display())]
    Json {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// A county filter is requested but the source has no such column.
    #[error("county column `{column}` is not a column of {} (its columns: {columns})", path.display())]
    MissingCountyColumn {
        column: String,
        path: PathBuf,
        columns: String,
    },
    /// A mask rule names a column the source does not have.
    #[error("mask rule on `{column}` names no column of {} (its columns: {columns}); no row was written", path.display())]
    MissingMaskColumn {
        column: String,
        path: PathBuf,
        columns: String,
    },
    /// The result file is already there: an attempt never replaces a result it did not write.
    #[error("result file {} already exists; an attempt never replaces a result", path.display())]
    ResultExists { path: PathBuf },
    /// The spec cannot be run as given (chunk size 0, county without county column, …).
    #[error("invalid pipeline spec: {reason}")]
    InvalidSpec { reason: String },
    /// The observer cancelled the run.
    #[error("cancelled")]
    Cancelled,
}

impl PipelineError {
    /// A stable machine-readable code for job records and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            PipelineError::SourceMissing { .. } => "source_missing",
            PipelineError::NotAFile { .. } => "source_not_a_file",
            PipelineError::Io { .. } => "io",
            PipelineError::Csv { .. } => "bad_csv",
            PipelineError::Json { .. } => "bad_json",
            PipelineError::MissingCountyColumn { .. } => "missing_county_column",
            PipelineError::MissingMaskColumn { .. } => "missing_mask_column",
            PipelineError::ResultExists { .. } => "result_exists",
            PipelineError::InvalidSpec { .. } => "invalid_spec",
            PipelineError::Cancelled => "cancelled",
        }
    }

    /// Whether running the same spec again may succeed: I/O errors only. A missing source,
    /// bad data, a rule the source does not fit and a bad spec fail the same way every time, so
    /// a job that meets one fails at once instead of spending its retries.
    pub fn is_transient(&self) -> bool {
        matches!(self, PipelineError::Io { .. })
    }
}

type Result<T, E = PipelineError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_source(path: &Path) -> Result<File> {
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

/// Runs the pipeline described by `spec`, reporting to `observer` after each chunk.
///
/// On success the result is at `spec.result_path` (complete, synced). On error or cancellation
/// nothing new is at `spec.result_path` (a file already there is never replaced: the run fails
/// with [`PipelineError::ResultExists`]) and no temporary file is left behind.
pub fn run(spec: &PipelineSpec, observer: &mut dyn Observer) -> Result<Output> {
    if spec.chunk_size == 0 {
        return Err(PipelineError::InvalidSpec {
            reason: "chunk size must be at least 1".into(),
        });
    }
    if spec.county.is_some() && spec.county_column.is_none() {
        // Fail closed: never hand out every county's rows because a column is not configured.
        return Err(PipelineError::InvalidSpec {
            reason: "a county filter is requested but the report has no county column".into(),
        });
    }
    if spec.result_path.file_name().is_none() {
        return Err(PipelineError::InvalidSpec {
            reason: format!(
                "result path {} has no file name",
                spec.result_path.display()
            ),
        });
    }
    let rows_total = match spec.rows_total {
        Some(rows) => rows,
        None => count_rows(&spec.source_path, spec.source_format)?,
    };
    match spec.source_format {
        DataFormat::Csv => run_source(
            spec,
            CsvSource::open(&spec.source_path)?,
            rows_total,
            observer,
        ),
        DataFormat::Jsonl => run_source(
            spec,
            JsonlSource::open(&spec.source_path)?,
            rows_total,
            observer,
        ),
    }
}

fn run_source<S: RowSource>(
    spec: &PipelineSpec,
    mut source: S,
    rows_total: u64,
    observer: &mut dyn Observer,
) -> Result<Output> {
    let header = source.header().clone();
    let county = check_columns(spec, &header)?;
    let masker = Masker::new(&spec.masks, header.iter(), &spec.hash_key);

    let (file, temp) = TempFile::create(&spec.result_path)?;
    let out = Out::new(file);
    let mut run = Run {
        spec,
        county,
        progress: Progress {
            rows_total,
            ..Progress::default()
        },
    };
    let finished = match spec.output_format {
        DataFormat::Csv => {
            let mut sink = CsvSink::new(out, masker);
            sink.write_header(&header).map_err(io_err(&temp.path))?;
            run.stream(&mut source, &mut sink, observer, &temp.path, false)?;
            sink.finish()
        }
        DataFormat::Jsonl => {
            let mut sink = JsonlSink::new(out, masker, &header);
            let validate = matches!(spec.source_format, DataFormat::Csv);
            run.stream(&mut source, &mut sink, observer, &temp.path, validate)?;
            sink.finish()
        }
    };
    let (file, digest, bytes) = finished.map_err(io_err(&temp.path))?;
    file.sync_all().map_err(io_err(&temp.path))?;
    drop(file);
    temp.commit(&spec.result_path)?;
    Ok(Output {
        path: spec.result_path.clone(),
        rows_written: run.progress.rows_written,
        sha256: hex::encode(digest),
        bytes,
    })
}

/// The county filter's column index, after checking that every column a rule names is in
/// the header: the one place where a rule that cannot be applied stops a run, for every source
/// kind, before the result file is even created. A source without any column has no rows
/// either: there is nothing to filter or mask.
fn check_columns<'a>(spec: &'a PipelineSpec, header: &Row) -> Result<Option<(usize, &'a [u8])>> {
    if header.is_empty() {
        return Ok(None);
    }
    let position = |column: &str| header.iter().position(|name| name == column.as_bytes());
    let listed = || column_preview(header.iter());
    let masked = spec.masks.iter().map(|(column, _)| column);
    for column in masked.chain(&spec.mask_columns) {
        if position(column).is_none() {
            return Err(PipelineError::MissingMaskColumn {
                column: column.clone(),
                path: spec.source_path.clone(),
                columns: listed(),
            });
        }
    }
    match (&spec.county, &spec.county_column) {
        (Some(county), Some(column)) => match position(column) {
            Some(index) => Ok(Some((index, county.as_bytes()))),
            None => Err(PipelineError::MissingCountyColumn {
                column: column.clone(),
                path: spec.source_path.clone(),
                columns: listed(),
            }),
        },
        _ => Ok(None),
    }
}

/// The first column names of a header, for a message (a source may have thousands, and a
/// name may be long: both are cut).
pub fn column_preview<'a>(names: impl ExactSizeIterator<Item = &'a [u8]>) -> String {
    const SHOWN: usize = 12;
    let total = names.len();
    let mut out: Vec<String> = names
        .take(SHOWN)
        .map(|name| {
            let name = String::from_utf8_lossy(name);
            match name.char_indices().nth(40) {
                Some((cut, _)) => format!("`{}…`", &name[..cut]),
                None => format!("`{name}`"),
            }
        })
        .collect();
    if total > SHOWN {
        out.push(format!("… {} more", total - SHOWN));
    }
    out.join(", ")
}

/// The column names of a source, as a run would read them (the CSV header, or the keys of
/// the first JSON object); empty for a source without any. `flowctl check` uses it to hold
/// the mask rules and county column against the data before any job runs.
pub fn read_columns(path: &Path, format: DataFormat) -> Result<Vec<String>> {
    let header = match format {
        DataFormat::Csv => CsvSource::open(path)?.header().clone(),
        DataFormat::Jsonl => JsonlSource::open(path)?.header().clone(),
    };
    Ok(header
        .iter()
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect())
}

struct Run<'a> {
    spec: &'a PipelineSpec,
    county: Option<(usize, &'a [u8])>,
    progress: Progress,
}

impl Run<'_> {
    /// The chunk loop. `validate_utf8`: reject rows that are not UTF-8 (CSV source, JSON out).
    fn stream<S: RowSource, K: RowSink>(
        &mut self,
        source: &mut S,
        sink: &mut K,
        observer: &mut dyn Observer,
        out_path: &Path,
        validate_utf8: bool,
    ) -> Result<()> {
        let chunk_size = self.spec.chunk_size;
        let mut row = Row::default();
        loop {
            let mut in_chunk = 0;
            let mut eof = false;
            while in_chunk < chunk_size {
                if !source.next_row(&mut row)? {
                    eof = true;
                    break;
                }
                in_chunk += 1;
                if let Some((index, county)) = self.county {
                    if row.get(index) != Some(county) {
                        continue;
                    }
                }
                if validate_utf8 {
                    check_utf8(&row, &self.spec.source_path)?;
                }
                sink.write_row(&row).map_err(io_err(out_path))?;
                self.progress.rows_written += 1;
            }
            if in_chunk > 0 {
                let p = &mut self.progress;
                p.rows_read += in_chunk as u64;
                p.rows_total = p.rows_total.max(p.rows_read);
                p.chunks += 1;
                if observer.on_chunk(p) == Control::Cancel {
                    return Err(PipelineError::Cancelled);
                }
            }
            if eof {
                return Ok(());
            }
        }
    }
}

fn check_utf8(row: &Row, path: &Path) -> Result<()> {
    if row.as_bytes().is_ascii() {
        return Ok(());
    }
    for (i, field) in row.iter().enumerate() {
        if let Err(e) = std::str::from_utf8(field) {
            return Err(PipelineError::Csv {
                path: path.to_path_buf(),
                line: row.line,
                message: format!(
                    "field {} is not valid UTF-8 (byte {}), which JSON output requires",
                    i + 1,
                    e.valid_up_to()
                ),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Temporary file, committed by a move that never replaces.

/// The temporary output file; removed on drop unless committed.
struct TempFile {
    path: PathBuf,
    committed: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_suffix() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(TEMP_COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl TempFile {
    /// Creates `.<name>.tmp-<pid>-<random>` in the directory of `result_path` (created too).
    fn create(result_path: &Path) -> Result<(File, TempFile)> {
        let dir = parent_dir(result_path);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let name = result_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut last_err = None;
        for _ in 0..16 {
            let path = dir.join(format!(
                ".{name}.tmp-{}-{:016x}",
                std::process::id(),
                random_suffix()
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok((
                        file,
                        TempFile {
                            path,
                            committed: false,
                        },
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some((path, e)),
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        let (path, e) = last_err.expect("at least one attempt");
        Err(io_err(&path)(e))
    }

    /// Moves the (closed, synced) temporary file to `result_path` and syncs the directory.
    ///
    /// The move never replaces a file: it links the temporary file at `result_path` (which
    /// fails if anything is there) and then unlinks the temporary name. Result paths are per
    /// attempt, so an attempt that lost its job (a worker paused past its lease) can never put
    /// its output over the result another attempt completed and recorded the SHA-256 of.
    fn commit(mut self, result_path: &Path) -> Result<()> {
        match fs::hard_link(&self.path, result_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(PipelineError::ResultExists {
                    path: result_path.to_path_buf(),
                })
            }
            Err(e) => return Err(io_err(result_path)(e)),
        }
        self.committed = true;
        // The result is whole at its path; a temporary name left behind by a crash here is
        // swept at start like any other.
        let _ = fs::remove_file(&self.path);
        if let Err(e) = sync_dir(parent_dir(result_path)) {
            // Not durable: do not report a result that may vanish on power loss.
            let _ = fs::remove_file(result_path);
            return Err(io_err(parent_dir(result_path))(e));
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened as files on Windows; the rename is durable enough there.
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Output.

/// The output buffer. Rows are encoded straight into `buf`; every [`IO_BUFFER`] bytes it is
/// hashed (the result's SHA-256, with no second read) and written to the file.
struct Out {
    buf: Vec<u8>,
    file: File,
    hasher: Sha256,
    bytes: u64,
}

type Finished = (File, [u8; 32], u64);

impl Out {
    fn new(file: File) -> Out {
        Out {
            buf: Vec::with_capacity(IO_BUFFER + 4096),
            file,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Call after each row: drains the buffer when it is full.
    #[inline]
    fn row_done(&mut self) -> io::Result<()> {
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

    fn finish(mut self) -> io::Result<Finished> {
        self.drain()?;
        Ok((self.file, self.hasher.finalize().into(), self.bytes))
    }
}

trait RowSink {
    fn write_row(&mut self, row: &Row) -> io::Result<()>;
    fn finish(self) -> io::Result<Finished>;
}

// Byte scans over 8-byte words (SWAR, "Bit Twiddling Hacks"): exact tests for the presence of
// a byte value, or of a byte below a bound, in a whole word at a time. A row is scanned once;
// only rows that hold a special byte somewhere are then encoded field by field.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether some byte of `word` is below `n` (`n <= 128`).
#[inline]
fn word_has_less(word: u64, n: u8) -> bool {
    word.wrapping_sub(ONES * n as u64) & !word & HIGHS != 0
}

/// Whether some byte of `word` equals `b`.
#[inline]
fn word_has(word: u64, b: u8) -> bool {
    word_has_less(word ^ (ONES * b as u64), 1)
}

/// Whether any byte of `bytes` is special: `word` tests 8 bytes at once, `byte` one.
#[inline]
fn any_byte(bytes: &[u8], word: impl Fn(u64) -> bool, byte: impl Fn(u8) -> bool) -> bool {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        if word(u64::from_le_bytes(w.try_into().expect("8 bytes"))) {
            return true;
        }
    }
    words.remainder().iter().any(|&b| byte(b))
}

/// Bytes that force a CSV field into quotes, as the csv crate's writer decides with its
/// default settings: delimiter, quote, CR, LF.
#[inline]
fn needs_csv_quotes(bytes: &[u8]) -> bool {
    any_byte(
        bytes,
        |w| word_has(w, b',') | word_has(w, b'"') | word_has(w, b'\n') | word_has(w, b'\r'),
        |b| matches!(b, b',' | b'"' | b'\n' | b'\r'),
    )
}

/// Bytes a JSON string must escape: controls, quote, backslash.
#[inline]
fn needs_json_escapes(bytes: &[u8]) -> bool {
    any_byte(
        bytes,
        |w| word_has_less(w, 0x20) | word_has(w, b'"') | word_has(w, b'\\'),
        |b| b < 0x20 || b == b'"' || b == b'\\',
    )
}

/// Writes one CSV field, quoted (with doubled quotes) only when necessary.
fn write_csv_field(out: &mut Vec<u8>, field: &[u8]) {
    if !needs_csv_quotes(field) {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    let mut start = 0;
    for quote in memchr::memchr_iter(b'"', field) {
        out.extend_from_slice(&field[start..=quote]);
        out.push(b'"');
        start = quote + 1;
    }
    out.extend_from_slice(&field[start..]);
    out.push(b'"');
}

/// Writes one CSV record, masking on the way (no copy of the row). The output is what the csv
/// crate's writer produces with its default settings.
#[inline]
fn write_csv_row(out: &mut Vec<u8>, row: &Row, masker: Option<&Masker>) {
    let mut buf = MaskBuf::default();
    if row.len() == 1 {
        let empty = match masker {
            Some(m) => m
                .mask_field(0, row.get(0).unwrap_or(b""), &mut buf)
                .is_empty(),
            None => row.get(0).is_none_or(<[u8]>::is_empty),
        };
        if empty {
            // A record of one empty field would be an empty line, which readers skip.
            out.extend_from_slice(b"\"\"\n");
            return;
        }
    }
    // Masked values never need quotes when the clear value did not (see Masker::mask_field),
    // so one scan of the whole row settles the common case for all its fields.
    let plain = row.csv_plain;
    for (i, field) in row.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let value = match masker {
            Some(m) => m.mask_field(i, field, &mut buf),
            None => field,
        };
        if plain {
            out.extend_from_slice(value);
        } else {
            write_csv_field(out, value);
        }
    }
    out.push(b'\n');
}

struct CsvSink {
    out: Out,
    masker: Masker,
}

impl CsvSink {
    fn new(out: Out, masker: Masker) -> Self {
        CsvSink { out, masker }
    }

    fn write_header(&mut self, header: &Row) -> io::Result<()> {
        if header.is_empty() {
            // An empty source: an empty result, not a line holding `""`.
            return Ok(());
        }
        write_csv_row(&mut self.out.buf, header, None);
        self.out.row_done()
    }
}

impl RowSink for CsvSink {
    #[inline]
    fn write_row(&mut self, row: &Row) -> io::Result<()> {
        write_csv_row(&mut self.out.buf, row, Some(&self.masker));
        self.out.row_done()
    }

    fn finish(self) -> io::Result<Finished> {
        self.out.finish()
    }
}

struct JsonlSink {
    out: Out,
    masker: Masker,
    /// Per column: `{"name":` for the first, `,"name":` for the others.
    keys: Vec<Vec<u8>>,
}

impl JsonlSink {
    fn new(out: Out, masker: Masker, header: &Row) -> Self {
        let keys = header
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut key = vec![if i == 0 { b'{' } else { b',' }];
                // Header names of a CSV source may be any bytes: JSON keys must be UTF-8.
                write_json_str(&mut key, &String::from_utf8_lossy(name));
                key.push(b':');
                key
            })
            .collect();
        JsonlSink { out, masker, keys }
    }
}

impl RowSink for JsonlSink {
    #[inline]
    fn write_row(&mut self, row: &Row) -> io::Result<()> {
        let out = &mut self.out.buf;
        let mut buf = MaskBuf::default();
        // As for CSV: masking never adds bytes that need escaping.
        let plain = !needs_json_escapes(row.as_bytes());
        if self.keys.is_empty() {
            out.push(b'{');
        }
        for (i, (key, field)) in self.keys.iter().zip(row.iter()).enumerate() {
            out.extend_from_slice(key);
            if self.masker.is_null(i) {
                out.extend_from_slice(b"null");
                continue;
            }
            // UTF-8 is guaranteed by the source (JSON) or checked by the loop (CSV).
            let value = self.masker.mask_field(i, field, &mut buf);
            if plain {
                out.push(b'"');
                out.extend_from_slice(value);
                out.push(b'"');
            } else {
                write_json_bytes(out, value);
            }
        }
        out.extend_from_slice(b"}\n");
        self.out.row_done()
    }

    fn finish(self) -> io::Result<Finished> {
        self.out.finish()
    }
}

/// Escapes a string into a JSON string literal.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    write_json_bytes(out, s.as_bytes())
}

/// Escapes UTF-8 bytes into a JSON string literal (RFC 8259: `"`, `\` and controls).
fn write_json_bytes(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut start = 0;
    if needs_json_escapes(s) {
        for (i, &b) in s.iter().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => &[],
                _ => continue,
            };
            out.extend_from_slice(&s[start..i]);
            if escape.is_empty() {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            } else {
                out.extend_from_slice(escape);
            }
            start = i + 1;
        }
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

// ---------------------------------------------------------------------------------------------
// Sources.

trait RowSource {
    /// Column names.
    fn header(&self) -> &Row;
    /// Reads the next row into `row` (with the line it starts on); `false` at the end.
    fn next_row(&mut self, row: &mut Row) -> Result<bool>;
}

struct JsonlSource {
    reader: BufReader<File>,
    path: PathBuf,
    header: Row,
    columns: JsonColumns,
    /// Line number of the last line read.
    line: u64,
    buf: Vec<u8>,
    /// The first object was parsed while opening and is still to be returned.
    pending: bool,
}

/// Column names (learned from the first object) and the values of the current row.
#[derive(Default)]
struct JsonColumns {
    names: Vec<String>,
    values: Vec<Vec<u8>>,
}

impl JsonlSource {
    fn open(path: &Path) -> Result<JsonlSource> {
        let file = open_source(path)?;
        let mut src = JsonlSource {
            reader: BufReader::with_capacity(IO_BUFFER, file),
            path: path.to_path_buf(),
            header: Row::default(),
            columns: JsonColumns::default(),
            line: 0,
            buf: Vec::with_capacity(4096),
            pending: false,
        };
        src.pending = src.read_object(true)?;
        src.header = src.columns.names.iter().collect();
        Ok(src)
    }

    /// Reads the next non-blank line into `columns.values`; `false` at end of file.
    fn read_object(&mut self, learn: bool) -> Result<bool> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(io_err(&self.path))?;
            if n == 0 {
                return Ok(false);
            }
            self.line += 1;
            let mut text = &self.buf[..];
            if self.line == 1 {
                text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
            }
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return parse_object(text, &mut self.columns, learn)
                .map(|()| true)
                .map_err(|e| PipelineError::Json {
                    path: self.path.clone(),
                    line: self.line,
                    message: e.to_string(),
                });
        }
    }
}

impl RowSource for JsonlSource {
    fn header(&self) -> &Row {
        &self.header
    }

    fn next_row(&mut self, row: &mut Row) -> Result<bool> {
        if self.pending {
            self.pending = false;
        } else if !self.read_object(false)? {
            return Ok(false);
        }
        row.clear();
        for value in &self.columns.values {
            row.push_field(value);
        }
        row.seal();
        row.line = self.line;
        Ok(true)
    }
}

fn parse_object(line: &[u8], columns: &mut JsonColumns, learn: bool) -> serde_json::Result<()> {
    for value in &mut columns.values {
        value.clear();
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    de::Deserializer::deserialize_map(&mut de, RowVisitor { columns, learn })?;
    de.end()
}

struct RowVisitor<'a> {
    columns: &'a mut JsonColumns,
    learn: bool,
}

impl<'de> Visitor<'de> for RowVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut hint = 0;
        while let Some(index) = map.next_key_seed(KeySeed {
            columns: &mut *self.columns,
            hint,
            learn: self.learn,
        })? {
            match index {
                Some(i) => {
                    map.next_value_seed(ValueSeed(&mut self.columns.values[i]))?;
                    hint = i + 1;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Resolves a key to its column index (`None`: not a column); learns new columns on the first
/// object. `hint` is the expected index (keys usually come in the same order on every line).
struct KeySeed<'a> {
    columns: &'a mut JsonColumns,
    hint: usize,
    learn: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        let names = &mut self.columns.names;
        if names.get(self.hint).is_some_and(|n| n == key) {
            return Ok(Some(self.hint));
        }
        if let Some(i) = names.iter().position(|n| n == key) {
            return Ok(Some(i));
        }
        if self.learn {
            names.push(key.to_owned());
            self.columns.values.push(Vec::new());
            return Ok(Some(names.len() - 1));
        }
        Ok(None)
    }
}

/// Writes a JSON value as text into a column's buffer.
struct ValueSeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.0.clear(); // a duplicate key: the last value wins
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        let _ = write!(self.0, "{v}");
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        let _ = write!(self.0, "{v}");
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        let _ = write!(self.0, "{v}");
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
        serde_json::to_writer(&mut *self.0, &value).map_err(de::Error::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        serde_json::to_writer(&mut *self.0, &value).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::mask_str;
    use proptest::prelude::*;
    use tempfile::TempDir;

    const KEY: [u8; 32] = [3u8; 32];
    const HEADER: &str =
        "case_id,county_id,client_name,ssn,date_of_birth,case_status,opened_on,benefit_amount";

    fn case_row(i: usize, county: &str) -> String {
        format!(
            "C{i:05},{county},Client {i},123-45-{:04},1980-01-{:02},OPEN,2024-03-01,{}.50",
            i % 10000,
            i % 28 + 1,
            i * 10
        )
    }

    fn cases_csv(n: usize) -> String {
        let mut s = format!("{HEADER}\n");
        for i in 0..n {
            s.push_str(&case_row(i, if i % 3 == 0 { "12" } else { "7" }));
            s.push('\n');
        }
        s
    }

    struct Fixture {
        dir: TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn source(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
            let path = self.dir.path().join(name);
            fs::write(&path, content).unwrap();
            path
        }

        fn results_dir(&self) -> PathBuf {
            self.dir.path().join("results").join("DAILY_REPORT")
        }

        fn spec(&self, source: &Path, input: DataFormat, output: DataFormat) -> PipelineSpec {
            PipelineSpec {
                source_path: source.to_path_buf(),
                source_format: input,
                county_column: Some("county_id".into()),
                county: None,
                output_format: output,
                chunk_size: 1000,
                masks: Vec::new(),
                mask_columns: Vec::new(),
                hash_key: KEY,
                rows_total: None,
                result_path: self
                    .results_dir()
                    .join(format!("JOB_ABCD1234.{}", output.extension())),
            }
        }

        /// Names of the files in the results directory (temp files included).
        fn result_files(&self) -> Vec<String> {
            match fs::read_dir(self.results_dir()) {
                Ok(entries) => {
                    let mut names: Vec<String> = entries
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    names
                }
                Err(_) => Vec::new(),
            }
        }
    }

    /// One run as a new attempt would make it: the executor gives every attempt its own
    /// result path, so a result left by an earlier run of the same test is removed first.
    fn run_collect(spec: &PipelineSpec) -> (Result<Output>, Vec<Progress>) {
        let _ = fs::remove_file(&spec.result_path);
        let mut seen = Vec::new();
        let result = run(spec, &mut |p: &Progress| {
            seen.push(*p);
            Control::Continue
        });
        (result, seen)
    }

    fn run_ok(spec: &PipelineSpec) -> (Output, String, Vec<Progress>) {
        let (result, seen) = run_collect(spec);
        let out = result.unwrap();
        let text = fs::read_to_string(&out.path).unwrap();
        (out, text, seen)
    }

    fn masks(pairs: &[(&str, MaskMethod)]) -> Vec<(String, MaskMethod)> {
        pairs.iter().map(|&(f, m)| (f.to_string(), m)).collect()
    }

    fn read_csv(text: &str) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes())
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect()
    }

    /// Parses JSON lines into (key, value) lists, keeping key order.
    fn read_jsonl(text: &str) -> Vec<Vec<(String, serde_json::Value)>> {
        text.lines()
            .map(|line| {
                // serde_json's Map is sorted; recover the order from the text itself.
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let obj = v.as_object().unwrap();
                let mut keys: Vec<(usize, String)> = obj
                    .keys()
                    .map(|k| {
                        let needle = format!("{}:", serde_json::to_string(k).unwrap());
                        (line.find(&needle).unwrap(), k.clone())
                    })
                    .collect();
                keys.sort();
                keys.into_iter()
                    .map(|(_, k)| (k.clone(), obj[&k].clone()))
                    .collect()
            })
            .collect()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn csv_to_csv_masks_and_keeps_order() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(3));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.masks = masks(&[
            ("ssn", MaskMethod::Last4),
            ("client_name", MaskMethod::Redact),
            ("date_of_birth", MaskMethod::Hash),
            ("benefit_amount", MaskMethod::Null),
        ]);
        let (out, text, _) = run_ok(&spec);
        assert_eq!(out.rows_written, 3);
        assert_eq!(out.path, spec.result_path);
        let rows = read_csv(&text);
        assert_eq!(rows[0].join(","), HEADER);
        assert_eq!(rows.len(), 4);
        let dob_hash = mask_str(MaskMethod::Hash, "1980-01-02", &KEY).unwrap();
        assert_eq!(
            rows[2],
            [
                "C00001",
                "7",
                "****",
                "****0001",
                dob_hash.as_str(),
                "OPEN",
                "2024-03-01",
                ""
            ]
        );
        assert!(text.ends_with('\n'));
        assert!(!text.contains("Client"));
        assert!(!text.contains("123-45"));
    }

    #[test]
    fn no_masks_is_a_byte_copy_of_simple_csv() {
        let fx = Fixture::new();
        let data = cases_csv(50);
        let src = fx.source("cases.csv", &data);
        let (_, text, _) = run_ok(&fx.spec(&src, DataFormat::Csv, DataFormat::Csv));
        assert_eq!(text, data);
    }

    #[test]
    fn sha256_and_size_match_the_file_on_disk() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(500));
        for output in [DataFormat::Csv, DataFormat::Jsonl] {
            let mut spec = fx.spec(&src, DataFormat::Csv, output);
            spec.chunk_size = 7;
            spec.masks = masks(&[("ssn", MaskMethod::Hash)]);
            let (out, _, _) = run_ok(&spec);
            let bytes = fs::read(&out.path).unwrap();
            assert_eq!(out.sha256, sha256_hex(&bytes));
            assert_eq!(out.bytes, bytes.len() as u64);
        }
    }

    #[test]
    fn county_filter_keeps_only_that_county() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(30));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.county = Some("12".into());
        spec.chunk_size = 4;
        let (out, text, seen) = run_ok(&spec);
        assert_eq!(out.rows_written, 10);
        let rows = read_csv(&text);
        assert_eq!(rows.len(), 11);
        assert!(rows[1..].iter().all(|r| r[1] == "12"));
        // Chunks count source rows, not kept rows.
        assert_eq!(seen.len(), 8);
        assert_eq!(seen.last().unwrap().rows_read, 30);
        assert_eq!(seen.last().unwrap().rows_written, 10);

        // Exact match: "1" does not select "12".
        spec.county = Some("1".into());
        let (out, text, _) = run_ok(&spec);
        assert_eq!(out.rows_written, 0);
        assert_eq!(text, format!("{HEADER}\n"));
    }

    #[test]
    fn county_filter_on_jsonl_source_matches_numbers() {
        let fx = Fixture::new();
        let src = fx.source(
            "cases.jsonl",
            "{\"id\":1,\"county_id\":12}\n{\"id\":2,\"county_id\":\"7\"}\n{\"id\":3,\"county_id\":\"12\"}\n",
        );
        let mut spec = fx.spec(&src, DataFormat::Jsonl, DataFormat::Csv);
        spec.county = Some("12".into());
        let (_, text, _) = run_ok(&spec);
        assert_eq!(text, "id,county_id\n1,12\n3,12\n");
    }

    #[test]
    fn missing_county_column_is_an_error_and_leaves_nothing() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(3));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.county_column = Some("county".into());
        spec.county = Some("12".into());
        let err = run_collect(&spec).0.unwrap_err();
        assert!(
            matches!(&err, PipelineError::MissingCountyColumn { column, .. } if column == "county"),
            "{err:?}"
        );
        assert!(err.to_string().contains("`county`"), "{err}");
        assert!(err.to_string().contains("cases.csv"), "{err}");
        assert_eq!(err.code(), "missing_county_column");
        assert!(fx.result_files().is_empty());

        // Without a county to filter on, the column is not needed.
        spec.county = None;
        assert_eq!(run_ok(&spec).0.rows_written, 3);
    }

    #[test]
    fn county_without_county_column_fails_closed() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(3));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.county_column = None;
        spec.county = Some("12".into());
        let err = run_collect(&spec).0.unwrap_err();
        assert!(matches!(err, PipelineError::InvalidSpec { .. }), "{err:?}");
        assert!(!spec.result_path.exists());
    }

    #[test]
    fn chunk_size_zero_is_refused() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(3));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.chunk_size = 0;
        let err = run_collect(&spec).0.unwrap_err();
        assert!(matches!(err, PipelineError::InvalidSpec { .. }), "{err:?}");
    }

    #[test]
    fn chunk_boundaries() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(10));
        // (chunk size, expected observer calls)
        for (chunk_size, calls) in [(1, 10), (5, 2), (3, 4), (10, 1), (11, 1), (1_000_000, 1)] {
            let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
            spec.chunk_size = chunk_size;
            let (out, text, seen) = run_ok(&spec);
            assert_eq!(out.rows_written, 10, "chunk size {chunk_size}");
            assert_eq!(text, cases_csv(10), "chunk size {chunk_size}");
            assert_eq!(seen.len(), calls, "chunk size {chunk_size}");
            for (i, p) in seen.iter().enumerate() {
                assert_eq!(p.chunks, i as u64 + 1);
                assert_eq!(p.rows_read, ((i + 1) * chunk_size).min(10) as u64);
                assert_eq!(p.rows_total, 10);
            }
            assert_eq!(seen.last().unwrap().percent(), 100);
        }
    }

    /// A count the caller already has is used as is (and raised if the file has more rows).
    #[test]
    fn a_known_row_count_is_not_counted_again() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(10));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.chunk_size = 5;
        spec.rows_total = Some(40);
        let (_, _, seen) = run_ok(&spec);
        let totals: Vec<u64> = seen.iter().map(|p| p.rows_total).collect();
        assert_eq!(totals, vec![40, 40]);
        spec.rows_total = Some(7);
        let (_, _, seen) = run_ok(&spec);
        let totals: Vec<u64> = seen.iter().map(|p| p.rows_total).collect();
        assert_eq!(totals, vec![7, 10]);
    }

    #[test]
    fn empty_sources() {
        let fx = Fixture::new();
        // Header only: header out, no chunk.
        let src = fx.source("empty.csv", format!("{HEADER}\n"));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.county = Some("12".into());
        let (out, text, seen) = run_ok(&spec);
        assert_eq!((out.rows_written, seen.len()), (0, 0));
        assert_eq!(text, format!("{HEADER}\n"));
        assert_eq!(out.sha256, sha256_hex(text.as_bytes()));

        spec.output_format = DataFormat::Jsonl;
        spec.result_path.set_extension("jsonl");
        let (out, text, _) = run_ok(&spec);
        assert_eq!((out.rows_written, text.as_str()), (0, ""));

        // Header only, without a final newline.
        let src = fx.source("empty2.csv", HEADER);
        let spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        assert_eq!(run_ok(&spec).1, format!("{HEADER}\n"));

        // Zero-byte files: empty results, even with a county filter (no rows to filter).
        for format in [DataFormat::Csv, DataFormat::Jsonl] {
            let src = fx.source("zero", "");
            let mut spec = fx.spec(&src, format, format);
            spec.county = Some("12".into());
            let (out, text, seen) = run_ok(&spec);
            assert_eq!((out.rows_written, text.as_str(), seen.len()), (0, "", 0));
            assert_eq!(out.bytes, 0);
        }
    }

    #[test]
    fn csv_to_jsonl() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(2));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Jsonl);
        spec.masks = masks(&[
            ("ssn", MaskMethod::Last4),
            ("benefit_amount", MaskMethod::Null),
        ]);
        let (out, text, _) = run_ok(&spec);
        assert_eq!(out.rows_written, 2);
        assert_eq!(
            text.lines().next().unwrap(),
            r#"{"case_id":"C00000","county_id":"12","client_name":"Client 0","ssn":"****0000","date_of_birth":"1980-01-01","case_status":"OPEN","opened_on":"2024-03-01","benefit_amount":null}"#
        );
        let rows = read_jsonl(&text);
        let keys: Vec<&str> = rows[1].iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys.join(","), HEADER);
        assert_eq!(rows[1][0].1, "C00001");
        assert_eq!(rows[1][7].1, serde_json::Value::Null);
    }

    #[test]
    fn jsonl_to_csv_columns_from_first_object() {
        let fx = Fixture::new();
        let src = fx.source(
            "cases.jsonl",
            concat!(
                "\u{feff}{\"b\":\"x\",\"a\":1,\"c\":true}\n",
                "\n",
                "{\"a\":2.5,\"b\":null}\r\n",
                "   \n",
                "{\"c\":[1,{\"k\":\"v\"}],\"extra\":\"ignored\",\"a\":-3,\"b\":\"q\\\"uote, comma\"}\n",
                "{\"a\":{\"n\":1},\"a\":\"dup last wins\"}",
            ),
        );
        let spec = fx.spec(&src, DataFormat::Jsonl, DataFormat::Csv);
        let (out, text, seen) = run_ok(&spec);
        assert_eq!(out.rows_written, 4);
        assert_eq!(
            text,
            "b,a,c\nx,1,true\n,2.5,\n\"q\"\"uote, comma\",-3,\"[1,{\"\"k\"\":\"\"v\"\"}]\"\n,dup last wins,\n"
        );
        // count_rows skips empty lines, not whitespace-only ones (estimate), and the reader
        // tolerates it: rows_total is raised to what was really read.
        assert_eq!(count_rows(&src, DataFormat::Jsonl).unwrap(), 5);
        assert_eq!(seen.last().unwrap().rows_read, 4);
    }

    #[test]
    fn jsonl_source_whose_first_object_is_empty() {
        let fx = Fixture::new();
        let src = fx.source("empty_obj.jsonl", "{}\n{\"a\":1}\n");
        let (out, text, _) = run_ok(&fx.spec(&src, DataFormat::Jsonl, DataFormat::Jsonl));
        assert_eq!((out.rows_written, text.as_str()), (2, "{}\n{}\n"));
        let (out, _, _) = run_ok(&fx.spec(&src, DataFormat::Jsonl, DataFormat::Csv));
        assert_eq!(out.rows_written, 2);
    }

    #[test]
    fn jsonl_to_jsonl() {
        let fx = Fixture::new();
        let src = fx.source(
            "cases.jsonl",
            "{\"name\":\"Zoë \\\"Z\\\" Ng\",\"ssn\":\"123456789\",\"note\":\"line1\\nline2\\ttab\\u0001\"}\n{\"name\":\"Al\"}\n",
        );
        let mut spec = fx.spec(&src, DataFormat::Jsonl, DataFormat::Jsonl);
        spec.masks = masks(&[("ssn", MaskMethod::Null)]);
        let (_, text, _) = run_ok(&spec);
        assert_eq!(
            text,
            "{\"name\":\"Zoë \\\"Z\\\" Ng\",\"ssn\":null,\"note\":\"line1\\nline2\\ttab\\u0001\"}\n{\"name\":\"Al\",\"ssn\":null,\"note\":\"\"}\n"
        );
        let rows = read_jsonl(&text);
        assert_eq!(rows[0][2].1, "line1\nline2\ttab\u{1}");
    }

    #[test]
    fn quoted_fields_round_trip() {
        let fx = Fixture::new();
        let nasty = [
            "comma, inside",
            "quote \" inside",
            "new\nline",
            "crlf\r\nline",
            "\"\"",
            " lead and trail ",
            "",
            "ünïcødé 日本 😀",
            "back\\slash",
        ];
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["id", "text", "ssn"]).unwrap();
        for (i, t) in nasty.iter().enumerate() {
            w.write_record([i.to_string().as_str(), t, t]).unwrap();
        }
        let src = fx.source("nasty.csv", w.into_inner().unwrap());

        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.masks = masks(&[("ssn", MaskMethod::Last4)]);
        spec.chunk_size = 2;
        let (out, text, seen) = run_ok(&spec);
        assert_eq!(out.rows_written, nasty.len() as u64);
        let rows = read_csv(&text);
        for (i, t) in nasty.iter().enumerate() {
            assert_eq!(rows[i + 1][1], *t);
            assert_eq!(
                rows[i + 1][2],
                mask_str(MaskMethod::Last4, t, &KEY).unwrap()
            );
        }
        // Quoted line breaks make count_rows over-count; progress stays consistent.
        let last = seen.last().unwrap();
        assert_eq!(last.rows_read, nasty.len() as u64);
        assert!(last.rows_total >= last.rows_read);

        spec.output_format = DataFormat::Jsonl;
        spec.result_path.set_extension("jsonl");
        let (_, text, _) = run_ok(&spec);
        let rows = read_jsonl(&text);
        for (i, t) in nasty.iter().enumerate() {
            assert_eq!(rows[i][1].1, *t);
        }
    }

    #[test]
    fn progress_is_reported_per_chunk_and_monotonic() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(1003));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.chunk_size = 100;
        spec.county = Some("7".into());
        let (out, _, seen) = run_ok(&spec);
        assert_eq!(seen.len(), 11);
        for pair in seen.windows(2) {
            assert!(pair[1].rows_read > pair[0].rows_read);
            assert!(pair[1].rows_written >= pair[0].rows_written);
            assert!(pair[1].percent() >= pair[0].percent());
            assert_eq!(pair[1].chunks, pair[0].chunks + 1);
        }
        let last = seen.last().unwrap();
        assert_eq!((last.rows_read, last.rows_total), (1003, 1003));
        assert_eq!(last.rows_written, out.rows_written);
        assert_eq!(out.rows_written, 668);
    }

    #[test]
    fn cancel_after_second_chunk_leaves_nothing() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(100));
        for output in [DataFormat::Csv, DataFormat::Jsonl] {
            let mut spec = fx.spec(&src, DataFormat::Csv, output);
            spec.chunk_size = 10;
            let mut calls = 0;
            let err = run(&spec, &mut |p: &Progress| {
                calls += 1;
                assert_eq!(p.chunks, calls);
                if p.chunks == 2 {
                    Control::Cancel
                } else {
                    Control::Continue
                }
            })
            .unwrap_err();
            assert!(matches!(err, PipelineError::Cancelled), "{err:?}");
            assert_eq!(calls, 2, "no chunk after the cancel");
            assert!(!spec.result_path.exists());
            assert!(fx.result_files().is_empty(), "{:?}", fx.result_files());
        }
    }

    #[test]
    fn a_result_file_is_never_replaced() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(5));
        let spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        fs::create_dir_all(fx.results_dir()).unwrap();
        fs::write(&spec.result_path, "old").unwrap();
        let err = run(&spec, &mut |_: &Progress| Control::Cancel).unwrap_err();
        assert!(matches!(err, PipelineError::Cancelled));
        assert_eq!(fs::read_to_string(&spec.result_path).unwrap(), "old");
        // A whole run that finds its path taken fails and leaves the file as it was.
        let err = run(&spec, &mut |_: &Progress| Control::Continue).unwrap_err();
        assert!(
            matches!(&err, PipelineError::ResultExists { path } if path == &spec.result_path),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert_eq!(fs::read_to_string(&spec.result_path).unwrap(), "old");
        assert_eq!(fx.result_files(), ["JOB_ABCD1234.csv"]);
    }

    #[test]
    fn a_mask_on_a_missing_column_fails_before_any_row() {
        let fx = Fixture::new();
        // The source renamed `client_name` to `name`: the rule no longer matches anything.
        let renamed = cases_csv(3).replacen("client_name", "name", 1);
        let src = fx.source("cases.csv", &renamed);
        for output in [DataFormat::Csv, DataFormat::Jsonl] {
            let mut spec = fx.spec(&src, DataFormat::Csv, output);
            spec.masks = masks(&[
                ("ssn", MaskMethod::Last4),
                ("client_name", MaskMethod::Redact),
            ]);
            let (result, seen) = run_collect(&spec);
            let err = result.unwrap_err();
            assert!(
                matches!(&err, PipelineError::MissingMaskColumn { column, .. } if column == "client_name"),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains("`client_name`") && message.contains("`name`"),
                "{message}"
            );
            assert!(
                !err.is_transient(),
                "a rule that does not fit fails at once"
            );
            assert!(seen.is_empty(), "no chunk was read");
            assert!(
                fx.result_files().is_empty(),
                "no file, not even a temporary one"
            );
        }
    }

    #[test]
    fn a_mask_column_of_another_role_must_exist_too() {
        // The principal's own rules all fit, but the report also masks a column for another
        // role that the source lacks: the rule set no longer describes the data.
        let fx = Fixture::new();
        let src = fx.source("cases.jsonl", "{\"ssn\":\"123456789\",\"name\":\"Al\"}\n");
        let mut spec = fx.spec(&src, DataFormat::Jsonl, DataFormat::Jsonl);
        spec.masks = masks(&[("ssn", MaskMethod::Last4)]);
        spec.mask_columns = vec!["ssn".into(), "client_name".into()];
        let err = run_collect(&spec).0.unwrap_err();
        assert!(
            matches!(&err, PipelineError::MissingMaskColumn { column, .. } if column == "client_name"),
            "{err:?}"
        );
        assert!(fx.result_files().is_empty());
        // Named in the data: the run goes through.
        spec.mask_columns = vec!["ssn".into(), "name".into()];
        assert_eq!(run_ok(&spec).1, "{\"ssn\":\"****6789\",\"name\":\"Al\"}\n");
    }

    #[test]
    fn read_columns_reads_the_header_a_run_would_use() {
        let fx = Fixture::new();
        let csv = fx.source("bom.csv", "\u{feff}ssn,x\n1,2\n");
        assert_eq!(read_columns(&csv, DataFormat::Csv).unwrap(), ["ssn", "x"]);
        let jsonl = fx.source("a.jsonl", "\n{\"a\":1,\"b\":null}\n{\"c\":1}\n");
        assert_eq!(read_columns(&jsonl, DataFormat::Jsonl).unwrap(), ["a", "b"]);
        let empty = fx.source("empty.csv", "");
        assert!(read_columns(&empty, DataFormat::Csv).unwrap().is_empty());
        assert!(matches!(
            read_columns(&fx.dir.path().join("nope.csv"), DataFormat::Csv),
            Err(PipelineError::SourceMissing { .. })
        ));
    }

    #[test]
    fn malformed_csv_row_mid_file_names_file_and_line() {
        let fx = Fixture::new();
        let mut data = cases_csv(20);
        data.push_str("C99999,12,short row\n");
        data.push_str(&cases_csv(5)[HEADER.len() + 1..]);
        let src = fx.source("bad.csv", data);
        for output in [DataFormat::Csv, DataFormat::Jsonl] {
            let mut spec = fx.spec(&src, DataFormat::Csv, output);
            spec.chunk_size = 3;
            let (result, seen) = run_collect(&spec);
            let err = result.unwrap_err();
            match &err {
                PipelineError::Csv {
                    path,
                    line,
                    message,
                } => {
                    assert_eq!(path, &src);
                    assert_eq!(
                        *line, 22,
                        "header is line 1, 20 good rows, then the bad one"
                    );
                    assert!(message.contains("3 fields"), "{message}");
                }
                other => panic!("expected a CSV error, got {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains("bad.csv:22"), "{msg}");
            assert_eq!(seen.len(), 6, "the chunks before the bad row were done");
            assert!(fx.result_files().is_empty(), "{:?}", fx.result_files());
        }
    }

    #[test]
    fn malformed_csv_with_quoted_newlines_reports_the_starting_line() {
        let fx = Fixture::new();
        let src = fx.source("bad.csv", "a,b\n1,\"x\ny\"\n2,3,4\n");
        let err = run_collect(&fx.spec(&src, DataFormat::Csv, DataFormat::Csv))
            .0
            .unwrap_err();
        assert!(matches!(err, PipelineError::Csv { line: 4, .. }), "{err:?}");
    }

    #[test]
    fn invalid_json_line_names_file_and_line() {
        let fx = Fixture::new();
        for (content, line) in [
            ("{\"a\":1}\n{\"a\":2}\n{\"a\":\n{\"a\":4}\n", 3),
            ("{\"a\":1}\n\n[1,2]\n", 3),
            ("{\"a\":1} trailing\n", 1),
            ("nope\n", 1),
            ("{\"a\":1}\n{\"a\":\"\\ud800\"}\n", 2),
        ] {
            let src = fx.source("bad.jsonl", content);
            let spec = fx.spec(&src, DataFormat::Jsonl, DataFormat::Jsonl);
            let err = run_collect(&spec).0.unwrap_err();
            match &err {
                PipelineError::Json { path, line: l, .. } => {
                    assert_eq!(path, &src);
                    assert_eq!(*l, line, "{content:?}: {err}");
                }
                other => panic!("{content:?}: expected a JSON error, got {other:?}"),
            }
            assert!(
                err.to_string().contains(&format!("bad.jsonl:{line}")),
                "{err}"
            );
            assert!(fx.result_files().is_empty());
        }
    }

    #[test]
    fn csv_to_jsonl_rejects_invalid_utf8_with_line() {
        let fx = Fixture::new();
        let src = fx.source("latin1.csv", b"a,b\n1,ok\n2,caf\xe9\n".as_slice());
        let err = run_collect(&fx.spec(&src, DataFormat::Csv, DataFormat::Jsonl))
            .0
            .unwrap_err();
        assert!(matches!(err, PipelineError::Csv { line: 3, .. }), "{err:?}");
        assert!(err.to_string().contains("field 2"), "{err}");
        assert!(fx.result_files().is_empty());
        // CSV to CSV passes bytes through.
        let out = run_collect(&fx.spec(&src, DataFormat::Csv, DataFormat::Csv))
            .0
            .unwrap();
        assert_eq!(fs::read(&out.path).unwrap(), b"a,b\n1,ok\n2,caf\xe9\n");
    }

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
    fn bom_is_stripped_so_first_column_masks_apply() {
        let fx = Fixture::new();
        let src = fx.source("bom.csv", "\u{feff}ssn,x\n123456789,1\n");
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.masks = masks(&[("ssn", MaskMethod::Redact)]);
        assert_eq!(run_ok(&spec).1, "ssn,x\n****,1\n");
    }

    #[test]
    fn observer_panic_removes_the_temp_file() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(10));
        let spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        let result = std::panic::catch_unwind(|| {
            let _ = run(&spec, &mut |_: &Progress| -> Control {
                panic!("observer bug")
            });
        });
        assert!(result.is_err());
        assert!(fx.result_files().is_empty(), "{:?}", fx.result_files());
    }

    #[test]
    fn temp_file_is_hidden_beside_the_result() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(10));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.chunk_size = 5;
        let mut during = Vec::new();
        let dir = fx.results_dir();
        run(&spec, &mut |_: &Progress| {
            during.push(fs::read_dir(&dir).unwrap().count());
            let names: Vec<String> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names.len(), 1);
            let prefix = format!(".JOB_ABCD1234.csv.tmp-{}-", std::process::id());
            assert!(names[0].starts_with(&prefix), "{names:?}");
            Control::Continue
        })
        .unwrap();
        assert_eq!(during, [1, 1]);
        assert_eq!(fx.result_files(), ["JOB_ABCD1234.csv"]);
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

    #[test]
    fn csv_encoder_edge_cases_match_the_csv_crate() {
        for row in [
            vec![""],
            vec!["", ""],
            vec!["a"],
            vec!["\""],
            vec!["a,b", "c\"d", "e\nf", "g\rh", "", " x "],
            vec!["0123456789abcdef,0123456789abcdef"],
            vec!["0123456789abcdef0123456789abcdef\n"],
        ] {
            let record: Row = row.iter().collect();
            let mut ours = Vec::new();
            write_csv_row(&mut ours, &record, None);
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(row.iter()).unwrap();
            assert_eq!(ours, w.into_inner().unwrap(), "{row:?}");
        }
    }

    #[test]
    fn single_column_with_empty_values_survives() {
        let fx = Fixture::new();
        let src = fx.source("one.csv", "ssn\n\"\"\n123456\n");
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.masks = masks(&[("ssn", MaskMethod::Null)]);
        let (out, text, _) = run_ok(&spec);
        assert_eq!(text, "ssn\n\"\"\n\"\"\n");
        assert_eq!(out.rows_written, 2);
        assert_eq!(read_csv(&text).len(), 3);
    }

    #[test]
    fn byte_scans_are_exact() {
        // Every byte value at every position of a word and of the remainder.
        for len in [1usize, 7, 8, 9, 16, 23] {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[pos] = b;
                    let csv = matches!(b, b',' | b'"' | b'\n' | b'\r');
                    let json = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_csv_quotes(&bytes), csv, "{len} {pos} {b}");
                    assert_eq!(needs_json_escapes(&bytes), json, "{len} {pos} {b}");
                }
            }
        }
        // Neighbouring bytes must not create false hits (borrows across bytes).
        for a in 0..=255u8 {
            for b in [0u8, 1, 0x1f, 0x20, 0x21, 0x2b, 0x2c, 0x2d, 0x7f, 0x80, 0xff] {
                let bytes = [a, b, a, b, a, b, a, b];
                let csv = [a, b]
                    .iter()
                    .any(|&c| matches!(c, b',' | b'"' | b'\n' | b'\r'));
                let json = [a, b].iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
                assert_eq!(needs_csv_quotes(&bytes), csv, "{a} {b}");
                assert_eq!(needs_json_escapes(&bytes), json, "{a} {b}");
            }
        }
    }

    #[test]
    fn json_escaping() {
        let mut out = Vec::new();
        let s = "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é😀/";
        write_json_str(&mut out, s);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(serde_json::from_str::<String>(&text).unwrap(), s);
        assert_eq!(text, serde_json::to_string(s).unwrap());
    }

    #[test]
    fn names_and_debug() {
        for (name, f) in DataFormat::NAMES
            .iter()
            .zip([DataFormat::Csv, DataFormat::Jsonl])
        {
            assert_eq!(DataFormat::from_name(name), Some(f));
            assert_eq!(f.name(), *name);
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{name}\""));
        }
        let fx = Fixture::new();
        let mut spec = fx.spec(Path::new("x"), DataFormat::Csv, DataFormat::Csv);
        spec.hash_key = [0xEE; 32];
        let dbg = format!("{spec:?}");
        assert!(dbg.contains("<redacted>") && !dbg.contains("238"), "{dbg}");
    }

    #[test]
    fn memory_is_reused_across_rows() {
        // Not a memory test as such: a long source streams through small chunks.
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(20_000));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Jsonl);
        spec.chunk_size = 512;
        spec.masks = masks(&[
            ("ssn", MaskMethod::Last4),
            ("client_name", MaskMethod::Hash),
        ]);
        let (out, text, seen) = run_ok(&spec);
        assert_eq!(out.rows_written, 20_000);
        assert_eq!(text.lines().count(), 20_000);
        assert_eq!(seen.len(), 40);
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9 ]{0,12}",
            "[,\"\n\r a-zé日😀\\\\]{0,12}",
            any::<String>().prop_map(|s| s.chars().filter(|&c| c != '\0').take(16).collect()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn csv_encoder_matches_the_csv_crate(
            rows in prop::collection::vec(prop::collection::vec(field(), 1..5), 1..20),
        ) {
            for row in &rows {
                let record: Row = row.iter().collect();
                let mut ours = Vec::new();
                write_csv_row(&mut ours, &record, None);
                let mut w = csv::Writer::from_writer(Vec::new());
                w.write_record(row.iter()).unwrap();
                let theirs = w.into_inner().unwrap();
                prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
            }
        }

        #[test]
        fn json_encoder_matches_serde_json(s in any::<String>()) {
            let mut ours = Vec::new();
            write_json_str(&mut ours, &s);
            prop_assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn random_rows_round_trip_through_csv(
            rows in prop::collection::vec(prop::collection::vec(field(), 4), 0..40),
            chunk_size in 1usize..8,
        ) {
            let fx = Fixture::new();
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["id", "county_id", "ssn", "note"]).unwrap();
            for r in &rows {
                w.write_record(r).unwrap();
            }
            let src = fx.source("random.csv", w.into_inner().unwrap());
            let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
            spec.chunk_size = chunk_size;
            spec.masks = masks(&[("ssn", MaskMethod::Last4), ("note", MaskMethod::Hash)]);
            let (out, text, seen) = run_ok(&spec);
            prop_assert_eq!(out.rows_written, rows.len() as u64);
            prop_assert_eq!(seen.len(), rows.len().div_ceil(chunk_size));
            prop_assert_eq!(out.sha256, sha256_hex(text.as_bytes()));
            let back: Vec<csv::StringRecord> = csv::Reader::from_reader(text.as_bytes())
                .records()
                .collect::<Result<_, _>>()
                .unwrap();
            prop_assert_eq!(back.len(), rows.len());
            for (got, want) in back.iter().zip(&rows) {
                prop_assert_eq!(&got[0], want[0].as_str());
                prop_assert_eq!(&got[1], want[1].as_str());
                prop_assert_eq!(got[2].to_string(), mask_str(MaskMethod::Last4, &want[2], &KEY).unwrap());
                prop_assert_eq!(got[3].to_string(), mask_str(MaskMethod::Hash, &want[3], &KEY).unwrap());
            }
        }
    }
}
