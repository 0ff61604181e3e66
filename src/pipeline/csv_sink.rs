//! CSV output: header then rows, `\n` line ends, fields quoted only when needed — what the
//! `csv` crate's writer produces with its default settings, masking on the way.

use std::io;

use crate::masking::{MaskBuf, Masker};

use super::byte_scan::needs_csv_quotes;
use super::row::Row;
use super::sink::{Finished, Out, RowSink};
use super::value_kind::Kind;

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
pub(super) fn write_csv_row(out: &mut Vec<u8>, row: &Row, masker: Option<&Masker>) {
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

/// Encodes rows as CSV into the result.
pub(super) struct CsvSink {
    out: Out,
    masker: Masker,
}

impl CsvSink {
    pub(super) fn new(out: Out, masker: Masker) -> Self {
        CsvSink { out, masker }
    }

    /// The header record (nothing for a source without columns).
    pub(super) fn write_header(&mut self, header: &Row) -> io::Result<()> {
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
    fn write_row(&mut self, row: &Row, _kinds: &[Kind]) -> io::Result<()> {
        // Every kind is its text in CSV; NULL is an empty field.
        write_csv_row(&mut self.out.buf, row, Some(&self.masker));
        self.out.row_done()
    }

    fn finish(self) -> io::Result<Finished> {
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::masking::MaskMethod;
    use crate::pipeline::fixture::*;
    use crate::pipeline::DataFormat;

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
    }
}
