//! The durability stage (`executor::durability`): results wait for the disk off the pool, and a
//! crash while they wait loses nothing and leaves nothing behind.
//!
//! In process, a store whose completions fail on demand holds results in the stage after they
//! are linked into place (the window between "file durable" and "completion recorded"); the
//! engine is then dropped as a crash would end it, and a new engine on the same store must
//! leave exactly the recorded files. Against the binary, `flowctl run` is SIGKILLed several
//! times while small jobs stream through the stage, and the invariants are checked after each
//! kill and after the final resume.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;

use common::store::{Call, Faults, FaultyStore};
use common::wait::until;
use common::{data, engine, files_under, sha256_file, Project};
use flowctl::executor::{Engine, ExecEvent};
use flowctl::job::{JobId, JobRequest, JobStatus, Principal};
use flowctl::store::{CancelOutcome, SledConfig, SledStore, Store, StoreError, StoreResult};

/// Upper bound for a whole engine run in these tests (debug build, shared CPU).
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);

const FLOW: &str = r#"
config {
  worker_pool_size 2
  poll_interval    100ms
  all_counties     ADMIN
}
roles ADMIN
source one {
  path          "one.csv"
  county_column county_id
}
report SMALL {
  source one
}
"#;

const SOURCE: &str = "id,county_id\n1,C01\n";

/// Completions fail (the store is unreachable) while `held` is set.
#[derive(Default)]
struct HoldCompletions {
    held: AtomicBool,
}

impl Faults for HoldCompletions {
    fn before(&self, call: Call) -> StoreResult<()> {
        if call == Call::Complete && self.held.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "completions held by the test".into(),
            ));
        }
        Ok(())
    }
}

struct Fixture {
    _project: Project,
    workflow: Arc<flowctl::workflow::Workflow>,
    store: Arc<FaultyStore>,
    faults: Arc<HoldCompletions>,
}

impl Fixture {
    fn new() -> Fixture {
        let project = Project::new().flow("w.flow", FLOW).csv("one.csv", SOURCE);
        let workflow = Arc::new(project.workflow("w.flow"));
        let sled = SledStore::open(SledConfig {
            flush: false,
            ..SledConfig::new(project.db())
        })
        .unwrap();
        let faults = Arc::new(HoldCompletions::default());
        let store = Arc::new(FaultyStore::new(sled, faults.clone()));
        Fixture {
            _project: project,
            workflow,
            store,
            faults,
        }
    }

    fn results(&self) -> PathBuf {
        self.workflow.config.results_dir.join("SMALL")
    }

    fn engine(&self) -> (Arc<Engine>, mpsc::UnboundedReceiver<ExecEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = engine::engine(self.workflow.clone(), self.store.clone()).with_events(tx);
        (Arc::new(engine), rx)
    }

    async fn enqueue(&self, engine: &Engine, n: usize) -> Vec<JobId> {
        let jobs = (0..n)
            .map(|i| {
                engine
                    .new_job(
                        "SMALL",
                        Principal::system("ADMIN"),
                        &format!("test:{i}"),
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

    /// Result files at their final names, and temporary files, under the report's directory.
    fn files(&self) -> (BTreeSet<PathBuf>, usize) {
        let all = files_under(&self.results());
        let temps = all.iter().filter(|p| is_temp(p)).count();
        (all.into_iter().filter(|p| !is_temp(p)).collect(), temps)
    }
}

fn is_temp(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().contains(".tmp-"))
}

/// Runs `engine` until idle, with a deadline.
async fn run_until_idle(engine: Arc<Engine>, mut rx: mpsc::UnboundedReceiver<ExecEvent>) {
    let runner = tokio::spawn(engine.run(std::future::pending::<()>(), true));
    let drain = async { while rx.recv().await.is_some() {} };
    tokio::time::timeout(DEADLINE, drain)
        .await
        .expect("the engine went idle in time");
    runner.await.unwrap().unwrap();
}

/// The window between a result linked into place and its completion recorded: the process
/// dies there (the engine dropped with its stage, the completions never recorded). The files
/// at their final names are whole; no job is COMPLETED; after the restart every job completes,
/// those whose first attempt was linked by their next attempt, which removes what the first
/// left, so the results directory holds exactly the recorded files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_linked_but_not_recorded_at_a_crash_are_removed_by_the_next_attempt() {
    let fx = Fixture::new();
    fx.faults.held.store(true, Ordering::SeqCst);
    let (engine, rx) = fx.engine();
    let ids = fx.enqueue(&engine, 20).await;
    let runner = tokio::spawn(engine.clone().run(std::future::pending::<()>(), false));
    let logs = || format!("{:?}", fx.files());
    // The stage links a few batches and then waits for the store; the rest of the results
    // queue up behind it.
    until(DEADLINE, POLL, logs, || async {
        let (done, _) = fx.files();
        (done.len() >= 4).then_some(())
    })
    .await;
    // The crash: the dispatcher, its workers and its stage are dropped mid-completion, and
    // with them the temporary files they held.
    runner.abort();
    let _ = runner.await;
    drop(rx);
    drop(engine);
    let linked = until(DEADLINE, POLL, logs, || async {
        let (done, temps) = fx.files();
        (temps == 0).then_some(done)
    })
    .await;
    for path in &linked {
        assert_eq!(std::fs::read_to_string(path).unwrap(), SOURCE, "{path:?}");
    }
    let mut processing = 0;
    for id in &ids {
        let job = fx.store.get(id).await.unwrap().unwrap();
        assert_ne!(job.status, JobStatus::Completed, "{job:?}");
        assert_eq!(job.result_path, None, "{job:?}");
        processing += usize::from(job.status == JobStatus::Processing);
    }

    // The restart: jobs left running are taken back, as `flowctl run --resume` does.
    fx.faults.held.store(false, Ordering::SeqCst);
    let (engine, rx) = fx.engine();
    let recovered = fx
        .store
        .requeue_all_processing(Utc::now(), &engine.joins)
        .await
        .unwrap();
    assert_eq!(recovered.requeued.len(), processing);
    assert!(
        processing >= linked.len(),
        "every linked result's job was running"
    );
    run_until_idle(engine, rx).await;
    let mut recorded = BTreeSet::new();
    for id in &ids {
        let job = fx.store.get(id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Completed, "{job:?}");
        let path = PathBuf::from(job.result_path.clone().expect("a result path"));
        assert_eq!(
            Some(sha256_file(&path)),
            job.result_sha256,
            "{}",
            path.display()
        );
        recorded.insert(path);
    }
    let (on_disk, temps) = fx.files();
    assert_eq!(temps, 0);
    assert_eq!(on_disk, recorded, "nothing but the recorded results");
    assert!(
        linked.is_disjoint(&recorded),
        "the first attempts' files are gone"
    );
}

/// A cancel that arrives after every row is written, while the result waits in the stage, is
/// too late: the job completes with its result (the completion retries at the version the
/// request bumped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_the_rows_are_written_is_too_late_and_the_job_completes() {
    let fx = Fixture::new();
    fx.faults.held.store(true, Ordering::SeqCst);
    let (engine, rx) = fx.engine();
    let id = fx.enqueue(&engine, 1).await.remove(0);
    let runner = tokio::spawn(engine.run(std::future::pending::<()>(), true));
    let logs = || format!("{:?}", fx.files());
    until(DEADLINE, POLL, logs, || async {
        let (done, _) = fx.files();
        (done.len() == 1).then_some(())
    })
    .await;
    match fx.store.cancel(&id, Utc::now()).await.unwrap() {
        CancelOutcome::Requested(job) => assert!(job.cancel_requested, "{job:?}"),
        other => panic!("the job is still running as far as the store knows: {other:?}"),
    }
    fx.faults.held.store(false, Ordering::SeqCst);
    let drain = async {
        let mut rx = rx;
        while rx.recv().await.is_some() {}
    };
    tokio::time::timeout(DEADLINE, drain)
        .await
        .expect("the engine went idle in time");
    runner.await.unwrap().unwrap();
    let job = fx.store.get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed, "{job:?}");
    let path = PathBuf::from(job.result_path.clone().expect("a result path"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), SOURCE);
    assert_eq!(Some(sha256_file(&path)), job.result_sha256);
    assert_eq!(fx.files(), ([path].into(), 0));
}

/// Many small jobs in cascades, so that results stream through the stage.
fn cascade_flow(roots: usize) -> String {
    let mut flow = String::from(
        "config {\n  worker_pool_size 2\n  poll_interval 100ms\n  all_counties ADMIN\n}\n\
         roles ADMIN\nsource rows {\n  path \"rows.csv\"\n  county_column county_id\n}\n",
    );
    let mut names = Vec::new();
    for i in 0..roots {
        flow.push_str(&format!(
            "report R{i} {{\n  source rows\n}}\nreport C{i} {{\n  source rows\n}}\nafter R{i} run C{i}\n"
        ));
        names.push(format!("R{i}"));
    }
    flow.push_str(&format!(
        "schedule nightly {{\n  cron \"0 0 1 * * ?\"\n  run {}\n  roles ADMIN\n}}\n",
        names.join(", ")
    ));
    flow
}

/// A job as `flowctl jobs list --json` shows it: status, result path, SHA-256, rows.
struct Seen {
    status: String,
    result: Option<PathBuf>,
    sha256: Option<String>,
    rows: u64,
}

fn seen(project: &Project) -> Vec<Seen> {
    project
        .jobs_json()
        .iter()
        .map(|j| Seen {
            status: j["status"].as_str().unwrap_or_default().to_string(),
            result: j["resultPath"].as_str().map(|p| {
                let p = PathBuf::from(p);
                if p.is_absolute() {
                    p
                } else {
                    project.join(p)
                }
            }),
            sha256: j["resultSha256"].as_str().map(str::to_string),
            rows: j["rowsWritten"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// Data rows of a CSV result (the header not counted).
fn csv_rows(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rows = 0;
    for record in csv::Reader::from_reader(bytes.as_slice()).byte_records() {
        record.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        rows += 1;
    }
    rows
}

/// `flowctl run` killed (SIGKILL) three times while small jobs stream through the durability
/// stage, resumed after each kill. After every kill: each COMPLETED job's file is there with
/// its SHA-256, and every file under a final name is whole. After the last resume: every job
/// completed once, and the results directory holds exactly the recorded files.
#[test]
fn killed_while_results_wait_for_the_disk_resumes_with_every_result_whole() {
    const ROOTS: usize = 30;
    const ROWS: usize = 2_000;
    let project = Project::new()
        .flow("w.flow", &cascade_flow(ROOTS))
        .csv("rows.csv", data::short_cases(ROWS));
    let results = project.join("results");
    let mut kills = 0;
    for round in 0..3 {
        let mut args = vec!["run", "w.flow"];
        if round > 0 {
            args.push("--resume");
        }
        let mut child = project
            .with_db(&args)
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill once more results are in place than before, while others are being written
        // or wait for the disk.
        let before = files_under(&results).iter().filter(|p| !is_temp(p)).count();
        let deadline = Instant::now() + DEADLINE;
        let mut temps_at_kill = None;
        while Instant::now() < deadline {
            let files = files_under(&results);
            let done = files.iter().filter(|p| !is_temp(p)).count();
            let temps = files.iter().filter(|p| is_temp(p)).count();
            if done > before && temps > 0 {
                temps_at_kill = Some(temps);
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.code().is_some() {
            // It finished before it could be killed: the checks below still apply.
            eprintln!("round {round}: flowctl ended on its own ({status})");
        } else {
            kills += 1;
        }
        let jobs = seen(&project);
        let processing = jobs.iter().filter(|j| j.status == "PROCESSING").count();
        eprintln!(
            "round {round}: killed with {} job(s), {processing} PROCESSING, {temps_at_kill:?} temporary file(s)",
            jobs.len()
        );
        // No completion without its whole file.
        for job in jobs.iter().filter(|j| j.status == "COMPLETED") {
            let path = job
                .result
                .as_ref()
                .expect("a completed job names its result");
            assert_eq!(Some(sha256_file(path)), job.sha256, "{}", path.display());
        }
        // No partial file under a final name.
        for path in files_under(&results).iter().filter(|p| !is_temp(p)) {
            assert_eq!(csv_rows(path), ROWS as u64, "{}", path.display());
        }
    }
    assert!(kills > 0, "flowctl was never killed mid-run");

    project.run(["w.flow", "--resume"]).success();
    let jobs = seen(&project);
    assert_eq!(
        jobs.len(),
        2 * ROOTS,
        "every report and its dependent, once"
    );
    let mut recorded = BTreeSet::new();
    for job in &jobs {
        assert_eq!(job.status, "COMPLETED");
        assert_eq!(job.rows, ROWS as u64);
        let path = job.result.clone().expect("a result path");
        assert_eq!(Some(sha256_file(&path)), job.sha256, "{}", path.display());
        recorded.insert(path);
    }
    let on_disk: BTreeSet<PathBuf> = files_under(&results).into_iter().collect();
    assert_eq!(
        on_disk, recorded,
        "no temporary file, no result of a lost attempt"
    );
}

/// A job that recovery ends for good (its lease expired on its last allowed attempt) after its
/// workers linked their results but before any completion was recorded: the lease sweep
/// removes every attempt's file, which no record names and no later attempt would remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_left_by_a_job_that_recovery_fails_are_removed() {
    let fx = Fixture::new();
    let (engine, _rx) = fx.engine();
    let id = fx.enqueue(&engine, 1).await.remove(0);
    std::fs::create_dir_all(fx.results()).unwrap();
    let mut left = Vec::new();
    for _ in 0..10 {
        let claimed = fx
            .store
            .claim("gone", 1, Duration::from_millis(1), Utc::now())
            .await
            .unwrap();
        let job = claimed
            .into_iter()
            .next()
            .expect("the job is claimable again");
        // What the worker linked before it died.
        let name = match job.attempt {
            1 => format!("{id}.csv"),
            n => format!("{id}.attempt-{n}.csv"),
        };
        let path = fx.results().join(name);
        std::fs::write(&path, SOURCE).unwrap();
        left.push(path);
        tokio::time::sleep(Duration::from_millis(10)).await;
        engine.recover_leases().await.unwrap();
        let job = fx.store.get(&id).await.unwrap().unwrap();
        if job.status != JobStatus::Queued {
            assert_eq!(job.status, JobStatus::Failed, "{job:?}");
            break;
        }
        // Requeued: its next attempt removes what this one left; this test plays a worker
        // that dies each time instead.
    }
    assert!(left.len() > 1, "recovery took the job back at least once");
    let (on_disk, _) = fx.files();
    assert!(on_disk.is_empty(), "left behind: {on_disk:?}");
}
