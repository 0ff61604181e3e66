//! `COPY (query) TO STDOUT (FORMAT binary)` for a PostgreSQL source: the statement, its
//! parameters bound without a value ever entering SQL text, and a reader of the binary COPY
//! format that hands each field to the same decoders as `query_raw`'s rows (`pg_decode`).
//!
//! Why COPY: the server sends a COPY row as one `CopyData` message of length-prefixed fields,
//! which tokio-postgres passes on as one `Bytes` slice, where a `DataRow` becomes a
//! `tokio_postgres::Row` (an allocated range per field, a checked `try_get` per field). On the
//! `cases` bench (`benches/sources.rs`, 1M rows, 8 columns) tokio-postgres's share of the
//! producer thread's time falls from ~22% to ~11%; the figures are in `postgres_source`'s
//! module docs.
//!
//! **Parameters.** COPY takes no bind parameters, and a value is never pasted into SQL text.
//! So the query is first prepared as it is (`$n` placeholders), which gives each parameter's
//! type as the server inferred it, and each value is bound, as text, to a transaction-local
//! setting: `SELECT pg_catalog.set_config('flowctl.pN', $k, true)` inside `BEGIN READ ONLY`.
//! Each placeholder is rewritten to
//! `(SELECT CAST(pg_catalog.current_setting('flowctl.pN') AS "schema"."type"))`: the same
//! text input function a text-format parameter of that type goes through, so the values and
//! their types are those of `query_raw`. The scalar sub-select makes it an init plan,
//! evaluated once per query (118–186 ms per 1M rows cheaper than a bare `current_setting` per
//! row, measured when this was chosen: 460–1016 ms). A NULL binding is `CAST(NULL AS type)`:
//! `set_config` cannot hold a NULL. What goes into the text is ours only: setting names with
//! numbers, and type names from the server's catalog, quoted as identifiers.
//!
//! **The format** (PostgreSQL's `COPY` docs, "Binary Format"): the signature
//! `PGCOPY\n\377\r\n\0`, a 32-bit flags word (bit 16: OIDs included, which a query's COPY
//! never has; bits 17–31 are critical and must be 0), a 32-bit header-extension length and that
//! many bytes (skipped); then per tuple a 16-bit field count and per field a 32-bit length (-1:
//! NULL) and the value's bytes in its type's binary (`send`) form; a field count of -1 ends the
//! data. Message boundaries are not relied on: [`CopyReader`] keeps the unfinished part of a
//! tuple for the next chunk (the server sends one tuple per message, the header with the first).

use std::fmt::Write as _;

use tokio_postgres::types::Type;

use super::batches::Batch;
use super::pg_decode::Decoder;
use super::sql_placeholders::{rewrite, PlaceholderError};
use super::value_kind::Kind;

/// The start of binary COPY data.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// What is wrong with COPY data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum CopyFormatError {
    #[error("the COPY data does not start with the binary signature")]
    Signature,
    #[error("the COPY data has flags {0:#x}, which this reader does not know")]
    Flags(u32),
    #[error("a COPY tuple has {got} fields where the query has {want} columns")]
    FieldCount { got: i16, want: usize },
    #[error("a COPY field has length {0}")]
    FieldLength(i32),
    #[error("decoding column {column}: {message}")]
    Decode { column: usize, message: String },
    #[error("the COPY data goes on after its end marker")]
    AfterEnd,
    #[error("the COPY data ended without its end marker")]
    Truncated,
}

/// The setting that carries parameter `number`'s value.
fn setting(number: usize) -> String {
    format!("flowctl.p{number}")
}

/// `ty` as a schema-qualified, quoted type name (`"pg_catalog"."int4"`), from the catalog.
fn type_name(ty: &Type) -> String {
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    format!("{}.{}", quote(ty.schema()), quote(ty.name()))
}

/// The COPY statement for `query` (with `:name` placeholders): parameter `n` (1-based, as
/// [`super::sql_placeholders::number`] numbers them) of type `types[n - 1]` reads its setting,
/// or is a typed NULL where `nulls[n - 1]`.
pub(super) fn copy_statement(
    query: &str,
    types: &[Type],
    nulls: &[bool],
) -> Result<String, PlaceholderError> {
    let mut out = String::from("COPY (\n");
    let (body, _) = rewrite(query, |number, text| {
        let ty = types
            .get(number.wrapping_sub(1))
            .map_or_else(|| "\"pg_catalog\".\"text\"".to_string(), type_name);
        if nulls.get(number.wrapping_sub(1)).copied().unwrap_or(false) {
            let _ = write!(text, "(SELECT CAST(NULL AS {ty}))");
        } else {
            let _ = write!(
                text,
                "(SELECT CAST(pg_catalog.current_setting('{}') AS {ty}))",
                setting(number)
            );
        }
    })?;
    // A statement may end in `;` (a `.sql` file often does); inside the parentheses it may not.
    // A comment after it stays (the line break below ends a `--` one).
    let mut body = body.trim_end();
    while let Some(shorter) = body.strip_suffix(';') {
        body = shorter.trim_end();
    }
    out.push_str(body);
    out.push_str("\n) TO STDOUT (FORMAT binary)");
    Ok(out)
}

/// The statement that binds the values of the parameters numbered `numbers` (1-based) to their
/// settings, `$1` for the first of them: one round trip for all. `None` when there are none.
pub(super) fn set_config_statement(numbers: &[usize]) -> Option<String> {
    if numbers.is_empty() {
        return None;
    }
    let mut sql = String::from("SELECT ");
    for (k, number) in numbers.iter().enumerate() {
        if k > 0 {
            sql.push_str(", ");
        }
        let _ = write!(
            sql,
            "pg_catalog.set_config('{}', ${}, true)",
            setting(*number),
            k + 1
        );
    }
    Some(sql)
}

/// Where the reader is in the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Tuples,
    Done,
}

/// Binary COPY data, fed in chunks, decoded into batches.
pub(super) struct CopyReader {
    decoders: Vec<Decoder>,
    /// The unfinished end of the last chunk (part of a tuple, or of the header).
    pending: Vec<u8>,
    state: State,
}

impl CopyReader {
    pub(super) fn new(decoders: Vec<Decoder>) -> CopyReader {
        CopyReader {
            decoders,
            pending: Vec::new(),
            state: State::Header,
        }
    }

    /// Decodes every whole tuple of `chunk` (after what is pending) into `batch`, and keeps
    /// the rest for the next chunk.
    pub(super) fn feed(&mut self, chunk: &[u8], batch: &mut Batch) -> Result<(), CopyFormatError> {
        if self.pending.is_empty() {
            let used = self.read(chunk, batch)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(chunk);
            let used = self.read(&pending, batch);
            pending.drain(..used.as_ref().map_or(0, |u| *u));
            self.pending = pending;
            used?;
        }
        Ok(())
    }

    /// Whether the data ended as it should: the end marker read, nothing after it.
    pub(super) fn finish(&self) -> Result<(), CopyFormatError> {
        if self.state == State::Done && self.pending.is_empty() {
            Ok(())
        } else {
            Err(CopyFormatError::Truncated)
        }
    }

    /// Reads what is whole in `data`; the bytes used.
    fn read(&mut self, data: &[u8], batch: &mut Batch) -> Result<usize, CopyFormatError> {
        let mut at = 0;
        loop {
            let rest = &data[at..];
            match self.state {
                State::Header => match header(rest)? {
                    Some(len) => {
                        at += len;
                        self.state = State::Tuples;
                    }
                    None => return Ok(at),
                },
                State::Tuples => {
                    let Some(count) = be_i16(rest, 0) else {
                        return Ok(at);
                    };
                    if count == -1 {
                        at += 2;
                        self.state = State::Done;
                        continue;
                    }
                    if usize::try_from(count).ok() != Some(self.decoders.len()) {
                        return Err(CopyFormatError::FieldCount {
                            got: count,
                            want: self.decoders.len(),
                        });
                    }
                    match tuple_len(rest, self.decoders.len())? {
                        Some(len) => {
                            self.decode(&rest[2..len], batch)?;
                            at += len;
                        }
                        None => return Ok(at),
                    }
                }
                State::Done if rest.is_empty() => return Ok(at),
                State::Done => return Err(CopyFormatError::AfterEnd),
            }
        }
    }

    /// Decodes a whole tuple's fields (after its field count; their lengths checked).
    #[inline]
    fn decode(&self, mut fields: &[u8], batch: &mut Batch) -> Result<(), CopyFormatError> {
        for (column, decoder) in self.decoders.iter().enumerate() {
            let (len, rest) = fields.split_at(4);
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            if len < 0 {
                batch.end_field(Kind::Null);
                fields = rest;
                continue;
            }
            let (raw, rest) = rest.split_at(len as usize);
            let kind = decoder
                .write(raw, batch.buf())
                .map_err(|e| CopyFormatError::Decode {
                    column: column + 1,
                    message: e.to_string(),
                })?;
            batch.end_field(kind);
            fields = rest;
        }
        Ok(())
    }
}

fn be_i16(data: &[u8], at: usize) -> Option<i16> {
    let b = data.get(at..at + 2)?;
    Some(i16::from_be_bytes([b[0], b[1]]))
}

fn be_i32(data: &[u8], at: usize) -> Option<i32> {
    let b = data.get(at..at + 4)?;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The header's length when `data` holds all of it; `None` when it is still short.
fn header(data: &[u8]) -> Result<Option<usize>, CopyFormatError> {
    let start = data.len().min(SIGNATURE.len());
    if data[..start] != SIGNATURE[..start] {
        return Err(CopyFormatError::Signature);
    }
    let (Some(flags), Some(extension)) = (be_i32(data, 11), be_i32(data, 15)) else {
        return Ok(None);
    };
    // Bit 16: OIDs; bits 17–31 critical: none may be set. Bits 0–15 may be ignored.
    let flags = flags as u32;
    if flags & 0xFFFF_0000 != 0 {
        return Err(CopyFormatError::Flags(flags));
    }
    let extension = usize::try_from(extension).map_err(|_| CopyFormatError::Flags(flags))?;
    let len = 19usize.saturating_add(extension);
    Ok((data.len() >= len).then_some(len))
}

/// The length of the tuple at the start of `data` (field count included) when all of it is
/// there, its field lengths checked; `None` when it is still short.
#[inline]
fn tuple_len(data: &[u8], fields: usize) -> Result<Option<usize>, CopyFormatError> {
    let mut at = 2usize;
    for _ in 0..fields {
        let Some(len) = be_i32(data, at) else {
            return Ok(None);
        };
        at += 4;
        match len {
            -1 => {}
            len if len < 0 => return Err(CopyFormatError::FieldLength(len)),
            len => at = at.saturating_add(len as usize),
        }
        if at > data.len() {
            return Ok(None);
        }
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary COPY data with `tuples` (each field `None` for NULL), as the server writes it.
    fn copy_data(tuples: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for tuple in tuples {
            out.extend_from_slice(&(tuple.len() as i16).to_be_bytes());
            for field in tuple {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn reader() -> CopyReader {
        CopyReader::new(vec![Decoder::Int4, Decoder::Text])
    }

    /// The fields of `batch` as text, `None` for NULL.
    fn fields(batch: &Batch) -> Vec<(String, Kind)> {
        batch
            .fields()
            .map(|(bytes, kind)| (String::from_utf8(bytes.to_vec()).unwrap(), kind))
            .collect()
    }

    #[test]
    fn tuples_split_anywhere_across_chunks_decode_the_same() {
        let data = copy_data(&[
            vec![Some(&7i32.to_be_bytes()[..]), Some("Zoë".as_bytes())],
            vec![None, Some(b"")],
            vec![Some(&(-1i32).to_be_bytes()[..]), None],
        ]);
        let want = [
            ("7".to_string(), Kind::Integer),
            ("Zoë".to_string(), Kind::Text),
            (String::new(), Kind::Null),
            (String::new(), Kind::Text),
            ("-1".to_string(), Kind::Integer),
            (String::new(), Kind::Null),
        ];
        for size in 1..=data.len() {
            let mut reader = reader();
            let mut batch = Batch::default();
            batch.reset(2);
            for chunk in data.chunks(size) {
                reader.feed(chunk, &mut batch).unwrap();
            }
            reader.finish().unwrap();
            assert_eq!(batch.rows(), 3, "chunks of {size}");
            assert_eq!(fields(&batch), want, "chunks of {size}");
        }
    }

    #[test]
    fn bad_or_cut_copy_data_is_an_error_never_a_panic() {
        let good = copy_data(&[vec![Some(&7i32.to_be_bytes()[..]), Some(b"x")]]);
        let run = |data: &[u8]| {
            let mut reader = reader();
            let mut batch = Batch::default();
            batch.reset(2);
            reader.feed(data, &mut batch).and_then(|_| reader.finish())
        };
        assert_eq!(run(&good), Ok(()));
        // Every prefix is cut short (or, for the empty one, has no header).
        for end in 0..good.len() {
            assert_eq!(run(&good[..end]), Err(CopyFormatError::Truncated), "{end}");
        }
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(run(&bad), Err(CopyFormatError::Signature));
        let mut oids = good.clone();
        oids[12] = 1;
        assert_eq!(run(&oids), Err(CopyFormatError::Flags(0x1_0000)));
        let three = copy_data(&[vec![None, None, None]]);
        assert_eq!(
            run(&three),
            Err(CopyFormatError::FieldCount { got: 3, want: 2 })
        );
        let mut negative = good.clone();
        negative[21..25].copy_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(run(&negative), Err(CopyFormatError::FieldLength(-2)));
        let mut huge = good.clone();
        huge[21..25].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(run(&huge), Err(CopyFormatError::Truncated));
        let mut short_int = copy_data(&[vec![Some(b"ab"), Some(b"x")]]);
        assert!(matches!(
            run(&short_int),
            Err(CopyFormatError::Decode { column: 1, .. })
        ));
        short_int.extend_from_slice(b"more");
        assert!(run(&short_int).is_err());
        let mut after = good.clone();
        after.push(0);
        assert_eq!(run(&after), Err(CopyFormatError::AfterEnd));
        // A header extension is skipped.
        let mut extended = good[..15].to_vec();
        extended.extend_from_slice(&3u32.to_be_bytes());
        extended.extend_from_slice(b"abc");
        extended.extend_from_slice(&good[19..]);
        assert_eq!(run(&extended), Ok(()));
    }

    #[test]
    fn the_copy_statement_carries_no_value_and_types_each_placeholder() {
        let types = [Type::DATE, Type::TEXT];
        let sql = copy_statement(
            "SELECT a FROM t WHERE d >= :day AND n <> :name AND d < :day + 1; -- end",
            &types,
            &[false, true],
        )
        .unwrap();
        assert_eq!(
            sql,
            "COPY (\nSELECT a FROM t WHERE d >= \
             (SELECT CAST(pg_catalog.current_setting('flowctl.p1') AS \"pg_catalog\".\"date\")) \
             AND n <> (SELECT CAST(NULL AS \"pg_catalog\".\"text\")) AND d < \
             (SELECT CAST(pg_catalog.current_setting('flowctl.p1') AS \"pg_catalog\".\"date\")) + 1; -- end\n\
             ) TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            copy_statement("SELECT 1 ; \n;\n", &[], &[]).unwrap(),
            "COPY (\nSELECT 1\n) TO STDOUT (FORMAT binary)"
        );
        assert_eq!(set_config_statement(&[]), None);
        assert_eq!(
            set_config_statement(&[1, 3]).unwrap(),
            "SELECT pg_catalog.set_config('flowctl.p1', $1, true), \
             pg_catalog.set_config('flowctl.p3', $2, true)"
        );
    }
}
