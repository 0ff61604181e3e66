//! Compile time of generated workflows with 1k, 10k and 100k reports,
//! chains and joins. Targets (2-core CI machine): 10k < 50 ms, 100k < 0.5 s,
//! growing linearly.
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

criterion_group!(benches, compile);
criterion_main!(benches);
