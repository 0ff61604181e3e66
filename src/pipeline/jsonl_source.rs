//! The JSON lines source: one JSON object per line; blank lines are skipped. The columns are the
//! keys of the first object, in order; a later object lacking a key gives an empty value, keys
//! the first object did not have are ignored. Strings are taken as is, numbers and booleans as
//! their JSON text (floats in shortest round-trip form: `1.50` becomes `1.5`), `null` as empty,
//! nested arrays/objects as compact JSON text. Values are decoded straight into the row's
//! buffers by serde visitors.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::{io_err, PipelineError, Result};
use super::row::Row;
use super::source::{open_source, RowSource};
use super::IO_BUFFER;

/// Reads a JSON lines file as rows.
pub(super) struct JsonlSource {
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
    pub(super) fn open(path: &Path) -> Result<JsonlSource> {
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
    use crate::pipeline::fixture::*;
    use crate::pipeline::{count_rows, DataFormat, PipelineError};

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
}
