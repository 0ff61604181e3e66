//! Behaviour tests of the executor, in-process: a workflow compiled from
//! text, a sled store in a temporary directory, and `Engine::run` until idle,
//! watched through its `ExecEvent`s.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;

use common::{data, engine, files_under, Project};
use flowctl::executor::{Engine, ExecEvent};
use flowctl::job::{Job, JobId, JobRequest, JobStatus, Principal};
use flowctl::store::sled::SledStore;
use flowctl::store::{CancelOutcome, ListFilter, SledConfig, Store};
use flowctl::workflow::Workflow;

/// Upper bound for a whole engine run in these tests (debug build, shared CPU).
const RUN_DEADLINE: Duration = Duration::from_secs(60);

struct Fixture {
    project: Project,
    workflow: Arc<Workflow>,
    store: Arc<SledStore>,
}

impl Fixture {
    /// Compiles `flow`, written to `<tmp>/w.flow` (sources and results
    /// resolve in the temporary directory), and opens a store at `<tmp>/db`.
    fn new(flow: &str) -> Fixture {
        let project = Project::new().flow("w.flow", flow);
        let workflow = project.workflow("w.flow");
        let store = SledStore::open(SledConfig {
            flush: false,
            ..SledConfig::new(project.db())
        })
        .unwrap();
        Fixture {
            project,
            workflow: Arc::new(workflow),
            store: Arc::new(store),
        }
    }

    fn results(&self) -> PathBuf {
        self.workflow.config.results_dir.clone()
    }

    fn engine(&self, events: mpsc::UnboundedSender<ExecEvent>) -> Arc<Engine> {
        let engine = engine::engine(self.workflow.clone(), self.store.clone());
        Arc::new(engine.with_events(events))
    }

    /// Queues `n` root jobs of `report` as ADMIN.
    async fn enqueue(&self, engine: &Engine, report: &str, n: usize) -> Vec<JobId> {
        let jobs = (0..n)
            .map(|_| {
                engine
                    .new_job(
                        report,
                        Principal::system("ADMIN"),
                        "test",
                        JobRequest::default(),
                    )
                    .expect("report exists")
            })
            .collect();
        self.store
            .enqueue(jobs, None, Utc::now())
            .await
            .unwrap()
            .job_ids()
    }

    async fn job(&self, id: &JobId) -> Job {
        self.store.get(id).await.unwrap().expect("job exists")
    }

    async fn all_jobs(&self) -> Vec<Job> {
        let page = self
            .store
            .list(ListFilter {
                limit: ListFilter::MAX_LIMIT,
                ..ListFilter::default()
            })
            .await
            .unwrap();
        assert!(page.next_cursor.is_none());
        page.jobs
    }
}

/// Runs the engine until no job is queued or running, handing every event
/// to `on_event` as it comes (with the time it was received). Returns the
/// events in order.
async fn run_until_idle<F>(
    engine: Arc<Engine>,
    mut rx: mpsc::UnboundedReceiver<ExecEvent>,
    mut on_event: F,
) -> Vec<(Instant, ExecEvent)>
where
    F: FnMut(&ExecEvent),
{
    let runner = tokio::spawn(engine.run(std::future::pending::<()>(), true));
    let mut events = Vec::new();
    let collect = async {
        // The engine (and with it the sender) is dropped when `run` returns.
        while let Some(event) = rx.recv().await {
            on_event(&event);
            events.push((Instant::now(), event));
        }
    };
    tokio::time::timeout(RUN_DEADLINE, collect)
        .await
        .expect("the engine went idle in time");
    runner.await.unwrap().unwrap();
    events
}

const CANCEL_FLOW: &str = r#"
config {
  worker_pool_size 2
  poll_interval    100ms
  all_counties     ADMIN
}
roles ADMIN
source cases {
  path          "data/cases.csv"
  county_column county_id
}
report BIG {
  source     cases
  chunk_size 100
}
report CHILD {
  source cases
}
after BIG on completion run CHILD
"#;

#[tokio::test(flavor = "multi_thread")]
async fn queued_job_cancelled_before_the_engine_starts_never_runs() {
    let fx = Fixture::new(CANCEL_FLOW);
    fx.project.write("data/cases.csv", data::short_cases(1_000));
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = fx.engine(tx);
    let ids = fx.enqueue(&engine, "BIG", 2).await;
    let (cancelled, kept) = (&ids[0], &ids[1]);

    match fx.store.cancel(cancelled, Utc::now()).await.unwrap() {
        CancelOutcome::Cancelled(job) => assert_eq!(job.status, JobStatus::Cancelled),
        other => panic!("a queued job is cancelled at once: {other:?}"),
    }
    let events = run_until_idle(engine, rx, |_| {}).await;

    let started: Vec<&JobId> = events
        .iter()
        .filter_map(|(_, e)| match e {
            ExecEvent::Started { job, .. } => Some(&job.job_id),
            _ => None,
        })
        .collect();
    assert!(!started.contains(&cancelled), "{started:?}");
    let job = fx.job(cancelled).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(job.started_at, None);
    assert_eq!(job.result_path, None);
    assert!(fx.store.children(cancelled).await.unwrap().is_empty());

    // The other job ran, with its dependent; nothing of the cancelled one on disk.
    assert_eq!(fx.job(kept).await.status, JobStatus::Completed);
    let children = fx.store.children(kept).await.unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].status, JobStatus::Completed);
    assert_eq!(fx.all_jobs().await.len(), 3);
    let files = files_under(&fx.results());
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| !f.to_string_lossy().contains(cancelled.as_str())),
        "{files:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn running_job_cancelled_through_the_store_stops_without_result_or_dependents() {
    let fx = Fixture::new(CANCEL_FLOW);
    // Long enough (3,000 chunks) that the cancel lands long before the end.
    fx.project
        .write("data/cases.csv", data::short_cases(300_000));
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = fx.engine(tx);
    let ids = fx.enqueue(&engine, "BIG", 1).await;
    let id = ids[0].clone();

    let store = fx.store.clone();
    let (cancel_tx, mut cancel_rx) = mpsc::unbounded_channel();
    let canceller = tokio::spawn(async move {
        // Cancel as soon as the job is running (PROCESSING in the store).
        let job_id: JobId = cancel_rx.recv().await?;
        Some(store.cancel(&job_id, Utc::now()).await.unwrap())
    });
    let events = run_until_idle(engine, rx, |e| {
        if let ExecEvent::Started { job, .. } = e {
            let _ = cancel_tx.send(job.job_id.clone());
        }
    })
    .await;
    drop(cancel_tx);
    match canceller.await.unwrap() {
        Some(CancelOutcome::Requested(job)) => {
            assert_eq!(job.status, JobStatus::Processing);
            assert!(job.cancel_requested);
        }
        other => panic!("a running job gets a cancel request: {other:?}"),
    }

    let finished: Vec<&Job> = events
        .iter()
        .filter_map(|(_, e)| match e {
            ExecEvent::Finished { job, children } => {
                assert!(children.is_empty(), "{children:?}");
                Some(job)
            }
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].status, JobStatus::Cancelled);

    let job = fx.job(&id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.progress < 100, "stopped mid-way: {job:?}");
    assert_eq!(job.result_path, None);
    assert_eq!(job.result_sha256, None);
    assert!(fx.store.children(&id).await.unwrap().is_empty());
    assert_eq!(
        fx.all_jobs().await.len(),
        1,
        "no dependent of a cancelled job"
    );
    let files = files_under(&fx.results());
    assert!(files.is_empty(), "no result, no temporary file: {files:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_more_jobs_run_at_once_than_the_pool_has_workers() {
    let fx = Fixture::new(
        r#"
config {
  worker_pool_size  2
  max_jobs_per_poll 10
  poll_interval     100ms
  all_counties      ADMIN
}
roles ADMIN
source cases {
  path "data/cases.csv"
}
report R {
  source     cases
  chunk_size 100
}
"#,
    );
    fx.project
        .write("data/cases.csv", data::short_cases(20_000));
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = fx.engine(tx);
    let ids = fx.enqueue(&engine, "R", 10).await;

    let mut running: HashSet<JobId> = HashSet::new();
    let mut started: HashSet<JobId> = HashSet::new();
    let mut max_running = 0;
    run_until_idle(engine, rx, |e| match e {
        ExecEvent::Started { job, .. } => {
            assert!(started.insert(job.job_id.clone()), "started twice: {job:?}");
            running.insert(job.job_id.clone());
            max_running = max_running.max(running.len());
            assert!(running.len() <= 2, "running at once: {running:?}");
        }
        // A worker's slot is free once it hands its outcome on (a written result then waits
        // for the disk in the durability stage, off the pool).
        ExecEvent::Completing { job_id, .. } => {
            assert!(
                running.remove(job_id),
                "finished before it started: {job_id}"
            );
        }
        ExecEvent::Finished { job, .. } | ExecEvent::Retrying { job } => {
            assert!(
                started.contains(&job.job_id),
                "finished before it started: {job:?}"
            );
        }
        ExecEvent::Progress { .. } | ExecEvent::Durable { .. } => {}
    })
    .await;

    assert!(running.is_empty());
    assert_eq!(started.len(), 10);
    // Ten jobs of 200 chunks each on two workers do overlap.
    assert_eq!(max_running, 2);
    for id in &ids {
        let job = fx.job(id).await;
        assert_eq!(job.status, JobStatus::Completed, "{job:?}");
        assert_eq!(job.rows_written, 20_000);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dependent_starts_after_its_parent_finishes() {
    let fx = Fixture::new(
        r#"
config {
  all_counties ADMIN
}
roles ADMIN
source cases {
  path "data/cases.csv"
}
report PARENT {
  source cases
}
report CHILD {
  source cases
}
after PARENT run CHILD
"#,
    );
    fx.project.write("data/cases.csv", data::short_cases(1_000));
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = fx.engine(tx);
    let parent_id = fx.enqueue(&engine, "PARENT", 1).await.remove(0);

    let events = run_until_idle(engine, rx, |_| {}).await;
    let (parent_done, children) = events
        .iter()
        .find_map(|(at, e)| match e {
            ExecEvent::Finished { job, children } if job.job_id == parent_id => {
                Some((*at, children.clone()))
            }
            _ => None,
        })
        .expect("the parent finished");
    assert_eq!(children.len(), 1);
    let child_id = children[0].job_id.clone();
    let (child_started, started_job) = events
        .iter()
        .find_map(|(at, e)| match e {
            ExecEvent::Started { job, .. } if job.job_id == child_id => Some((*at, job.clone())),
            _ => None,
        })
        .expect("the child started");
    assert!(child_started >= parent_done);
    assert_eq!(started_job.parent_job_ids, vec![parent_id.clone()]);

    let parent = fx.job(&parent_id).await;
    let child = fx.job(&child_id).await;
    assert_eq!(child.status, JobStatus::Completed);
    assert_eq!(child.trigger_id, parent.trigger_id);
    assert!(child.started_at.unwrap() >= parent.completed_at.unwrap());
    // Timing is for benches: report it, assert nothing about it.
    eprintln!(
        "dependent start latency: {:?} between events, {:?} between store times",
        child_started - parent_done,
        (child.started_at.unwrap() - parent.completed_at.unwrap())
            .to_std()
            .unwrap_or_default()
    );
}
