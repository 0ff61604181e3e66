//! Store faults, in process: a store that stops accepting changes (a full disk) and one that
//! keeps failing (an unreachable database), as the dispatcher, `/readyz` and shutdown see them.
//! The full disk is injected with `SledStore::inject_write_failure`, which fails the flush
//! thread's writes to sled as ENOSPC does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flowctl::executor::{Engine, ExecutorConfig};
use flowctl::job::{Job, JobId, JobStatus, NewJob, Principal};
use flowctl::metrics::Metrics;
use flowctl::store::{
    BoxFuture, CancelOutcome, Cas, Completion, Enqueued, Expired, JoinEdge, JoinRules, ListFilter,
    Outcome, Page, ProgressUpdate, SledConfig, SledStore, Store, StoreError, StoreResult,
    UniqueKey,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

const FLOW: &str = "roles ADMIN\nsource s {\n  path \"data/s.csv\"\n}\nreport R {\n  source s\n}\n";

/// A one-report workflow in `dir` (a source of a few rows), and an engine on `store`.
fn engine(dir: &Path, store: Arc<dyn Store>) -> Arc<Engine> {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/s.csv"), "case_id,county_id\n1,C1\n2,C2\n").unwrap();
    std::fs::write(dir.join("w.flow"), FLOW).unwrap();
    let compilation = flowctl::compiler::compile_paths(&[dir.join("w.flow")]).unwrap();
    let workflow = compilation.workflow.expect("the workflow compiles");
    let mut config = ExecutorConfig::from_workflow(&workflow, [7; 32]);
    config.poll_interval = Duration::from_millis(50);
    Arc::new(Engine::new(
        Arc::new(workflow),
        store,
        config,
        Arc::new(Metrics::new()),
    ))
}

fn job() -> NewJob {
    NewJob::new("R", Principal::system("ADMIN"), "test")
}

/// A full disk under a running dispatcher: it returns `StoreError::Stopped` (the CLI exits 2)
/// instead of retrying its claims forever, and `flowctl run` does not report the job's
/// completion, which never reached the disk, as a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_store_stops_the_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(SledConfig::new(dir.path().join("db"))).unwrap());
    let engine = engine(dir.path(), store.clone());
    store
        .enqueue(vec![job(), job()], None, Utc::now())
        .await
        .unwrap();
    store.inject_write_failure("No space left on device (os error 28)");
    let run = engine.clone().run(std::future::pending(), true);
    let result = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the dispatcher stops by itself");
    match result {
        Err(StoreError::Stopped { reason }) => {
            assert!(reason.contains("No space left"), "{reason}")
        }
        other => panic!("expected a stopped store, got {other:?}"),
    }
    let reason = store.stopped().expect("the store says it stopped");
    assert!(reason.contains("No space left"), "{reason}");
    // Every later change fails the same way, typed.
    let later = store.enqueue(vec![job()], None, Utc::now()).await;
    assert!(
        matches!(later, Err(StoreError::Stopped { .. })),
        "{later:?}"
    );
    let claim = store
        .claim("w", 1, Duration::from_secs(30), Utc::now())
        .await;
    assert!(
        matches!(claim, Err(StoreError::Stopped { .. })),
        "{claim:?}"
    );
}

/// `/readyz` is 503 `store_stopped` once the store has stopped (`/healthz` stays 200: the
/// process lives until its dispatcher exits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_store_makes_readyz_503() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(SledConfig::new(dir.path().join("db"))).unwrap());
    let engine = engine(dir.path(), store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let auth = flowctl::auth::AuthConfig::hs256(b"a-test-secret-of-enough-length-32b").unwrap();
    let state = flowctl::server::AppState::new(engine, Arc::new(auth));
    let (stop, mut stopped) = watch::channel(false);
    let server = tokio::spawn(flowctl::server::serve(listener, state, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<axum::body::Bytes>>();
    let get = |path: &str| {
        let request = axum::http::Request::get(format!("{base}{path}"))
            .body(Full::default())
            .unwrap();
        let response = client.request(request);
        async move {
            let response = response.await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    assert_eq!(get("/readyz").await.0, 200);

    store.inject_write_failure("No space left on device (os error 28)");
    let failed = store.enqueue(vec![job()], None, Utc::now()).await;
    assert!(
        matches!(failed, Err(StoreError::Stopped { .. })),
        "{failed:?}"
    );
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "store_stopped", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("No space left"), "{message}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    assert_eq!(get("/healthz").await.0, 200);
    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
}

/// A store whose claims always fail as an unreachable database does (transient): the
/// dispatcher retries with backoff, and still stops at once when told to.
struct Unreachable(SledStore);

fn unavailable<T>() -> StoreResult<T> {
    Err(StoreError::Unavailable("connection refused".into()))
}

impl Store for Unreachable {
    fn enqueue(
        &self,
        batch: Vec<NewJob>,
        unique: Option<UniqueKey>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, StoreResult<Enqueued>> {
        self.0.enqueue(batch, unique, now)
    }
    fn claim<'a>(
        &'a self,
        _: &'a str,
        _: usize,
        _: Duration,
        _: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        Box::pin(async { unavailable() })
    }
    fn renew<'a>(
        &'a self,
        job_id: &'a JobId,
        version: u64,
        until: DateTime<Utc>,
        progress: Option<ProgressUpdate>,
    ) -> BoxFuture<'a, StoreResult<Cas<Job>>> {
        self.0.renew(job_id, version, until, progress)
    }
    fn complete<'a>(
        &'a self,
        job_id: &'a JobId,
        version: u64,
        outcome: Outcome,
        joins: &'a [JoinEdge],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Cas<Completion>>> {
        self.0.complete(job_id, version, outcome, joins, now)
    }
    fn cancel<'a>(
        &'a self,
        job_id: &'a JobId,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<CancelOutcome>> {
        self.0.cancel(job_id, now)
    }
    fn requeue_expired<'a>(
        &'a self,
        _: DateTime<Utc>,
        _: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>> {
        Box::pin(async { unavailable() })
    }
    fn requeue_all_processing<'a>(
        &'a self,
        _: DateTime<Utc>,
        _: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>> {
        Box::pin(async { unavailable() })
    }
    fn get<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Option<Job>>> {
        self.0.get(job_id)
    }
    fn children<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        self.0.children(job_id)
    }
    fn list(&self, filter: ListFilter) -> BoxFuture<'_, StoreResult<Page>> {
        self.0.list(filter)
    }
    fn counts(&self) -> BoxFuture<'_, StoreResult<BTreeMap<JobStatus, u64>>> {
        self.0.counts()
    }
    fn last_fire<'a>(
        &'a self,
        schedule: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<DateTime<Utc>>>> {
        self.0.last_fire(schedule)
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// SIGTERM (the shutdown future) stops a dispatcher whose every claim fails: it used to sleep
/// and retry without ever looking at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_dispatcher_whose_claims_keep_failing() {
    let dir = tempfile::tempdir().unwrap();
    let inner = SledStore::open(SledConfig::new(dir.path().join("db"))).unwrap();
    let store = Arc::new(Unreachable(inner));
    let engine = engine(dir.path(), store.clone());
    store.enqueue(vec![job()], None, Utc::now()).await.unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let run = tokio::spawn(engine.clone().run(
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
        false,
    ));
    // Long enough for the backoff to grow past a second.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let asked = Instant::now();
    stop.send(true).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("the dispatcher stops when told to, while its store fails");
    result.unwrap().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
}
