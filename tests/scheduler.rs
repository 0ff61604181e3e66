//! The scheduler against a real store with a controlled clock: fires are
//! created at most once across restarts and concurrent schedulers, missed
//! fires follow the catch-up policy, and `run` follows the clock.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowctl::executor::{Engine, ExecutorConfig};
use flowctl::job::JobStatus;
use flowctl::metrics::Metrics;
use flowctl::scheduler::{self, ManualClock};
use flowctl::store::sled_store::{SledConfig, SledStore};
use flowctl::store::{ListFilter, Store};
use flowctl::workflow::Workflow;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&Utc)
}

fn workflow(dir: &Path, catch_up: &str) -> Workflow {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("data/cases.csv"),
        "case_id,county_id\n1,C01\n2,C02\n",
    )
    .unwrap();
    let text = format!(
        r#"
config {{
  all_counties ADMIN, CASE_WORKER
}}

roles ADMIN, CASE_WORKER

source cases {{
  path          "data/cases.csv"
  county_column county_id
}}

report SWEEP {{
  source cases
}}

report DAILY {{
  source cases
}}

schedule sweep {{
  cron     "0 */2 * * * ?"
  run      SWEEP
  roles    ADMIN
  counties "C01", "C02"
  catch_up {catch_up}
}}

schedule daily {{
  cron     "0 30 5 * * ?"
  zone     "America/New_York"
  run      DAILY
  roles    ADMIN, CASE_WORKER
  catch_up {catch_up}
}}
"#
    );
    let loaded = flowctl::loader::load_text(&dir.join("w.flow"), text);
    let c = flowctl::compiler::compile(loaded);
    c.workflow.unwrap_or_else(|| panic!("{:?}", c.diagnostics))
}

fn engine(workflow: Workflow, store: Arc<dyn Store>) -> Arc<Engine> {
    let config = ExecutorConfig::from_workflow(&workflow, [7; 32]);
    Arc::new(Engine::new(
        Arc::new(workflow),
        store,
        config,
        Arc::new(Metrics::new()),
    ))
}

fn open(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SledStore::open(SledConfig::new(dir.join("db"))).expect("store opens"))
}

async fn all_jobs(store: &dyn Store) -> Vec<flowctl::job::Job> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(ListFilter {
                limit: 1000,
                cursor,
                ..ListFilter::default()
            })
            .await
            .expect("list");
        out.extend(page.jobs);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

#[tokio::test]
async fn restart_in_the_middle_creates_no_duplicate_fire() {
    let dir = tempfile::tempdir().unwrap();
    let start = t("2027-03-01T10:00:30Z");
    {
        let store = open(dir.path());
        let e = engine(workflow(dir.path(), "once"), store.clone());
        // 10:02, 10:04, 10:06 fire; then the process "dies".
        for minutes in [2, 4, 6] {
            scheduler::tick(&e, start + chrono::Duration::minutes(minutes))
                .await
                .unwrap();
        }
        assert_eq!(all_jobs(store.as_ref()).await.len(), 6);
    }
    // Restarted at the same instant as the last tick: nothing new.
    let store = open(dir.path());
    let e = engine(workflow(dir.path(), "once"), store.clone());
    let created = scheduler::tick(&e, start + chrono::Duration::minutes(6))
        .await
        .unwrap();
    assert_eq!(created, 0);
    assert_eq!(all_jobs(store.as_ref()).await.len(), 6);
    // And it goes on from there.
    scheduler::tick(&e, start + chrono::Duration::minutes(8))
        .await
        .unwrap();
    let jobs = all_jobs(store.as_ref()).await;
    assert_eq!(jobs.len(), 8);
    let mut triggers: Vec<_> = jobs
        .iter()
        .map(|j| (j.trigger_id.clone(), j.county.clone()))
        .collect();
    triggers.sort();
    triggers.dedup();
    assert_eq!(triggers.len(), 8, "each (fire, county) once");
    assert!(jobs
        .iter()
        .all(|j| j.status == JobStatus::Queued && j.subject == "system"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_schedulers_create_each_fire_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = engine(workflow(dir.path(), "once"), store.clone());
    let b = engine(workflow(dir.path(), "once"), store.clone());
    let start = t("2027-03-01T10:00:30Z");
    let mut created = 0;
    for minutes in (2..=40).step_by(2) {
        let now = start + chrono::Duration::minutes(minutes);
        let (x, y) = tokio::join!(scheduler::tick(&a, now), scheduler::tick(&b, now));
        created += x.unwrap() + y.unwrap();
    }
    // 20 sweep fires and the daily 05:30 New York fire (10:30Z), each once.
    assert_eq!(created, 21);
    let jobs = all_jobs(store.as_ref()).await;
    assert_eq!(jobs.len(), 20 * 2 + 2);
    let mut keys: Vec<_> = jobs
        .iter()
        .map(|j| (j.trigger_id.clone(), j.role.clone(), j.county.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), jobs.len(), "no job created twice");
}

#[tokio::test]
async fn catch_up_after_downtime_follows_the_policy() {
    // Down from 10:00 to 11:00:30: 10:02..10:58 are missed (29 fires), 11:00
    // is on time and runs under every policy.
    for (policy, expected_sweeps) in [("skip", 1usize), ("once", 2), ("all", 30)] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let e = engine(workflow(dir.path(), policy), store.clone());
        let t0 = t("2027-03-01T10:00:00Z");
        scheduler::tick(&e, t0).await.unwrap();
        let before = all_jobs(store.as_ref()).await.len();
        let back = t0 + chrono::Duration::seconds(3630);
        scheduler::tick(&e, back).await.unwrap();
        let sweeps = all_jobs(store.as_ref()).await.len() - before;
        // Missed fires per policy, each creating 2 jobs (two counties).
        assert_eq!(sweeps, 2 * expected_sweeps, "{policy}");
        if policy != "all" {
            assert!(
                e.metrics
                    .missed_fires
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0
            );
        }
    }
}

#[tokio::test]
async fn run_follows_the_manual_clock() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let e = engine(workflow(dir.path(), "once"), store.clone());
    let clock = ManualClock::new(t("2027-03-01T10:00:30Z"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(scheduler::run(e.clone(), clock.clone(), async {
        let _ = stop_rx.await;
    }));
    // Move through 10 minutes of simulated time: 5 sweep fires × 2 counties.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(120));
        let want = all_jobs(store.as_ref()).await.len() + 2;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while all_jobs(store.as_ref()).await.len() < want {
            assert!(
                std::time::Instant::now() < deadline,
                "scheduler did not fire"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
    assert_eq!(all_jobs(store.as_ref()).await.len(), 10);
}

#[tokio::test]
async fn daily_fire_in_new_york_across_spring_forward() {
    // 05:30 local: 10:30Z before the change (EST), 09:30Z after (EDT).
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let e = engine(workflow(dir.path(), "once"), store.clone());
    let w = &e.workflow;
    let daily = w.schedules.iter().find(|s| s.name == "daily").unwrap();
    let fires: Vec<_> = daily
        .cron
        .fires_between(
            daily.zone,
            t("2026-03-07T00:00:00Z"),
            t("2026-03-10T00:00:00Z"),
        )
        .collect();
    assert_eq!(
        fires,
        vec![
            t("2026-03-07T10:30:00Z"),
            t("2026-03-08T09:30:00Z"),
            t("2026-03-09T09:30:00Z")
        ]
    );
}
