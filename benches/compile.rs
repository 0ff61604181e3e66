//! Compile time of generated workflows with 1k, 10k and 100k reports,
//! chains and joins. Targets (2-core CI machine): 10k < 50 ms, 100k < 0.5 s,
//! growing linearly.
//!
//! `diagnostics`: `check` of pathological inputs, loading, compiling and
//! rendering every diagnostic as the CLI does (the first 100, then a count):
//! 25,000 broken `report X {` lines (recovery once cost a pest error the size
//! of the rest of the file per item, 20 s), a 2 MB zone string (a "did you
//! mean" against every zone, 25 s), a `}` at column 70,000 (miette panicked)
//! and 5,000 lines of 400 characters each with an error. Target: each under
//! 0.5 s, growing linearly. Measured on the shared 2-core machine (release,
//! 2026-12-01): 139 ms, 15 ms, 1.9 ms, 259 ms (pest's recovery parse is most
//! of the first and the last).
//!
//! Run: `cargo bench --bench compile`

// Measure with the binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// A workflow of `n` reports: every report after its predecessor, every
/// tenth report a join of the two before it, every hundredth scheduled.
pub fn generate(n: usize) -> String {
    let mut s = String::with_capacity(n * 120);
    s.push_str("config {\n  worker_pool_size 4\n  all_counties ADMIN\n}\n\nroles CASE_WORKER, SUPERVISOR, ADMIN\n\n");
    s.push_str(
        "source cases {\n  path          \"data/cases.csv\"\n  county_column county_id\n}\n\n",
    );
    s.push_str("masking pii {\n  mask ssn last4 for CASE_WORKER, SUPERVISOR\n}\n\n");
    for i in 0..n {
        s.push_str(&format!(
            "report R{i} {{\n  source     cases\n  chunk_size {}\n  masking    pii\n}}\n",
            100 + i % 900
        ));
        if i % 100 == 0 {
            s.push_str(&format!(
                "schedule s{i} {{\n  cron  \"0 30 5 * * ?\"\n  run   R{i}\n  roles ADMIN\n}}\n"
            ));
        } else if i % 10 == 0 && i >= 2 {
            s.push_str(&format!("after R{}, R{} run R{i}\n", i - 2, i - 1));
        } else {
            s.push_str(&format!("after R{} on success run R{i}\n", i - 1));
        }
    }
    s
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.measurement_time(Duration::from_secs(10));
    for n in [1_000usize, 10_000, 100_000] {
        let text = generate(n);
        // Sanity: the generated workflow is valid.
        let loaded = flowctl::loader::load_text(Path::new("bench.flow"), text.clone());
        let compiled = flowctl::compiler::compile(loaded);
        assert!(compiled.workflow.is_some(), "generated workflow has errors");
        group.throughput(Throughput::Elements(n as u64));
        if n >= 100_000 {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| {
                let loaded = flowctl::loader::load_text(Path::new("bench.flow"), text.clone());
                flowctl::compiler::compile(loaded)
            })
        });
    }
    group.finish();
}

/// `check` as the CLI does it: load, compile, render what it shows.
fn check(text: &str) -> usize {
    let loaded = flowctl::loader::load_text(Path::new("bench.flow"), text.to_string());
    let compiled = flowctl::compiler::compile(loaded);
    let mut out = Vec::new();
    flowctl::diagnostic::render_all(
        &mut out,
        &compiled.diagnostics,
        &compiled.sources,
        flowctl::diagnostic::RenderOptions::default(),
    )
    .expect("render into memory");
    out.len()
}

fn diagnostics(c: &mut Criterion) {
    let mut group = c.benchmark_group("diagnostics");
    group.measurement_time(Duration::from_secs(10));
    group.sample_size(10);
    let broken: String = (0..25_000).map(|i| format!("report R{i} {{\n")).collect();
    let zone = format!(
        "roles A\nsource s {{\n  path \"x.csv\"\n}}\nreport R {{\n  source s\n}}\n\
         schedule d {{\n  cron \"0 0 5 * * ?\"\n  zone \"{}\"\n  run R\n  roles A\n}}\n",
        "x".repeat(2_000_000)
    );
    let wide = format!("roles A\n{}}}\n", " ".repeat(70_000));
    let long_lines: String = (0..5_000)
        .map(|i| format!("roles R{i}, {} {{\n", "A, ".repeat(130)))
        .collect();
    for (name, text) in [
        ("broken_reports_25k", &broken),
        ("zone_string_2mb", &zone),
        ("column_70k", &wide),
        ("long_lines_5k", &long_lines),
    ] {
        // Sanity: bounded output.
        assert!(check(text) < 1 << 20, "{name}: output not bounded");
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), text, |b, text| {
            b.iter(|| check(text))
        });
    }
    group.finish();
}

criterion_group!(benches, compile, diagnostics);
criterion_main!(benches);
