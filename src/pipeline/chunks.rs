//! The chunk loop and what it reports after each chunk: [`Progress`], to an [`Observer`] that
//! answers with a [`Control`] (go on, or cancel).
//!
//! A chunk is `chunk_size` *source* rows, whether or not the county filter keeps them, so
//! progress and cancellation latency do not depend on how selective the filter is; the last
//! chunk may be shorter. A source without data rows gives no chunk. The county filter is
//! applied here — after the query, for a database source, so a query that forgets to filter by
//! county still hands out only the principal's county — and, from a CSV or SQLite source to
//! JSONL output, the check that each kept row is UTF-8.

use std::path::Path;

use super::error::{io_err, PipelineError, Result};
use super::row::Row;
use super::sink::RowSink;
use super::source::RowSource;
use super::{PipelineSpec, SourceSpec};

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
    /// Source rows in total: [`count_rows`](super::count_rows)'s estimate, raised to
    /// `rows_read` if that is larger, so `rows_read <= rows_total` always holds. Without a
    /// known total (a database source) it follows `rows_read`.
    pub rows_total: u64,
    /// Whether `rows_total` is a count (or estimate) made before the run; `false` for a
    /// database query, whose size is only known at its end: no percentage, no time left.
    pub total_known: bool,
    /// Rows written to the result so far (after the county filter).
    pub rows_written: u64,
    /// Chunks done so far (1 at the first call).
    pub chunks: u64,
}

impl Progress {
    /// Percentage done, 0–100 (100 for an empty source; 0 while the total is unknown).
    pub fn percent(&self) -> u8 {
        if !self.total_known {
            return 0;
        }
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

/// One run's state in the chunk loop: the spec, the county filter (column index and the
/// county's bytes, from [`check_columns`](super::columns::check_columns)) and the progress.
pub(super) struct Run<'a> {
    pub(super) spec: &'a PipelineSpec,
    pub(super) county: Option<(usize, &'a [u8])>,
    pub(super) progress: Progress,
}

impl Run<'_> {
    /// The chunk loop. `validate_utf8`: reject rows that are not UTF-8 (CSV source, JSON out).
    pub(super) fn stream<S: RowSource, K: RowSink>(
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
                    check_utf8(&row, self.spec)?;
                }
                sink.write_row(&row, source.kinds())
                    .map_err(io_err(out_path))?;
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

fn check_utf8(row: &Row, spec: &PipelineSpec) -> Result<()> {
    if row.as_bytes().is_ascii() {
        return Ok(());
    }
    for (i, field) in row.iter().enumerate() {
        if let Err(e) = std::str::from_utf8(field) {
            return Err(match &spec.source {
                SourceSpec::File { path, .. } => PipelineError::Csv {
                    path: path.clone(),
                    line: row.line,
                    message: format!(
                        "field {} is not valid UTF-8 (byte {}), which JSON output requires",
                        i + 1,
                        e.valid_up_to()
                    ),
                },
                other => PipelineError::NotUtf8 {
                    source_name: other.describe(),
                    row: row.line,
                    field: i + 1,
                    at: e.valid_up_to(),
                },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::pipeline::fixture::*;
    use crate::pipeline::{run, Control, DataFormat, PipelineError, Progress};

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
}
