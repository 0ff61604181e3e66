//! A year's daily backfill planned and queued into the durable sled store: 365 fires of a
//! schedule of three reports, each with a dependent in the workflow (a chain and a join), so
//! each fire is three root jobs whose children follow as they complete. Target: under 1 s
//! (issue 13), measured from the fire times' computation to the last fire's enqueue on disk.
//!
//! Run: `cargo bench --bench backfill` (prints each trial and the median; a fresh store each).

// Measure with the binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flowctl::executor::{Engine, ExecutorConfig};
use flowctl::metrics::Metrics;
use flowctl::store::sled::{SledConfig, SledStore};
use flowctl::store::Store;
use flowctl::window::{Period, WindowSpec};

const TRIALS: usize = 5;
const TARGET: Duration = Duration::from_secs(1);

fn workflow(dir: &Path) -> flowctl::workflow::Workflow {
    std::fs::write(dir.join("one.csv"), "id,county_id\n1,C01\n").expect("write source");
    let text = r#"
config {
  all_counties ADMIN
}
roles ADMIN
source one {
  path          "one.csv"
  county_column county_id
}
report DAILY { source one }
report COUNTY { source one }
report AUDIT { source one }
report SUMMARY { source one }
report DIGEST { source one }
after DAILY run SUMMARY
after SUMMARY, COUNTY run DIGEST
after DAILY on completion run AUDIT
schedule nightly {
  cron  "0 30 5 * * ?"
  zone  "Europe/Berlin"
  run   DAILY, COUNTY, AUDIT
  roles ADMIN
}
"#;
    let loaded = flowctl::loader::load_text(&dir.join("bench.flow"), text.to_string());
    let compilation = flowctl::compiler::compile(loaded);
    let mut workflow = compilation
        .workflow
        .unwrap_or_else(|| panic!("{:#?}", compilation.diagnostics));
    workflow.schedules[0].window = Some(WindowSpec::Previous(Period::Day));
    workflow
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut times = Vec::new();
    for trial in 1..=TRIALS {
        let dir = tempfile::tempdir().expect("temp dir");
        let workflow = Arc::new(workflow(dir.path()));
        let store: Arc<dyn Store> = Arc::new(
            SledStore::open(SledConfig::new(dir.path().join("db"))).expect("open the store"),
        );
        let config = ExecutorConfig::from_workflow(&workflow, [7; 32]);
        let engine = Engine::new(workflow, store, config, Arc::new(Metrics::new()));
        let schedule = engine.workflow.schedules[0].clone();
        let now = Utc::now();
        let (elapsed, summary) = runtime.block_on(async {
            let start = Instant::now();
            let fires = flowctl::backfill::fire_times(
                &schedule,
                utc("2025-01-01T00:00:00Z"),
                utc("2026-01-01T00:00:00Z"),
                now,
            )
            .expect("fires");
            let summary = flowctl::backfill::run(&engine, &schedule, &fires, now, |_, _| {})
                .await
                .expect("backfill");
            (start.elapsed(), summary)
        });
        assert_eq!(summary.fires_created, 365);
        assert_eq!(summary.jobs_created, 3 * 365);
        println!(
            "trial {trial}: 365 fires, {} root jobs planned and queued in {:.1} ms",
            summary.jobs_created,
            elapsed.as_secs_f64() * 1e3
        );
        times.push(elapsed);
    }
    times.sort();
    let median = times[TRIALS / 2];
    println!(
        "backfill of a year's daily fires: median {:.1} ms (target < {} ms): {}",
        median.as_secs_f64() * 1e3,
        TARGET.as_millis(),
        if median < TARGET { "met" } else { "MISSED" }
    );
}
