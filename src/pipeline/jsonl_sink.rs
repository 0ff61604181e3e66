//! JSON lines output: one object per row, keys = header names in order.
//!
//! Values keep the type a database source gave them ([`Kind`]): integers, reals and exact
//! decimals (PostgreSQL `numeric`, written digit for digit: `12.50` stays `12.50`) as JSON
//! numbers, booleans as `true`/`false`, NULL as `null`, JSON columns embedded as JSON
//! (validated first, and put on one line; a value that does not parse is written as a string),
//! text and blobs (lowercase hex) as strings. A file source's values are all strings. A masked
//! field is a string whatever its kind, or `null` for the `null` method: a mask never leaves a
//! number or a JSON document readable through its type.

use std::io;

use crate::masking::{MaskBuf, Masker};

use super::byte_scan::needs_json_escapes;
use super::row::Row;
use super::sink::{Finished, Out, RowSink};
use super::value_kind::Kind;

/// Encodes rows as JSON lines into the result.
pub(super) struct JsonlSink {
    out: Out,
    masker: Masker,
    /// Per column: `{"name":` for the first, `,"name":` for the others.
    keys: Vec<Vec<u8>>,
}

impl JsonlSink {
    pub(super) fn new(out: Out, masker: Masker, header: &Row) -> Self {
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
    fn write_row(&mut self, row: &Row, kinds: &[Kind]) -> io::Result<()> {
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
            if self.masker.method(i).is_none() {
                match kinds.get(i) {
                    Some(Kind::Null) => {
                        out.extend_from_slice(b"null");
                        continue;
                    }
                    Some(Kind::Integer | Kind::Real | Kind::Decimal | Kind::Bool) => {
                        // The sources write these as JSON numbers and literals already.
                        out.extend_from_slice(field);
                        continue;
                    }
                    Some(Kind::Json) => {
                        write_json_value(out, field);
                        continue;
                    }
                    Some(Kind::Text | Kind::Blob) | None => {}
                }
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

/// A JSON column's value embedded as JSON: checked to parse (a database's JSON does, but a
/// value that did not would break the line), and put on one line — a line break can only be
/// whitespace between tokens in valid JSON, never inside a string. Written as a JSON string
/// when it does not parse.
fn write_json_value(out: &mut Vec<u8>, value: &[u8]) {
    if serde_json::from_slice::<serde::de::IgnoredAny>(value).is_err() {
        write_json_bytes(out, value);
        return;
    }
    if memchr::memchr2(b'\n', b'\r', value).is_none() {
        out.extend_from_slice(value);
    } else {
        out.extend(value.iter().filter(|&&b| b != b'\n' && b != b'\r'));
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::masking::MaskMethod;
    use crate::pipeline::fixture::*;
    use crate::pipeline::DataFormat;

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
    fn typed_values_are_written_as_json_and_masked_ones_as_strings() {
        let header: Row = ["i", "d", "b", "n", "j", "t", "m", "bad"].iter().collect();
        let masker = Masker::new(&masks(&[("m", MaskMethod::Last4)]), header.iter(), &KEY);
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("out")).unwrap();
        let mut sink = JsonlSink::new(Out::new(file), masker, &header);
        let row: Row = [
            "-7",
            "12.50",
            "true",
            "",
            "{\"k\":\n [1, 2.0]}",
            "Zoë",
            "123456",
            "{nope",
        ]
        .iter()
        .collect();
        use Kind::*;
        sink.write_row(
            &row,
            &[Integer, Decimal, Bool, Null, Json, Text, Integer, Json],
        )
        .unwrap();
        let (_, _, _) = sink.finish().unwrap();
        let text = std::fs::read_to_string(dir.path().join("out")).unwrap();
        assert_eq!(
            text,
            "{\"i\":-7,\"d\":12.50,\"b\":true,\"n\":null,\"j\":{\"k\": [1, 2.0]},\"t\":\"Zoë\",\"m\":\"****3456\",\"bad\":\"{nope\"}\n"
        );
        assert!(serde_json::from_str::<serde_json::Value>(text.trim_end()).is_ok());
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn json_encoder_matches_serde_json(s in any::<String>()) {
            let mut ours = Vec::new();
            write_json_str(&mut ours, &s);
            prop_assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&s).unwrap());
        }
    }
}
