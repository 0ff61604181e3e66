//! The report pipeline: the seed's `processDataInChunksStreaming`.
//!
//! [`run`] opens the spec's source — a file (CSV or JSON lines, whose rows it counts first
//! unless the engine already counted this version of the file), or a query on SQLite or
//! PostgreSQL with its parameters bound — then streams it in chunks of `chunk_size` rows —
//! memory stays flat whatever the source size — keeps the rows of the principal's county (after
//! the query: a query that forgets to filter by county leaks nothing), masks fields by the
//! principal's role ([`crate::masking`]), and writes CSV or JSON lines to a temporary file
//! beside the result. Everything after the source is the same for every kind. After the last chunk the file is flushed,
//! `sync_all`ed, moved into place without ever replacing a file (link, then unlink the temporary
//! name) and the directory is synced: a reader never sees a partial result, and no attempt
//! overwrites another's. On any error, on cancellation, and on a panic in the observer, the temporary file is
//! removed and nothing appears at the result path.
//!
//! [`run_staged`] stops before the sync: it returns the written temporary file as a
//! [`StagedResult`], which the executor's durability stage finishes together with others
//! ([`commit_batch`]) so that a job does not hold its pool slot while the disk syncs.
//!
//! The observer is called after every chunk (progress, cancellation: `chunks`). A source
//! without data rows gives no chunk and an output with the header only (CSV) or empty (JSONL).
//!
//! Formats, each in its own file:
//! - CSV in (`csv_source`): the `csv` crate's dialect; the first record is the header, every
//!   record must have as many fields as the header (else [`PipelineError::Csv`] with the line);
//!   a UTF-8 BOM is stripped. Bytes pass through unchanged to CSV output; JSONL output requires
//!   UTF-8 (else an error with the line).
//! - JSONL in (`jsonl_source`): one JSON object per line; the columns are the keys of the first.
//! - SQLite in (`sqlite_source`): the database opened read-only, `:name` parameters bound by
//!   SQLite. PostgreSQL in (`postgres_source`, TLS in `pg_tls`): `:name` numbered for the wire
//!   (`sql_placeholders`), rows streamed with backpressure by `COPY (query) TO STDOUT (FORMAT
//!   binary)` (`pg_copy`, parameters bound through `set_config`) or, for a statement COPY
//!   refuses, `query_raw`; both decode the same binary values (`pg_decode`). Both decode on a producer thread
//!   and hand rows over in reused batches (`batches`), each field with its kind (`value_kind`).
//! - CSV out (`csv_sink`) and JSONL out (`jsonl_sink`, typed values for database sources),
//!   both encoded straight into the output buffer (`sink`), with byte scans over whole words
//!   (`byte_scan`) to skip quoting and escaping.
//!
//! The rest: `spec` (what a run is given and gives back), `error`, `source` (opening a source,
//! counting its rows), `columns` (the header against the spec), `row`, and `result_file` (the
//! temporary file and its move into place, its directory created durably).

mod byte_scan;
mod chunks;
mod columns;
mod csv_sink;
mod csv_source;
mod error;
#[cfg(test)]
mod fixture;
mod jsonl_sink;
mod jsonl_source;
mod result_file;
mod row;
mod sink;
mod source;
mod spec;
// Database sources.
mod batches;
mod pg_copy;
mod pg_decode;
mod pg_tls;
mod postgres_source;
pub mod sql_placeholders;
mod sqlite_source;
mod value_kind;

use crate::masking::Masker;

use chunks::Run;
use columns::check_columns;
use csv_sink::CsvSink;
use csv_source::CsvSource;
use error::{io_err, Result};
use jsonl_sink::JsonlSink;
use jsonl_source::JsonlSource;
use postgres_source::PostgresSource;
use result_file::TempFile;

pub use result_file::{commit_batch, StagedResult, SyncMethod};
use sink::{Out, RowSink};
use source::{PostgresRows, RowSource, SqliteRows};
use sqlite_source::SqliteSource;

pub use chunks::{Control, Observer, Progress};
pub use columns::{column_preview, read_columns};
pub use error::PipelineError;
pub use postgres_source::{describe as describe_postgres_query, PostgresError};
pub use source::count_rows;
pub use spec::{Bindings, DataFormat, Output, PipelineSpec, SourceSpec};
pub use sqlite_source::{describe as describe_sqlite_query, SqliteError};

/// Size of the read and write buffers (fits in L2 next to the working set).
const IO_BUFFER: usize = 64 * 1024;

/// Runs the pipeline described by `spec`, reporting to `observer` after each chunk.
///
/// On success the result is at `spec.result_path` (complete, synced). On error or cancellation
/// nothing new is at `spec.result_path` (a file already there is never replaced: the run fails
/// with [`PipelineError::ResultExists`]) and no temporary file is left behind.
pub fn run(spec: &PipelineSpec, observer: &mut dyn Observer) -> Result<Output> {
    let (output, staged) = run_staged(spec, observer)?;
    staged.commit_now()?;
    Ok(output)
}

/// [`run`] up to the result's last byte: the rows written to the temporary file, which is
/// flushed but neither synced nor at `spec.result_path` yet. The [`Output`] describes the file
/// it will be; [`StagedResult::commit_now`] or [`commit_batch`] puts it there (and may still
/// fail, e.g. with [`PipelineError::ResultExists`]). Dropping the staged result removes it.
pub fn run_staged(
    spec: &PipelineSpec,
    observer: &mut dyn Observer,
) -> Result<(Output, StagedResult)> {
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
    match &spec.source {
        SourceSpec::File { path, format } => {
            let rows_total = match spec.rows_total {
                Some(rows) => rows,
                None => count_rows(path, *format)?,
            };
            match format {
                DataFormat::Csv => {
                    run_source(spec, CsvSource::open(path)?, Some(rows_total), observer)
                }
                DataFormat::Jsonl => {
                    run_source(spec, JsonlSource::open(path)?, Some(rows_total), observer)
                }
            }
        }
        SourceSpec::Sqlite {
            path,
            query,
            bindings,
        } => {
            let source = SqliteRows(SqliteSource::open(path, query, bindings)?);
            run_source(spec, source, spec.rows_total, observer)
        }
        SourceSpec::Postgres {
            url,
            query,
            bindings,
            application_name,
        } => {
            let source = PostgresRows(PostgresSource::open(
                url,
                query,
                bindings,
                application_name,
            )?);
            run_source(spec, source, spec.rows_total, observer)
        }
    }
}

fn run_source<S: RowSource>(
    spec: &PipelineSpec,
    mut source: S,
    rows_total: Option<u64>,
    observer: &mut dyn Observer,
) -> Result<(Output, StagedResult)> {
    let header = source.header().clone();
    let county = check_columns(spec, &header)?;
    let masker = Masker::new(&spec.masks, header.iter(), &spec.hash_key);

    let (file, temp) = TempFile::create(&spec.result_path)?;
    let out = Out::new(file);
    let mut run = Run {
        spec,
        county,
        progress: Progress {
            rows_total: rows_total.unwrap_or(0),
            total_known: rows_total.is_some(),
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
            // JSON sources are UTF-8 by construction, PostgreSQL text is checked as it is
            // decoded; CSV files and SQLite text may hold any bytes.
            let validate = matches!(
                spec.source,
                SourceSpec::File {
                    format: DataFormat::Csv,
                    ..
                } | SourceSpec::Sqlite { .. }
            );
            run.stream(&mut source, &mut sink, observer, &temp.path, validate)?;
            sink.finish()
        }
    };
    let (file, digest, bytes) = finished.map_err(io_err(&temp.path))?;
    Ok((
        Output {
            path: spec.result_path.clone(),
            rows_written: run.progress.rows_written,
            sha256: hex::encode(digest),
            bytes,
        },
        StagedResult::new(file, temp, spec.result_path.clone()),
    ))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use proptest::prelude::*;

    use super::*;
    use crate::masking::MaskMethod;
    use crate::pipeline::fixture::*;

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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

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
