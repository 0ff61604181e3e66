//! The job store under load: no-op jobs end to end through the durable sled store (every
//! enqueue and completion fsynced before it is reported, by group commit; claims are lazy, as
//! in production, and usually reach disk with their completion), driven as the executor drives
//! it (a dispatcher claiming for a pool, eager dispatch on completion), and the memory a large
//! queue costs.
//!
//! `cargo bench --bench store -- --sample-size 10`
//! (`FLOWCTL_BENCH_SKIP_MEMORY=1` skips the memory measurements: the million queued jobs, and
//! the memory per COMPLETED report job, heap and resident, each measured in a process of its
//! own; `FLOWCTL_BENCH_MEMORY_JOBS=50000,200000` sets their sizes.)
//!
//! The memory per job, measured 2026-12-03 (2 cores, alternating with the code before the
//! index snapshot and the 32-byte digest; heap B/job, resident B/job in parentheses):
//!
//! | 200k COMPLETED jobs | once done | restarted | restarted, no snapshot |
//! |---------------------|-----------|-----------|------------------------|
//! | before, cache 0.1 MiB | 273–274 (567–598) | 383 (657–660) | — |
//! | before, cache 64 MiB  | 500–503 (820–842) | 653–669 (846–877) | — |
//! | after, cache 0.1 MiB  | 272 (549) | 265 (479–480) | 359 (530–533) |
//! | after, cache 64 MiB   | 484–487 (770–774) | 264–266 (469–479) | 604–609 (758–770) |
//!
//! From 50k to 200k jobs the heap grows ~120 B per job beyond sled's cache (the indexes and
//! sled's page table; ~140 B resident); the rest of the figures is fixed (~35 MiB: sled, the
//! runtime) and sled's cache, which fills up to its cap (`cache_capacity`, counted in on-disk
//! bytes). See `store::sled`'s docs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, Throughput};
use flowctl::job::{Job, NewJob, Principal};
use flowctl::store::{Cas, Outcome, SledConfig, SledStore, Store};
use tokio::task::JoinSet;

/// The binary's allocator, counting the bytes live on the heap (for the memory per job).
struct Counting;

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: every call is passed on to mimalloc unchanged; only the counter is added.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new) }
    }
}

// The binary's allocator (glibc malloc costs a third of the CPU time here), counted.
#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_heap() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// A finished daily report as the scheduler makes it: a county-scoped principal, the fire's
/// trigger id, the run's window, then a result path under the window's label and a SHA-256.
fn report_job(day: u32) -> NewJob {
    let mut principal = Principal::system("CASE_WORKER");
    principal.county = Some("C01".into());
    let fire = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
        .and_then(|d| d.checked_add_days(chrono::Days::new(u64::from(day % 365))))
        .and_then(|d| d.and_hms_opt(5, 30, 0))
        .map(|t| t.and_utc())
        .unwrap_or_default();
    let mut job = NewJob::new(
        "DAILY_REPORT",
        principal,
        format!("fire:daily:{}", fire.to_rfc3339()),
    );
    job.request.window = flowctl::window::WindowSpec::Previous(flowctl::window::Period::Day)
        .window_at(fire, chrono_tz::Europe::Berlin)
        .ok();
    job
}

fn report_success(job: &Job) -> Outcome {
    let day = job
        .request
        .window
        .as_ref()
        .map(|w| w.label())
        .unwrap_or_default();
    // A digest as the pipeline writes it: 64 lowercase hex digits.
    let sha256 = format!(
        "{:064x}",
        u128::from_str_radix(&job.job_id.as_str()[4..], 36).unwrap_or(0)
    );
    Outcome::Success {
        result_path: format!(
            "/var/lib/flowctl/results/{}/{day}/{}.csv",
            job.report_type, job.job_id
        ),
        rows_written: 1234,
        sha256,
    }
}

/// What one child process measures (`FLOWCTL_BENCH_STORE_CHILD`): `fill` makes `jobs`
/// COMPLETED daily-report jobs in a new store at `dir` and closes it; `reopen` opens that store
/// again (a restarted server). Each prints heap bytes per job (counted by the allocator) and
/// resident bytes per job (`VmRSS`, which also counts what the allocator keeps), from a fresh
/// process so that neither figure carries another measurement's memory.
const CHILD: &str = "FLOWCTL_BENCH_STORE_CHILD";

fn memory_child(spec: &str) {
    let mut parts = spec.split(',');
    let (Some(step), Some(jobs), Some(cache), Some(dir)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("bad {CHILD}: {spec}");
    };
    let jobs: usize = jobs.parse().unwrap();
    let config = SledConfig {
        cache_capacity_bytes: cache.parse().unwrap(),
        ..SledConfig::new(std::path::Path::new(dir).join("db"))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (heap_before, rss_before) = (live_heap(), resident_kib());
    let store = Arc::new(SledStore::open(config).unwrap());
    if step == "fill" {
        runtime.block_on(async {
            for batch in 0..jobs / 1000 {
                let new = (0..1000)
                    .map(|i| report_job((batch * 1000 + i) as u32))
                    .collect();
                store.enqueue(new, None, Utc::now()).await.unwrap();
                let claimed = store
                    .claim("heap", 1000, Duration::from_secs(60), Utc::now())
                    .await
                    .unwrap();
                let mut done = JoinSet::new();
                for job in claimed {
                    let store = Arc::clone(&store);
                    done.spawn(async move {
                        let outcome = report_success(&job);
                        let cas = store
                            .complete(&job.job_id, job.version, outcome, &[], Utc::now())
                            .await
                            .unwrap();
                        assert!(matches!(cas, Cas::Applied(_)));
                    });
                }
                done.join_all().await;
            }
            store.sync().await.unwrap();
        });
        // Lazy writes and the last round drain.
        std::thread::sleep(Duration::from_millis(300));
    }
    let counts = runtime.block_on(store.counts()).unwrap();
    assert_eq!(counts[&flowctl::job::JobStatus::Completed], jobs as u64);
    let heap = (live_heap() - heap_before) as f64 / jobs as f64;
    let rss = resident_kib().saturating_sub(rss_before) as f64 * 1024.0 / jobs as f64;
    println!("{heap:.0} {rss:.0}");
}

/// Heap and resident bytes per job, in a child process (see [`CHILD`]).
fn measure_in_child(step: &str, jobs: usize, cache: u64, dir: &std::path::Path) -> (f64, f64) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, format!("{step},{jobs},{cache},{}", dir.display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut figures = text
        .lines()
        .last()
        .unwrap_or_default()
        .split(' ')
        .map(|n| n.parse().unwrap_or(f64::NAN));
    (
        figures.next().unwrap_or(f64::NAN),
        figures.next().unwrap_or(f64::NAN),
    )
}

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

/// One slot of the pool, as `Engine::work` (`src/executor/attempt.rs`) drives the store: each completion claims
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
    // A clean close left the index snapshot, which the open reads instead of every record.
    drop(store);
    let open_start = Instant::now();
    let store = SledStore::open(SledConfig::new(dir.path().join("db"))).unwrap();
    let open_time = open_start.elapsed();
    let counts = runtime.block_on(store.counts()).unwrap();
    assert_eq!(counts.values().sum::<u64>(), QUEUED_FOR_MEMORY as u64);
    println!(
        "memory: {QUEUED_FOR_MEMORY} queued jobs (enqueued durably in {:.1} s, {:.0} jobs/s): \
         resident {:.0} MiB (process before: {:.0} MiB), sled cache cap {cache_mib} MiB, \
         {:.0} MiB on disk; claim of 100 took {:.2} ms; reopening (from the index snapshot) \
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

/// Where the memory of COMPLETED jobs goes, at two sizes: with sled's cache at a tenth of a
/// MiB (the store's own indexes, sled's page table and the node pages its cache does not drop:
/// `store::sled`'s docs) and at its default cap (plus the records sled caches, up to the cap);
/// once the jobs are done, and in a restarted process (the indexes read from the snapshot a
/// clean close left, or rebuilt from every record without one).
/// `FLOWCTL_BENCH_MEMORY_JOBS` sets the sizes (comma-separated; default 50000,200000).
fn memory_per_completed_job() {
    let sizes: Vec<usize> = std::env::var("FLOWCTL_BENCH_MEMORY_JOBS")
        .unwrap_or_else(|_| "50000,200000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    for jobs in sizes {
        for (name, cache) in [
            ("sled cache 0.1 MiB", 100 << 10),
            (
                "sled cache 64 MiB (default)",
                SledConfig::DEFAULT_CACHE_CAPACITY_BYTES,
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (heap, rss) = measure_in_child("fill", jobs, cache, dir.path());
            let (heap_reopened, rss_reopened) = measure_in_child("reopen", jobs, cache, dir.path());
            // As after a crash: no snapshot, every record read.
            let _ = std::fs::remove_file(dir.path().join("db").join("flowctl.index"));
            let (heap_scanned, rss_scanned) = measure_in_child("reopen", jobs, cache, dir.path());
            println!(
                "memory: {jobs} COMPLETED report jobs, {name}: once done {heap:.0} heap B/job \
                 ({rss:.0} resident); restarted {heap_reopened:.0} heap B/job \
                 ({rss_reopened:.0} resident); restarted without a snapshot \
                 {heap_scanned:.0} heap B/job ({rss_scanned:.0} resident)"
            );
        }
    }
}

/// The commit watermark's cost per group-commit round: its `fdatasync` (of 64 bytes) beside
/// sled's flush of one small change, on the same file system.
fn watermark_cost() {
    use std::os::unix::fs::FileExt;
    const ROUNDS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("db")).unwrap();
    let file = std::fs::File::create(dir.path().join("mark")).unwrap();
    file.write_all_at(&[0; 64], 0).unwrap();
    file.sync_all().unwrap();
    let (mut sled_flush, mut mark) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS as u64 {
        let start = Instant::now();
        db.insert(b"k", &round.to_be_bytes()).unwrap();
        db.flush().unwrap();
        sled_flush.push(start.elapsed());
        let start = Instant::now();
        file.write_all_at(&[round as u8; 32], (round % 2) * 32)
            .unwrap();
        file.sync_data().unwrap();
        mark.push(start.elapsed());
    }
    sled_flush.sort();
    mark.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "commit watermark: per round, sled flush p50 {:.0} µs (p90 {:.0}), the watermark's \
         fdatasync p50 {:.0} µs (p90 {:.0})",
        us(sled_flush[ROUNDS / 2]),
        us(sled_flush[ROUNDS * 9 / 10]),
        us(mark[ROUNDS / 2]),
        us(mark[ROUNDS * 9 / 10]),
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
    if let Ok(spec) = std::env::var(CHILD) {
        memory_child(&spec);
        return;
    }
    // Memory first, while the process is still small.
    if std::env::var_os("FLOWCTL_BENCH_SKIP_MEMORY").is_none() {
        memory_with_a_large_queue();
        memory_per_completed_job();
    }
    watermark_cost();
    let mut criterion = Criterion::default().configure_from_args();
    throughput(&mut criterion);
    criterion.final_summary();
}
