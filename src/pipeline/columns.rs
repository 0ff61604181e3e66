//! A source's columns against the spec: every column a mask rule names must be there, and
//! the county column when a county is filtered on; [`read_columns`] gives `flowctl check` the
//! same header a run would read.

use std::path::Path;

use super::csv_source::CsvSource;
use super::error::{PipelineError, Result};
use super::jsonl_source::JsonlSource;
use super::row::Row;
use super::source::RowSource;
use super::{DataFormat, PipelineSpec};

/// The county filter's column index, after checking that every column a rule names is in
/// the header: the one place where a rule that cannot be applied stops a run, for every source
/// kind, before the result file is even created. A source without any column has no rows
/// either: there is nothing to filter or mask.
pub(super) fn check_columns<'a>(
    spec: &'a PipelineSpec,
    header: &Row,
) -> Result<Option<(usize, &'a [u8])>> {
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
                source_name: spec.source.describe(),
                columns: listed(),
            });
        }
    }
    match (&spec.county, &spec.county_column) {
        (Some(county), Some(column)) => match position(column) {
            Some(index) => Ok(Some((index, county.as_bytes()))),
            None => Err(PipelineError::MissingCountyColumn {
                column: column.clone(),
                source_name: spec.source.describe(),
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

#[cfg(test)]
mod tests {
    use crate::masking::MaskMethod;
    use crate::pipeline::fixture::*;
    use crate::pipeline::{read_columns, DataFormat, PipelineError};

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
}
