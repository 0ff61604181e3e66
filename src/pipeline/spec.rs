//! What a run is given and what it gives back: the [`PipelineSpec`] of one report job's data
//! step, its [`SourceSpec`] (a file, or a query on SQLite or PostgreSQL with its [`Bindings`]),
//! the [`DataFormat`] of a file and of the result, and the [`Output`] it completes with.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::masking::MaskMethod;
use crate::params::ParamValue;

/// The values a query's `:name` placeholders are bound to: the report's parameters and the
/// built-ins. `None` binds SQL NULL (an optional parameter without a default, the county of an
/// all-counties job). Values go to the driver as bound parameters, never into the SQL text.
pub type Bindings = BTreeMap<String, Option<ParamValue>>;

/// Where a run's rows come from.
#[derive(Clone, PartialEq)]
pub enum SourceSpec {
    /// A CSV or JSON lines file: the whole file is the report's data.
    File { path: PathBuf, format: DataFormat },
    /// A query on a SQLite database file, opened read-only.
    Sqlite {
        path: PathBuf,
        query: String,
        bindings: Bindings,
    },
    /// A query on a PostgreSQL database. `url` is the connection URL (it may hold a password:
    /// it is never printed, and errors never quote it); `application_name` is set on the
    /// connection so the session can be found in `pg_stat_activity`.
    Postgres {
        url: String,
        query: String,
        bindings: Bindings,
        application_name: String,
    },
}

impl SourceSpec {
    /// How errors name this source: the file's path, or the database kind (never a URL).
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::File { path, .. } => path.display().to_string(),
            SourceSpec::Sqlite { path, .. } => format!("the query on {}", path.display()),
            SourceSpec::Postgres { .. } => "the PostgreSQL query".to_string(),
        }
    }
}

impl fmt::Debug for SourceSpec {
    // Like a derived Debug, without the PostgreSQL URL (it may hold a password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::File { path, format } => f
                .debug_struct("File")
                .field("path", path)
                .field("format", format)
                .finish(),
            SourceSpec::Sqlite {
                path,
                query,
                bindings,
            } => f
                .debug_struct("Sqlite")
                .field("path", path)
                .field("query", query)
                .field("bindings", bindings)
                .finish(),
            SourceSpec::Postgres {
                query,
                bindings,
                application_name,
                ..
            } => f
                .debug_struct("Postgres")
                .field("url", &"<redacted>")
                .field("query", query)
                .field("bindings", bindings)
                .field("application_name", application_name)
                .finish(),
        }
    }
}

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
    /// Where the rows come from.
    pub source: SourceSpec,
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
    /// Final path of the result: `<results>/<REPORT_TYPE>/[<window>/]<job_id>.<ext>`. Its
    /// directory is created (durably) if it is not there.
    pub result_path: PathBuf,
    /// The source's row count when the caller already knows it for this version of the file
    /// (for progress); `None`: [`count_rows`](super::count_rows) counts a file first. A
    /// database source has no total up front (progress then counts rows without a percentage).
    pub rows_total: Option<u64>,
}

impl fmt::Debug for PipelineSpec {
    // Like a derived Debug, without the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineSpec")
            .field("source", &self.source)
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::pipeline::fixture::*;
    use crate::pipeline::{Bindings, DataFormat, SourceSpec};

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
        spec.source = SourceSpec::Postgres {
            url: "postgres://u:s3cret@db/x".into(),
            query: "SELECT 1".into(),
            bindings: Bindings::new(),
            application_name: "flowctl".into(),
        };
        let dbg = format!("{spec:?}");
        assert!(!dbg.contains("s3cret") && dbg.contains("SELECT 1"), "{dbg}");
        assert!(!spec.source.describe().contains("s3cret"));
    }
}
