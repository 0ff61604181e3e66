//! PostgreSQL as a report source: a query whose `:name` parameters are bound, its rows
//! streamed with backpressure.
//!
//! **How rows are read.** By `COPY (query) TO STDOUT (FORMAT binary)` (`pg_copy`): the query is
//! prepared as written (its errors located in its own text, its columns and its parameters'
//! types), the values are bound to transaction-local settings that the COPY's query reads in
//! place of each placeholder, and the binary COPY data is decoded field by field. A statement
//! the server will not run inside COPY (`SHOW …`, a query ending in `; -- comment`, a statement
//! with no result columns) is run by `query_raw` instead: the server's refusal comes before the
//! first row, the transaction is rolled back, and the statement then runs as it always did and
//! reports its own error if it has one. Either way tokio-postgres hands messages over through
//! a channel of one message, so a consumer busy masking and writing stops the reads from the
//! socket and the server waits: memory stays flat for a 10-million-row query without a round
//! trip per chunk (a portal fetched `chunk_size` rows at a time would cost one per fetch).
//!
//! Why COPY, measured (`cargo bench --bench sources`: 1M `cases` rows, 8 columns, 3 masks;
//! old and new binaries alternated in one session on 2 cores shared with other builds, load
//! 2–6). The figure that load disturbs least is the CPU this process spends per row over both
//! threads, which the bench prints: `query_raw` 927, 1177, 1186, 1192, 1193, 1194, 1204, 1217,
//! 1246 ns; COPY 876, 970, 1015, 1134 ns; COPY with `pg_decode`'s integer date arithmetic
//! 768, 810, 886, 915, 993 ns. A profile (perf) of the producer thread: under `query_raw`,
//! tokio-postgres's per-row `Row` (a `Vec` of ranges, a checked `try_get` per field) and its
//! allocations took ~22% of its samples, under COPY ~11%; chrono's date arithmetic ~5% and
//! `from_utf8` ~5% (both now skipped on the common path); the rest is the socket, TLS and
//! tokio-postgres's message parsing. The consumer side (masks, the keyed hash, CSV, the file's
//! SHA-256) is about a third of the process's CPU and is not this module's. Wall time follows
//! the server and the machine's load: 1.16M rows/s for COPY on a quiet moment, 0.28–0.88M
//! for either read under load, `psql \copy` itself 0.85–2.3 s per 1M rows.
//!
//! The COPY's transaction is `BEGIN READ ONLY` on top of the session's
//! `default_transaction_read_only`, which still holds for `query_raw` and everything else on
//! the connection. The transaction is never committed: it wrote nothing, and it ends with the
//! session. A COPY error after rows were sent is reported without a position (it would point
//! into the COPY statement, not the report's query).
//!
//! Parameters go over the wire as text with the type the server inferred for their place in the
//! query (as libpq's `PQexecParams` does; under COPY, the same text through the same type's
//! input function), so `:interval_start_date` compares with a `date` column and `:min_amount`
//! with a `numeric` one without casts; a `None` binding is NULL. Results arrive in binary and
//! are written as text (`pg_decode`): integers, shortest round-trip floats, exact numerics, ISO
//! dates and times (a `timestamptz` in UTC, `…Z`), hyphenated UUIDs, JSON as its text, `bytea`
//! as hex. A column of any other type is refused when the query is opened, with the cast to
//! write.
//!
//! The session is read-only (`default_transaction_read_only`): a report never changes the
//! database it reads, whatever its query says. The connection honours the URL's `sslmode`
//! (`pg_tls`) and carries an `application_name`
//! (the job's, so an operator finds the session in `pg_stat_activity`). Errors never quote the
//! URL, and a password that the server or driver echoes is cut out of them.
//!
//! A lost connection mid-report ends the source with [`PostgresError::Lost`], which the
//! engine treats as transient: the attempt fails cleanly and the report's retries apply. A
//! connection the server refuses for good (bad password, unknown database) or that cannot be
//! set up (TLS the server does not offer) is [`PostgresError::Rejected`]: permanent.

use std::error::Error as StdError;
use std::fmt::Write as _;

use futures_util::StreamExt;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

use super::batches::{Batches, Sender};
use super::pg_copy;
use super::pg_decode::Decoder;
use super::pg_tls;
use super::row::Row;
use super::spec::Bindings;
use super::value_kind::Kind;
use crate::store::postgres::{describe as describe_error, is_transient};

/// Rows per message from the producer thread (fewer when they are wide: [`BATCH_BYTES`]).
const BATCH: usize = 1024;
/// Bytes per message at most, roughly.
const BATCH_BYTES: usize = 256 * 1024;

/// Why a PostgreSQL source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostgresError {
    /// The server could not be reached (transient).
    #[error("cannot connect to the source database: {0}")]
    Connect(String),
    /// The connection cannot be made as configured: a bad URL, a refused login, an unknown
    /// database, TLS the server does not offer (permanent).
    #[error("the source database refused the connection: {0}")]
    Rejected(String),
    /// The server refused the query (permanent: the same query fails again).
    #[error("the source query failed: {0}")]
    Query(String),
    /// The connection was lost while rows were being read (transient).
    #[error("the connection to the source database was lost mid-report: {0}")]
    Lost(String),
    #[error(transparent)]
    Placeholder(#[from] super::sql_placeholders::PlaceholderError),
    #[error(
        "the query names parameter `{name}`, which this run has no value for (known: {known})"
    )]
    UnknownParameter { name: String, known: String },
    #[error("column `{column}` has type {ty}, which a report cannot write; cast it in the query (`{column}::text`)")]
    UnsupportedType { column: String, ty: String },
}

impl PostgresError {
    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PostgresError::Connect(_) | PostgresError::Lost(_))
    }

    /// The same error with every occurrence of `secret` cut out of its message.
    fn redacted(self, secret: Option<&str>) -> PostgresError {
        let Some(secret) = secret.filter(|s| !s.is_empty()) else {
            return self;
        };
        let cut = |m: String| m.replace(secret, "<redacted>");
        match self {
            PostgresError::Connect(m) => PostgresError::Connect(cut(m)),
            PostgresError::Rejected(m) => PostgresError::Rejected(cut(m)),
            PostgresError::Query(m) => PostgresError::Query(cut(m)),
            PostgresError::Lost(m) => PostgresError::Lost(cut(m)),
            other => other,
        }
    }
}

/// A running query.
pub(super) struct PostgresSource {
    header: Row,
    rows: Batches<PostgresError>,
}

/// What the producer is given.
struct Job {
    config: tokio_postgres::Config,
    tls: Option<pg_tls::MakeRustls>,
    /// The report's query, `:name` placeholders and all.
    query: String,
    /// The query with `$n` placeholders.
    sql: String,
    values: Vec<Option<String>>,
    password: Option<String>,
    read: Read,
}

/// How the rows are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// By COPY, or by `query_raw` when the server refuses the COPY.
    Auto,
    /// By COPY only (tests: a refusal is an error).
    #[cfg_attr(not(test), allow(dead_code))]
    Copy,
    /// By `query_raw` only (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Rows,
}

/// The connection settings of `url` with `application_name`, and the TLS connector its
/// `sslmode` asks for (`None`: plain TCP).
fn config(
    url: &str,
    application_name: &str,
) -> Result<(tokio_postgres::Config, Option<pg_tls::MakeRustls>), PostgresError> {
    let (url, verify, root) = pg_tls::split_url(url);
    // The parse error names the option at fault, never the URL.
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        PostgresError::Rejected(format!("bad connection URL: {e}"))
    })?;
    if !application_name.is_empty() {
        config.application_name(application_name);
    }
    // A report never changes the database it reads, whatever its query says: the session's
    // transactions are read-only (on top of the URL's own options, such as a search_path).
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{own} -c default_transaction_read_only=on"),
        _ => "-c default_transaction_read_only=on".to_string(),
    };
    config.options(options);
    // A server that does not answer, or a connection that dies without a reset (a network
    // cut), must end the attempt, not hang it: the pipeline sees cancellation and timeouts only
    // between chunks. The URL's own settings win.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(30));
    }
    if config.get_keepalives_idle() >= std::time::Duration::from_secs(7200) {
        config.keepalives_idle(std::time::Duration::from_secs(30));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(std::time::Duration::from_secs(10));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    let tls = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => None,
        _ => Some(pg_tls::connector(verify, root.as_deref()).map_err(PostgresError::Rejected)?),
    };
    Ok((config, tls))
}

impl PostgresSource {
    /// Connects to `url` (as `application_name`), runs `query` with `bindings` bound to its
    /// `:name` placeholders, and starts streaming its rows.
    pub(super) fn open(
        url: &str,
        query: &str,
        bindings: &Bindings,
        application_name: &str,
    ) -> Result<PostgresSource, PostgresError> {
        PostgresSource::open_reading(url, query, bindings, application_name, Read::Auto)
    }

    /// [`PostgresSource::open`], its rows read as `read` says.
    pub(super) fn open_reading(
        url: &str,
        query: &str,
        bindings: &Bindings,
        application_name: &str,
        read: Read,
    ) -> Result<PostgresSource, PostgresError> {
        let (sql, names) = super::sql_placeholders::number(query)?;
        let mut values = Vec::with_capacity(names.len());
        for name in &names {
            match bindings.get(name) {
                Some(value) => values.push(value.as_ref().map(ToString::to_string)),
                None => {
                    let known: Vec<&str> = bindings.keys().map(String::as_str).collect();
                    return Err(PostgresError::UnknownParameter {
                        name: name.clone(),
                        known: known.join(", "),
                    });
                }
            }
        }
        let (config, tls) = config(url, application_name)?;
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let secret = password.clone();
        let job = Job {
            config,
            tls,
            query: query.to_string(),
            sql,
            values,
            password,
            read,
        };
        let (columns, rows) = Batches::start(
            "postgres-source",
            move |mut tx| produce(job, &mut tx),
            |e| PostgresError::Connect(format!("cannot start its reader thread: {e}")),
            || PostgresError::Lost("the reader stopped before the query started".into()),
        )
        .map_err(|e| e.redacted(secret.as_deref()))?;
        Ok(PostgresSource {
            header: columns.iter().collect(),
            rows,
        })
    }

    pub(super) fn header(&self) -> &Row {
        &self.header
    }

    /// The kinds of the fields of the row [`PostgresSource::next_row`] returned last.
    pub(super) fn kinds(&self) -> &[Kind] {
        self.rows.kinds()
    }

    /// Copies the next row into `row`; `false` at the end. Dropping the source stops the
    /// producer, which drops its client: the connection closes and the query ends on the server.
    pub(super) fn next_row(&mut self, row: &mut Row) -> Result<bool, PostgresError> {
        self.rows.next_row(row)
    }
}

/// The result columns of `query` on the server at `url`, without running it (a prepared
/// statement): `flowctl check` holds them against the mask rules and county column. Fails as a
/// run would on a bad query, an unknown column type or a refused connection. Blocks; runs on a
/// thread of its own, so it may be called from inside an async runtime.
pub fn describe(url: &str, query: &str) -> Result<Vec<String>, PostgresError> {
    let (sql, _) = super::sql_placeholders::number(query)?;
    let (config, tls) = config(url, "flowctl check")?;
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let describe = async move {
        let client = match &tls {
            None => {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| connect_failed(&e))?;
                tokio::spawn(connection);
                client
            }
            Some(tls) => {
                let (client, connection) = config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| connect_failed(&e))?;
                tokio::spawn(connection);
                client
            }
        };
        let statement = client.prepare(&sql).await.map_err(|e| failed(&e))?;
        statement
            .columns()
            .iter()
            .map(|c| match Decoder::for_type(c.type_()) {
                Some(_) => Ok(c.name().to_string()),
                None => Err(PostgresError::UnsupportedType {
                    column: c.name().to_string(),
                    ty: c.type_().name().to_string(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| PostgresError::Connect(e.to_string()))?;
                runtime.block_on(describe)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(PostgresError::Connect(
                    "the describe thread panicked".into(),
                ))
            })
    })
    .map_err(|e| e.redacted(password.as_deref()))
}

/// The producer thread: its own single-threaded runtime drives the connection.
fn produce(job: Job, tx: &mut Sender<PostgresError>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tx.fail(PostgresError::Connect(e.to_string()));
            return;
        }
    };
    if let Err(e) = runtime.block_on(stream(&job, tx)) {
        tx.fail(e.redacted(job.password.as_deref()));
    }
}

async fn stream(job: &Job, tx: &mut Sender<PostgresError>) -> Result<(), PostgresError> {
    let (client, connection) = match &job.tls {
        None => {
            let (client, connection) = job
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| connect_failed(&e))?;
            (client, tokio::spawn(connection))
        }
        Some(tls) => {
            let (client, connection) = job
                .config
                .connect(tls.clone())
                .await
                .map_err(|e| connect_failed(&e))?;
            (client, tokio::spawn(connection))
        }
    };
    // The query as it is: its errors located in its own text, its columns, its parameters'
    // types.
    let statement = client.prepare(&job.sql).await.map_err(|e| failed(&e))?;
    let columns: Vec<(String, Type)> = statement
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect();
    let decoders: Vec<Decoder> = columns
        .iter()
        .map(|(name, ty)| {
            Decoder::for_type(ty).ok_or_else(|| PostgresError::UnsupportedType {
                column: name.clone(),
                ty: ty.name().to_string(),
            })
        })
        .collect::<Result<_, _>>()?;
    let names: Vec<String> = columns.into_iter().map(|(n, _)| n).collect();
    // A statement without result columns (not a query) has nothing to COPY.
    if job.read != Read::Rows && !names.is_empty() {
        match copy_rows(&client, job, &statement, &decoders, &names, tx).await? {
            Copied::Done => {
                drop(client);
                let _ = connection.await;
                return Ok(());
            }
            Copied::Refused(_) if job.read == Read::Auto => {}
            Copied::Refused(error) => return Err(error),
        }
    }
    let params = job.values.iter().map(|v| TextParam(v.as_deref()));
    let rows = client
        .query_raw(&statement, params)
        .await
        .map_err(|e| failed(&e))?;
    if !tx.started(names) {
        return Ok(());
    }
    let mut rows = std::pin::pin!(rows);
    let mut batch = tx.batch();
    while let Some(next) = rows.next().await {
        let sql_row = next.map_err(|e| failed(&e))?;
        for (i, decoder) in decoders.iter().enumerate() {
            let raw: Option<Raw<'_>> = sql_row.try_get(i).map_err(|e| failed(&e))?;
            match raw {
                None => batch.end_field(Kind::Null),
                Some(Raw(bytes)) => {
                    let kind = decoder.write(bytes, batch.buf()).map_err(|e| {
                        PostgresError::Query(format!("decoding column {}: {e}", i + 1))
                    })?;
                    batch.end_field(kind);
                }
            }
        }
        if full(&batch) && !tx.send(std::mem::replace(&mut batch, tx.batch())) {
            return Ok(());
        }
    }
    tx.send(batch);
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// Whether a batch is ready to send.
#[inline]
fn full(batch: &super::batches::Batch) -> bool {
    batch.rows() == BATCH || batch.byte_len() >= BATCH_BYTES
}

/// How a COPY attempt ended.
enum Copied {
    /// Every row was sent (or the reader left).
    Done,
    /// The server refused the COPY before its first row (the transaction is rolled back): the
    /// query itself runs instead, and reports its own error if it has one.
    Refused(PostgresError),
}

/// Streams the rows of `statement` (prepared from `job.sql`) by `COPY (…) TO STDOUT (FORMAT
/// binary)`, its parameters bound to transaction-local settings (`pg_copy`).
async fn copy_rows(
    client: &tokio_postgres::Client,
    job: &Job,
    statement: &tokio_postgres::Statement,
    decoders: &[Decoder],
    names: &[String],
    tx: &mut Sender<PostgresError>,
) -> Result<Copied, PostgresError> {
    let types = statement.params();
    if types.len() != job.values.len() {
        return Ok(Copied::Refused(PostgresError::Query(format!(
            "the query has {} parameters where {} were bound",
            types.len(),
            job.values.len()
        ))));
    }
    let nulls: Vec<bool> = job.values.iter().map(Option::is_none).collect();
    let copy_sql = pg_copy::copy_statement(&job.query, types, &nulls)?;
    let bound: Vec<usize> = (1..=nulls.len()).filter(|n| !nulls[n - 1]).collect();
    // Everything up to the first row: a refusal here is the COPY's (or the query's, which its
    // own run then reports as it always has), a lost connection is the attempt's.
    let started = async {
        // Read-only twice over: the session's default, and said here.
        client.batch_execute("BEGIN READ ONLY").await?;
        if let Some(set) = pg_copy::set_config_statement(&bound) {
            let values = bound
                .iter()
                .map(|n| TextParam(job.values.get(n - 1).and_then(|v| v.as_deref())));
            client.execute_raw(set.as_str(), values).await?;
        }
        let copy = client.prepare(&copy_sql).await?;
        client.copy_out(&copy).await
    };
    let stream = match started.await {
        Ok(stream) => stream,
        Err(e) if e.as_db_error().is_some() && !is_transient(&e) => {
            let refusal = failed_unlocated(&e);
            client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| failed(&e))?;
            return Ok(Copied::Refused(refusal));
        }
        Err(e) => return Err(failed(&e)),
    };
    if !tx.started(names.to_vec()) {
        return Ok(Copied::Done);
    }
    let mut reader = pg_copy::CopyReader::new(decoders.to_vec());
    let mut stream = std::pin::pin!(stream);
    let mut batch = tx.batch();
    let format = |e: pg_copy::CopyFormatError| PostgresError::Query(e.to_string());
    while let Some(chunk) = stream.next().await {
        // A position would point into the COPY statement, not the report's query.
        let chunk = chunk.map_err(|e| failed_unlocated(&e))?;
        reader.feed(&chunk, &mut batch).map_err(format)?;
        if full(&batch) && !tx.send(std::mem::replace(&mut batch, tx.batch())) {
            return Ok(Copied::Done);
        }
    }
    reader.finish().map_err(format)?;
    tx.send(batch);
    // The transaction ends with the session (it wrote nothing).
    Ok(Copied::Done)
}

/// A connection that failed: transient when the server could not be reached or is starting,
/// stopping or full; permanent when it refused us (authentication, unknown database) or the
/// connection cannot be set up as configured (TLS the server does not offer).
fn connect_failed(error: &tokio_postgres::Error) -> PostgresError {
    if is_transient(error) {
        PostgresError::Connect(describe_error(error))
    } else {
        PostgresError::Rejected(describe_error(error))
    }
}

/// A server error is the query's (permanent) unless the server ended the session or ran out
/// of something (transient, as the shared store classifies them); anything else lost the
/// connection (transient). A query's error says where in the query it is when the server does.
fn failed(error: &tokio_postgres::Error) -> PostgresError {
    classify(error, true)
}

/// [`failed`] without the position: for statements that are not the report's query as written.
fn failed_unlocated(error: &tokio_postgres::Error) -> PostgresError {
    classify(error, false)
}

fn classify(error: &tokio_postgres::Error, located: bool) -> PostgresError {
    match error.as_db_error() {
        Some(db) if !is_transient(error) => {
            let mut message = format!("{}: {}", db.code().code(), db.message());
            if let Some(position) = db.position().filter(|_| located) {
                let _ = write!(message, " (at {position:?})");
            }
            PostgresError::Query(message)
        }
        Some(db) => PostgresError::Lost(format!("{}: {}", db.code().code(), db.message())),
        None => PostgresError::Lost(describe_error(error)),
    }
}

/// A parameter sent as text, typed by the server from its place in the query; `None` is NULL.
#[derive(Debug)]
struct TextParam<'a>(Option<&'a str>);

impl ToSql for TextParam<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self.0 {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> tokio_postgres::types::Format {
        tokio_postgres::types::Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A value's bytes as the server sent them (binary format).
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamValue;

    /// The tests that need a server read its URL from `FLOWCTL_TEST_PG`; each uses its own
    /// schema.
    fn server() -> Option<(String, String)> {
        let url = std::env::var("FLOWCTL_TEST_PG")
            .ok()
            .filter(|u| !u.is_empty());
        if url.is_none() {
            eprintln!("FLOWCTL_TEST_PG is not set: skipped");
        }
        let schema = format!("src_{}", std::process::id());
        url.map(|u| (u, schema))
    }

    fn run(url: &str, sql: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.batch_execute(sql).await.unwrap();
        });
    }

    fn rows(source: &mut PostgresSource) -> Vec<(Vec<String>, Vec<Kind>)> {
        crate::pipeline::batches::collect(&mut source.rows)
    }

    #[test]
    fn every_column_type_nulls_and_non_ascii_text_come_through() {
        let Some((url, schema)) = server() else {
            return;
        };
        let schema = format!("{schema}_types");
        run(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
            CREATE TABLE {schema}.t (i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, n numeric(12,2),
              b bool, t text, v varchar(20), c char(3), d date, tm time, ts timestamp, tz timestamptz,
              u uuid, j json, jb jsonb, by bytea);
            INSERT INTO {schema}.t VALUES (-2, 40000, 9007199254740993, 1.5, 0.1, -12.50, true, 'Zoë ñ 日本',
              'a,b \"c\"', 'x', '2026-02-28', '05:30:00.25', '2026-11-30 05:30:00', '2026-11-30 05:30:00+01',
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"k\": [1, 2]}}', '{{\"k\": 1}}', '\\x00ff');
            INSERT INTO {schema}.t DEFAULT VALUES;"));
        let query = format!("SELECT * FROM {schema}.t ORDER BY i2 NULLS LAST");
        let by = |read| {
            let mut source =
                PostgresSource::open_reading(&url, &query, &Bindings::new(), "flowctl-test", read)
                    .unwrap();
            rows(&mut source)
        };
        let all = by(Read::Copy);
        assert_eq!(all, by(Read::Rows), "COPY and query_raw write the same");
        assert_eq!(all, by(Read::Auto));
        assert_eq!(
            all[0].0,
            [
                "-2",
                "40000",
                "9007199254740993",
                "1.5",
                "0.1",
                "-12.50",
                "true",
                "Zoë ñ 日本",
                "a,b \"c\"",
                "x  ",
                "2026-02-28",
                "05:30:00.250",
                "2026-11-30 05:30:00",
                "2026-11-30T04:30:00Z",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "{\"k\": [1, 2]}",
                "{\"k\": 1}",
                "00ff"
            ]
        );
        use Kind::*;
        assert_eq!(
            all[0].1,
            [
                Integer, Integer, Integer, Real, Real, Decimal, Bool, Text, Text, Text, Text, Text,
                Text, Text, Text, Json, Json, Blob
            ]
        );
        assert!(all[1].1.iter().all(|k| *k == Null), "{:?}", all[1]);
        run(&url, &format!("DROP SCHEMA {schema} CASCADE"));
    }

    #[test]
    fn parameters_are_bound_as_values_whatever_they_hold() {
        let Some((url, schema)) = server() else {
            return;
        };
        let schema = format!("{schema}_inject");
        run(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
            CREATE TABLE {schema}.t (name text, day date, amount numeric);
            INSERT INTO {schema}.t VALUES ('O''Brien', '2026-11-30', 10.5), ('x', '2026-11-29', 99);"));
        let mut bindings = Bindings::new();
        let nasty = "O'Brien'; DROP TABLE t; -- $1 :day /*";
        bindings.insert("name".to_string(), Some(ParamValue::String(nasty.into())));
        bindings.insert(
            "day".to_string(),
            Some(ParamValue::Date(
                chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
            )),
        );
        bindings.insert("min".to_string(), Some(ParamValue::Decimal("10.25".into())));
        bindings.insert("none".to_string(), None);
        let query = format!(
            "SELECT name, :name AS echoed, :none::text AS none FROM {schema}.t \
             WHERE day = :day AND amount >= :min AND (:none::int IS NULL) -- :nope"
        );
        for read in [Read::Copy, Read::Rows] {
            let mut source =
                PostgresSource::open_reading(&url, &query, &bindings, "flowctl-test", read)
                    .unwrap();
            assert_eq!(
                rows(&mut source),
                [(
                    vec!["O'Brien".to_string(), nasty.to_string(), String::new()],
                    vec![Kind::Text, Kind::Text, Kind::Null]
                )],
                "{read:?}"
            );
        }
        // A `$1`-lookalike, a quote and `;` in each kind of value a parameter has, by COPY.
        let mut typed = Bindings::new();
        typed.insert("s".to_string(), Some(ParamValue::String("$1'); --".into())));
        typed.insert("d".to_string(), Some(ParamValue::Decimal("10.25".into())));
        let mut source = PostgresSource::open_reading(
            &url,
            "SELECT :s AS s, :d - 0.5 AS d, pg_typeof(:d)::text AS t, :s || :s AS twice",
            &typed,
            "flowctl-test",
            Read::Copy,
        )
        .unwrap();
        assert_eq!(
            rows(&mut source)[0].0,
            ["$1'); --", "9.75", "numeric", "$1'); --$1'); --"]
        );
        let mut count = PostgresSource::open(
            &url,
            &format!("SELECT count(*) FROM {schema}.t"),
            &Bindings::new(),
            "flowctl-test",
        )
        .unwrap();
        assert_eq!(rows(&mut count)[0].0, ["2"]);
        run(&url, &format!("DROP SCHEMA {schema} CASCADE"));
    }

    #[test]
    fn errors_say_whose_they_are_and_whether_to_retry() {
        let Some((url, _)) = server() else { return };
        let error = PostgresSource::open(
            &url,
            "SELECT * FROM no_such_table_here",
            &Bindings::new(),
            "flowctl-test",
        )
        .err()
        .unwrap();
        assert!(
            matches!(&error, PostgresError::Query(m) if m.contains("42P01")),
            "{error}"
        );
        assert!(!error.is_transient());
        // A read-only session: the write fails (when it runs, at the first read).
        let error = PostgresSource::open(
            &url,
            "CREATE TABLE flowctl_must_not_exist (x int)",
            &Bindings::new(),
            "flowctl-test",
        )
        .and_then(|mut source| source.next_row(&mut Row::default()))
        .unwrap_err();
        assert!(
            matches!(&error, PostgresError::Query(m) if m.contains("25006")),
            "{error}"
        );
        let error = PostgresSource::open(&url, "SELECT :x", &Bindings::new(), "flowctl-test")
            .err()
            .unwrap();
        assert!(
            matches!(error, PostgresError::UnknownParameter { .. }),
            "{error}"
        );
        let error = PostgresSource::open(
            &url,
            "SELECT point(1, 2) AS p",
            &Bindings::new(),
            "flowctl-test",
        )
        .err()
        .unwrap();
        assert_eq!(error.to_string(), "column `p` has type point, which a report cannot write; cast it in the query (`p::text`)");
        let error = PostgresSource::open(
            "postgres://nobody@127.0.0.1:1/none",
            "SELECT 1",
            &Bindings::new(),
            "flowctl-test",
        )
        .err()
        .unwrap();
        assert!(error.is_transient(), "{error}");
    }

    #[test]
    fn a_connection_killed_mid_stream_fails_the_source_as_transient() {
        let Some((url, _)) = server() else { return };
        let query = "SELECT pg_backend_pid() AS pid, i FROM generate_series(1, 5000000) AS i";
        for read in [Read::Auto, Read::Copy, Read::Rows] {
            let mut source =
                PostgresSource::open_reading(&url, query, &Bindings::new(), "flowctl-test", read)
                    .unwrap();
            let mut row = Row::default();
            assert!(source.next_row(&mut row).unwrap());
            let pid = String::from_utf8(row.get(0).unwrap().to_vec()).unwrap();
            run(&url, &format!("SELECT pg_terminate_backend({pid})"));
            let error = loop {
                match source.next_row(&mut row) {
                    Ok(true) => continue,
                    Ok(false) => panic!("the stream ended cleanly after its backend was killed"),
                    Err(e) => break e,
                }
            };
            assert!(matches!(error, PostgresError::Lost(_)), "{read:?}: {error}");
            assert!(error.is_transient(), "{error}");
        }
    }

    #[test]
    fn a_large_query_streams_and_an_abandoned_one_stops() {
        let Some((url, _)) = server() else { return };
        let mut source = PostgresSource::open(
            &url,
            "SELECT i, md5(i::text) FROM generate_series(1, 300000) AS i",
            &Bindings::new(),
            "flowctl-test",
        )
        .unwrap();
        let mut row = Row::default();
        let mut n = 0u64;
        while source.next_row(&mut row).unwrap() {
            n += 1;
        }
        assert_eq!(n, 300_000);
        let mut endless = PostgresSource::open(
            &url,
            "SELECT i FROM generate_series(1, 100000000) AS i",
            &Bindings::new(),
            "flowctl-test",
        )
        .unwrap();
        for _ in 0..5000 {
            assert!(endless.next_row(&mut row).unwrap());
        }
        drop(endless);
    }

    #[test]
    fn a_statement_copy_refuses_is_read_by_query_raw() {
        let Some((url, _)) = server() else { return };
        for (query, want) in [
            ("SHOW application_name", "flowctl-test"),
            (
                "SELECT 'one' AS one; -- a trailing comment after the semicolon",
                "one",
            ),
        ] {
            let mut source =
                PostgresSource::open(&url, query, &Bindings::new(), "flowctl-test").unwrap();
            assert_eq!(rows(&mut source)[0].0, [want], "{query}");
            // It really was refused by COPY.
            let refused = PostgresSource::open_reading(
                &url,
                query,
                &Bindings::new(),
                "flowctl-test",
                Read::Copy,
            );
            assert!(
                matches!(refused, Err(PostgresError::Query(_))),
                "{query}: {:?}",
                refused.err()
            );
        }
        // A trailing semicolon alone is no reason to refuse.
        let mut source = PostgresSource::open_reading(
            &url,
            "SELECT 2 AS two;\n",
            &Bindings::new(),
            "flowctl-test",
            Read::Copy,
        )
        .unwrap();
        assert_eq!(rows(&mut source)[0].0, ["2"]);
    }

    #[test]
    fn a_query_failing_as_it_runs_reports_its_error_by_either_read() {
        let Some((url, _)) = server() else { return };
        // Before the first row (the COPY is refused, the query runs and fails as it always
        // did), and after rows were sent (mid-COPY).
        for (query, code) in [
            ("SELECT 1 / 0 AS x", "22012"),
            (
                "SELECT 1 / (i - 30000) AS x FROM generate_series(1, 50000) AS i",
                "22012",
            ),
            ("SELECT CAST(:n AS int) AS x", "22P02"),
        ] {
            let mut bindings = Bindings::new();
            bindings.insert("n".to_string(), Some(ParamValue::String("x; --".into())));
            for read in [Read::Auto, Read::Copy, Read::Rows] {
                let error =
                    PostgresSource::open_reading(&url, query, &bindings, "flowctl-test", read)
                        .and_then(|mut source| {
                            let mut row = Row::default();
                            while source.next_row(&mut row)? {}
                            Ok(())
                        })
                        .unwrap_err();
                assert!(
                    matches!(&error, PostgresError::Query(m) if m.contains(code)),
                    "{query} {read:?}: {error}"
                );
                assert!(!error.is_transient());
            }
        }
    }

    #[test]
    fn a_parameter_of_a_type_of_the_database_is_cast_to_it_by_its_quoted_name() {
        let Some((url, schema)) = server() else {
            return;
        };
        let schema = format!("{schema}_usertype");
        run(
            &url,
            &format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
            CREATE TYPE {schema}.\"odd \"\"name\" AS ENUM ('open', 'closed');
            CREATE TABLE {schema}.t (id int, s {schema}.\"odd \"\"name\");
            INSERT INTO {schema}.t VALUES (1, 'open'), (2, 'closed');"
            ),
        );
        let mut bindings = Bindings::new();
        bindings.insert("s".to_string(), Some(ParamValue::String("closed".into())));
        let query = format!("SELECT id FROM {schema}.t WHERE s = :s");
        for read in [Read::Copy, Read::Rows] {
            let mut source =
                PostgresSource::open_reading(&url, &query, &bindings, "flowctl-test", read)
                    .unwrap();
            assert_eq!(rows(&mut source)[0].0, ["2"], "{read:?}");
        }
        // A value the type refuses fails as the query's error by either read.
        bindings.insert("s".to_string(), Some(ParamValue::String("x'; --".into())));
        for read in [Read::Auto, Read::Rows] {
            let error = PostgresSource::open_reading(&url, &query, &bindings, "flowctl-test", read)
                .and_then(|mut source| source.next_row(&mut Row::default()))
                .unwrap_err();
            assert!(
                matches!(&error, PostgresError::Query(m) if m.contains("22P02")),
                "{read:?}: {error}"
            );
        }
        run(&url, &format!("DROP SCHEMA {schema} CASCADE"));
    }
}
