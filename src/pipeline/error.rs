//! Why a run fails: [`PipelineError`], with a stable code and whether a retry may help.

use std::io;
use std::path::{Path, PathBuf};

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
    /// A text value of a database source is not UTF-8, which JSON output requires.
    #[error("row {row} of {source_name}: field {field} is not valid UTF-8 (byte {at}), which JSON output requires")]
    NotUtf8 {
        source_name: String,
        row: u64,
        field: usize,
        at: usize,
    },
    /// A county filter is requested but the source has no such column. `source_name` is the
    /// file, or the query of a database source.
    #[error("county column `{column}` is not a column of {source_name} (its columns: {columns})")]
    MissingCountyColumn {
        column: String,
        source_name: String,
        columns: String,
    },
    /// A mask rule names a column the source does not have.
    #[error("mask rule on `{column}` names no column of {source_name} (its columns: {columns}); no row was written")]
    MissingMaskColumn {
        column: String,
        source_name: String,
        columns: String,
    },
    /// A SQLite source failed: a missing database, a bad query, an unknown parameter.
    #[error(transparent)]
    Sqlite(#[from] super::SqliteError),
    /// A PostgreSQL source failed; transient when the connection was refused or lost.
    #[error(transparent)]
    Postgres(#[from] super::PostgresError),
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
            PipelineError::NotUtf8 { .. } => "bad_text",
            PipelineError::Sqlite(super::SqliteError::Missing { .. }) => "source_missing",
            PipelineError::Sqlite(_) => "source_query",
            PipelineError::Postgres(e) => match e {
                super::PostgresError::Connect(_) => "source_unavailable",
                super::PostgresError::Lost(_) => "source_lost",
                super::PostgresError::Rejected(_) => "source_rejected",
                _ => "source_query",
            },
            PipelineError::MissingCountyColumn { .. } => "missing_county_column",
            PipelineError::MissingMaskColumn { .. } => "missing_mask_column",
            PipelineError::ResultExists { .. } => "result_exists",
            PipelineError::InvalidSpec { .. } => "invalid_spec",
            PipelineError::Cancelled => "cancelled",
        }
    }

    /// Whether running the same spec again may succeed: I/O errors, and a PostgreSQL server
    /// that could not be reached or dropped the connection. A missing source, bad data, a bad
    /// query, a rule the source does not fit and a bad spec fail the same way every time, so a
    /// job that meets one fails at once instead of spending its retries.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Io { .. } => true,
            PipelineError::Postgres(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// The pipeline's results.
pub(super) type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// Maps an I/O error on `path` to [`PipelineError::Io`].
pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    }
}
