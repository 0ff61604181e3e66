//! Store faults, in process: a store that stops accepting changes (a full disk) and one that
//! keeps failing (an unreachable database), as the dispatcher, `/readyz` and shutdown see them.
//! The full disk is injected with `SledStore::inject_write_failure`, which fails the flush
//! thread's writes to sled as ENOSPC does.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{engine, Call, Faults, FaultyStore, Options, Project, TestServer};
use flowctl::executor::Engine;
use flowctl::job::{NewJob, Principal};
use flowctl::store::{SledConfig, SledStore, Store, StoreError, StoreResult};
use tokio::sync::watch;

const FLOW: &str = "roles ADMIN\nsource s {\n  path \"data/s.csv\"\n}\nreport R {\n  source s\n}\n";

/// A one-report workflow (a source of a few rows) in a temporary directory.
fn project() -> Project {
    Project::new()
        .csv("data/s.csv", "case_id,county_id\n1,C1\n2,C2\n")
        .flow("w.flow", FLOW)
}

/// An engine of `project`'s workflow on `store`, polling every 50 ms.
fn engine(project: &Project, store: Arc<dyn Store>) -> Arc<Engine> {
    let workflow = project.workflow("w.flow");
    let mut config = engine::config(&workflow);
    config.poll_interval = Duration::from_millis(50);
    Arc::new(engine::engine_with(Arc::new(workflow), store, config))
}

fn job() -> NewJob {
    NewJob::new("R", Principal::system("ADMIN"), "test")
}

/// A full disk under a running dispatcher: it returns `StoreError::Stopped` (the CLI exits 2)
/// instead of retrying its claims forever, and `flowctl run` does not report the job's
/// completion, which never reached the disk, as a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_store_stops_the_dispatcher() {
    let project = project();
    let store = Arc::new(SledStore::open(SledConfig::new(project.db())).unwrap());
    let engine = engine(&project, store.clone());
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
    let project = project();
    let store = Arc::new(SledStore::open(SledConfig::new(project.db())).unwrap());
    let engine = engine(&project, store.clone());
    let options = Options {
        dispatcher: false,
        ..Options::default()
    };
    let server = TestServer::serve(engine, options).await;
    let get = |path: &'static str| async {
        let reply = server.request("GET", path, None, None, Vec::new()).await;
        (reply.status, reply.json())
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
    server.shutdown().await;
}

/// Claims and lease sweeps that always fail as against an unreachable database (transient):
/// the dispatcher retries with backoff, and still stops at once when told to.
struct Unreachable;

impl Faults for Unreachable {
    fn before(&self, call: Call) -> StoreResult<()> {
        match call {
            Call::Claim | Call::RequeueExpired | Call::RequeueAllProcessing => {
                Err(StoreError::Unavailable("connection refused".into()))
            }
            _ => Ok(()),
        }
    }
}

/// SIGTERM (the shutdown future) stops a dispatcher whose every claim fails: it used to sleep
/// and retry without ever looking at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_dispatcher_whose_claims_keep_failing() {
    let project = project();
    let inner = SledStore::open(SledConfig::new(project.db())).unwrap();
    let store = Arc::new(FaultyStore::new(inner, Arc::new(Unreachable)));
    let engine = engine(&project, store.clone());
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
