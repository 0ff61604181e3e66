//! The shared job store, on PostgreSQL (`--store postgres://…`): every flowctl process of every
//! machine points at one database and they share one queue. There is no consensus of our own:
//! PostgreSQL's transactions and row locks are the coordination.
//!
//! # Architecture invariants
//!
//! - **The database holds the truth; this process keeps nothing but a pool.** Any number of
//!   processes may open the same database. Every operation is one statement, or one
//!   transaction under READ COMMITTED, whose row locks make it correct against every other.
//! - **Every write to a job is a compare-and-swap on `version`** (`WHERE version = $expected`),
//!   so a stale worker (its lease was taken over) is refused: fencing. When nothing matched, the
//!   row is read again to tell [`Cas::Conflict`] from an illegal transition.
//! - **Claims never wait on each other**: `FOR UPDATE SKIP LOCKED`, in priority then age order,
//!   up to `max` jobs in one round trip.
//! - **A completion and the joins it feeds are one transaction.** The join-state rows of the
//!   completing job's scope are locked first (an `INSERT … ON CONFLICT DO UPDATE … RETURNING`,
//!   which inserts or locks the row atomically under READ COMMITTED), in join-id order, then
//!   updated and the children inserted: two parents finishing on two machines at the same instant
//!   are serialized on that row lock, and exactly one of them fires the child.
//! - **Wake-ups are `NOTIFY`s sent by the transaction that made work claimable** (a trigger on
//!   `jobs`), so they are delivered on commit, to every process; each process listens on a
//!   dedicated connection that reconnects with backoff. The process that wrote wakes its own
//!   dispatcher at once, without waiting for its notification (which it ignores).
//! - **Lost connections are errors, never job outcomes.** A store method returns
//!   [`StoreError::Unavailable`] (transient) and the caller retries with backoff; reads, and
//!   transactions PostgreSQL rolled back (deadlock, serialization failure), are retried here.
//!
//! # Schema (migration 1)
//!
//! Created by flowctl itself: versioned migrations are embedded in the binary ([`MIGRATIONS`]),
//! recorded in `flowctl_migrations`, and applied in one transaction under an advisory lock, so
//! that processes starting together do not race. Every object lives in the first schema of the
//! connection's `search_path` (`?options=-csearch_path%3Dflowctl` picks one).
//!
//! | table | holds |
//! |---|---|
//! | `jobs` | the job record: the seed's `report_jobs` columns plus DESIGN.md's |
//! | `job_parents` | (parent, child): the index behind [`Store::children`] |
//! | `join_state` | (join id, role, county) → pending events per parent (JSON [`JoinState`]) |
//! | `unique_keys` | (kind, part, part) → the job ids of the first enqueue with that key |
//! | `schedule_fires` | schedule → latest recorded fire time, for [`Store::last_fire`] |
//! | `job_counts` | (status, shard) → count, kept by triggers, for [`Store::counts`] |
//!
//! Indexes on `jobs`: the claim order `(priority DESC, created_at, job_id) WHERE status =
//! 'QUEUED'`, leases `(lease_until) WHERE lease_until IS NOT NULL` (exactly the PROCESSING jobs;
//! a predicate on the status instead lets the planner answer a completion's "these ids, if
//! PROCESSING" by scanning every running job, 100× slower once the statement's plan is cached),
//! and the list order `(created_at, job_id)`. Partial indexes cost a write only for the rows they
//! hold. `job_id` is `COLLATE "C"`, so ties sort byte-wise as in the sled store. Times are
//! `timestamptz`, which keeps microseconds, as [`store_time`] does.
//!
//! # Queries
//!
//! - Claim: `UPDATE jobs SET status = 'PROCESSING', … WHERE job_id = ANY(ARRAY(SELECT job_id
//!   FROM jobs WHERE status = 'QUEUED' AND (run_after IS NULL OR run_after <= $now) ORDER BY
//!   priority DESC, created_at, job_id LIMIT $max FOR UPDATE SKIP LOCKED)) RETURNING …`: one
//!   round trip for up to `max` jobs. `= ANY(ARRAY(…))` rather than `IN (…)` keeps the outer
//!   update on primary-key lookups whatever the planner thinks of the subquery's size.
//! - Renew, complete, cancel: `UPDATE … WHERE job_id = $id AND version = $expected AND status =
//!   …`; nothing matched means a conflict (or an illegal transition), told by reading the row.
//! - Lease sweep: the same claim shape over `lease_until < $now`, `SKIP LOCKED` (a job being
//!   completed right now is left to its worker), in chunks of [`SWEEP_CHUNK`] per transaction,
//!   with the joins of the jobs it fails in the same transaction.
//!
//! Status counters: a statement-level trigger adds each statement's status changes to one row
//! per (status, shard), the shard drawn from the transaction id, so concurrent transactions
//! rarely touch the same counter row. The same triggers send the `NOTIFY` when a statement leaves
//! a job QUEUED.
//!
//! # Throughput
//!
//! Completions without joins (no dependency edge names the job's report type, or it was
//! cancelled) are batched: concurrent [`Store::complete`] calls are gathered by a few background
//! tasks and written with one `UPDATE … FROM unnest(…)` and one commit, group-commit style. Under
//! load a batch holds whatever arrived while the previous one was being written; alone, a
//! completion waits for nobody.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;
use tokio_postgres::{AsyncMessage, NoTls, Row};

use super::{
    store_time, BoxFuture, CancelOutcome, Cas, Completion, Enqueued, Event, Expired, JoinEdge,
    JoinError, JoinRules, JoinState, ListFilter, Outcome, Page, Pending, ProgressUpdate, Store,
    StoreError, StoreResult, UniqueKey, LEASE_RECOVERY_ALLOWANCE,
};
use crate::job::{Job, JobId, JobRequest, JobStatus, NewJob};

/// One schema change, applied once per database (schema) and recorded in `flowctl_migrations`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. Never edit one that has shipped: add the next.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "jobs, parents, joins, unique keys, schedule fires, status counters",
    sql: MIGRATION_1,
}];

const MIGRATION_1: &str = r#"
CREATE TABLE jobs (
    job_id                    text COLLATE "C" PRIMARY KEY,
    status                    text NOT NULL
        CHECK (status IN ('QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    report_type               text NOT NULL,
    user_role                 text NOT NULL,
    county_id                 text,
    subject                   text NOT NULL,
    parent_job_ids            text[] NOT NULL DEFAULT '{}',
    trigger_id                text NOT NULL,
    request_data              jsonb NOT NULL DEFAULT '{}',
    priority                  smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 255),
    result_path               text,
    rows_written              bigint NOT NULL DEFAULT 0,
    result_sha256             text,
    progress                  smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    error                     text,
    attempt                   bigint NOT NULL DEFAULT 1,
    max_attempts              bigint NOT NULL DEFAULT 1,
    run_after                 timestamptz,
    cancel_requested          boolean NOT NULL DEFAULT false,
    created_at                timestamptz NOT NULL,
    started_at                timestamptz,
    completed_at              timestamptz,
    estimated_completion_time timestamptz,
    lease_owner               text,
    lease_until               timestamptz,
    version                   bigint NOT NULL DEFAULT 1
);
-- Claims: the next QUEUED jobs, highest priority first, then oldest, ties by id.
CREATE INDEX jobs_claim_idx ON jobs (priority DESC, created_at, job_id) WHERE status = 'QUEUED';
-- Lease sweeps: running jobs by lease end. A job has a lease exactly while it is PROCESSING;
-- the predicate names the lease rather than the status so that the planner never scans this
-- index for "status = 'PROCESSING'" (every running job) when a completion looks up a few jobs
-- by id.
CREATE INDEX jobs_lease_idx ON jobs (lease_until) WHERE lease_until IS NOT NULL;
-- Listing, newest first (scanned backwards).
CREATE INDEX jobs_list_idx ON jobs (created_at, job_id);

CREATE TABLE job_parents (
    parent_id text COLLATE "C" NOT NULL,
    child_id  text COLLATE "C" NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);

-- One row per (join, scope); `pending` maps a parent report type to its newest unconsumed
-- event: {"A": {"newest": "JOB_…", "count": 2}}. Rows are kept when emptied, so that a row
-- lock always has a row to lock.
CREATE TABLE join_state (
    join_id    text NOT NULL,
    user_role  text NOT NULL,
    has_county boolean NOT NULL,
    county_id  text NOT NULL,
    pending    jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (join_id, user_role, has_county, county_id)
);

-- `fire`: (schedule, fire time in µs since the epoch); `idem`: (subject, key).
CREATE TABLE unique_keys (
    kind       text NOT NULL,
    part1      text NOT NULL,
    part2      text NOT NULL,
    job_ids    text[] NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (kind, part1, part2)
);

CREATE TABLE schedule_fires (
    schedule  text PRIMARY KEY,
    last_fire timestamptz NOT NULL
);

CREATE TABLE job_counts (
    status text NOT NULL,
    shard  integer NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (status, shard)
);

-- The NOTIFY channel of this schema's queue.
CREATE FUNCTION flowctl_channel() RETURNS text LANGUAGE sql STABLE
    SET search_path FROM CURRENT
    AS $$ SELECT left('flowctl:' || current_schema(), 63) $$;

-- Tells listeners that a statement left jobs QUEUED. The payload names the writing process
-- (`flowctl.instance`, set per connection), which has woken its own dispatcher already.
CREATE FUNCTION flowctl_wake() RETURNS void LANGUAGE sql
    SET search_path FROM CURRENT
    AS $$ SELECT pg_notify(flowctl_channel(), coalesce(current_setting('flowctl.instance', true), '')) $$;

CREATE FUNCTION flowctl_jobs_inserted() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts AS c (status, shard, n)
        SELECT r.status, (txid_current() % 64)::integer, count(*)
        FROM new_rows r GROUP BY r.status ORDER BY r.status
        ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    IF EXISTS (SELECT 1 FROM new_rows r WHERE r.status = 'QUEUED') THEN
        PERFORM flowctl_wake();
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION flowctl_jobs_updated() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts AS c (status, shard, n)
        SELECT m.status, (txid_current() % 64)::integer, sum(m.d)
        FROM (SELECT r.status, 1 AS d FROM new_rows r
              UNION ALL SELECT r.status, -1 AS d FROM old_rows r) m
        GROUP BY m.status HAVING sum(m.d) <> 0 ORDER BY m.status
        ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    IF EXISTS (SELECT 1 FROM new_rows r JOIN old_rows o USING (job_id)
               WHERE r.status = 'QUEUED' AND o.status <> 'QUEUED') THEN
        PERFORM flowctl_wake();
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION flowctl_jobs_deleted() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts AS c (status, shard, n)
        SELECT r.status, (txid_current() % 64)::integer, -count(*)
        FROM old_rows r GROUP BY r.status ORDER BY r.status
        ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION flowctl_jobs_truncated() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM job_counts;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flowctl_jobs_inserted();
CREATE TRIGGER jobs_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flowctl_jobs_updated();
CREATE TRIGGER jobs_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flowctl_jobs_deleted();
CREATE TRIGGER jobs_truncated AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION flowctl_jobs_truncated();
"#;

/// The newest schema version this flowctl knows.
pub fn latest_migration() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Jobs changed per transaction by a lease sweep.
const SWEEP_CHUNK: i64 = 1024;
/// Rows a filtered `list` examines before it returns a short page with a cursor.
const LIST_SCAN_BUDGET: i64 = 20_000;
/// Completions written by one batch statement.
const MAX_COMPLETE_BATCH: usize = 1024;
/// Background tasks writing completion batches (batches in flight at once).
const COMPLETERS: usize = 2;
/// Tries of a transaction PostgreSQL rolled back (deadlock, serialization failure, job id
/// collision), and of a read that lost its connection.
const TRIES: u32 = 5;

/// How to open a [`PgStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgConfig {
    /// `postgres://user@host:port/db`, with libpq-style parameters (`?options=-csearch_path%3Dx`)
    /// and flowctl's own `pool_size=N`, which overrides [`PgConfig::pool_size`].
    pub url: String,
    /// Connections in the pool (the LISTEN connection comes on top).
    pub pool_size: usize,
}

impl PgConfig {
    pub const DEFAULT_POOL_SIZE: usize = 8;

    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            pool_size: Self::DEFAULT_POOL_SIZE,
        }
    }

    /// `url` without flowctl's own `pool_size=N` parameter, and `N`.
    fn split_pool_size(&self) -> StoreResult<(String, Option<usize>)> {
        let Some((base, query)) = self.url.split_once('?') else {
            return Ok((self.url.clone(), None));
        };
        let mut size = None;
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.strip_prefix("pool_size=") {
                Some(n) => {
                    size = Some(n.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        StoreError::Postgres(format!(
                            "invalid store URL {}: pool_size={n}: expected a whole number ≥ 1",
                            redact_url(&self.url)
                        ))
                    })?);
                }
                None => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((url, size))
    }

    fn connection_config(&self, instance: &str) -> StoreResult<tokio_postgres::Config> {
        let (url, _) = self.split_pool_size()?;
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| {
            StoreError::Postgres(format!("invalid store URL {}: {e}", redact_url(&self.url)))
        })?;
        let options = match config.get_options() {
            Some(options) if !options.trim().is_empty() => {
                format!("{options} -c flowctl.instance={instance}")
            }
            _ => format!("-c flowctl.instance={instance}"),
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("flowctl");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        Ok(config)
    }
}

/// Whether `text` names a PostgreSQL store (`postgres://` or `postgresql://`).
pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// The URL with its password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The shared store. See the module docs.
pub struct PgStore {
    inner: Arc<Inner>,
    completer: mpsc::UnboundedSender<QueuedCompletion>,
    /// The LISTEN task and the completion writers; aborted on drop.
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    pool: Pool,
    wake: watch::Sender<u64>,
}

impl PgStore {
    /// Connects, applies pending migrations, and starts listening for other processes' work.
    pub async fn open(config: PgConfig) -> StoreResult<PgStore> {
        let instance = format!("{:016x}", rand::random::<u64>());
        let pg_config = config.connection_config(&instance)?;
        let manager = Manager::from_config(
            pg_config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool_size = config.split_pool_size()?.1.unwrap_or(config.pool_size);
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Postgres(format!("cannot build the connection pool: {e}")))?;
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            migrate_client(&mut client).await?;
        }
        let inner = Arc::new(Inner {
            pool,
            wake: watch::Sender::new(0),
        });
        let (completer, queue) = mpsc::unbounded_channel();
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let mut tasks = vec![tokio::spawn(listen(
            pg_config,
            instance,
            Arc::downgrade(&inner),
        ))];
        for _ in 0..COMPLETERS {
            tasks.push(tokio::spawn(write_completions(
                Arc::clone(&inner),
                Arc::clone(&queue),
            )));
        }
        Ok(PgStore {
            inner,
            completer,
            tasks,
        })
    }

    /// Applies the migrations the database at `url` lacks; returns those applied (none when it
    /// is up to date).
    pub async fn migrate(url: &str) -> StoreResult<Vec<Migration>> {
        let config = PgConfig::new(url).connection_config("migrate")?;
        let (mut client, connection) = config.connect(NoTls).await.map_err(pg_error)?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let applied = migrate_client(&mut client).await;
        drop(client);
        let _ = driver.await;
        applied
    }

    fn wake(&self) {
        self.inner.wake();
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Inner {
    fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// Applies missing migrations on `client`, under a transaction-scoped advisory lock.
async fn migrate_client(client: &mut tokio_postgres::Client) -> StoreResult<Vec<Migration>> {
    let tx = client.transaction().await.map_err(pg_error)?;
    let schema: Option<String> = tx
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if schema.is_none() {
        return Err(StoreError::Postgres(
            "no schema to create the tables in: the first schema of search_path does not exist \
             (CREATE SCHEMA it first)"
                .into(),
        ));
    }
    tx.query(
        "SELECT pg_advisory_xact_lock(hashtext('flowctl migrate ' || current_schema()))",
        &[],
    )
    .await
    .map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS flowctl_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg_error)?;
    let applied: HashSet<i32> = tx
        .query("SELECT version FROM flowctl_migrations", &[])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let latest = latest_migration();
    if let Some(&found) = applied.iter().max() {
        if found > latest {
            return Err(StoreError::FormatVersion {
                found: found as u32,
                expected: latest as u32,
            });
        }
    }
    let mut done = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        tx.batch_execute(migration.sql).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO flowctl_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(pg_error)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        done.push(*migration);
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(done)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn pg_error(error: tokio_postgres::Error) -> StoreError {
    let message = describe(&error);
    if is_transient(&error) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Postgres(message)
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Unavailable(format!("no database connection: {other}")),
    }
}

fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// A connection problem, or a transaction PostgreSQL aborted that could succeed if run again.
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") // connection exception
                || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                || code.starts_with("53") // insufficient resources (too many connections, …)
                || rolled_back_code(code)
        }
        None => std::error::Error::source(error)
            .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some()),
    }
}

/// Serialization failure or deadlock: PostgreSQL rolled the transaction back; run it again.
fn rolled_back_code(code: &str) -> bool {
    code == "40001" || code == "40P01"
}

/// A transaction that failed without effect and is worth running again at once: PostgreSQL
/// rolled it back, or a generated job id was taken.
fn retry_now(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => {
            rolled_back_code(db.code().code())
                || (*db.code() == SqlState::UNIQUE_VIOLATION
                    && db.constraint() == Some("jobs_pkey"))
        }
        None => false,
    }
}

/// What a failed try of a write tells: run it again at once, or give up with this error.
enum Failed {
    Retry,
    Give(StoreError),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(error: tokio_postgres::Error) -> Failed {
        if retry_now(&error) {
            tracing::debug!(error = %describe(&error), "transaction rolled back; running it again");
            Failed::Retry
        } else {
            Failed::Give(pg_error(error))
        }
    }
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Failed {
        Failed::Give(error)
    }
}

/// Runs `attempt` until it succeeds, gives up, or has been rolled back [`TRIES`] times.
macro_rules! retrying {
    ($what:literal, $attempt:expr) => {{
        let mut tries = 0;
        loop {
            tries += 1;
            match $attempt {
                Ok(value) => break Ok(value),
                Err(Failed::Give(error)) => break Err(error),
                Err(Failed::Retry) if tries < TRIES => {
                    tokio::time::sleep(Duration::from_millis(2 << tries)).await;
                }
                Err(Failed::Retry) => {
                    break Err(StoreError::Unavailable(format!(
                        "{} was rolled back {TRIES} times in a row (deadlocks or conflicts)",
                        $what
                    )))
                }
            }
        }
    }};
}

/// A copy of an error of this store, for every caller of a failed batch.
fn copy_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Postgres(other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

const COLUMNS: [&str; 26] = [
    "job_id",
    "status",
    "report_type",
    "user_role",
    "county_id",
    "subject",
    "parent_job_ids",
    "trigger_id",
    "request_data",
    "priority",
    "result_path",
    "rows_written",
    "result_sha256",
    "progress",
    "error",
    "attempt",
    "max_attempts",
    "run_after",
    "cancel_requested",
    "created_at",
    "started_at",
    "completed_at",
    "estimated_completion_time",
    "lease_owner",
    "lease_until",
    "version",
];

/// The job columns, each prefixed with `prefix` (`"j."`), in [`COLUMNS`] order.
fn columns(prefix: &str) -> String {
    COLUMNS
        .iter()
        .map(|c| format!("{prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn decode_error(job_id: &str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: format!("jobs/{job_id}"),
        message: message.into(),
    }
}

/// The job whose columns start at `at` in `row`.
fn decode_job(row: &Row, at: usize) -> StoreResult<Job> {
    let job_id: String = row.try_get(at).map_err(pg_error)?;
    let bad = |what: &str| decode_error(&job_id, format!("invalid {what}"));
    let get = |i: usize| at + i;
    macro_rules! col {
        ($i:expr) => {
            row.try_get(get($i))
                .map_err(|e| decode_error(&job_id, e.to_string()))?
        };
    }
    let status: String = col!(1);
    let parents: Vec<String> = col!(6);
    let Json(request): Json<JobRequest> = col!(8);
    let priority: i16 = col!(9);
    let rows_written: i64 = col!(11);
    let progress: i16 = col!(13);
    let attempt: i64 = col!(15);
    let max_attempts: i64 = col!(16);
    let version: i64 = col!(25);
    Ok(Job {
        job_id: job_id.parse().map_err(|_| bad("job id"))?,
        status: status.parse().map_err(|_| bad("status"))?,
        report_type: col!(2),
        role: col!(3),
        county: col!(4),
        subject: col!(5),
        parent_job_ids: parents
            .iter()
            .map(|id| id.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("parent job id"))?,
        trigger_id: col!(7),
        request,
        priority: u8::try_from(priority).map_err(|_| bad("priority"))?,
        result_path: col!(10),
        rows_written: u64::try_from(rows_written).map_err(|_| bad("rows_written"))?,
        result_sha256: col!(12),
        progress: u8::try_from(progress).map_err(|_| bad("progress"))?,
        error: col!(14),
        attempt: u32::try_from(attempt).map_err(|_| bad("attempt"))?,
        max_attempts: u32::try_from(max_attempts).map_err(|_| bad("max_attempts"))?,
        run_after: col!(17),
        cancel_requested: col!(18),
        created_at: col!(19),
        started_at: col!(20),
        completed_at: col!(21),
        estimated_completion: col!(22),
        lease_owner: col!(23),
        lease_until: col!(24),
        version: u64::try_from(version).map_err(|_| bad("version"))?,
    })
}

fn decode_jobs(rows: &[Row], at: usize) -> StoreResult<Vec<Job>> {
    rows.iter().map(|row| decode_job(row, at)).collect()
}

fn status_text(status: JobStatus) -> &'static str {
    status.as_str()
}

// ---------------------------------------------------------------------------------------------
// Statements
// ---------------------------------------------------------------------------------------------

static SELECT_JOB: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {} FROM jobs WHERE job_id = $1", columns("")));

static INSERT_JOBS: &str = r#"
WITH new_jobs AS (
    INSERT INTO jobs (job_id, status, report_type, user_role, county_id, subject, parent_job_ids,
                      trigger_id, request_data, priority, max_attempts, created_at,
                      estimated_completion_time)
    SELECT t.id, 'QUEUED', t.report_type, t.user_role, t.county_id, t.subject,
           CASE WHEN t.parents = '' THEN '{}'::text[] ELSE string_to_array(t.parents, ',') END,
           t.trigger_id, t.request, t.priority, t.max_attempts, $12, t.estimated
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::jsonb[], $9::int2[], $10::int8[], $11::timestamptz[])
         AS t(id, report_type, user_role, county_id, subject, parents, trigger_id, request,
              priority, max_attempts, estimated)
    RETURNING job_id, parent_job_ids
)
INSERT INTO job_parents (parent_id, child_id)
SELECT DISTINCT unnest(n.parent_job_ids), n.job_id FROM new_jobs n
ON CONFLICT DO NOTHING
"#;

static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = 'PROCESSING', started_at = $1, lease_owner = $2,
                         lease_until = $3, version = version + 1
         WHERE job_id = ANY(ARRAY(
             SELECT job_id FROM jobs
             WHERE status = 'QUEUED' AND (run_after IS NULL OR run_after <= $1)
             ORDER BY priority DESC, created_at, job_id
             LIMIT $4
             FOR UPDATE SKIP LOCKED))
         RETURNING {}",
        columns("")
    )
});

static RENEW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET lease_until = $3, version = version + 1,
                         progress = CASE WHEN $4 THEN $5 ELSE progress END,
                         rows_written = CASE WHEN $4 THEN $6 ELSE rows_written END,
                         estimated_completion_time =
                             CASE WHEN $4 THEN $7 ELSE estimated_completion_time END
         WHERE job_id = $1 AND version = $2 AND status = 'PROCESSING'
         RETURNING {}",
        columns("")
    )
});

/// Finishes the attempts of a batch of PROCESSING jobs, each at its expected version. Returns
/// the index in the batch and the job of every one that applied.
static COMPLETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH input AS (
             SELECT * FROM unnest($1::int4[], $2::text[], $3::int8[], $4::text[], $5::text[],
                                  $6::int8[], $7::text[], $8::text[], $9::timestamptz[],
                                  $10::timestamptz[])
                 AS i(idx, job_id, version, kind, result_path, rows_written, sha256, error,
                      retry_at, now)
         ), target AS (
             SELECT i.*, (i.kind = 'F' AND i.retry_at IS NOT NULL AND j.attempt < j.max_attempts
                          AND NOT j.cancel_requested) AS retry
             FROM input i JOIN jobs j ON j.job_id = i.job_id
         )
         UPDATE jobs j SET
             status = CASE WHEN t.kind = 'S' THEN 'COMPLETED' WHEN t.kind = 'C' THEN 'CANCELLED'
                           WHEN t.retry THEN 'QUEUED' ELSE 'FAILED' END,
             result_path = CASE WHEN t.kind = 'S' THEN t.result_path ELSE j.result_path END,
             rows_written = CASE WHEN t.kind = 'S' THEN t.rows_written WHEN t.retry THEN 0
                                 ELSE j.rows_written END,
             result_sha256 = CASE WHEN t.kind = 'S' THEN t.sha256 ELSE j.result_sha256 END,
             progress = CASE WHEN t.kind = 'S' THEN 100 WHEN t.retry THEN 0 ELSE j.progress END,
             error = CASE WHEN t.kind = 'F' THEN t.error ELSE j.error END,
             attempt = CASE WHEN t.retry THEN j.attempt + 1 ELSE j.attempt END,
             run_after = CASE WHEN NOT t.retry THEN j.run_after
                              WHEN t.retry_at > t.now THEN t.retry_at END,
             started_at = CASE WHEN t.retry THEN NULL ELSE j.started_at END,
             completed_at = CASE WHEN t.retry THEN j.completed_at ELSE t.now END,
             lease_owner = NULL,
             lease_until = NULL,
             version = j.version + 1
         FROM target t
         WHERE j.job_id = t.job_id AND j.version = t.version AND j.status = 'PROCESSING'
         RETURNING t.idx, {}",
        columns("j.")
    )
});

static CANCEL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET
             status = CASE WHEN status = 'QUEUED' THEN 'CANCELLED' ELSE status END,
             completed_at = CASE WHEN status = 'QUEUED' THEN $2 ELSE completed_at END,
             lease_owner = CASE WHEN status = 'QUEUED' THEN NULL ELSE lease_owner END,
             lease_until = CASE WHEN status = 'QUEUED' THEN NULL ELSE lease_until END,
             cancel_requested = (status = 'PROCESSING') OR cancel_requested,
             version = version + 1
         WHERE job_id = $1 AND (status = 'QUEUED' OR (status = 'PROCESSING' AND NOT cancel_requested))
         RETURNING {}",
        columns("")
    )
});

/// Takes back up to `$3` PROCESSING jobs whose lease ended before `$1`; `$2` is the lease
/// recovery allowance.
static SWEEP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs j SET
             status = CASE WHEN j.cancel_requested THEN 'CANCELLED'
                           WHEN j.attempt < j.max_attempts + $2 THEN 'QUEUED'
                           ELSE 'FAILED' END,
             error = CASE WHEN NOT j.cancel_requested AND j.attempt >= j.max_attempts + $2
                          THEN format('worker %s lost its lease on attempt %s, the last allowed: %s attempt(s) (the report''s retries + 1) plus %s crash recoveries',
                                      coalesce(j.lease_owner, '?'), j.attempt, j.max_attempts, $2)
                          ELSE j.error END,
             run_after = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                              THEN NULL ELSE j.run_after END,
             attempt = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                            THEN j.attempt + 1 ELSE j.attempt END,
             progress = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                             THEN 0 ELSE j.progress END,
             rows_written = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                                 THEN 0 ELSE j.rows_written END,
             started_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                               THEN NULL ELSE j.started_at END,
             completed_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                                 THEN j.completed_at ELSE $1 END,
             lease_owner = NULL,
             lease_until = NULL,
             version = j.version + 1
         WHERE j.job_id = ANY(ARRAY(
             SELECT job_id FROM jobs
             WHERE status = 'PROCESSING' AND lease_until < $1
             ORDER BY lease_until
             LIMIT $3
             FOR UPDATE SKIP LOCKED))
         RETURNING {}",
        columns("j.")
    )
});

static CHILDREN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM job_parents p JOIN jobs j ON j.job_id = p.child_id
         WHERE p.parent_id = $1 ORDER BY j.created_at, j.job_id",
        columns("j.")
    )
});

/// `$1`/`$2`: the cursor position (exclusive) or NULL; `$3`: scan budget; `$4`–`$6`: status,
/// report type, county filters or NULL; `$7`: rows wanted.
static LIST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM (
             SELECT * FROM jobs
             WHERE $1::timestamptz IS NULL OR (created_at, job_id) < ($1, $2::text)
             ORDER BY created_at DESC, job_id DESC
             LIMIT $3
         ) s
         WHERE ($4::text IS NULL OR s.status = $4) AND ($5::text IS NULL OR s.report_type = $5)
           AND ($6::text IS NULL OR s.county_id = $6)
         ORDER BY s.created_at DESC, s.job_id DESC
         LIMIT $7",
        columns("s.")
    )
});

static LIST_FROM_START: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM (
             SELECT * FROM jobs
             ORDER BY created_at DESC, job_id DESC
             LIMIT $3
         ) s
         WHERE ($1::timestamptz IS NULL AND $2::text IS NULL)
           AND ($4::text IS NULL OR s.status = $4) AND ($5::text IS NULL OR s.report_type = $5)
           AND ($6::text IS NULL OR s.county_id = $6)
         ORDER BY s.created_at DESC, s.job_id DESC
         LIMIT $7",
        columns("s.")
    )
});

/// The last row a budgeted list scan examined and the one after it, if any.
const LIST_SCAN_END: &str = "SELECT created_at, job_id FROM jobs
     WHERE $1::timestamptz IS NULL OR (created_at, job_id) < ($1, $2::text)
     ORDER BY created_at DESC, job_id DESC
     OFFSET $3 LIMIT 2";

const LOCK_JOIN_STATES: &str =
    "INSERT INTO join_state AS s (join_id, user_role, has_county, county_id, pending)
     SELECT id, $2, $3, $4, '{}'::jsonb FROM unnest($1::text[]) AS id ORDER BY id
     ON CONFLICT (join_id, user_role, has_county, county_id) DO UPDATE SET pending = s.pending
     RETURNING s.join_id, s.pending";

const SAVE_JOIN_STATES: &str = "UPDATE join_state s SET pending = u.pending
     FROM unnest($1::text[], $2::jsonb[]) AS u(join_id, pending)
     WHERE s.join_id = u.join_id AND s.user_role = $3 AND s.has_county = $4 AND s.county_id = $5";

// ---------------------------------------------------------------------------------------------
// Writing jobs
// ---------------------------------------------------------------------------------------------

/// New QUEUED records for `batch`, under fresh ids distinct among themselves (the database
/// refuses one that is taken: the caller draws them all again).
fn new_records(batch: &[NewJob], now: DateTime<Utc>) -> Vec<Job> {
    let mut seen = HashSet::with_capacity(batch.len());
    batch
        .iter()
        .map(|new| {
            let job_id = loop {
                let id = JobId::generate();
                if seen.insert(id.clone()) {
                    break id;
                }
            };
            let mut new = new.clone();
            new.estimated_completion = new.estimated_completion.map(store_time);
            new.into_job(job_id, now)
        })
        .collect()
}

/// Inserts QUEUED `jobs` (all created at `now`) and their parent links, in one statement.
async fn insert_jobs(
    client: &impl GenericClient,
    jobs: &[Job],
    now: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    let report_types: Vec<&str> = jobs.iter().map(|j| j.report_type.as_str()).collect();
    let roles: Vec<&str> = jobs.iter().map(|j| j.role.as_str()).collect();
    let counties: Vec<Option<&str>> = jobs.iter().map(|j| j.county.as_deref()).collect();
    let subjects: Vec<&str> = jobs.iter().map(|j| j.subject.as_str()).collect();
    let parents: Vec<String> = jobs
        .iter()
        .map(|j| {
            j.parent_job_ids
                .iter()
                .map(JobId::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let triggers: Vec<&str> = jobs.iter().map(|j| j.trigger_id.as_str()).collect();
    let requests: Vec<Json<&JobRequest>> = jobs.iter().map(|j| Json(&j.request)).collect();
    let priorities: Vec<i16> = jobs.iter().map(|j| i16::from(j.priority)).collect();
    let max_attempts: Vec<i64> = jobs.iter().map(|j| i64::from(j.max_attempts)).collect();
    let estimated: Vec<Option<DateTime<Utc>>> =
        jobs.iter().map(|j| j.estimated_completion).collect();
    let statement = client.prepare_cached(INSERT_JOBS).await?;
    client
        .execute(
            &statement,
            &[
                &ids,
                &report_types,
                &roles,
                &counties,
                &subjects,
                &parents,
                &triggers,
                &requests,
                &priorities,
                &max_attempts,
                &estimated,
                &now,
            ],
        )
        .await?;
    Ok(())
}

fn unique_parts(unique: &UniqueKey) -> (&'static str, &str, String) {
    match unique {
        UniqueKey::Fire {
            schedule,
            fire_time,
        } => (
            "fire",
            schedule.as_str(),
            store_time(*fire_time).timestamp_micros().to_string(),
        ),
        UniqueKey::Idempotency { subject, key } => ("idem", subject.as_str(), key.clone()),
    }
}

fn add(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .map(store_time)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn log_join_errors(completion: &Completion) {
    for error in &completion.join_errors {
        tracing::error!(
            job_id = %completion.job.job_id,
            join_id = %error.join_id,
            message = %error.message,
            "triggering a dependent job failed; the parent's outcome stands"
        );
    }
}

/// One completion as the batch statement takes it.
struct CompletionInput<'a> {
    job_id: &'a JobId,
    version: u64,
    outcome: &'a Outcome,
    now: DateTime<Utc>,
}

/// Runs the completion statement for `inputs`; returns the applied jobs by input index.
async fn complete_rows(
    client: &impl GenericClient,
    inputs: &[CompletionInput<'_>],
) -> Result<Vec<(usize, Job)>, Failed> {
    let n = inputs.len();
    let mut idx = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut paths: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut rows: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut shas: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut retry_ats: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut nows = Vec::with_capacity(n);
    for (i, input) in inputs.iter().enumerate() {
        idx.push(i as i32);
        ids.push(input.job_id.as_str());
        versions.push(input.version as i64);
        nows.push(input.now);
        match input.outcome {
            Outcome::Success {
                result_path,
                rows_written,
                sha256,
            } => {
                kinds.push("S");
                paths.push(Some(result_path.as_str()));
                rows.push(Some(i64::try_from(*rows_written).unwrap_or(i64::MAX)));
                shas.push(Some(sha256.as_str()));
                errors.push(None);
                retry_ats.push(None);
            }
            Outcome::Failure { error, retry_at } => {
                kinds.push("F");
                paths.push(None);
                rows.push(None);
                shas.push(None);
                errors.push(Some(error.as_str()));
                retry_ats.push(retry_at.map(store_time));
            }
            Outcome::Cancelled => {
                kinds.push("C");
                paths.push(None);
                rows.push(None);
                shas.push(None);
                errors.push(None);
                retry_ats.push(None);
            }
        }
    }
    let statement = client.prepare_cached(&COMPLETE).await?;
    let returned = client
        .query(
            &statement,
            &[
                &idx, &ids, &versions, &kinds, &paths, &rows, &shas, &errors, &retry_ats, &nows,
            ],
        )
        .await?;
    let mut applied = Vec::with_capacity(returned.len());
    for row in &returned {
        let i: i32 = row.try_get(0).map_err(pg_error)?;
        applied.push((i as usize, decode_job(row, 1)?));
    }
    Ok(applied)
}

/// The status an outcome would have taken a job to, for an illegal-transition error.
fn outcome_status(outcome: &Outcome) -> JobStatus {
    match outcome {
        Outcome::Success { .. } => JobStatus::Completed,
        Outcome::Failure { .. } => JobStatus::Failed,
        Outcome::Cancelled => JobStatus::Cancelled,
    }
}

/// Why a CAS write to `job_id` at `expected` matched nothing: `Some(Conflict)`, an illegal
/// transition error, or `None` if the job is (again) as expected and the write should be tried
/// again.
fn refused<T>(
    job_id: &JobId,
    expected: u64,
    current: Option<Job>,
    to: JobStatus,
) -> StoreResult<Option<Cas<T>>> {
    match current {
        None => Ok(Some(Cas::Conflict { current: None })),
        Some(job) if job.version != expected => Ok(Some(Cas::Conflict { current: Some(job) })),
        Some(job) if job.status != JobStatus::Processing => Err(StoreError::IllegalTransition {
            job: job_id.clone(),
            from: job.status,
            to,
        }),
        Some(_) => Ok(None),
    }
}

/// Counts the times a CAS write matched nothing although the job read back as expected (it
/// moved in between): a few are races, more is a bug, reported rather than looped on.
#[derive(Default)]
struct Stuck(u32);

impl Stuck {
    fn check(&mut self, job_id: &JobId) -> StoreResult<()> {
        self.0 += 1;
        if self.0 < TRIES {
            return Ok(());
        }
        Err(StoreError::Postgres(format!(
            "a write to job {job_id} matched nothing {TRIES} times although the job was as \
             expected"
        )))
    }
}

async fn read_job(client: &impl GenericClient, job_id: &JobId) -> StoreResult<Option<Job>> {
    let statement = client.prepare_cached(&SELECT_JOB).await.map_err(pg_error)?;
    let row = client
        .query_opt(&statement, &[&job_id.as_str()])
        .await
        .map_err(pg_error)?;
    row.map(|row| decode_job(&row, 0)).transpose()
}

/// The join rule for `job`'s completion event, inside the transaction that recorded it: locks
/// the join-state rows of the job's scope (in join-id order), records the event, creates the
/// children that fire.
async fn apply_joins(
    client: &impl GenericClient,
    job: &Job,
    joins: &[JoinEdge],
    now: DateTime<Utc>,
) -> Result<(Vec<Job>, Vec<JoinError>), Failed> {
    let mut errors = Vec::new();
    let Some(event) = Event::of(job.status) else {
        return Ok((Vec::new(), errors));
    };
    let mut edges = Vec::new();
    for (i, edge) in joins.iter().enumerate() {
        if !edge.accepts(job, event) || joins[..i].iter().any(|seen| seen.join_id == edge.join_id) {
            continue;
        }
        if let Err(message) = edge.validate() {
            errors.push(JoinError {
                join_id: edge.join_id.clone(),
                message,
            });
            continue;
        }
        edges.push(edge);
    }
    if edges.is_empty() {
        return Ok((Vec::new(), errors));
    }
    let has_county = job.county.is_some();
    let county = job.county.as_deref().unwrap_or("");
    let join_ids: Vec<&str> = edges.iter().map(|e| e.join_id.as_str()).collect();
    let lock = client.prepare_cached(LOCK_JOIN_STATES).await?;
    let rows = client
        .query(&lock, &[&join_ids, &job.role, &has_county, &county])
        .await?;
    let mut stored: HashMap<String, serde_json::Value> = HashMap::with_capacity(rows.len());
    for row in &rows {
        stored.insert(
            row.try_get(0).map_err(pg_error)?,
            row.try_get(1).map_err(pg_error)?,
        );
    }
    let mut children = Vec::new();
    let mut states = Vec::with_capacity(edges.len());
    for edge in &edges {
        let value = stored.remove(&edge.join_id).unwrap_or_default();
        let mut state = JoinState {
            pending: serde_json::from_value::<BTreeMap<String, Pending>>(value).unwrap_or_else(
                |error| {
                    errors.push(JoinError {
                        join_id: edge.join_id.clone(),
                        message: format!("pending events of this scope were lost: {error}"),
                    });
                    BTreeMap::new()
                },
            ),
        };
        if let Some(parents) = state.record(edge, job) {
            children.push(edge.child.instantiate(job, parents));
        }
        states.push(Json(
            serde_json::to_value(&state.pending).unwrap_or_default(),
        ));
    }
    let save = client.prepare_cached(SAVE_JOIN_STATES).await?;
    client
        .execute(
            &save,
            &[&join_ids, &states, &job.role, &has_county, &county],
        )
        .await?;
    let children = new_records(&children, now);
    insert_jobs(client, &children, now).await?;
    Ok((children, errors))
}

// ---------------------------------------------------------------------------------------------
// The operations
// ---------------------------------------------------------------------------------------------

impl PgStore {
    async fn enqueue_once(
        &self,
        batch: &[NewJob],
        unique: Option<&UniqueKey>,
        now: DateTime<Utc>,
    ) -> Result<Enqueued, Failed> {
        let mut client = self.inner.client().await?;
        let jobs = new_records(batch, now);
        let Some(unique) = unique else {
            // One statement: all or nothing without a transaction.
            insert_jobs(&client, &jobs, now).await?;
            return Ok(Enqueued::Created(jobs));
        };
        let (kind, part1, part2) = unique_parts(unique);
        let tx = client.transaction().await?;
        let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        let first = tx
            .query_opt(
                "INSERT INTO unique_keys (kind, part1, part2, job_ids, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
                &[&kind, &part1, &part2, &ids, &now],
            )
            .await?;
        if first.is_none() {
            // Taken by a committed enqueue (a concurrent one was waited for).
            let row = tx
                .query_one(
                    "SELECT job_ids FROM unique_keys WHERE kind = $1 AND part1 = $2 AND part2 = $3",
                    &[&kind, &part1, &part2],
                )
                .await?;
            let ids: Vec<String> = row.try_get(0).map_err(pg_error)?;
            let ids = ids
                .iter()
                .map(|id| id.parse())
                .collect::<Result<Vec<JobId>, _>>()
                .map_err(|_| StoreError::Corrupt {
                    key: format!("unique_keys/{unique}"),
                    message: "invalid job id".into(),
                })?;
            return Ok(Enqueued::Existing(ids));
        }
        insert_jobs(&tx, &jobs, now).await?;
        if let UniqueKey::Fire {
            schedule,
            fire_time,
        } = unique
        {
            tx.execute(
                "INSERT INTO schedule_fires AS f (schedule, last_fire) VALUES ($1, $2)
                 ON CONFLICT (schedule) DO UPDATE
                 SET last_fire = GREATEST(f.last_fire, EXCLUDED.last_fire)",
                &[schedule, &store_time(*fire_time)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Enqueued::Created(jobs))
    }

    async fn claim_jobs(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Job>> {
        let lease_until = add(now, lease);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let client = self.inner.client().await?;
        let statement = client.prepare_cached(&CLAIM).await.map_err(pg_error)?;
        let rows = client
            .query(&statement, &[&now, &worker, &lease_until, &limit])
            .await
            .map_err(pg_error)?;
        let mut jobs = decode_jobs(&rows, 0)?;
        jobs.sort_by(|a, b| {
            (std::cmp::Reverse(a.priority), a.created_at, &a.job_id).cmp(&(
                std::cmp::Reverse(b.priority),
                b.created_at,
                &b.job_id,
            ))
        });
        Ok(jobs)
    }

    async fn renew_job(
        &self,
        job_id: &JobId,
        expected_version: u64,
        lease_until: DateTime<Utc>,
        progress: Option<ProgressUpdate>,
    ) -> StoreResult<Cas<Job>> {
        let lease_until = store_time(lease_until);
        let has_progress = progress.is_some();
        let percent = progress
            .as_ref()
            .map_or(0, |p| i16::from(p.progress.min(100)));
        let rows_written = progress
            .as_ref()
            .map_or(0, |p| i64::try_from(p.rows_written).unwrap_or(i64::MAX));
        let estimated = progress
            .as_ref()
            .and_then(|p| p.estimated_completion.map(store_time));
        let version = expected_version as i64;
        let client = self.inner.client().await?;
        let statement = client.prepare_cached(&RENEW).await.map_err(pg_error)?;
        let mut stuck = Stuck::default();
        loop {
            let row = client
                .query_opt(
                    &statement,
                    &[
                        &job_id.as_str(),
                        &version,
                        &lease_until,
                        &has_progress,
                        &percent,
                        &rows_written,
                        &estimated,
                    ],
                )
                .await
                .map_err(pg_error)?;
            if let Some(row) = row {
                return Ok(Cas::Applied(decode_job(&row, 0)?));
            }
            let current = read_job(&client, job_id).await?;
            if let Some(cas) = refused(job_id, expected_version, current, JobStatus::Processing)? {
                return Ok(cas);
            }
            stuck.check(job_id)?;
        }
    }

    /// A completion that feeds joins: one transaction with the join update and the children.
    async fn complete_with_joins(
        &self,
        job_id: &JobId,
        expected_version: u64,
        outcome: &Outcome,
        joins: &[JoinEdge],
        now: DateTime<Utc>,
    ) -> Result<Option<Completion>, Failed> {
        let mut client = self.inner.client().await?;
        let tx = client.transaction().await?;
        let input = CompletionInput {
            job_id,
            version: expected_version,
            outcome,
            now,
        };
        let Some((_, job)) = complete_rows(&tx, &[input]).await?.pop() else {
            return Ok(None);
        };
        let (children_created, join_errors) = apply_joins(&tx, &job, joins, now).await?;
        tx.commit().await?;
        Ok(Some(Completion {
            job,
            children_created,
            join_errors,
        }))
    }

    async fn complete_job(
        &self,
        job_id: &JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &[JoinEdge],
        now: DateTime<Utc>,
    ) -> StoreResult<Cas<Completion>> {
        let to = outcome_status(&outcome);
        let mut stuck = Stuck::default();
        loop {
            let completion = if joins.is_empty() || outcome == Outcome::Cancelled {
                self.complete_batched(job_id, expected_version, &outcome, now)
                    .await?
            } else {
                retrying!(
                    "a completion",
                    self.complete_with_joins(job_id, expected_version, &outcome, joins, now)
                        .await
                )?
            };
            if let Some(completion) = completion {
                log_join_errors(&completion);
                if completion.job.status == JobStatus::Queued
                    || !completion.children_created.is_empty()
                {
                    self.wake();
                }
                return Ok(Cas::Applied(completion));
            }
            let client = self.inner.client().await?;
            let current = read_job(&client, job_id).await?;
            if let Some(cas) = refused(job_id, expected_version, current, to)? {
                return Ok(cas);
            }
            stuck.check(job_id)?;
        }
    }

    /// Hands the completion to the batch writers and waits for its turn.
    async fn complete_batched(
        &self,
        job_id: &JobId,
        expected_version: u64,
        outcome: &Outcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Completion>> {
        let (reply, answer) = oneshot::channel();
        let queued = QueuedCompletion {
            job_id: job_id.clone(),
            version: expected_version,
            outcome: outcome.clone(),
            now,
            reply,
        };
        let stopped = || StoreError::Unavailable("the completion writer stopped".into());
        self.completer.send(queued).map_err(|_| stopped())?;
        let job = answer.await.map_err(|_| stopped())??;
        Ok(job.map(|job| Completion {
            job,
            children_created: Vec::new(),
            join_errors: Vec::new(),
        }))
    }

    async fn cancel_job(&self, job_id: &JobId, now: DateTime<Utc>) -> StoreResult<CancelOutcome> {
        let client = self.inner.client().await?;
        let statement = client.prepare_cached(&CANCEL).await.map_err(pg_error)?;
        let mut stuck = Stuck::default();
        loop {
            let row = client
                .query_opt(&statement, &[&job_id.as_str(), &now])
                .await
                .map_err(pg_error)?;
            if let Some(row) = row {
                let job = decode_job(&row, 0)?;
                return Ok(match job.status {
                    JobStatus::Cancelled => CancelOutcome::Cancelled(job),
                    _ => CancelOutcome::Requested(job),
                });
            }
            match read_job(&client, job_id).await? {
                None => return Ok(CancelOutcome::NotFound),
                Some(job) if job.status == JobStatus::Processing && job.cancel_requested => {
                    return Ok(CancelOutcome::Requested(job))
                }
                Some(job) if job.status.is_terminal() => {
                    return Ok(CancelOutcome::AlreadyFinished(job))
                }
                // It moved between the two statements: try again.
                Some(_) => stuck.check(job_id)?,
            }
        }
    }

    /// One chunk of a lease sweep, in one transaction: the expired jobs and their joins.
    async fn sweep_chunk(
        &self,
        now: DateTime<Utc>,
        rules: &dyn JoinRules,
    ) -> Result<(Expired, usize), Failed> {
        let mut client = self.inner.client().await?;
        let tx = client.transaction().await?;
        let statement = tx.prepare_cached(&SWEEP).await?;
        let allowance = i64::from(LEASE_RECOVERY_ALLOWANCE);
        let rows = tx
            .query(&statement, &[&now, &allowance, &SWEEP_CHUNK])
            .await?;
        let taken = rows.len();
        let mut jobs = decode_jobs(&rows, 0)?;
        jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        let mut expired = Expired::default();
        for job in jobs {
            if job.status == JobStatus::Queued {
                expired.requeued.push(job.job_id);
                continue;
            }
            let joins = rules.joins_for(&job.report_type);
            let (children_created, join_errors) = apply_joins(&tx, &job, joins, now).await?;
            expired.finished.push(Completion {
                job,
                children_created,
                join_errors,
            });
        }
        tx.commit().await?;
        Ok((expired, taken))
    }

    async fn sweep(&self, now: DateTime<Utc>, rules: &dyn JoinRules) -> StoreResult<Expired> {
        let now = store_time(now);
        let mut expired = Expired::default();
        loop {
            let (chunk, taken) = retrying!("a lease sweep", self.sweep_chunk(now, rules).await)?;
            expired.requeued.extend(chunk.requeued);
            expired.finished.extend(chunk.finished);
            if taken < SWEEP_CHUNK as usize {
                break;
            }
        }
        expired.finished.iter().for_each(log_join_errors);
        if !expired.requeued.is_empty()
            || expired
                .finished
                .iter()
                .any(|c| !c.children_created.is_empty())
        {
            self.wake();
        }
        Ok(expired)
    }

    /// Runs a read, again on a transient failure (it changes nothing).
    async fn read<T, F, Fut>(&self, what: &str, read: F) -> StoreResult<T>
    where
        F: Fn(Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match read(Arc::clone(&self.inner)).await {
                Err(error) if error.is_transient() && tries < TRIES => {
                    tracing::debug!(%error, what, "read failed; trying again");
                    tokio::time::sleep(Duration::from_millis(20 << tries)).await;
                }
                other => return other,
            }
        }
    }

    async fn list_page(inner: Arc<Inner>, filter: ListFilter) -> StoreResult<Page> {
        let limit = filter.limit.clamp(1, ListFilter::MAX_LIMIT);
        let below = filter.cursor.as_deref().map(parse_cursor).transpose()?;
        let (at, id) = match &below {
            Some((at, id)) => (Some(*at), Some(id.as_str())),
            None => (None, None),
        };
        let status = filter.status.map(status_text);
        let filtered =
            filter.status.is_some() || filter.report_type.is_some() || filter.county.is_some();
        let want = (limit + 1) as i64;
        let client = inner.client().await?;
        let sql: &str = if below.is_some() {
            &LIST
        } else {
            &LIST_FROM_START
        };
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        let rows = client
            .query(
                &statement,
                &[
                    &at,
                    &id,
                    &LIST_SCAN_BUDGET,
                    &status,
                    &filter.report_type,
                    &filter.county,
                    &want,
                ],
            )
            .await
            .map_err(pg_error)?;
        let mut jobs = decode_jobs(&rows, 0)?;
        if jobs.len() > limit {
            jobs.truncate(limit);
            let last = jobs.last().expect("a full page");
            let next_cursor = Some(cursor(last.created_at, &last.job_id));
            return Ok(Page { jobs, next_cursor });
        }
        let mut next_cursor = None;
        if filtered {
            // The scan may have stopped at its budget with rows left below it.
            let statement = client
                .prepare_cached(LIST_SCAN_END)
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&at, &id, &(LIST_SCAN_BUDGET - 1)])
                .await
                .map_err(pg_error)?;
            if rows.len() == 2 {
                let last_at: DateTime<Utc> = rows[0].try_get(0).map_err(pg_error)?;
                let last_id: String = rows[0].try_get(1).map_err(pg_error)?;
                next_cursor = Some(format!("{}.{last_id}", last_at.timestamp_micros()));
            }
        }
        Ok(Page { jobs, next_cursor })
    }
}

/// A list position as a cursor: `<created_at µs>.<job id>` of the last position shown (or
/// examined); the next page starts just below it. The same form as the sled store's.
fn cursor(created_at: DateTime<Utc>, job_id: &JobId) -> String {
    format!("{}.{job_id}", created_at.timestamp_micros())
}

fn parse_cursor(text: &str) -> StoreResult<(DateTime<Utc>, JobId)> {
    let invalid = || StoreError::InvalidCursor(text.to_owned());
    let (micros, id) = text.split_once('.').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
    let id: JobId = id.parse().map_err(|_| invalid())?;
    Ok((at, id))
}

impl Store for PgStore {
    fn enqueue(
        &self,
        batch: Vec<NewJob>,
        unique: Option<UniqueKey>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, StoreResult<Enqueued>> {
        Box::pin(async move {
            if batch.is_empty() && unique.is_none() {
                return Ok(Enqueued::Created(Vec::new()));
            }
            let now = store_time(now);
            let enqueued = retrying!(
                "an enqueue",
                self.enqueue_once(&batch, unique.as_ref(), now).await
            )?;
            if matches!(&enqueued, Enqueued::Created(jobs) if !jobs.is_empty()) {
                self.wake();
            }
            Ok(enqueued)
        })
    }

    fn claim<'a>(
        &'a self,
        worker: &'a str,
        max: usize,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        Box::pin(async move {
            if max == 0 {
                return Ok(Vec::new());
            }
            self.claim_jobs(worker, max, lease, store_time(now)).await
        })
    }

    fn renew<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        lease_until: DateTime<Utc>,
        progress: Option<ProgressUpdate>,
    ) -> BoxFuture<'a, StoreResult<Cas<Job>>> {
        Box::pin(self.renew_job(job_id, expected_version, lease_until, progress))
    }

    fn complete<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &'a [JoinEdge],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Cas<Completion>>> {
        Box::pin(self.complete_job(job_id, expected_version, outcome, joins, store_time(now)))
    }

    fn cancel<'a>(
        &'a self,
        job_id: &'a JobId,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<CancelOutcome>> {
        Box::pin(self.cancel_job(job_id, store_time(now)))
    }

    fn requeue_expired<'a>(
        &'a self,
        now: DateTime<Utc>,
        joins: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>> {
        Box::pin(self.sweep(now, joins))
    }

    /// Only expired leases: other processes may be running the rest (see the trait).
    fn requeue_all_processing<'a>(
        &'a self,
        now: DateTime<Utc>,
        joins: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>> {
        Box::pin(self.sweep(now, joins))
    }

    fn get<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Option<Job>>> {
        Box::pin(self.read("get", move |inner| async move {
            let client = inner.client().await?;
            read_job(&client, job_id).await
        }))
    }

    fn children<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        Box::pin(self.read("children", move |inner| async move {
            let client = inner.client().await?;
            let statement = client.prepare_cached(&CHILDREN).await.map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&job_id.as_str()])
                .await
                .map_err(pg_error)?;
            decode_jobs(&rows, 0)
        }))
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, StoreResult<Page>> {
        Box::pin(self.read("list", move |inner| Self::list_page(inner, filter.clone())))
    }

    fn counts(&self) -> BoxFuture<'_, StoreResult<BTreeMap<JobStatus, u64>>> {
        Box::pin(self.read("counts", |inner| async move {
            let client = inner.client().await?;
            let statement = client
                .prepare_cached("SELECT status, sum(n)::int8 FROM job_counts GROUP BY status")
                .await
                .map_err(pg_error)?;
            let rows = client.query(&statement, &[]).await.map_err(pg_error)?;
            let mut counts: BTreeMap<JobStatus, u64> =
                JobStatus::ALL.into_iter().map(|s| (s, 0)).collect();
            for row in &rows {
                let status: String = row.try_get(0).map_err(pg_error)?;
                let n: i64 = row.try_get(1).map_err(pg_error)?;
                if let Ok(status) = status.parse::<JobStatus>() {
                    counts.insert(status, u64::try_from(n).unwrap_or(0));
                }
            }
            Ok(counts)
        }))
    }

    fn last_fire<'a>(
        &'a self,
        schedule: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<DateTime<Utc>>>> {
        Box::pin(self.read("last_fire", move |inner| async move {
            let client = inner.client().await?;
            let statement = client
                .prepare_cached("SELECT last_fire FROM schedule_fires WHERE schedule = $1")
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&schedule])
                .await
                .map_err(pg_error)?;
            row.map(|row| row.try_get(0).map_err(pg_error)).transpose()
        }))
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    fn is_shared(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Background tasks
// ---------------------------------------------------------------------------------------------

/// A completion waiting for a batch.
struct QueuedCompletion {
    job_id: JobId,
    version: u64,
    outcome: Outcome,
    now: DateTime<Utc>,
    /// The job if the completion applied, `None` if its CAS matched nothing.
    reply: oneshot::Sender<StoreResult<Option<Job>>>,
}

/// Writes queued completions in batches: takes whatever is waiting (up to
/// [`MAX_COMPLETE_BATCH`]), writes it with one statement, answers each caller.
async fn write_completions(
    inner: Arc<Inner>,
    queue: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<QueuedCompletion>>>,
) {
    let mut batch = Vec::new();
    loop {
        {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
            while batch.len() < MAX_COMPLETE_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
        }
        let result = retrying!("a completion batch", write_batch(&inner, &batch).await);
        match result {
            Ok(mut applied) => {
                for (i, queued) in batch.drain(..).enumerate() {
                    let _ = queued.reply.send(Ok(applied.remove(&i)));
                }
            }
            Err(error) => {
                for queued in batch.drain(..) {
                    let _ = queued.reply.send(Err(copy_error(&error)));
                }
            }
        }
    }
}

async fn write_batch(
    inner: &Inner,
    batch: &[QueuedCompletion],
) -> Result<HashMap<usize, Job>, Failed> {
    let client = inner.client().await?;
    let inputs: Vec<CompletionInput<'_>> = batch
        .iter()
        .map(|q| CompletionInput {
            job_id: &q.job_id,
            version: q.version,
            outcome: &q.outcome,
            now: q.now,
        })
        .collect();
    Ok(complete_rows(&client, &inputs).await?.into_iter().collect())
}

/// Listens for other processes' `NOTIFY`s on a dedicated connection and bumps the store's wake
/// counter; reconnects with backoff when the connection is lost (and wakes then too: a
/// notification may have been missed meanwhile). Ends when the store is gone.
async fn listen(config: tokio_postgres::Config, instance: String, inner: std::sync::Weak<Inner>) {
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&config, &instance, &inner, &mut backoff).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "lost the LISTEN connection to the job store; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One LISTEN connection, until it fails (`Err`) or the store is gone (`Ok`).
async fn listen_once(
    config: &tokio_postgres::Config,
    instance: &str,
    inner: &std::sync::Weak<Inner>,
    backoff: &mut Duration,
) -> StoreResult<()> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(pg_error)?;
    let (tx, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Ok(n)).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    let _ = tx.send(Err(error));
                    return;
                }
                None => return,
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    let channel: String = client
        .query_one("SELECT flowctl_channel()", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    client
        .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
        .await
        .map_err(pg_error)?;
    *backoff = Duration::from_millis(100);
    match inner.upgrade() {
        Some(inner) => inner.wake(),
        None => return Ok(()),
    }
    while let Some(message) = notifications.recv().await {
        let notification = message.map_err(pg_error)?;
        let Some(inner) = inner.upgrade() else {
            return Ok(());
        };
        if notification.payload() != instance {
            inner.wake();
        }
    }
    drop(client);
    Err(StoreError::Unavailable(
        "the LISTEN connection closed".into(),
    ))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{PgConfig, PgStore};
    use crate::job::{JobId, JobStatus};
    use crate::store::conformance::{self, at, new_job};
    use crate::store::pg_test_schema::{database_url, TestSchema};
    use crate::store::{Cas, Completion, Condition, Enqueued, JoinEdge, NoJoins, Outcome, Store};

    macro_rules! database_or_skip {
        () => {
            match database_url() {
                Some(url) => url,
                None => {
                    println!("skipped: FLOWCTL_TEST_PG not set");
                    return;
                }
            }
        };
    }

    /// Fresh stores, each on a schema of its own, for the conformance scenarios.
    struct Stores {
        base: String,
        schemas: Mutex<Vec<TestSchema>>,
    }

    impl Stores {
        fn open(&self) -> Arc<dyn Store> {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    let schema = TestSchema::create(&self.base, "t").await;
                    let store = schema.open().await;
                    self.schemas.lock().unwrap().push(schema);
                    Arc::new(store) as Arc<dyn Store>
                })
            })
        }
    }

    macro_rules! conformance {
        ($($scenario:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let base = database_or_skip!();
                let stores = Stores { base, schemas: Mutex::new(Vec::new()) };
                conformance::$scenario(stores.open()).await;
            }
        )*};
    }

    conformance::with_scenarios!(conformance);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_persist_across_reopen_and_live_leases_are_kept() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        let store = schema.open().await;
        let before = conformance::before_reopen(&store, Duration::from_secs(60)).await;
        let running = &before.running;
        drop(store);

        let store = schema.open().await;
        conformance::same_after_reopen(&store, &before).await;
        // Another process may be running the PROCESSING job: a restart leaves its lease alone...
        assert!(store.is_shared());
        let expired = store.requeue_all_processing(at(3), &NoJoins).await.unwrap();
        assert_eq!(expired, Default::default());
        // ...until it expires.
        let expired = store
            .requeue_all_processing(at(62), &NoJoins)
            .await
            .unwrap();
        assert_eq!(expired.requeued, vec![running[1].job_id.clone()]);
        let claimed = store
            .claim("w2", 10, Duration::from_secs(60), at(63))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        let migrations = schema
            .client()
            .await
            .query("SELECT version FROM flowctl_migrations", &[])
            .await
            .unwrap();
        assert_eq!(migrations.len(), super::MIGRATIONS.len(), "migrated once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_starting_together_migrate_once() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        let url = schema.url();
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PgStore::open(PgConfig::new(url)).await })
            })
            .collect();
        for open in opens {
            open.await.unwrap().expect("open");
        }
        assert!(PgStore::migrate(&url).await.unwrap().is_empty());
        let rows = schema
            .client()
            .await
            .query("SELECT version FROM flowctl_migrations", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), super::MIGRATIONS.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newer_schema_is_refused() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        drop(schema.open().await);
        schema
            .client()
            .await
            .execute(
                "INSERT INTO flowctl_migrations (version, name) VALUES (999, 'future')",
                &[],
            )
            .await
            .unwrap();
        match PgStore::open(PgConfig::new(schema.url())).await {
            Err(crate::store::StoreError::FormatVersion { found, .. }) => assert_eq!(found, 999),
            Err(other) => panic!("expected FormatVersion, got {other}"),
            Ok(_) => panic!("opened a newer schema"),
        }
    }

    /// Two processes on one database: a job one of them runs is not taken by the other while
    /// its lease lives; after, it is, and the first one's late writes are refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_share_one_queue() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        let a = schema.open().await;
        let b = schema.open().await;
        let mut b_wake = b.subscribe();
        b_wake.borrow_and_update();
        a.enqueue(vec![new_job("R", "S", None)], None, at(0))
            .await
            .unwrap();
        // B hears of A's job through NOTIFY.
        tokio::time::timeout(Duration::from_secs(5), b_wake.changed())
            .await
            .expect("B was not woken by A's enqueue")
            .unwrap();
        let mine = a
            .claim("a", 10, Duration::from_secs(30), at(1))
            .await
            .unwrap();
        assert_eq!(mine.len(), 1);
        assert!(b
            .claim("b", 10, Duration::from_secs(30), at(1))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            b.requeue_all_processing(at(2), &NoJoins).await.unwrap(),
            Default::default()
        );
        // A dies (its lease runs out); B takes the job over.
        let expired = b.requeue_expired(at(40), &NoJoins).await.unwrap();
        assert_eq!(expired.requeued, vec![mine[0].job_id.clone()]);
        let theirs = b
            .claim("b", 10, Duration::from_secs(30), at(41))
            .await
            .unwrap();
        assert_eq!(theirs.len(), 1);
        let late = a
            .complete(
                &mine[0].job_id,
                mine[0].version,
                Outcome::Cancelled,
                &[],
                at(42),
            )
            .await
            .unwrap();
        assert!(
            matches!(late, Cas::Conflict { current: Some(ref c) } if c.lease_owner.as_deref() == Some("b"))
        );
        let done = b
            .complete(
                &theirs[0].job_id,
                theirs[0].version,
                Outcome::Cancelled,
                &[],
                at(43),
            )
            .await
            .unwrap();
        assert!(done.is_applied());
        assert_eq!(a.counts().await.unwrap()[&JobStatus::Cancelled], 1);
    }

    /// Every connection of the store is killed: operations fail as transient errors or succeed
    /// after a retry, and wake-ups from other processes resume once the LISTEN connection is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_connections_are_transient_and_listening_resumes() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        let store = schema.open().await;
        let other = schema.open().await;
        let job = match store
            .enqueue(vec![new_job("R", "S", None)], None, at(0))
            .await
            .unwrap()
        {
            Enqueued::Created(mut jobs) => jobs.remove(0),
            Enqueued::Existing(_) => panic!(),
        };
        let admin = schema.client().await;
        let killed = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND application_name = $1",
                &[&schema.name()],
            )
            .await
            .unwrap();
        assert!(killed > 0);
        // Reads retry by themselves.
        assert_eq!(store.get(&job.job_id).await.unwrap().unwrap(), job);
        // Writes report a transient error or succeed; a retry succeeds.
        let mut claimed = Vec::new();
        for _ in 0..20 {
            match store.claim("w", 1, Duration::from_secs(30), at(1)).await {
                Ok(jobs) => {
                    claimed = jobs;
                    break;
                }
                Err(error) => {
                    assert!(error.is_transient(), "{error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert_eq!(claimed.len(), 1);
        // The listener reconnects (with backoff) and hears the other store again.
        let mut wake = store.subscribe();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            wake.borrow_and_update();
            other
                .enqueue(vec![new_job("R", "S", None)], None, at(2))
                .await
                .unwrap();
            if tokio::time::timeout(Duration::from_millis(500), wake.changed())
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never woken after reconnecting"
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Differential: random operation sequences (joins, retries, cancels, stale writers, lease
    // expiry, reopening) on the sled store and on this one must leave the same jobs.
    // -----------------------------------------------------------------------------------------

    #[derive(Clone, Debug)]
    enum Op {
        Enqueue {
            report: usize,
            county: bool,
            priority: u8,
            max_attempts: u32,
        },
        ClaimAll,
        Succeed(usize),
        Fail(usize, Option<i64>),
        Cancelled(usize),
        Renew(usize),
        Cancel(usize),
        Stale(usize),
        Expire(i64),
        Reopen,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..3usize, any::<bool>(), 0..3u8, 1..3u32).prop_map(|(report, county, priority, max_attempts)| {
                Op::Enqueue { report, county, priority, max_attempts }
            }),
            3 => Just(Op::ClaimAll),
            3 => any::<usize>().prop_map(Op::Succeed),
            2 => (any::<usize>(), proptest::option::of(-1..4i64)).prop_map(|(p, r)| Op::Fail(p, r)),
            1 => any::<usize>().prop_map(Op::Cancelled),
            1 => any::<usize>().prop_map(Op::Renew),
            1 => any::<usize>().prop_map(Op::Cancel),
            1 => any::<usize>().prop_map(Op::Stale),
            1 => (0..40i64).prop_map(Op::Expire),
            1 => Just(Op::Reopen),
        ]
    }

    /// A job with its ids replaced by their index in creation order, which the two stores share.
    fn normalized(job: &crate::job::Job, index: &HashMap<JobId, usize>) -> String {
        let mut job = job.clone();
        let parents: Vec<usize> = job.parent_job_ids.iter().map(|id| index[id]).collect();
        job.job_id = "JOB_00000000".parse().unwrap();
        job.parent_job_ids.clear();
        if job.status != JobStatus::Queued {
            // The sled store keeps a claimed retry's old `run_after`; it means nothing then.
            job.run_after = None;
        }
        format!("{job:?} parents {parents:?}")
    }

    struct Pair {
        sled_path: std::path::PathBuf,
        sled: Option<crate::store::SledStore>,
        pg: Option<PgStore>,
        schema: TestSchema,
        /// Job ids in creation order, per store.
        ids: (Vec<JobId>, Vec<JobId>),
        index: (HashMap<JobId, usize>, HashMap<JobId, usize>),
        now: i64,
    }

    impl Pair {
        fn stores(&self) -> (&dyn Store, &dyn Store) {
            (self.sled.as_ref().unwrap(), self.pg.as_ref().unwrap())
        }

        fn created(&mut self, sled: Vec<crate::job::Job>, pg: Vec<crate::job::Job>) {
            assert_eq!(sled.len(), pg.len(), "created jobs");
            for (a, b) in sled.into_iter().zip(pg) {
                self.index.0.insert(a.job_id.clone(), self.ids.0.len());
                self.index.1.insert(b.job_id.clone(), self.ids.1.len());
                self.ids.0.push(a.job_id);
                self.ids.1.push(b.job_id);
            }
        }

        /// The index of a job in `status` (any with `None`), chosen by `pick`.
        async fn pick(&self, pick: usize, status: Option<JobStatus>) -> Option<usize> {
            let (sled, _) = self.stores();
            let mut found = Vec::new();
            for (i, id) in self.ids.0.iter().enumerate() {
                let job = sled.get(id).await.unwrap().unwrap();
                if status.is_none_or(|s| job.status == s) {
                    found.push(i);
                }
            }
            (!found.is_empty()).then(|| found[pick % found.len()])
        }

        async fn complete(&mut self, i: usize, outcome: Outcome, stale: bool, joins: &[JoinEdge]) {
            let now = at(self.now);
            let (sled, pg) = self.stores();
            let (a, b) = (&self.ids.0[i], &self.ids.1[i]);
            let va = sled.get(a).await.unwrap().unwrap().version - u64::from(stale);
            let vb = pg.get(b).await.unwrap().unwrap().version - u64::from(stale);
            let ra = sled.complete(a, va, outcome.clone(), joins, now).await;
            let rb = pg.complete(b, vb, outcome, joins, now).await;
            match (ra, rb) {
                (Ok(Cas::Applied(x)), Ok(Cas::Applied(y))) => {
                    self.created(x.children_created, y.children_created)
                }
                (Ok(Cas::Conflict { .. }), Ok(Cas::Conflict { .. })) => {}
                (Err(x), Err(y)) => assert_eq!(
                    x.to_string().split(' ').next(),
                    y.to_string().split(' ').next()
                ),
                (x, y) => panic!("sled: {x:?}\npostgres: {y:?}"),
            }
        }

        async fn step(&mut self, op: &Op, joins: &[JoinEdge]) {
            self.now += 1;
            let now = at(self.now);
            let lease = Duration::from_secs(10);
            match op {
                Op::Enqueue {
                    report,
                    county,
                    priority,
                    max_attempts,
                } => {
                    let mut job = new_job(["A", "B", "C"][*report], "S", county.then_some("X"));
                    job.priority = *priority;
                    job.max_attempts = *max_attempts;
                    let (sled, pg) = self.stores();
                    let x = sled.enqueue(vec![job.clone()], None, now).await.unwrap();
                    let y = pg.enqueue(vec![job], None, now).await.unwrap();
                    match (x, y) {
                        (Enqueued::Created(x), Enqueued::Created(y)) => self.created(x, y),
                        other => panic!("{other:?}"),
                    }
                }
                Op::ClaimAll => {
                    let (sled, pg) = self.stores();
                    let x = sled.claim("w", 10_000, lease, now).await.unwrap();
                    let y = pg.claim("w", 10_000, lease, now).await.unwrap();
                    let mut x: Vec<usize> = x.iter().map(|j| self.index.0[&j.job_id]).collect();
                    let mut y: Vec<usize> = y.iter().map(|j| self.index.1[&j.job_id]).collect();
                    x.sort_unstable();
                    y.sort_unstable();
                    assert_eq!(x, y, "claimed");
                }
                Op::Succeed(pick) | Op::Fail(pick, _) | Op::Cancelled(pick) => {
                    let Some(i) = self.pick(*pick, Some(JobStatus::Processing)).await else {
                        return;
                    };
                    let outcome = match op {
                        Op::Succeed(_) => Outcome::Success {
                            result_path: "p".into(),
                            rows_written: 3,
                            sha256: "h".into(),
                        },
                        Op::Fail(_, retry) => Outcome::Failure {
                            error: "boom".into(),
                            retry_at: retry.map(|s| at(self.now + s)),
                        },
                        _ => Outcome::Cancelled,
                    };
                    self.complete(i, outcome, false, joins).await;
                }
                Op::Stale(pick) => {
                    let Some(i) = self.pick(*pick, None).await else {
                        return;
                    };
                    self.complete(i, Outcome::Cancelled, true, joins).await;
                }
                Op::Renew(pick) => {
                    let Some(i) = self.pick(*pick, Some(JobStatus::Processing)).await else {
                        return;
                    };
                    let (sled, pg) = self.stores();
                    let until = at(self.now + 10);
                    for (store, id) in [(sled, &self.ids.0[i]), (pg, &self.ids.1[i])] {
                        let version = store.get(id).await.unwrap().unwrap().version;
                        assert!(store
                            .renew(id, version, until, None)
                            .await
                            .unwrap()
                            .is_applied());
                    }
                }
                Op::Cancel(pick) => {
                    let Some(i) = self.pick(*pick, None).await else {
                        return;
                    };
                    let (sled, pg) = self.stores();
                    sled.cancel(&self.ids.0[i], now).await.unwrap();
                    pg.cancel(&self.ids.1[i], now).await.unwrap();
                }
                Op::Expire(advance) => {
                    self.now += advance;
                    let now = at(self.now);
                    let joins = joins.to_vec();
                    let (sled, pg) = self.stores();
                    let x = sled.requeue_expired(now, &joins).await.unwrap();
                    let y = pg.requeue_expired(now, &joins).await.unwrap();
                    let requeued = |ids: &[JobId], index: &HashMap<JobId, usize>| {
                        let mut r: Vec<usize> = ids.iter().map(|id| index[id]).collect();
                        r.sort_unstable();
                        r
                    };
                    assert_eq!(
                        requeued(&x.requeued, &self.index.0),
                        requeued(&y.requeued, &self.index.1),
                        "requeued"
                    );
                    // Children in the order of their parents' indexes.
                    let children = |finished: Vec<Completion>, index: &HashMap<JobId, usize>| {
                        let mut f: Vec<(usize, Vec<crate::job::Job>)> = finished
                            .into_iter()
                            .map(|c| (index[&c.job.job_id], c.children_created))
                            .collect();
                        f.sort_by_key(|(i, _)| *i);
                        f.into_iter().flat_map(|(_, c)| c).collect::<Vec<_>>()
                    };
                    let x = children(x.finished, &self.index.0);
                    let y = children(y.finished, &self.index.1);
                    self.created(x, y);
                }
                Op::Reopen => {
                    drop(self.sled.take());
                    drop(self.pg.take());
                    self.sled = Some(
                        crate::store::SledStore::open(crate::store::SledConfig::new(
                            &self.sled_path,
                        ))
                        .unwrap(),
                    );
                    self.pg = Some(self.schema.open().await);
                }
            }
        }

        async fn check(&self) {
            let (sled, pg) = self.stores();
            for (a, b) in self.ids.0.iter().zip(&self.ids.1) {
                let x = sled.get(a).await.unwrap().unwrap();
                let y = pg.get(b).await.unwrap().unwrap();
                assert_eq!(normalized(&x, &self.index.0), normalized(&y, &self.index.1));
            }
            assert_eq!(
                sled.counts().await.unwrap(),
                pg.counts().await.unwrap(),
                "counts"
            );
        }
    }

    #[test]
    fn random_operations_match_the_sled_store() {
        use proptest::prelude::*;
        let Some(base) = database_url() else {
            println!("skipped: FLOWCTL_TEST_PG not set");
            return;
        };
        let joins = vec![
            conformance::edge("dep:C", &["A", "B"], Condition::OnSuccess, "C"),
            conformance::edge("dep:D", &["C"], Condition::OnCompletion, "D"),
        ];
        let config = ProptestConfig {
            cases: 48,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest!(config, |(ops in proptest::collection::vec(op(), 1..60))| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let sled_path = dir.path().join("db");
                let schema = TestSchema::create(&base, "t").await;
                let mut pair = Pair {
                    sled: Some(
                        crate::store::SledStore::open(crate::store::SledConfig::new(&sled_path))
                            .unwrap(),
                    ),
                    pg: Some(schema.open().await),
                    schema,
                    sled_path,
                    ids: Default::default(),
                    index: Default::default(),
                    now: 0,
                };
                for op in &ops {
                    pair.step(op, &joins).await;
                    pair.check().await;
                }
                drop(pair.pg.take());
            });
        });
    }

    #[test]
    fn urls_are_recognised_and_redacted() {
        assert!(super::is_postgres_url("postgres://u@h/db"));
        assert!(super::is_postgres_url("postgresql://u@h/db"));
        assert!(!super::is_postgres_url(".flowctl/db"));
        assert_eq!(
            super::redact_url("postgres://me:secret@db:5432/x?options=y"),
            "postgres://me:***@db:5432/x?options=y"
        );
        assert_eq!(
            super::redact_url("postgres://me@db/x"),
            "postgres://me@db/x"
        );
    }

    #[test]
    fn pool_size_comes_out_of_the_url() {
        let split = |url: &str| PgConfig::new(url).split_pool_size();
        assert_eq!(
            split("postgres://u@h/db?pool_size=3").unwrap(),
            ("postgres://u@h/db".into(), Some(3))
        );
        assert_eq!(
            split("postgres://u@h/db?options=x&pool_size=16&application_name=a").unwrap(),
            (
                "postgres://u@h/db?options=x&application_name=a".into(),
                Some(16)
            )
        );
        assert_eq!(
            split("postgres://u@h/db").unwrap(),
            ("postgres://u@h/db".into(), None)
        );
        assert!(split("postgres://u@h/db?pool_size=0").is_err());
    }

    #[test]
    fn cursors_round_trip() {
        let at = at(5);
        let id: crate::job::JobId = "JOB_ABCD1234".parse().unwrap();
        let text = super::cursor(at, &id);
        assert_eq!(super::parse_cursor(&text).unwrap(), (at, id));
        for bad in ["", "1", "x.JOB_ABCD1234", "1.JOB_abcd1234"] {
            assert!(super::parse_cursor(bad).is_err(), "{bad}");
        }
    }
}
