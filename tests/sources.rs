//! Database sources end to end, in-process: a workflow whose source is a SQLite file or a
//! PostgreSQL database (built in Rust from a compiled file workflow: the source kind and the
//! report's query are set on the model), a sled store, and `Engine::run` until idle. The
//! PostgreSQL tests read `FLOWCTL_TEST_PG` (skipped without it), each in a schema of its own.
//!
//! Guards: values keep their types (JSON lines) and NULLs; non-ASCII text; the county filter
//! and masks apply after the query (a query without a county filter leaks nothing); every
//! value is bound, never spliced (SQL injection), on PostgreSQL through the COPY read; the
//! window's label in the result path; a query error, a missing database, a missing URL
//! variable and a query that needs a window fail at once; a connection killed mid-stream (a
//! COPY) fails that attempt cleanly and the retry completes; `sslmode`; a password never
//! appears in an error.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use tokio::sync::mpsc;

use common::pg::database_or_skip;
use common::{engine, files_under, Project};
use flowctl::executor::{Engine, ExecEvent, JobRefused, Trigger, WindowRequest};
use flowctl::job::{Job, JobId, JobRequest, JobStatus, Principal};
use flowctl::params::{Given, ParamSpec, ParamType, ParamValue};
use flowctl::pipeline::{self, Bindings, Control, PipelineSpec, Progress, SourceSpec};
use flowctl::store::pg_test_schema::TestSchema;
use flowctl::store::sled::SledStore;
use flowctl::store::{SledConfig, Store};
use flowctl::window::{Period, WindowSpec};
use flowctl::workflow::{Query, SourceKind, Workflow};

const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// One report `R` on source `cases` (county column `county_id`), ssn masked `last4` for
/// CASE_WORKER; CASE_WORKER is county-scoped, ADMIN sees every county.
fn flow(format: &str, retries: u32) -> String {
    format!(
        "config {{\n  worker_pool_size 1\n  poll_interval 50ms\n  all_counties ADMIN\n}}\n\
         roles ADMIN, CASE_WORKER\n\
         source cases {{\n  path \"unused.csv\"\n  county_column county_id\n}}\n\
         report R {{\n  source cases\n  format {format}\n  chunk_size 1000\n  retries {retries}\n  backoff 100ms\n  mask ssn last4 for CASE_WORKER\n}}\n"
    )
}

struct Fixture {
    /// Holds the temporary directory of the workflow and its results.
    _project: Project,
    workflow: Arc<Workflow>,
    store: Arc<SledStore>,
}

impl Fixture {
    /// The workflow of [`flow`] with its source made `kind` and report R's query `query`.
    fn new(format: &str, retries: u32, kind: SourceKind, query: &str) -> Fixture {
        Fixture::with_params(format, retries, kind, query, Vec::new())
    }

    fn with_params(
        format: &str,
        retries: u32,
        kind: SourceKind,
        query: &str,
        params: Vec<ParamSpec>,
    ) -> Fixture {
        let project = Project::new().flow("w.flow", &flow(format, retries));
        let mut workflow = project.workflow("w.flow");
        workflow.sources[0].kind = kind;
        let (_, placeholders) = pipeline::sql_placeholders::number(query).unwrap();
        workflow.reports[0].query = Some(Query {
            text: query.to_string(),
            file: None,
            placeholders,
        });
        workflow.reports[0].params = params;
        let store = SledStore::open(SledConfig {
            flush: false,
            ..SledConfig::new(project.db())
        })
        .unwrap();
        Fixture {
            _project: project,
            workflow: Arc::new(workflow),
            store: Arc::new(store),
        }
    }

    fn results(&self) -> PathBuf {
        self.workflow.config.results_dir.clone()
    }

    /// Queues one job of R as `role` in `county` with `request`, runs the engine until idle
    /// (calling `on_event` with each event) and returns the job.
    async fn run_one(
        &self,
        role: &str,
        county: Option<&str>,
        request: JobRequest,
        mut on_event: impl FnMut(&ExecEvent),
    ) -> Job {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let engine =
            Arc::new(engine::engine(self.workflow.clone(), self.store.clone()).with_events(tx));
        let principal = Principal {
            subject: "test".into(),
            role: role.into(),
            county: county.map(str::to_string),
        };
        // The request's params and window, given as a trigger gives them.
        let trigger = Trigger {
            params: request
                .params
                .iter()
                .map(|(k, v)| (k.clone(), Given::Json(v.to_json())))
                .collect(),
            window: request.window.clone().map(WindowRequest::Decided),
            at: None,
        };
        let job = engine
            .new_job_for("R", principal, "http:0123456789abcdef", request, &trigger)
            .unwrap();
        let id: JobId = self
            .store
            .enqueue(vec![job], None, Utc::now())
            .await
            .unwrap()
            .job_ids()
            .remove(0);
        let runner = tokio::spawn(Engine::run(engine, std::future::pending::<()>(), true));
        let collect = async {
            while let Some(event) = rx.recv().await {
                on_event(&event);
            }
        };
        tokio::time::timeout(RUN_DEADLINE, collect)
            .await
            .expect("the engine went idle in time");
        runner.await.unwrap().unwrap();
        self.store.get(&id).await.unwrap().unwrap()
    }

    fn result_text(&self, job: &Job) -> String {
        let path = job.result_path.as_deref().expect("a result");
        std::fs::read_to_string(path).unwrap()
    }

    /// Every file under the results directory, temporaries included.
    fn files(&self) -> Vec<PathBuf> {
        if self.results().exists() {
            files_under(&self.results())
        } else {
            Vec::new()
        }
    }
}

fn sqlite_db(dir: &Path, sql: &str) -> PathBuf {
    let path = dir.join("cases.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(sql).unwrap();
    path
}

const CASES_SQL: &str =
    "CREATE TABLE cases (case_id INTEGER, county_id TEXT, client_name TEXT, ssn TEXT,
       amount REAL, flag INTEGER, raw BLOB, note TEXT);
     INSERT INTO cases VALUES (1, 'C1', 'Zoë Muñoz 日本', '123456789', 12.5, 1, x'00ff', NULL);
     INSERT INTO cases VALUES (2, 'C2', 'a,b \"c\"', '987654321', -0.25, 0, NULL, 'x');
     INSERT INTO cases VALUES (3, 'C1', 'O''Brien', '111223333', NULL, NULL, x'', '');";

fn jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_values_keep_their_types_and_nulls_in_json_lines_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), CASES_SQL);
    let query = "SELECT * FROM cases ORDER BY case_id";
    let fx = Fixture::new("jsonl", 0, SourceKind::Sqlite { path: db.clone() }, query);
    let job = fx
        .run_one("ADMIN", None, JobRequest::default(), |_| {})
        .await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!(job.rows_written, 3);
    let rows = jsonl(&fx.result_text(&job));
    assert_eq!(
        rows[0],
        serde_json::json!({"case_id": 1, "county_id": "C1", "client_name": "Zoë Muñoz 日本",
            "ssn": "123456789", "amount": 12.5, "flag": 1, "raw": "00ff", "note": null})
    );
    assert_eq!(rows[1]["client_name"], "a,b \"c\"");
    assert_eq!(rows[1]["amount"], -0.25);
    assert_eq!(rows[1]["raw"], serde_json::Value::Null);
    assert_eq!(rows[2]["amount"], serde_json::Value::Null);
    assert_eq!(rows[2]["note"], "");
    assert_eq!(rows[2]["raw"], "");

    let fx = Fixture::new("csv", 0, SourceKind::Sqlite { path: db }, query);
    let job = fx
        .run_one("ADMIN", None, JobRequest::default(), |_| {})
        .await;
    assert_eq!(
        fx.result_text(&job),
        "case_id,county_id,client_name,ssn,amount,flag,raw,note\n\
         1,C1,Zoë Muñoz 日本,123456789,12.5,1,00ff,\n\
         2,C2,\"a,b \"\"c\"\"\",987654321,-0.25,0,,x\n\
         3,C1,O'Brien,111223333,,,,\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_forgets_the_county_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), CASES_SQL);
    // No WHERE on the county: the engine filters after the query, and masks.
    let fx = Fixture::new(
        "jsonl",
        0,
        SourceKind::Sqlite { path: db },
        "SELECT case_id, county_id, ssn, amount FROM cases ORDER BY case_id",
    );
    let job = fx
        .run_one("CASE_WORKER", Some("C1"), JobRequest::default(), |_| {})
        .await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    let text = fx.result_text(&job);
    let rows = jsonl(&text);
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows.iter().all(|r| r["county_id"] == "C1"), "{text}");
    // A masked field is a string, whatever its kind.
    assert_eq!(rows[0]["ssn"], "****6789");
    assert!(
        !text.contains("987654321") && !text.contains("123456789"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_without_the_county_column_fails_before_a_row_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), CASES_SQL);
    let fx = Fixture::new(
        "csv",
        2,
        SourceKind::Sqlite { path: db.clone() },
        "SELECT case_id, ssn FROM cases",
    );
    let job = fx
        .run_one("CASE_WORKER", Some("C1"), JobRequest::default(), |_| {})
        .await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(
        job.attempt, 1,
        "a rule the data does not fit is not retried"
    );
    let error = job.error.unwrap();
    assert!(error.contains("county column `county_id`"), "{error}");
    assert!(fx.files().is_empty(), "{:?}", fx.files());
    // The same for a mask column the query does not return.
    let fx = Fixture::new(
        "csv",
        2,
        SourceKind::Sqlite { path: db },
        "SELECT case_id, county_id FROM cases",
    );
    let job = fx
        .run_one("ADMIN", None, JobRequest::default(), |_| {})
        .await;
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.error.unwrap().contains("mask rule on `ssn`"));
    assert!(fx.files().is_empty());
}

/// Values full of SQL syntax: quotes, `;`, comments, `$1`- and `:name`-lookalikes.
const NASTY: [&str; 5] = [
    "O'Brien'; DROP TABLE cases; --",
    "x\" OR \"1\"=\"1",
    "/* */ $1 :name ?1 @x",
    "'); DELETE FROM cases WHERE ('a' = 'a",
    "Zoë\\'; --\n$$ $tag$",
];

fn name_param() -> Vec<ParamSpec> {
    vec![
        ParamSpec {
            name: "name".into(),
            ty: ParamType::String,
            default: None,
            required: true,
            help: "a client name".into(),
        },
        ParamSpec {
            name: "maybe".into(),
            ty: ParamType::Integer,
            default: None,
            required: false,
            help: "optional, no default: NULL".into(),
        },
    ]
}

fn request_with_name(name: &str) -> JobRequest {
    let mut request = JobRequest::default();
    request
        .params
        .insert("name".into(), ParamValue::String(name.into()));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_parameters_are_bound_as_values_never_spliced() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(
        dir.path(),
        "CREATE TABLE cases (id INTEGER, county_id TEXT, ssn TEXT, name TEXT);",
    );
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for (i, name) in NASTY.iter().enumerate() {
            conn.execute(
                "INSERT INTO cases VALUES (?1, 'C1', '000', ?2)",
                rusqlite::params![i as i64, name],
            )
            .unwrap();
        }
    }
    let query = "SELECT id, county_id, ssn, name, :name AS echoed, :maybe IS NULL AS maybe_null, \
                 :role AS role, :trigger AS trig, :job_id AS job, :county AS county \
                 FROM cases WHERE name = :name";
    let fx = Fixture::with_params(
        "jsonl",
        0,
        SourceKind::Sqlite { path: db.clone() },
        query,
        name_param(),
    );
    for (i, nasty) in NASTY.iter().enumerate() {
        let job = fx
            .run_one("ADMIN", None, request_with_name(nasty), |_| {})
            .await;
        assert_eq!(job.status, JobStatus::Completed, "{nasty}: {:?}", job.error);
        let rows = jsonl(&fx.result_text(&job));
        assert_eq!(rows.len(), 1, "{nasty}");
        assert_eq!(rows[0]["id"], i as i64);
        assert_eq!(rows[0]["echoed"], *nasty);
        assert_eq!(rows[0]["maybe_null"], 1);
        assert_eq!(rows[0]["role"], "ADMIN");
        assert_eq!(rows[0]["trig"], "http");
        assert_eq!(rows[0]["job"], job.job_id.as_str());
        assert_eq!(rows[0]["county"], serde_json::Value::Null);
    }
    // Nothing was dropped or deleted.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM cases", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, NASTY.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_job_binds_its_window_and_files_its_result_under_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(
        dir.path(),
        "CREATE TABLE cases (id INTEGER, county_id TEXT, ssn TEXT, opened_on TEXT);
         INSERT INTO cases VALUES (1, 'C1', '1', '2026-11-29'), (2, 'C1', '2', '2026-11-30'),
                                  (3, 'C1', '3', '2026-12-01');",
    );
    let query =
        "SELECT id, county_id, ssn, :interval_start AS s, :interval_end_date AS e FROM cases \
                 WHERE opened_on >= :interval_start_date AND opened_on < :interval_end_date";
    let fx = Fixture::new("csv", 0, SourceKind::Sqlite { path: db.clone() }, query);
    let fire = Utc.with_ymd_and_hms(2026, 12, 1, 4, 30, 0).unwrap();
    let zone: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
    let window = WindowSpec::Previous(Period::Day)
        .window_at(fire, zone)
        .unwrap();
    let request = JobRequest {
        window: Some(window),
        ..JobRequest::default()
    };
    let job = fx.run_one("ADMIN", None, request, |_| {}).await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    let path = PathBuf::from(job.result_path.clone().unwrap());
    assert_eq!(
        path,
        fx.results()
            .join("R")
            .join("2026-11-30")
            .join(format!("{}.csv", job.job_id))
    );
    // The local day in Paris: [2026-11-29 23:00Z, 2026-11-30 23:00Z).
    assert_eq!(
        fx.result_text(&job),
        "id,county_id,ssn,s,e\n2,C1,2,2026-11-29 23:00:00,2026-12-01\n"
    );

    // Without a window, no job of the same query is created (the executor checks again
    // for a job queued some other way: `executor::attempt`'s unit tests).
    let fx = Fixture::new("csv", 3, SourceKind::Sqlite { path: db }, query);
    let refused = engine::engine(fx.workflow.clone(), fx.store.clone()).new_job(
        "R",
        Principal::system("ADMIN"),
        "http:0123456789abcdef",
        JobRequest::default(),
    );
    assert!(
        matches!(refused, Err(JobRefused::WindowRequired { .. })),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_error_and_a_missing_database_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), CASES_SQL);
    let fx = Fixture::new(
        "csv",
        3,
        SourceKind::Sqlite { path: db },
        "SELECT nope FROM cases",
    );
    let job = fx
        .run_one("ADMIN", None, JobRequest::default(), |_| {})
        .await;
    assert_eq!((job.status, job.attempt), (JobStatus::Failed, 1));
    assert!(job.error.unwrap().contains("no such column: nope"));
    let fx = Fixture::new(
        "csv",
        3,
        SourceKind::Sqlite {
            path: dir.path().join("gone.sqlite"),
        },
        "SELECT 1",
    );
    let job = fx
        .run_one("ADMIN", None, JobRequest::default(), |_| {})
        .await;
    assert_eq!((job.status, job.attempt), (JobStatus::Failed, 1));
    assert!(job.error.unwrap().contains("does not exist"));
    assert!(fx.files().is_empty());
}

// ---- PostgreSQL ----

async fn pg_schema(base: &str, setup: &str) -> TestSchema {
    let schema = TestSchema::create(base, "sources").await;
    schema.client().await.batch_execute(setup).await.unwrap();
    schema
}

/// A PostgreSQL source whose URL is in a variable of this test's own.
fn pg_kind(var: &str, url: &str) -> SourceKind {
    std::env::set_var(var, url);
    SourceKind::Postgres {
        url_env: var.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_values_keep_their_types_and_values_are_never_spliced() {
    let base = database_or_skip!();
    let schema = pg_schema(
        &base,
        "CREATE TABLE cases (case_id int8, county_id text, ssn text, name text, amount numeric(12,2),
           ratio float8, open bool, opened_on date, at timestamptz, doc jsonb, raw bytea);",
    )
    .await;
    {
        let client = schema.client().await;
        for (i, name) in NASTY.iter().enumerate() {
            client
                .execute(
                    "INSERT INTO cases VALUES ($1, 'C1', '123456789', $2, 12.50, 0.5, true, '2026-11-30',
                       '2026-11-30 05:30:00+01', '{\"k\": [1, \"Zoë\"]}', '\\x00ff')",
                    &[&(i as i64), name],
                )
                .await
                .unwrap();
        }
        client
            .batch_execute(
                "INSERT INTO cases (case_id, county_id, name) VALUES (99, 'C2', 'nulls')",
            )
            .await
            .unwrap();
    }
    let query =
        "SELECT case_id, county_id, ssn, name, amount, ratio, open, opened_on, at, doc, raw, \
                 :name AS echoed, :maybe::int4 IS NULL AS maybe_null, \
                 pg_catalog.current_setting('flowctl.p1', true) = :name AS by_copy \
                 FROM cases WHERE name = :name OR name = 'nulls' ORDER BY case_id";
    let fx = Fixture::with_params(
        "jsonl",
        0,
        pg_kind("FLOWCTL_SOURCES_PG_TYPES", &schema.url()),
        query,
        name_param(),
    );
    for (i, nasty) in NASTY.iter().enumerate() {
        let job = fx
            .run_one("ADMIN", None, request_with_name(nasty), |_| {})
            .await;
        assert_eq!(job.status, JobStatus::Completed, "{nasty}: {:?}", job.error);
        let text = fx.result_text(&job);
        // Exact decimals, as the database holds them.
        assert!(text.contains("\"amount\":12.50"), "{text}");
        let rows = jsonl(&text);
        assert_eq!(rows.len(), 2, "{text}");
        assert_eq!(
            rows[0],
            serde_json::json!({"case_id": i, "county_id": "C1", "ssn": "123456789", "name": nasty,
                "amount": 12.50, "ratio": 0.5, "open": true, "opened_on": "2026-11-30",
                "at": "2026-11-30T04:30:00Z", "doc": {"k": [1, "Zoë"]}, "raw": "00ff",
                "echoed": nasty, "maybe_null": true, "by_copy": true})
        );
        let nulls = rows[1].as_object().unwrap();
        for column in [
            "ssn",
            "amount",
            "ratio",
            "open",
            "opened_on",
            "at",
            "doc",
            "raw",
        ] {
            assert_eq!(nulls[column], serde_json::Value::Null, "{column}");
        }
    }
    let count: i64 = schema
        .client()
        .await
        .query_one("SELECT count(*) FROM cases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, NASTY.len() as i64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_url_variable_and_a_bad_query_fail_at_once() {
    let base = database_or_skip!();
    let kind = SourceKind::Postgres {
        url_env: "FLOWCTL_SOURCES_PG_NEVER_SET".into(),
    };
    let fx = Fixture::new("csv", 3, kind, "SELECT 1 AS county_id, 2 AS ssn");
    let job = fx
        .run_one("ADMIN", None, JobRequest::default(), |_| {})
        .await;
    assert_eq!((job.status, job.attempt), (JobStatus::Failed, 1));
    let error = job.error.unwrap();
    assert!(
        error.contains("FLOWCTL_SOURCES_PG_NEVER_SET") && error.contains("not set"),
        "{error}"
    );
    let fx = Fixture::new(
        "csv",
        3,
        pg_kind("FLOWCTL_SOURCES_PG_BAD", &base),
        "SELECT * FROM no_such_table_anywhere",
    );
    let job = fx
        .run_one("ADMIN", None, JobRequest::default(), |_| {})
        .await;
    assert_eq!((job.status, job.attempt), (JobStatus::Failed, 1));
    assert!(job.error.unwrap().contains("42P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_stream_fails_the_attempt_cleanly_and_the_retry_completes() {
    let base = database_or_skip!();
    let schema = pg_schema(&base, "SELECT 1").await;
    // Every attempt sleeps two seconds after its first 5000 rows: the kill lands mid-stream.
    let query = "SELECT i AS id, 'C1' AS county_id, md5(i::text) AS ssn FROM generate_series(1, 20000) AS i \
                 WHERE CASE WHEN i = 5000 THEN pg_sleep(2) IS NOT NULL ELSE true END";
    let fx = Fixture::new(
        "csv",
        1,
        pg_kind("FLOWCTL_SOURCES_PG_KILL", &schema.url()),
        query,
    );
    let results = fx.results();
    let url = schema.url();
    let (kill_tx, mut kill_rx) = mpsc::unbounded_channel::<(JobId, u32)>();
    let killer = tokio::spawn(async move {
        let (job_id, attempt) = kill_rx.recv().await?;
        let name = format!("flowctl {job_id} #{attempt}");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        // Wait until the attempt's session is in the query (its first rows are out).
        for _ in 0..200 {
            let killed = client
                .query(
                    "SELECT pg_terminate_backend(pid), query FROM pg_stat_activity WHERE application_name = $1",
                    &[&name],
                )
                .await
                .unwrap();
            if let Some(row) = killed.first() {
                // What was killed: the report's query, read by COPY.
                return Some((killed.len(), row.get::<_, String>(1)));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    });
    let mut sent = false;
    let mut temp_seen_after_kill = Vec::new();
    let job = fx
        .run_one("ADMIN", None, JobRequest::default(), |event| match event {
            ExecEvent::Progress { job_id, .. } if !sent => {
                sent = true;
                let _ = kill_tx.send((job_id.clone(), 1));
            }
            ExecEvent::Retrying { .. } => {
                // The failed attempt left nothing behind.
                temp_seen_after_kill = files_under(&results);
            }
            _ => {}
        })
        .await;
    let (killed, statement) = killer
        .await
        .unwrap()
        .expect("the attempt's session was found and killed");
    assert_eq!(killed, 1);
    assert!(
        statement.starts_with("COPY (") && statement.contains("pg_sleep"),
        "the killed session was reading by COPY: {statement}"
    );
    assert!(temp_seen_after_kill.is_empty(), "{temp_seen_after_kill:?}");
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!(job.attempt, 2, "the report's retry ran");
    assert_eq!(job.rows_written, 20_000);
    let result = PathBuf::from(job.result_path.clone().unwrap());
    assert_eq!(
        result.file_name().unwrap().to_string_lossy(),
        format!("{}.attempt-2.csv", job.job_id)
    );
    assert_eq!(files_under(&results), [result]);
}

/// A spec reading `query` on PostgreSQL at `url` into `out`.
fn pg_spec(url: &str, query: &str, out: &Path) -> PipelineSpec {
    PipelineSpec {
        source: SourceSpec::Postgres {
            url: url.to_string(),
            query: query.to_string(),
            bindings: Bindings::new(),
            application_name: "flowctl sources test".into(),
        },
        county_column: None,
        county: None,
        output_format: pipeline::DataFormat::Csv,
        chunk_size: 1000,
        masks: Vec::new(),
        mask_columns: Vec::new(),
        hash_key: [1; 32],
        result_path: out.to_path_buf(),
        rows_total: None,
    }
}

fn with_query_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

#[test]
fn sslmode_disable_connects_and_require_fails_clearly_without_tls() {
    let base = database_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r").join("x.csv");
    let go = |spec: &PipelineSpec| {
        let _ = std::fs::remove_file(&spec.result_path);
        pipeline::run(spec, &mut |_: &Progress| Control::Continue)
    };
    let plain = with_query_param(&base, "sslmode=disable");
    let done = go(&pg_spec(&plain, "SELECT 1 AS one", &out)).unwrap();
    assert_eq!(done.rows_written, 1);
    // Whether the local server offers TLS decides what `require` must do.
    let ssl_on = go(&pg_spec(
        &plain,
        "SELECT setting AS s FROM pg_settings WHERE name = 'ssl' AND setting = 'on'",
        &out,
    ))
    .unwrap()
    .rows_written
        == 1;
    let required = go(&pg_spec(
        &with_query_param(&base, "sslmode=require"),
        "SELECT 1 AS one",
        &out,
    ));
    if ssl_on {
        assert_eq!(required.unwrap().rows_written, 1);
    } else {
        let error = required.unwrap_err();
        assert!(
            !error.is_transient(),
            "a server without TLS stays so: {error}"
        );
        assert!(error.to_string().contains("TLS"), "{error}");
    }
    // `prefer` connects either way.
    let preferred = go(&pg_spec(
        &with_query_param(&base, "sslmode=prefer"),
        "SELECT 1 AS one",
        &out,
    ));
    assert_eq!(preferred.unwrap().rows_written, 1);
}

#[test]
fn a_password_never_appears_in_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.csv");
    for url in [
        "postgres://someone:Hunter2Secret@127.0.0.1:1/none?connect_timeout=2",
        "postgres://someone:Hunter2Secret@127.0.0.1:1/none?sslmode=bogus",
        "host=127.0.0.1 port=1 user=someone password=Hunter2Secret connect_timeout=2",
    ] {
        let spec = pg_spec(url, "SELECT 1", &out);
        assert!(!format!("{spec:?}").contains("Hunter2Secret"));
        let error = pipeline::run(&spec, &mut |_: &Progress| Control::Continue).unwrap_err();
        let message = error.to_string();
        assert!(!message.contains("Hunter2Secret"), "{message}");
        assert!(!format!("{error:?}").contains("Hunter2Secret"), "{error:?}");
    }
}
