//! The job store under load: no-op jobs end to end through the durable sled store (every
//! enqueue and completion fsynced before it is reported, by group commit; claims are lazy, as
//! in production, and usually reach disk with their completion), driven as the executor drives
//! it (a dispatcher claiming for a pool, eager dispatch on completion), and the memory a large
//! queue costs.
//!
//! `cargo bench --bench store -- --sample-size 10`
//! (`FLOWCTL_BENCH_SKIP_MEMORY=1` skips the million-job memory measurement.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, Throughput};
use flowctl::job::{Job, NewJob, Principal};
use flowctl::store::{Cas, Outcome, SledConfig, SledStore, Store};
use tokio::task::JoinSet;

// The binary's allocator: glibc malloc costs a third of the CPU time here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Jobs per measured iteration.
const JOBS: usize = 20_000;
const ENQUEUE_BATCH: usize = 500;
/// The executor's `worker_pool_size`, and its `max_jobs_per_poll`.
const POOL: usize = 256;
const QUEUED_FOR_MEMORY: usize = 1_000_000;

fn job() -> NewJob {
    NewJob::new("NOOP", Principal::system("SUPERVISOR"), "bench")
}

fn success() -> Outcome {
    Outcome::Success {
        result_path: String::new(),
        rows_written: 0,
        sha256: String::new(),
    }
}

/// One slot of the pool, as `executor::Engine::work` drives the store: each completion claims
/// the slot's next job in the same change (eager dispatch); the next job runs while the
/// completion is made durable, and completes only after it is.
async fn slot(store: Arc<SledStore>, first: Job, done: Arc<AtomicUsize>) {
    let mut job = first;
    let mut before: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        // The no-op job's run, beside the previous completion's fsync.
        if let Some(flush) = before.take() {
            flush.await.unwrap();
        }
        let (cas, next) = store
            .complete_and_claim(
                &job.job_id,
                job.version,
                success(),
                &[],
                Utc::now(),
                "bench",
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(matches!(cas, Cas::Applied(_)));
        let flush = {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            async move {
                store.sync().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        };
        match next {
            Some(next) => {
                before = Some(tokio::spawn(flush));
                job = next;
            }
            None => return flush.await,
        }
    }
}

/// Enqueues `JOBS` jobs in batches while a dispatcher claims them for a pool of `POOL` slots,
/// as the executor does; returns once every job is COMPLETED and durable.
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
    let done = Arc::new(AtomicUsize::new(0));
    let mut wake = store.subscribe();
    let mut slots = JoinSet::new();
    while done.load(Ordering::Relaxed) < JOBS {
        let free = POOL - slots.len();
        let claimed = if free > 0 {
            store
                .claim("bench", free, Duration::from_secs(60), Utc::now())
                .await
                .unwrap()
        } else {
            Vec::new()
        };
        let full = free > 0 && claimed.len() == free;
        for job in claimed {
            slots.spawn(slot(Arc::clone(&store), job, Arc::clone(&done)));
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = wake.changed() => {}
            Some(ended) = slots.join_next(), if !slots.is_empty() => ended.unwrap(),
            // The last jobs: nothing wakes the dispatcher once the queue is empty.
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    producer.await.unwrap();
    slots.join_all().await;
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
        "group commit: {completed} jobs, {} fsyncs ({:.1} jobs per fsync)",
        store.flushes(),
        completed as f64 / store.flushes().max(1) as f64,
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
    if std::env::var_os("FLOWCTL_BENCH_SKIP_MEMORY").is_none() {
        memory_with_a_large_queue();
    }
    let mut criterion = Criterion::default().configure_from_args();
    throughput(&mut criterion);
    criterion.final_summary();
}
