//! Next-fire computation of an every-second schedule in Europe/Berlin, where the old scan
//! (`CronExpr::next_after_by_scan`, kept as the test oracle) cost ~7.5 ms per fire within 30
//! hours of a daylight-saving change. Target: a year of every-second fires across both of
//! 2026's changes at ≥ 500,000 fires/s, in flat memory (the fires are streamed).
//!
//! Besides criterion's groups, the run walks the whole year once and prints its fires/s and
//! how much the peak resident memory grew.
//!
//! Run: `cargo bench --bench schedule`

// Measure with the binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Europe::Berlin;
use criterion::{criterion_group, Criterion, Throughput};
use flowctl::cron_expr::CronExpr;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&Utc)
}

/// 2026-03-29 01:00Z: 02:00 CET becomes 03:00 CEST.
const SPRING: &str = "2026-03-29T01:00:00Z";

fn every_second() -> CronExpr {
    CronExpr::parse("* * * * * ?").expect("valid")
}

fn near_transition(c: &mut Criterion) {
    let cron = every_second();
    let change = utc(SPRING);
    let mut group = c.benchmark_group("schedule_every_second_berlin");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));

    // New: 60 hours around the change (the window where the old scan was slow).
    let from = change - TimeDelta::hours(30);
    let to = change + TimeDelta::hours(30);
    let n = cron.fires_between(Berlin, from, to).count() as u64;
    group.throughput(Throughput::Elements(n));
    group.bench_function("fires_between_60h_around_spring_forward", |b| {
        b.iter(|| black_box(cron.fires_between(Berlin, from, to).count()))
    });

    // Old: 100 fires, one scan each, starting an hour before the change.
    let start = change - TimeDelta::hours(1);
    group.throughput(Throughput::Elements(100));
    group.bench_function("next_after_by_scan_100_near_spring_forward", |b| {
        b.iter(|| {
            let mut t = start;
            for _ in 0..100 {
                t = cron.next_after_by_scan(Berlin, t).expect("fires");
            }
            black_box(t)
        })
    });
    // And one call of each at a single instant near the change.
    group.throughput(Throughput::Elements(1));
    group.bench_function("next_after_one_call_near_spring_forward", |b| {
        b.iter(|| black_box(cron.next_after(Berlin, black_box(start))))
    });
    group.bench_function("next_after_by_scan_one_call_near_spring_forward", |b| {
        b.iter(|| black_box(cron.next_after_by_scan(Berlin, black_box(start))))
    });
    group.finish();
}

/// Peak resident set size of this process, in KiB (Linux), if known.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The whole of 2026, once: both changes, 31,536,000 fires.
fn a_year_once() {
    let cron = every_second();
    let from = utc("2025-12-31T23:00:00Z"); // 2026-01-01 00:00 CET
    let to = utc("2026-12-31T23:00:00Z");
    let before = peak_rss_kib();
    let started = Instant::now();
    let mut n = 0u64;
    let mut last = from;
    for t in cron.fires_between(Berlin, from, to) {
        assert!(t > last);
        last = t;
        n += 1;
    }
    let took = started.elapsed();
    let after = peak_rss_kib();
    assert_eq!(n, 365 * 86_400, "every second of 2026 once");
    println!(
        "a year of every-second fires in Europe/Berlin: {n} fires in {:.2} s = {:.0} fires/s \
         (target >= 500000); peak RSS grew by {} KiB",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        match (before, after) {
            (Some(b), Some(a)) => (a - b).to_string(),
            _ => "?".to_string(),
        }
    );
}

criterion_group!(benches, near_transition);

fn main() {
    a_year_once();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
