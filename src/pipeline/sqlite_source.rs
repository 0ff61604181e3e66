//! SQLite, the embedded default for a database source: a query over a database file, its
//! parameters bound by name, its rows streamed.
//!
//! The file is opened read-only (`SQLITE_OPEN_READ_ONLY`, and `PRAGMA query_only`), so a
//! report can never change the database it reads, whatever its query says. Parameters are
//! bound with SQLite's named placeholders (`:name`, `@name` or `$name`), never pasted into the
//! text; a placeholder the run has no value for is an error before a row is read (`flowctl
//! check` reports it earlier, at the query).
//!
//! Rows stream: a producer thread owns the connection and its statement (a `rusqlite::Rows`
//! borrows both, so they cannot live in the source itself) and sends rows in batches over a
//! bounded channel, so memory stays flat whatever the query returns and decoding overlaps with
//! masking and writing. Dropping the source interrupts the query and stops the thread.
//!
//! Values become text as the pipeline carries them, with their kind kept: integers in decimal,
//! reals in shortest round-trip form (`1.5`, `1e20`), text as is, a blob as lowercase hex, NULL as an
//! empty field marked null. A binding of `None` is bound as NULL.

use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::batches::{Batch, Batches, Sender};
use super::row::Row;
use super::spec::Bindings;
use super::value_kind::{push_float, push_integer, Kind};
use crate::params::ParamValue;

/// Rows per message from the producer thread (fewer when they are wide: [`BATCH_BYTES`]).
const BATCH: usize = 1024;
/// Bytes per message at most, roughly.
const BATCH_BYTES: usize = 256 * 1024;

/// Why a SQLite source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqliteError {
    #[error("cannot open SQLite database {}: {message}", path.display())]
    Open { path: PathBuf, message: String },
    #[error("SQLite database {} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("the query on {} failed: {message}", path.display())]
    Query { path: PathBuf, message: String },
    #[error(
        "the query names parameter `{name}`, which this run has no value for (known: {known})"
    )]
    UnknownParameter { name: String, known: String },
    #[error(
        "the query uses a positional placeholder (`?` or `?NNN`); name its parameters (`:name`)"
    )]
    Positional,
    #[error(
        "the query would change the database; a report's query only reads (SELECT, WITH … SELECT)"
    )]
    NotReadOnly,
}

/// A running query.
pub(super) struct SqliteSource {
    header: Row,
    interrupt: rusqlite::InterruptHandle,
    rows: Batches<SqliteError>,
}

/// Opens `path` read-only.
fn open(path: &Path) -> Result<Connection, SqliteError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let failed = |e: rusqlite::Error| SqliteError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SqliteError::Missing {
                path: path.to_path_buf(),
            })
        }
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(SqliteError::Open {
                path: path.to_path_buf(),
                message: "not a regular file".to_string(),
            })
        }
        Err(e) => {
            return Err(SqliteError::Open {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        }
    }
    let conn = Connection::open_with_flags(path, flags).map_err(failed)?;
    conn.pragma_update(None, "query_only", true)
        .map_err(failed)?;
    Ok(conn)
}

/// The placeholder names of a query, without their sigil, in order of first use; positional
/// placeholders (`?`, `?NNN`) are refused: a value is bound to a name, never to a position.
pub(super) fn placeholders(stmt: &rusqlite::Statement<'_>) -> Result<Vec<String>, SqliteError> {
    (1..=stmt.parameter_count())
        .map(|i| match stmt.parameter_name(i) {
            Some(name) if !name.starts_with('?') => Ok(name[1..].to_string()),
            _ => Err(SqliteError::Positional),
        })
        .collect()
}

/// The column names of `query` on `path` and its placeholders (without their sigil), without
/// running it: the database is opened read-only and the query only prepared. `flowctl check`
/// holds the columns against the mask rules and county column, as a run would.
pub fn describe(path: &Path, query: &str) -> Result<(Vec<String>, Vec<String>), SqliteError> {
    let conn = open(path)?;
    let stmt = conn.prepare(query).map_err(|e| query_error(path, e))?;
    if !stmt.readonly() {
        return Err(SqliteError::NotReadOnly);
    }
    let columns = stmt.column_names().map(str::to_string).collect();
    Ok((columns, placeholders(&stmt)?))
}

fn query_error(path: &Path, e: rusqlite::Error) -> SqliteError {
    // A syntax or name error carries SQLite's own message and the whole SQL text: keep the
    // message and say where in the query it is, not the query again.
    let message = match &e {
        rusqlite::Error::SqlInputError {
            msg, sql, offset, ..
        } => match usize::try_from(*offset).ok().filter(|&o| o <= sql.len()) {
            Some(offset) => {
                let before = sql.get(..offset).unwrap_or(sql);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("{msg} (line {line}, column {column} of the query)")
            }
            None => msg.clone(),
        },
        other => other.to_string(),
    };
    SqliteError::Query {
        path: path.to_path_buf(),
        message,
    }
}

impl SqliteSource {
    /// Prepares `query` on `path`, binds `bindings` by name, and starts streaming its rows. A
    /// bad query or an unknown parameter fails the open: the producer prepares the statement
    /// once and reports either its columns or the error before any row.
    pub(super) fn open(
        path: &Path,
        query: &str,
        bindings: &Bindings,
    ) -> Result<SqliteSource, SqliteError> {
        let conn = open(path)?;
        let interrupt = conn.get_interrupt_handle();
        let (path_buf, query, bindings) = (path.to_path_buf(), query.to_string(), bindings.clone());
        let (columns, rows) = Batches::start(
            "sqlite-source",
            move |mut tx| {
                if let Err(e) = produce(&conn, &path_buf, &query, &bindings, &mut tx) {
                    tx.fail(e);
                }
            },
            |e| SqliteError::Open {
                path: path.to_path_buf(),
                message: format!("cannot start its reader thread: {e}"),
            },
            || SqliteError::Query {
                path: path.to_path_buf(),
                message: "the reader stopped before the query started".to_string(),
            },
        )?;
        Ok(SqliteSource {
            header: columns.iter().collect(),
            interrupt,
            rows,
        })
    }

    pub(super) fn header(&self) -> &Row {
        &self.header
    }

    /// The kinds of the fields of the row [`SqliteSource::next_row`] returned last.
    pub(super) fn kinds(&self) -> &[Kind] {
        self.rows.kinds()
    }

    /// Moves the next row into `row`; `false` at the end.
    pub(super) fn next_row(&mut self, row: &mut Row) -> Result<bool, SqliteError> {
        self.rows.next_row(row)
    }
}

impl Drop for SqliteSource {
    fn drop(&mut self) {
        // A query still running (a cancelled report) is interrupted; dropping `rows` then
        // stops the producer and waits for it.
        self.interrupt.interrupt();
    }
}

/// Prepares and runs the query, handing its columns and then its rows in batches to `tx`
/// until the reader leaves.
fn produce(
    conn: &Connection,
    path: &Path,
    query: &str,
    bindings: &Bindings,
    tx: &mut Sender<SqliteError>,
) -> Result<(), SqliteError> {
    let mut stmt = conn.prepare(query).map_err(|e| query_error(path, e))?;
    if !stmt.readonly() {
        // The read-only open would refuse the write anyway; this says why, before any row.
        return Err(SqliteError::NotReadOnly);
    }
    for (i, name) in placeholders(&stmt)?.into_iter().enumerate() {
        let Some(value) = bindings.get(&name) else {
            let known: Vec<&str> = bindings.keys().map(String::as_str).collect();
            return Err(SqliteError::UnknownParameter {
                name,
                known: known.join(", "),
            });
        };
        bind(&mut stmt, i + 1, value.as_ref()).map_err(|e| query_error(path, e))?;
    }
    let names = stmt.column_names().map(str::to_string).collect();
    if !tx.started(names) {
        return Ok(());
    }
    let columns = stmt.column_count();
    let mut rows = stmt.raw_query();
    let mut batch = tx.batch();
    while let Some(sql_row) = rows.next().map_err(|e| query_error(path, e))? {
        for i in 0..columns {
            let value = sql_row.get_ref(i).map_err(|e| query_error(path, e))?;
            push_value(&mut batch, value);
        }
        if (batch.rows() == BATCH || batch.byte_len() >= BATCH_BYTES)
            && !tx.send(std::mem::replace(&mut batch, tx.batch()))
        {
            return Ok(());
        }
    }
    tx.send(batch);
    Ok(())
}

/// One value as the pipeline carries it: its text, and its kind.
#[inline]
fn push_value(batch: &mut Batch, value: ValueRef<'_>) {
    let kind = match value {
        ValueRef::Null => Kind::Null,
        ValueRef::Integer(n) => {
            push_integer(n, batch.buf());
            Kind::Integer
        }
        // SQLite has infinities (1e999), which become text, and no NaN.
        ValueRef::Real(x) => push_float(x, batch.buf()),
        ValueRef::Text(text) => {
            batch.buf().extend_from_slice(text);
            Kind::Text
        }
        ValueRef::Blob(bytes) => {
            let buf = batch.buf();
            let at = buf.len();
            buf.resize(at + 2 * bytes.len(), 0);
            // Cannot fail: the slice is exactly twice as long as the bytes.
            let _ = hex::encode_to_slice(bytes, &mut buf[at..]);
            Kind::Blob
        }
    };
    batch.end_field(kind);
}

/// Binds one value with the type SQLite compares it by: text for strings, exact decimals,
/// dates (`YYYY-MM-DD`) and instants (`YYYY-MM-DD HH:MM:SS` in UTC, SQLite's `datetime()`
/// form); integers and booleans (0/1) as integers; `None` as NULL.
fn bind(
    stmt: &mut rusqlite::Statement<'_>,
    index: usize,
    value: Option<&ParamValue>,
) -> rusqlite::Result<()> {
    let Some(value) = value else {
        return stmt.raw_bind_parameter(index, rusqlite::types::Null);
    };
    match value {
        ParamValue::String(s) | ParamValue::Decimal(s) => stmt.raw_bind_parameter(index, s),
        ParamValue::Integer(n) => stmt.raw_bind_parameter(index, n),
        ParamValue::Boolean(b) => stmt.raw_bind_parameter(index, i64::from(*b)),
        ParamValue::Date(d) => stmt.raw_bind_parameter(index, d.format("%Y-%m-%d").to_string()),
        ParamValue::Timestamp(t) => {
            stmt.raw_bind_parameter(index, t.format("%Y-%m-%d %H:%M:%S").to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path) -> PathBuf {
        let path = dir.join("t.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER, name TEXT, amount REAL, flag INTEGER, raw BLOB, note TEXT);
             INSERT INTO t VALUES (1, 'Zoë Muñoz', 12.5, 1, x'00ff', NULL);
             INSERT INTO t VALUES (2, 'a,b \"c\"', -0.25, 0, NULL, 'x');
             INSERT INTO t VALUES (3, 'O''Brien', 1e20, NULL, x'', '');",
        )
        .unwrap();
        path
    }

    fn all(source: &mut SqliteSource) -> Vec<(Vec<String>, Vec<Kind>)> {
        crate::pipeline::batches::collect(&mut source.rows)
    }

    #[test]
    fn rows_keep_their_values_and_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path());
        let mut source =
            SqliteSource::open(&path, "SELECT * FROM t ORDER BY id", &Bindings::new()).unwrap();
        let header: Vec<&[u8]> = source.header().iter().collect();
        assert_eq!(
            header,
            [&b"id"[..], b"name", b"amount", b"flag", b"raw", b"note"]
        );
        let rows = all(&mut source);
        use Kind::*;
        assert_eq!(rows[0].0, ["1", "Zoë Muñoz", "12.5", "1", "00ff", ""]);
        assert_eq!(rows[0].1, [Integer, Text, Real, Integer, Blob, Null]);
        assert_eq!(rows[1].0, ["2", "a,b \"c\"", "-0.25", "0", "", "x"]);
        assert_eq!(rows[1].1[4], Null);
        assert_eq!(rows[2].0, ["3", "O'Brien", "1e20", "", "", ""]);
        assert_eq!(rows[2].1, [Integer, Text, Real, Null, Blob, Text]);
    }

    #[test]
    fn parameters_are_bound_by_name_never_spliced() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path());
        let mut bindings = Bindings::new();
        // A value that would break the query if it were pasted into it.
        bindings.insert(
            "name".into(),
            Some(ParamValue::String("O'Brien'; DROP TABLE t; --".into())),
        );
        bindings.insert("min".into(), Some(ParamValue::Integer(2)));
        let mut source = SqliteSource::open(
            &path,
            "SELECT id FROM t WHERE name = :name OR id >= @min ORDER BY id",
            &bindings,
        )
        .unwrap();
        let ids: Vec<String> = all(&mut source)
            .into_iter()
            .map(|(f, _)| f[0].clone())
            .collect();
        assert_eq!(ids, ["2", "3"]);
        // The table is still there.
        let mut again =
            SqliteSource::open(&path, "SELECT count(*) FROM t", &Bindings::new()).unwrap();
        assert_eq!(all(&mut again)[0].0, ["3"]);
    }

    #[test]
    fn an_unknown_parameter_and_a_bad_query_fail_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path());
        let error = SqliteSource::open(&path, "SELECT * FROM t WHERE id = :nope", &Bindings::new())
            .err()
            .unwrap();
        assert!(
            matches!(&error, SqliteError::UnknownParameter { name, .. } if name == "nope"),
            "{error}"
        );
        let error = SqliteSource::open(&path, "SELECT * FROM missing", &Bindings::new())
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("no such table: missing"),
            "{error}"
        );
        let error = SqliteSource::open(
            &dir.path().join("none.sqlite"),
            "SELECT 1",
            &Bindings::new(),
        )
        .err()
        .unwrap();
        assert!(matches!(error, SqliteError::Missing { .. }), "{error}");
        assert!(error.to_string().contains("does not exist"), "{error}");
        for positional in [
            "SELECT * FROM t WHERE id = ?",
            "SELECT * FROM t WHERE id = ?2",
        ] {
            let error = SqliteSource::open(&path, positional, &Bindings::new())
                .err()
                .unwrap();
            assert_eq!(error, SqliteError::Positional, "{positional}");
        }
    }

    #[test]
    fn the_database_is_opened_read_only_whatever_the_query_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path());
        for query in [
            "DELETE FROM t",
            "DROP TABLE t",
            "INSERT INTO t (id) VALUES (9)",
        ] {
            let result = SqliteSource::open(&path, query, &Bindings::new()).and_then(|mut s| {
                let mut row = Row::default();
                s.next_row(&mut row)
            });
            assert!(result.is_err(), "{query} ran");
        }
        let mut count =
            SqliteSource::open(&path, "SELECT count(*) FROM t", &Bindings::new()).unwrap();
        assert_eq!(all(&mut count)[0].0, ["3"]);
    }

    #[test]
    fn describe_reads_columns_and_placeholders_without_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path());
        let (columns, params) = describe(
            &path,
            "SELECT id, name AS who FROM t WHERE id > :a AND name <> $b OR id = :a",
        )
        .unwrap();
        assert_eq!(columns, ["id", "who"]);
        assert_eq!(params, ["a", "b"]);
    }

    #[test]
    fn a_large_query_streams_and_a_dropped_source_stops_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path());
        let query = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) SELECT i FROM n";
        let mut source = SqliteSource::open(&path, query, &Bindings::new()).unwrap();
        let mut row = Row::default();
        let mut count = 0u64;
        while source.next_row(&mut row).unwrap() {
            count += 1;
        }
        assert_eq!(count, 200_000);
        // An endless query: dropping the source interrupts it and joins the thread.
        let endless =
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n";
        let mut source = SqliteSource::open(&path, endless, &Bindings::new()).unwrap();
        for _ in 0..10_000 {
            assert!(source.next_row(&mut row).unwrap());
        }
        drop(source);
    }
}
