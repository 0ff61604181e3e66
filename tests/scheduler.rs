//! The scheduler against a real store with a controlled clock: fires are
//! created at most once across restarts and concurrent schedulers, missed
//! fires follow the catch-up policy, and `run` follows the clock.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::wait::until;
use common::{engine, Flowctl, Project};
use flowctl::executor::Engine;
use flowctl::job::JobStatus;
use flowctl::scheduler::{self, ManualClock};
use flowctl::store::sled::{SledConfig, SledStore};
use flowctl::store::{ListFilter, Store};
use flowctl::workflow::Workflow;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&Utc)
}

fn workflow(project: &Project, catch_up: &str) -> Workflow {
    project.write("data/cases.csv", "case_id,county_id\n1,C01\n2,C02\n");
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
    project.write("w.flow", text);
    project.workflow("w.flow")
}

fn engine(workflow: Workflow, store: Arc<dyn Store>) -> Arc<Engine> {
    Arc::new(engine::engine(Arc::new(workflow), store))
}

fn open(project: &Project) -> Arc<dyn Store> {
    Arc::new(SledStore::open(SledConfig::new(project.db())).expect("store opens"))
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
    let dir = Project::new();
    let start = t("2027-03-01T10:00:30Z");
    {
        let store = open(&dir);
        let e = engine(workflow(&dir, "once"), store.clone());
        // 10:02, 10:04, 10:06 fire; then the process "dies".
        for minutes in [2, 4, 6] {
            scheduler::tick(&e, start + chrono::Duration::minutes(minutes))
                .await
                .unwrap();
        }
        assert_eq!(all_jobs(store.as_ref()).await.len(), 6);
    }
    // Restarted at the same instant as the last tick: nothing new.
    let store = open(&dir);
    let e = engine(workflow(&dir, "once"), store.clone());
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
    let dir = Project::new();
    let store = open(&dir);
    let a = engine(workflow(&dir, "once"), store.clone());
    let b = engine(workflow(&dir, "once"), store.clone());
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
        let dir = Project::new();
        let store = open(&dir);
        let e = engine(workflow(&dir, policy), store.clone());
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
    let dir = Project::new();
    let store = open(&dir);
    let e = engine(workflow(&dir, "once"), store.clone());
    let clock = ManualClock::new(t("2027-03-01T10:00:30Z"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(scheduler::run(e.clone(), clock.clone(), async {
        let _ = stop_rx.await;
    }));
    // Move through 10 minutes of simulated time: 5 sweep fires × 2 counties.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(120));
        let want = all_jobs(store.as_ref()).await.len() + 2;
        let fired = || async { (all_jobs(store.as_ref()).await.len() >= want).then_some(()) };
        let what = || "scheduler did not fire".to_string();
        until(
            Duration::from_secs(10),
            Duration::from_millis(5),
            what,
            fired,
        )
        .await;
    }
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
    assert_eq!(all_jobs(store.as_ref()).await.len(), 10);
}

#[tokio::test]
async fn daily_fire_in_new_york_across_spring_forward() {
    // 05:30 local: 10:30Z before the change (EST), 09:30Z after (EDT).
    let dir = Project::new();
    let store = open(&dir);
    let e = engine(workflow(&dir, "once"), store.clone());
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

/// A workflow of one schedule, written to `dir/w.flow` (with its source, so `check` has
/// nothing to say about the data).
fn one_schedule_file(project: &Project, cron: &str, zone: &str) -> std::path::PathBuf {
    project.write("x.csv", "id\n1\n");
    project.write(
        "w.flow",
        format!(
            "config {{\n  all_counties ADMIN\n}}\nroles ADMIN\nsource s {{\n  path \"x.csv\"\n}}\nreport R {{\n  source s\n}}\n\
             schedule every {{\n  cron \"{cron}\"\n  zone \"{zone}\"\n  run R\n  roles ADMIN\n}}\n"
        ),
    )
}

#[test]
fn schedule_output_streams_and_stops_at_a_closed_pipe() {
    // A year of every-second fires across Berlin's spring-forward: the first lines arrive
    // while the rest is still being computed, and closing the pipe ends the command, exit 0.
    let dir = Project::new();
    let file = one_schedule_file(&dir, "* * * * * ?", "Europe/Berlin");
    let mut running = Flowctl::new()
        .args([
            "schedule",
            "--next",
            "31536000",
            "--from",
            "2026-03-29T00:59:00Z",
        ])
        .args([&file])
        .spawn_with(Stdio::piped());
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = running.child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..3 {
            let line = lines.next().expect("a line").expect("utf-8");
            lines_tx.send(line).unwrap();
        }
        // Dropping the reader closes the pipe, as `| head -3` does.
    });
    let mut first = Vec::new();
    for _ in 0..3 {
        // Generous: the old code wrote nothing before computing every fire (hours, GBs).
        match lines_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => first.push(line),
            Err(_) => {
                let _ = running.kill();
                panic!("no streamed output; got {first:?}");
            }
        }
    }
    reader.join().unwrap();
    assert!(
        first[0].starts_with("every  \"* * * * * ?\"  Europe/Berlin"),
        "{first:?}"
    );
    assert_eq!(
        first[1],
        "  2026-03-29 01:59:01 CET (+01:00)  2026-03-29T00:59:01Z"
    );
    let Some(status) = running.wait_exit(Duration::from_secs(60)) else {
        let _ = running.kill();
        panic!("flowctl kept running after its reader left");
    };
    let stderr = running.log();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The lines of `flowctl schedule --next N --from FROM FILE` after its heading: one fire each.
fn next_fires(file: &std::path::Path, n: u32, from: &str) -> Vec<String> {
    let run = Flowctl::new()
        .args(["schedule", "--next", &n.to_string(), "--from", from])
        .args([file])
        .output()
        .success();
    run.stdout().lines().skip(1).map(str::to_string).collect()
}

#[test]
fn schedule_every_second_crosses_the_spring_forward_gap_in_real_time() {
    let dir = Project::new();
    let file = one_schedule_file(&dir, "* * * * * ?", "Europe/Berlin");
    let lines = next_fires(&file, 3, "2026-03-29T00:59:58Z");
    assert_eq!(
        lines,
        [
            "  2026-03-29 01:59:59 CET (+01:00)  2026-03-29T00:59:59Z",
            "  2026-03-29 03:00:00 CEST (+02:00)  2026-03-29T01:00:00Z",
            "  2026-03-29 03:00:01 CEST (+02:00)  2026-03-29T01:00:01Z",
        ]
    );
}

#[test]
fn plan_says_when_it_is_cut_at_its_limit() {
    let dir = Project::new();
    let file = one_schedule_file(&dir, "0 * * * * ?", "UTC");
    let window = [
        "--from",
        "2027-01-01T00:00:00Z",
        "--to",
        "2027-01-01T01:00:00Z",
    ];
    let cut = Flowctl::new()
        .args(["plan", "--limit", "5"])
        .args(window)
        .args([&file])
        .output()
        .success();
    assert_eq!(
        cut.stdout()
            .lines()
            .filter(|l| l.starts_with("2027"))
            .count(),
        5
    );
    assert!(
        cut.stdout().contains("5 fire(s), 5 job(s)"),
        "{}",
        cut.stdout()
    );
    assert!(
        cut.stderr()
            .contains("… plan cut at 5 fires; use --limit to see more"),
        "{}",
        cut.stderr()
    );
    // 60 fires in the hour: a limit of 60 shows them all and says nothing.
    let whole = Flowctl::new()
        .args(["plan", "--limit", "60"])
        .args(window)
        .args([&file])
        .output()
        .success();
    assert!(whole.stdout().contains("60 fire(s)"), "{}", whole.stdout());
    assert!(!whole.stderr().contains("plan cut"), "{}", whole.stderr());
}

#[test]
fn check_refuses_restricted_or_unset_day_fields_and_never_firing_years_with_e006() {
    let dir = Project::new();
    for (cron, says) in [
        (
            "0 0 9 1-7 * MON",
            "are both restricted, which Quartz refuses",
        ),
        ("0 0 9 ? * ?", "'?' in both day-of-month and day-of-week"),
        (
            "0 0 0 30 2 ?",
            "day-of-month 30 never occurs in the selected months (FEB)",
        ),
        ("0 0 0 29 2 ? 2027", "the expression never fires"),
    ] {
        let file = one_schedule_file(&dir, cron, "UTC");
        let run = Flowctl::new()
            .args(["check"])
            .args([&file])
            .output()
            .status(1);
        // The message as one line (the renderer wraps it).
        let err: Vec<_> = run
            .stderr()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let err = err
            .into_iter()
            .filter(|w| w != "│")
            .collect::<Vec<_>>()
            .join(" ");
        assert!(err.contains("E006"), "{cron}: {err}");
        assert!(err.contains(says), "{cron}: {err}");
    }
}

#[test]
fn check_warns_about_a_schedule_that_fires_only_in_the_past() {
    let dir = Project::new();
    let file = one_schedule_file(&dir, "0 0 0 * * ? 2020", "UTC");
    let run = Flowctl::new()
        .args(["check"])
        .args([&file])
        .output()
        .success();
    let err = run.stderr();
    assert!(err.contains("W005"), "{err}");
    assert!(
        err.contains(
            "schedule `every` never fires again: \"0 0 0 * * ? 2020\" has no fire time after"
        ),
        "{err}"
    );
    assert!(run.stdout().contains("1 warning"), "{}", run.stdout());
    // A schedule with fires ahead: no W005.
    let file = one_schedule_file(&dir, "0 0 0 * * ? 2020-2099", "UTC");
    let run = Flowctl::new()
        .args(["check"])
        .args([&file])
        .output()
        .success();
    assert!(!run.stderr().contains("W005"), "{}", run.stderr());
}

/// Month-end reports: the Quartz specials `L` and `6#3` are accepted by `check` and fire on
/// their days; a special that picks no day is an E006 at its field.
#[test]
fn quartz_day_specials_schedule_month_end_and_nth_weekday_reports() {
    let dir = Project::new();
    let file = one_schedule_file(&dir, "0 30 5 L * ?", "Europe/Berlin");
    Flowctl::new()
        .args(["check"])
        .args([&file])
        .output()
        .success();
    let lines = next_fires(&file, 3, "2026-01-15T00:00:00Z");
    assert_eq!(
        lines,
        [
            "  2026-01-31 05:30:00 CET (+01:00)  2026-01-31T04:30:00Z",
            "  2026-02-28 05:30:00 CET (+01:00)  2026-02-28T04:30:00Z",
            "  2026-03-31 05:30:00 CEST (+02:00)  2026-03-31T03:30:00Z",
        ]
    );
    let file = one_schedule_file(&dir, "0 0 7 ? * FRI#3", "UTC");
    let lines = next_fires(&file, 2, "2026-01-01T00:00:00Z");
    assert!(lines[0].ends_with("2026-01-16T07:00:00Z"), "{lines:?}");
    assert!(lines[1].ends_with("2026-02-20T07:00:00Z"), "{lines:?}");
    let file = one_schedule_file(&dir, "0 0 0 30W 2 ?", "UTC");
    let run = Flowctl::new()
        .args(["check"])
        .args([&file])
        .output()
        .status(1);
    let stderr = run.stderr();
    assert!(stderr.contains("E006"), "{stderr}");
    assert!(
        stderr.contains("day-of-month '30W' picks no day in the selected months"),
        "{stderr}"
    );
    assert!(stderr.contains("w.flow:"), "{stderr}");
}
