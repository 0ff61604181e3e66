//! The job store under load: no-op jobs end to end through the durable sled store (every change
//! fsynced before it returns, by group commit), and the memory a large queue costs.
//!
//! `cargo bench --bench store -- --sample-size 10`

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, Throughput};
use flowctl::job::{NewJob, Principal};
use flowctl::store::{Cas, Outcome, SledConfig, SledStore, Store};
use tokio::task::JoinSet;

// The binary's allocator: glibc malloc costs a third of the CPU time here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Jobs per measured iteration.
const JOBS: usize = 20_000;
const ENQUEUE_BATCH: usize = 500;
/// `max_jobs_per_poll` of each worker.
const CLAIM_MAX: usize = 256;
const WORKERS: usize = 2;
const QUEUED_FOR_MEMORY: usize = 1_000_000;

fn job() -> NewJob {
    NewJob::new("NOOP", Principal::system("SUPERVISOR"), "bench")
}

/// Enqueues `JOBS` jobs while `WORKERS` workers claim and complete them; returns once every job
/// is COMPLETED. Each worker completes its claimed jobs concurrently, as a dispatcher's pool
/// does, so their fsyncs are shared.
async fn end_to_end(store: Arc<SledStore>) {
    let producer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for _ in 0..JOBS / ENQUEUE_BATCH {
                store
                    .enqueue(vec![job(); ENQUEUE_BATCH], None, Utc::now())
                    .await
                    .unwrap();
            }
        })
    };
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for worker in 0..WORKERS {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        let mut wake = store.subscribe();
        workers.spawn(async move {
            let name = format!("bench-{worker}");
            while done.load(std::sync::atomic::Ordering::Relaxed) < JOBS {
                let claimed = store
                    .claim(&name, CLAIM_MAX, Duration::from_secs(60), Utc::now())
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    // Nothing queued: wait for the producer (or another worker's last job).
                    let _ = tokio::time::timeout(Duration::from_millis(5), wake.changed()).await;
                    continue;
                }
                let mut running = JoinSet::new();
                for job in claimed {
                    let store = Arc::clone(&store);
                    running.spawn(async move {
                        let outcome = Outcome::Success {
                            result_path: String::new(),
                            rows_written: 0,
                            sha256: String::new(),
                        };
                        let cas = store
                            .complete(&job.job_id, job.version, outcome, &[], Utc::now())
                            .await
                            .unwrap();
                        assert!(matches!(cas, Cas::Applied(_)));
                    });
                }
                let n = running.join_all().await.len();
                done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    producer.await.unwrap();
    workers.join_all().await;
}

fn throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(SledConfig::new(dir.path().join("db"))).unwrap());
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(JOBS as u64));
    group.bench_function("enqueue_claim_complete_durable", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                runtime.block_on(end_to_end(Arc::clone(&store)));
            }
            start.elapsed()
        })
    });
    group.finish();
    let counts = runtime.block_on(store.counts()).unwrap();
    let completed: u64 = counts.values().sum();
    println!(
        "group commit: {completed} jobs, 3 durable changes each, {} fsyncs ({:.1} changes per fsync)",
        store.flushes(),
        3.0 * completed as f64 / store.flushes().max(1) as f64,
    );
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory with a million QUEUED jobs, sled's cache at its default cap.
fn memory_with_a_large_queue() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let before = resident_kib();
    let config = SledConfig::new(dir.path().join("db"));
    let cache_mib = config.cache_capacity_bytes >> 20;
    let store = SledStore::open(config).unwrap();
    let start = Instant::now();
    runtime.block_on(async {
        for _ in 0..QUEUED_FOR_MEMORY / 1000 {
            store
                .enqueue(vec![job(); 1000], None, Utc::now())
                .await
                .unwrap();
        }
    });
    let elapsed = start.elapsed();
    let after = resident_kib();
    // The queue still answers at this size.
    let claim_start = Instant::now();
    let claimed = runtime
        .block_on(store.claim("probe", 100, Duration::from_secs(60), Utc::now()))
        .unwrap();
    assert_eq!(claimed.len(), 100);
    let claim_time = claim_start.elapsed();
    let disk: u64 = walk_size(dir.path());
    // Opening reads every record to rebuild the indexes.
    drop(store);
    let open_start = Instant::now();
    let store = SledStore::open(SledConfig::new(dir.path().join("db"))).unwrap();
    let open_time = open_start.elapsed();
    let counts = runtime.block_on(store.counts()).unwrap();
    assert_eq!(counts.values().sum::<u64>(), QUEUED_FOR_MEMORY as u64);
    println!(
        "memory: {QUEUED_FOR_MEMORY} queued jobs (enqueued durably in {:.1} s, {:.0} jobs/s): \
         resident {:.0} MiB (process before: {:.0} MiB), sled cache cap {cache_mib} MiB, \
         {:.0} MiB on disk; claim of 100 took {:.2} ms; reopening (rebuilding the indexes) \
         took {:.2} s",
        elapsed.as_secs_f64(),
        QUEUED_FOR_MEMORY as f64 / elapsed.as_secs_f64(),
        after as f64 / 1024.0,
        before as f64 / 1024.0,
        disk as f64 / (1024.0 * 1024.0),
        claim_time.as_secs_f64() * 1000.0,
        open_time.as_secs_f64(),
    );
}

fn walk_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => walk_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() {
    // Memory first, while the process is still small.
    memory_with_a_large_queue();
    let mut criterion = Criterion::default().configure_from_args();
    throughput(&mut criterion);
    criterion.final_summary();
}
