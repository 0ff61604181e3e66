//! Estimates: how many rows a job's source has (counted once per version of the file) and
//! how fast its report type runs (a moving average of the rows per second observed).
//!
//! A database source has no count up front (counting would run the query twice): its jobs
//! get no estimated completion, and their progress counts rows without a percentage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::pipeline;
use crate::workflow::{DataFormat, Source, SourceKind};

use super::Engine;

/// Rows per second assumed for estimates before a report type has run.
pub(super) const DEFAULT_ROWS_PER_SEC: f64 = 500_000.0;

/// Rows of each source, counted once per version of its file (size and
/// modification time), so estimating a job costs a `stat`, not a read.
#[derive(Default)]
pub(super) struct RowCounts(Mutex<HashMap<PathBuf, (FileVersion, u64)>>);

type FileVersion = (u64, Option<std::time::SystemTime>);

/// The source's file and format, for the file sources whose rows can be counted ahead.
fn counted_file(source: &Source) -> Option<(&PathBuf, DataFormat)> {
    match &source.kind {
        SourceKind::File { path, format } => Some((path, *format)),
        _ => None,
    }
}

fn file_version(source: &Source) -> Option<FileVersion> {
    let (path, _) = counted_file(source)?;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()))
}

impl RowCounts {
    /// The source's rows, counted once per version of the file.
    pub(super) fn get(&self, source: &Source) -> Option<u64> {
        let version = file_version(source)?;
        if let Some(rows) = self.lookup(source, version) {
            return Some(rows);
        }
        let (path, format) = counted_file(source)?;
        let rows = pipeline::count_rows(path, format).ok()?;
        if let Ok(mut cache) = self.0.lock() {
            cache.insert(path.clone(), (version, rows));
        }
        Some(rows)
    }

    /// The count of the source's current version if it was counted already; never reads it
    /// (the pipeline counts a source it is not given a count for).
    pub(super) fn cached(&self, source: &Source) -> Option<u64> {
        self.lookup(source, file_version(source)?)
    }

    fn lookup(&self, source: &Source, version: FileVersion) -> Option<u64> {
        let (path, _) = counted_file(source)?;
        let cache = self.0.lock().ok()?;
        cache
            .get(path)
            .filter(|(counted, _)| *counted == version)
            .map(|&(_, rows)| rows)
    }
}

/// Estimates: read the row counts and the throughput per report type; `record_rate` writes
/// the throughput after each attempt.
impl Engine {
    /// Start time + rows to do / throughput observed for this report type.
    pub fn estimate(&self, report_type: &str, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let report = self.workflow.report(report_type)?;
        let source = self.workflow.source_of(report);
        let rows = self.row_counts.get(source)?;
        let rate = self.rate(report_type);
        let secs = rows as f64 / rate;
        Some(from + chrono::Duration::milliseconds((secs * 1000.0) as i64))
    }

    fn rate(&self, report_type: &str) -> f64 {
        self.throughput
            .lock()
            .ok()
            .and_then(|t| t.get(report_type).copied())
            .unwrap_or(DEFAULT_ROWS_PER_SEC)
    }

    pub(super) fn record_rate(&self, report_type: &str, rows: u64, elapsed: Duration) {
        if rows == 0 || elapsed.is_zero() {
            return;
        }
        let observed = rows as f64 / elapsed.as_secs_f64();
        if let Ok(mut t) = self.throughput.lock() {
            let e = t.entry(report_type.to_string()).or_insert(observed);
            *e = 0.7 * *e + 0.3 * observed;
        }
    }
}
