//! Trigger throughput and latency of `POST /api/reports/generate` on loopback.
//!
//! The real server (`flowctl::server::serve`) on 127.0.0.1:0 with the bundled workflow and a
//! durable sled store (fsync before every answer, group-committed), and an in-process Rust
//! client keeping `CONCURRENCY` requests in flight over keep-alive connections. The dispatcher
//! is not running: this measures accepting triggers (auth, validation, enqueue, fsync), not
//! running reports.
//!
//! Bounded in count and time, loopback only. Knobs (environment):
//! `FLOWCTL_BENCH_CONCURRENCY` (default 32, the sweet spot on two shared cores),
//! `FLOWCTL_BENCH_REQUESTS` (default 100000), `FLOWCTL_BENCH_SECONDS` (cap, default 30).
//!
//! Run: `cargo bench --bench http`.

// Measure with the binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Request;
use flowctl::auth::AuthConfig;
use flowctl::executor::{Engine, ExecutorConfig};
use flowctl::metrics::Metrics;
use flowctl::server::{self, AppState};
use flowctl::store::{SledConfig, SledStore};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789";
/// Target from the issue: accepted triggers per second and p99.
const TARGET_RATE: f64 = 20_000.0;
const TARGET_P99: Duration = Duration::from_millis(10);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn copy_workflow(dir: &Path) -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let wf = dir.join("wf");
    std::fs::create_dir_all(wf.join("data")).unwrap();
    std::fs::copy(repo.join("workflows/reports.flow"), wf.join("reports.flow")).unwrap();
    std::fs::copy(
        repo.join("workflows/data/cases.csv"),
        wf.join("data/cases.csv"),
    )
    .unwrap();
    wf.join("reports.flow")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once as a test: be quick.
    let smoke = std::env::args().all(|a| a != "--bench");
    let concurrency = env_or("FLOWCTL_BENCH_CONCURRENCY", 32).max(1);
    let requests = if smoke {
        200
    } else {
        env_or("FLOWCTL_BENCH_REQUESTS", 100_000)
    };
    let cap = Duration::from_secs(env_or("FLOWCTL_BENCH_SECONDS", 30) as u64);

    let dir = tempfile::tempdir().unwrap();
    let flow = copy_workflow(dir.path());
    let workflow = flowctl::compiler::compile_paths(&[flow])
        .unwrap()
        .workflow
        .expect("the bundled workflow compiles");
    let store = SledStore::open(SledConfig::new(dir.path().join("db"))).unwrap();
    let config = ExecutorConfig::from_workflow(&workflow, [7; 32]);
    let engine = Arc::new(Engine::new(
        Arc::new(workflow),
        Arc::new(store),
        config,
        Arc::new(Metrics::new()),
    ));
    let auth = Arc::new(AuthConfig::hs256(SECRET).unwrap());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(engine.clone(), auth);
        let server = tokio::spawn(server::serve(listener, state, async {
            let _ = stop_rx.await;
        }));
        (addr, server)
    });

    let token = flowctl::auth::mint_dev_token(
        SECRET,
        "bench",
        "CASE_WORKER",
        Some("C01"),
        Duration::from_secs(3600),
        None,
        None,
    )
    .unwrap();
    let body = Bytes::from_static(br#"{"reportType":"DAILY_REPORT","chunkSize":500}"#);
    let uri = format!("http://{addr}/api/reports/generate");
    let authorization = format!("Bearer {token}");

    let (latencies, elapsed, errors) = runtime.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(concurrency)
            .build_http();
        // Warm up: open the connections, fill the estimate cache.
        let warm: Vec<_> = (0..concurrency)
            .map(|_| {
                let client = client.clone();
                let req = Request::post(&uri)
                    .header("authorization", &authorization)
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .unwrap();
                tokio::spawn(async move {
                    let resp = client.request(req).await.unwrap();
                    assert_eq!(resp.status(), 202);
                    resp.into_body().collect().await.unwrap();
                })
            })
            .collect();
        for w in warm {
            w.await.unwrap();
        }

        let next = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let deadline = started + cap;
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let client = client.clone();
                let next = next.clone();
                let errors = errors.clone();
                let uri = uri.clone();
                let authorization = authorization.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < requests
                        && Instant::now() < deadline
                    {
                        let req = Request::post(&uri)
                            .header("authorization", &authorization)
                            .header("content-type", "application/json")
                            .body(Full::new(body.clone()))
                            .unwrap();
                        let t = Instant::now();
                        match client.request(req).await {
                            Ok(resp) => {
                                let ok = resp.status() == 202;
                                let _ = resp.into_body().collect().await;
                                if ok {
                                    mine.push(t.elapsed());
                                } else {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::with_capacity(requests);
        for w in workers {
            all.extend(w.await.unwrap());
        }
        (all, started.elapsed(), errors.load(Ordering::Relaxed))
    });

    let mut sorted = latencies;
    sorted.sort_unstable();
    let accepted = sorted.len();
    let rate = accepted as f64 / elapsed.as_secs_f64();
    let p50 = percentile(&sorted, 0.50);
    let p99 = percentile(&sorted, 0.99);
    let p999 = percentile(&sorted, 0.999);
    let max = sorted.last().copied().unwrap_or_default();
    let queued = runtime
        .block_on(engine.store.counts())
        .unwrap()
        .values()
        .sum::<u64>();
    println!(
        "http/generate: {accepted} accepted ({errors} errors) in {:.2}s with {concurrency} in flight: {rate:.0} triggers/s; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {queued} jobs in the store",
        elapsed.as_secs_f64(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        p999.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
    );
    if !smoke {
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "target ≥ {TARGET_RATE:.0}/s: {}; target p99 < {} ms: {}",
            verdict(rate >= TARGET_RATE),
            TARGET_P99.as_millis(),
            verdict(p99 < TARGET_P99)
        );
    }
    assert_eq!(errors, 0, "every trigger must be accepted");
    assert_eq!(
        queued as usize,
        accepted + concurrency,
        "every accepted trigger is stored"
    );

    let _ = stop_tx.send(());
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    });
}
