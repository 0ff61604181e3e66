//! The PostgreSQL store under load, against a real database (`FLOWCTL_TEST_PG`, e.g.
//! `postgres://postgres@127.0.0.1:5432/test`; without it the benchmark says so and stops):
//!
//! - **Claim + complete throughput** of no-op jobs with 1, 2 and 4 worker *processes* (this
//!   executable started again as a worker), each with its own store and connection pool,
//!   claiming batches of up to 256 jobs and completing each job on its own task, as a
//!   dispatcher's pool does. The queue is filled before the clock starts.
//! - **Cross-process dependent start latency**: a parent job completes in this process (its
//!   dependent is created in the same transaction, and a NOTIFY sent on commit); a worker process
//!   waiting on the store's wake-up claims the dependent. Measured from the parent's `complete`
//!   call to the dependent's claim returning, p50 and p99.
//!
//! `cargo bench --bench postgres`

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use flowctl::job::{JobRequest, NewJob, Principal};
use flowctl::store::pg_test_schema::{database_url, TestSchema};
use flowctl::store::{
    Cas, ChildTemplate, Condition, JoinEdge, Outcome, PgConfig, PgStore, RoleRule, Store,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Jobs per throughput run.
const JOBS: usize = 100_000;
const ENQUEUE_BATCH: usize = 1000;
/// Jobs claimed per round trip.
const CLAIM_MAX: usize = 256;
/// Jobs a worker process has in flight at most (its "pool").
const IN_FLIGHT: usize = 1024;
const LATENCY_SAMPLES: usize = 1000;

const ROLE: &str = "FLOWCTL_BENCH_ROLE";
const URL: &str = "FLOWCTL_BENCH_URL";

fn noop() -> NewJob {
    NewJob::new("NOOP", Principal::system("SUPERVISOR"), "bench")
}

fn success() -> Outcome {
    Outcome::Success {
        result_path: "/dev/null".into(),
        rows_written: 0,
        sha256: String::new(),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(ROLE).as_deref() {
        Ok("worker") => runtime.block_on(worker(std::env::var(URL).unwrap())),
        Ok("follower") => runtime.block_on(follower(std::env::var(URL).unwrap())),
        _ => {
            let Some(base) = database_url() else {
                println!("skipped: FLOWCTL_TEST_PG not set");
                return;
            };
            runtime.block_on(bench(base));
        }
    }
}

async fn bench(base: String) {
    println!(
        "claim + complete of {JOBS} no-op jobs, batches of {CLAIM_MAX}, one store per process"
    );
    let mut single = None;
    let counts: Vec<usize> = std::env::var("FLOWCTL_BENCH_PROCESSES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4]);
    for processes in counts {
        let schema = TestSchema::create(&base, "bench").await;
        let store = schema.open().await;
        for _ in 0..JOBS / ENQUEUE_BATCH {
            store
                .enqueue(vec![noop(); ENQUEUE_BATCH], None, Utc::now())
                .await
                .unwrap();
        }
        // Settle the freshly written table before the clock starts.
        schema
            .client()
            .await
            .batch_execute("VACUUM ANALYZE jobs")
            .await
            .unwrap();
        let mut children: Vec<_> = (0..processes)
            .map(|_| spawn(&schema.url(), "worker"))
            .collect();
        for child in &mut children {
            child.expect_line("ready");
        }
        let started = Instant::now();
        for child in &mut children {
            child.send("go");
        }
        let mut done = 0;
        for child in &mut children {
            done += child.read_line().parse::<usize>().unwrap();
        }
        let elapsed = started.elapsed();
        for child in children {
            child.wait();
        }
        assert_eq!(done, JOBS);
        let completed = store.counts().await.unwrap()[&flowctl::job::JobStatus::Completed];
        assert_eq!(completed as usize, JOBS);
        let rate = JOBS as f64 / elapsed.as_secs_f64();
        let speedup = single.map_or(String::new(), |one: f64| format!(" ({:.2}×)", rate / one));
        single.get_or_insert(rate);
        println!("  {processes} worker process(es): {rate:>8.0} jobs/s  ({elapsed:.2?}){speedup}");
        drop(store);
    }

    let schema = TestSchema::create(&base, "bench").await;
    let store = schema.open().await;
    // Every parent is running before the follower starts, so that it only ever claims
    // dependents.
    let total = LATENCY_SAMPLES + 50;
    store
        .enqueue(vec![noop(); total], None, Utc::now())
        .await
        .unwrap();
    let parents = store
        .claim("parent", total, Duration::from_secs(3600), Utc::now())
        .await
        .unwrap();
    assert_eq!(parents.len(), total);
    let mut follower = spawn(&schema.url(), "follower");
    follower.expect_line("ready");
    let joins = vec![JoinEdge {
        join_id: "dep:CHILD".into(),
        parents: vec!["NOOP".into()],
        condition: Condition::OnSuccess,
        parent_roles: None,
        child: ChildTemplate {
            report_type: "CHILD".into(),
            role: RoleRule::Inherit,
            priority: 5,
            max_attempts: 1,
            request: JobRequest::default(),
            estimated_duration: None,
        },
    }];
    let mut micros = Vec::with_capacity(LATENCY_SAMPLES);
    for (i, parent) in parents.iter().enumerate() {
        let cas = store
            .complete(
                &parent.job_id,
                parent.version,
                success(),
                &joins,
                Utc::now(),
            )
            .await
            .unwrap();
        assert!(matches!(cas, Cas::Applied(ref c) if c.children_created.len() == 1));
        let latency: i64 = follower.read_line().parse().unwrap();
        if i >= 50 {
            micros.push(latency);
        }
    }
    follower.send("stop");
    follower.wait();
    micros.sort_unstable();
    let pct = |p: f64| micros[((micros.len() as f64 * p) as usize).min(micros.len() - 1)];
    println!(
        "dependent start on another process (complete → NOTIFY → claim), {LATENCY_SAMPLES} \
         samples: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        *micros.last().unwrap() as f64 / 1000.0
    );
}

/// A worker process: claims and completes until the queue is empty, prints how many.
async fn worker(url: String) {
    let store = Arc::new(PgStore::open(PgConfig::new(url)).await.unwrap());
    let name = format!("bench-{}", std::process::id());
    // Open the pool's connections and prepare the statements before the clock starts.
    store.counts().await.unwrap();
    handshake();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut done = 0;
    loop {
        while let Some(finished) = tasks.try_join_next() {
            finished.unwrap();
            done += 1;
        }
        let free = permits.available_permits().min(CLAIM_MAX);
        if free == 0 {
            tasks.join_next().await.unwrap().unwrap();
            done += 1;
            continue;
        }
        let claimed = store
            .claim(&name, free, Duration::from_secs(60), Utc::now())
            .await
            .unwrap();
        if claimed.is_empty() {
            if tasks.is_empty() {
                break;
            }
            tasks.join_next().await.unwrap().unwrap();
            done += 1;
            continue;
        }
        for job in claimed {
            let permit = Arc::clone(&permits).try_acquire_owned().unwrap();
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let cas = store
                    .complete(&job.job_id, job.version, success(), &[], Utc::now())
                    .await
                    .unwrap();
                assert!(cas.is_applied());
                drop(permit);
            });
        }
    }
    println!("{done}");
}

/// The other process of the latency measurement: waits for wake-ups, claims the dependents,
/// prints how long after their creation (µs) each claim returned.
async fn follower(url: String) {
    let store = PgStore::open(PgConfig::new(url)).await.unwrap();
    let mut wake = store.subscribe();
    let stop = tokio::spawn(async {
        let mut line = String::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    });
    println!("ready");
    loop {
        wake.borrow_and_update();
        let claimed = store
            .claim("follower", 10, Duration::from_secs(60), Utc::now())
            .await
            .unwrap();
        let now = Utc::now();
        for job in &claimed {
            let latency = (now - job.created_at)
                .num_microseconds()
                .unwrap_or(i64::MAX);
            println!("{latency}");
            store
                .complete(&job.job_id, job.version, success(), &[], Utc::now())
                .await
                .unwrap();
        }
        if stop.is_finished() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), wake.changed()).await;
    }
}

/// Says "ready" and waits for "go" on stdin.
fn handshake() {
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
}

struct Child {
    child: std::process::Child,
    stdout: BufReader<std::process::ChildStdout>,
}

fn spawn(url: &str, role: &str) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env(URL, url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    Child { child, stdout }
}

impl Child {
    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    fn expect_line(&mut self, expected: &str) {
        assert_eq!(self.read_line(), expected);
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn wait(mut self) {
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}
