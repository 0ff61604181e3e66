//! A worker paused past its lease (SIGSTOP) and resumed never puts its output over the result
//! the next attempt completed: two `flowctl worker`s on one PostgreSQL schema.
//!
//! Needs `FLOWCTL_TEST_PG` (e.g. `postgres://postgres@127.0.0.1:5432/test`); without it the
//! test prints `skipped: FLOWCTL_TEST_PG not set` and passes.

mod common;

use std::path::Path;
use std::time::Duration;

use chrono::Utc;

use common::pg::{database_or_skip, terminate_connections};
use common::wait::{until, wait_for};
use common::{data, sha256_file, Flowctl, Project, Running};
use flowctl::job::{Job, JobId, JobRequest, JobStatus, NewJob, Principal};
use flowctl::store::pg_test_schema::TestSchema;
use flowctl::store::{Enqueued, PgConfig, PgStore, Store};

/// Attempt 1 reads 1,000,000 rows one per chunk (seconds in a debug build), long enough to be
/// paused late in its run; the lease is short so that the other worker takes over quickly.
const FLOW: &str = r#"
config {
  worker_pool_size 1
  poll_interval    1s
  lease            2s
  results          "results"
  scheduler        off
  all_counties     AUDITOR
}

roles AUDITOR

source big {
  path          "big.csv"
  county_column county_id
}

report SLOW {
  source     big
  chunk_size 1
}
"#;

/// How often the test looks at the store and the logs.
const POLL: Duration = Duration::from_millis(20);

/// A `flowctl worker`, killed when dropped.
struct Worker {
    running: Running,
    /// The application name of its database connections.
    application: String,
}

impl Worker {
    fn start(dir: &Path, schema: &TestSchema, name: &str) -> Worker {
        let application = format!("{}_{name}", schema.name());
        let running = Flowctl::new()
            .args(["worker", "w.flow"])
            .dir(dir)
            .env("FLOWCTL_STORE", schema.url_as(&application))
            .env("FLOWCTL_MASK_KEY", "stale worker test key")
            .env("FLOWCTL_LOG", "info")
            .spawn();
        Worker {
            running,
            application,
        }
    }

    fn pid(&self) -> u32 {
        self.running.pid()
    }

    fn log(&self) -> String {
        self.running.log()
    }

    fn signal(&self, signal: &str) {
        assert!(self.running.signal(signal), "kill {signal} {}", self.pid());
    }
}

/// Waits until `id` is COMPLETED, FAILED or CANCELLED.
async fn wait_terminal(store: &PgStore, id: &JobId, logs: impl Fn() -> String) -> Job {
    until(Duration::from_secs(120), POLL, logs, || async {
        let job = store.get(id).await.unwrap().unwrap();
        job.status.is_terminal().then_some(job)
    })
    .await
}

/// Files of `dir` whose name mentions `job`.
fn files_of(dir: &Path, job: &JobId) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(job.as_str()))
        .collect();
    names.sort();
    names
}

/// The pid in a worker id (`host:pid:random`).
fn owner_pid(job: &Job) -> Option<u32> {
    job.lease_owner.as_deref()?.rsplit(':').nth(1)?.parse().ok()
}

/// Worker A runs attempt 1 and is SIGSTOPped late in its run, its result nearly written; the
/// source is replaced meanwhile, so the two attempts' results differ. Worker B takes the job
/// over when the lease expires and completes attempt 2. A's database connections are killed
/// (a paused machine loses them too) and A is resumed: its first store call fails, which gives
/// its pipeline time to finish writing before it learns that the job is not its own any more.
/// Before per-attempt result paths (d645ff6) it then renamed its output over B's result, which
/// the SHA-256 check catches; now the job's recorded file is B's, whole, and A removes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_never_overwrites_the_result_of_the_next_attempt() {
    let base = database_or_skip!();
    let schema = TestSchema::create(&base, "stale").await;
    PgStore::migrate(&schema.url()).await.expect("migrate");
    let store = PgStore::open(PgConfig::new(schema.url_as("flowctl_test")))
        .await
        .expect("open the store");
    let tmp = Project::on_tmpfs("flowctl-stale-").flow("w.flow", FLOW);
    let dir = tmp.path();
    let results = dir.join("results/SLOW");
    let workers = [
        Worker::start(dir, &schema, "a"),
        Worker::start(dir, &schema, "b"),
    ];
    let logs = || {
        workers
            .iter()
            .map(|w| {
                format!(
                    "--- worker {} (pid {})\n{}",
                    w.application,
                    w.pid(),
                    w.log()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for worker in &workers {
        wait_for(Duration::from_secs(60), POLL, logs, || {
            worker.log().contains("running").then_some(())
        });
    }

    // Pausing at the right moment is a race the test may lose (attempt 1 completes first): then
    // it tries again with a new job.
    let mut tries = 0;
    let (job_id, stale) = loop {
        tries += 1;
        assert!(tries <= 8, "never paused a worker mid-run:\n{}", logs());
        let original = data::amounts(1_000_000, 0);
        tmp.write("big.csv", &original);
        let job = NewJob {
            report_type: "SLOW".into(),
            principal: Principal::system("AUDITOR"),
            parent_job_ids: Vec::new(),
            trigger_id: "manual:stale-test".into(),
            request: JobRequest::default(),
            priority: 5,
            max_attempts: 1,
            estimated_completion: None,
        };
        let Enqueued::Created(jobs) = store.enqueue(vec![job], None, Utc::now()).await.unwrap()
        else {
            panic!("no job created");
        };
        let id = jobs[0].job_id.clone();
        let stale = until(Duration::from_secs(120), POLL, logs, || async {
            let job = store.get(&id).await.unwrap().unwrap();
            let pid = owner_pid(&job)?;
            workers.iter().position(|w| w.pid() == pid)
        })
        .await;
        // Late in attempt 1: its temporary file nearly the size of the whole result (1% is
        // tens of milliseconds of work), watched without a database round trip.
        let nearly = original.len() as u64 * 99 / 100;
        let temp = format!(".tmp-{}-", workers[stale].pid());
        let first_name = format!("{id}.csv");
        let paused = until(
            Duration::from_secs(120),
            Duration::from_millis(1),
            logs,
            || async {
                let names = files_of(&results, &id);
                if names.contains(&first_name) {
                    return Some(false);
                }
                let written = names
                    .iter()
                    .filter(|n| n.contains(&temp))
                    .filter_map(|n| std::fs::metadata(results.join(n)).ok())
                    .map(|m| m.len())
                    .max()?;
                (written >= nearly).then(|| workers[stale].signal("-STOP"))?;
                Some(true)
            },
        )
        .await;
        if !paused {
            println!("try {tries}: attempt 1 wrote its result before it could be paused");
            wait_terminal(&store, &id, logs).await;
            continue;
        }
        // While A is paused: a new version of the source, for attempt 2.
        tmp.write("big.csv", data::amounts(50_000, 1));
        // A's completion may have been on its way when it stopped.
        let job = until(Duration::from_secs(120), POLL, logs, || async {
            let job = store.get(&id).await.unwrap().unwrap();
            (job.attempt > 1 || job.status == JobStatus::Completed).then_some(job)
        })
        .await;
        if job.attempt == 1 {
            println!("try {tries}: attempt 1 completed as it was paused");
            workers[stale].signal("-CONT");
            continue;
        }
        break (id, stale);
    };

    // B completes attempt 2 while A is still paused.
    let done = wait_terminal(&store, &job_id, logs).await;
    assert_eq!(done.status, JobStatus::Completed, "{done:?}\n{}", logs());
    assert_eq!(done.attempt, 2, "{done:?}");
    assert_ne!(owner_pid(&done), Some(workers[stale].pid()), "{done:?}");
    let recorded = dir.join(done.result_path.as_deref().expect("a result path"));
    let sha = done.result_sha256.clone().expect("a SHA-256");
    assert_eq!(sha256_file(&recorded), sha, "attempt 2's own result");

    // Resume A without its database connections.
    terminate_connections(&schema, &workers[stale].application).await;
    workers[stale].signal("-CONT");
    // A settles: it learns it lost the job, at a lease renewal or at its completion, and
    // removes whatever it wrote.
    let lost = [
        "lease lost; stopping without writing",
        "job changed hands before completion; result discarded",
    ];
    let how = until(Duration::from_secs(120), POLL, logs, || async {
        let log = workers[stale].log();
        lost.into_iter().find(|line| log.contains(line))
    })
    .await;
    let recorded_name = recorded.file_name().unwrap().to_string_lossy().into_owned();
    until(
        Duration::from_secs(60),
        POLL,
        || format!("{:?}\n{}", files_of(&results, &job_id), logs()),
        || async { (files_of(&results, &job_id) == [recorded_name.clone()]).then_some(()) },
    )
    .await;

    let after = store.get(&job_id).await.unwrap().unwrap();
    assert_eq!(after.status, JobStatus::Completed);
    assert_eq!(after.result_path, done.result_path);
    assert_eq!(after.result_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(
        sha256_file(&recorded),
        sha,
        "the result file is not the one the job recorded\n{}",
        logs()
    );
    let all = logs();
    assert!(!all.contains("panicked"), "{all}");
    println!("paused worker settled ({how}) after {tries} tries; result {recorded_name}");
}
