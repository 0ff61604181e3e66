//! `flowctl backfill`, driving the real binary, and the library's backfill against the
//! scheduler's own fires: a year of daily fires backfilled twice (the second creates nothing),
//! cut short and resumed (each fire's jobs exist exactly once), killed midway and resumed, a
//! dry run that creates nothing, and a fire the scheduler made is skipped.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{data, Project};
use flowctl::store::{ListFilter, SledConfig, SledStore, Store};
use flowctl::window::{Period, WindowSpec};

/// A daily fire at 05:30 UTC of DAILY (as ADMIN, all counties), whose completion runs SUMMARY.
const FLOW: &str = "config {\n  all_counties ADMIN\n  results \"results\"\n}\nroles ADMIN\n\
    source cases {\n  path          \"cases.csv\"\n  county_column county_id\n}\n\
    report DAILY {\n  source cases\n}\nreport SUMMARY {\n  source cases\n}\n\
    after DAILY run SUMMARY\n\
    schedule daily {\n  cron  \"0 30 5 * * ?\"\n  run   DAILY\n  roles ADMIN\n}\n\
    schedule minutely {\n  cron  \"0 * * * * ?\"\n  run   DAILY\n  roles ADMIN\n}\n";

fn project() -> Project {
    Project::new()
        .flow("w.flow", FLOW)
        .csv("cases.csv", data::cases(5))
}

fn backfill(project: &Project, args: &[&str]) -> common::bin::Run {
    let mut all = vec!["backfill", "w.flow", "--schedule"];
    all.extend(args);
    project.with_db(all).output()
}

/// The number in the summary's row `what`.
fn row(stdout: &str, what: &str) -> usize {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with(what))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what} row in:\n{stdout}"))
}

/// How many jobs of each fire (trigger id) the store holds, of report `report` (read from a
/// copy of the store, every page).
fn jobs_per_fire(project: &Project, report: &str) -> BTreeMap<String, usize> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = SledStore::open_read_only(project.db()).unwrap();
    let mut per_fire = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = runtime
            .block_on(store.list(ListFilter {
                report_type: Some(report.to_string()),
                limit: ListFilter::MAX_LIMIT,
                cursor,
                ..ListFilter::default()
            }))
            .unwrap();
        for job in page.jobs {
            *per_fire.entry(job.trigger_id).or_insert(0) += 1;
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return per_fire,
        }
    }
}

const YEAR: [&str; 5] = [
    "daily",
    "--from",
    "2025-01-01T00:00:00Z",
    "--to",
    "2026-01-01T00:00:00Z",
];

#[test]
fn a_year_of_daily_fires_backfilled_twice_creates_each_once() {
    let project = project();
    let mut args = YEAR.to_vec();
    args.push("--queue-only");
    let first = backfill(&project, &args).success().stdout();
    assert_eq!(row(&first, "fires planned"), 365, "{first}");
    assert_eq!(row(&first, "fires created"), 365);
    assert_eq!(row(&first, "fires existing"), 0);
    assert_eq!(row(&first, "jobs created"), 365);
    let again = backfill(&project, &args).success().stdout();
    assert_eq!(row(&again, "fires created"), 0, "{again}");
    assert_eq!(row(&again, "fires existing"), 365);
    assert_eq!(row(&again, "jobs created"), 0);
    let per_fire = jobs_per_fire(&project, "DAILY");
    assert_eq!(per_fire.len(), 365);
    assert!(per_fire.values().all(|n| *n == 1));
    // The scheduler's own trigger ids, a fire's time in each.
    assert!(per_fire.contains_key("fire:daily:2025-01-01T05:30:00+00:00"));
    assert!(per_fire.contains_key("fire:daily:2025-12-31T05:30:00+00:00"));
}

#[test]
fn a_backfill_cut_short_is_resumed_by_running_it_again() {
    let project = project();
    backfill(
        &project,
        &[
            "daily",
            "--from",
            "2025-01-01T00:00:00Z",
            "--to",
            "2025-07-01T00:00:00Z",
            "--queue-only",
        ],
    )
    .success();
    // A dry run of the whole year: the first half exists, nothing is created.
    let dry = {
        let mut args = YEAR.to_vec();
        args.push("--dry-run");
        backfill(&project, &args).success().stdout()
    };
    assert_eq!(row(&dry, "fires planned"), 365, "{dry}");
    assert_eq!(row(&dry, "fires existing"), 181);
    assert_eq!(row(&dry, "fires to create"), 184);
    assert!(
        dry.contains("2025-06-30T05:30:00Z  window -             exists (1 job(s))"),
        "{dry}"
    );
    assert!(
        dry.contains("2025-07-01T05:30:00Z  window -             new"),
        "{dry}"
    );
    assert_eq!(jobs_per_fire(&project, "DAILY").len(), 181);
    let mut args = YEAR.to_vec();
    args.push("--queue-only");
    let resumed = backfill(&project, &args).success().stdout();
    assert_eq!(row(&resumed, "fires created"), 184, "{resumed}");
    assert_eq!(row(&resumed, "fires existing"), 181);
    let per_fire = jobs_per_fire(&project, "DAILY");
    assert_eq!(per_fire.len(), 365);
    assert!(per_fire.values().all(|n| *n == 1));
}

#[test]
fn a_killed_backfill_resumes_with_every_fire_once() {
    let project = project();
    // Five days of minutely fires: long enough to be killed after its first tenth.
    let args = [
        "backfill",
        "w.flow",
        "--schedule",
        "minutely",
        "--from",
        "2025-01-01T00:00:00Z",
        "--to",
        "2025-01-06T00:00:00Z",
        "--queue-only",
    ];
    let mut running = project.with_db(args).spawn();
    running.wait_for_line(Instant::now() + Duration::from_secs(60), |l| {
        l.contains("backfill minutely:")
    });
    running.kill().unwrap();
    running.wait_exit(Duration::from_secs(10));
    let done = jobs_per_fire(&project, "DAILY");
    assert!(
        !done.is_empty() && done.len() < 7200,
        "killed midway: {} fires",
        done.len()
    );
    let resumed = project.with_db(args).output().success().stdout();
    assert_eq!(row(&resumed, "fires planned"), 7200, "{resumed}");
    assert_eq!(
        row(&resumed, "fires created") + row(&resumed, "fires existing"),
        7200
    );
    assert!(row(&resumed, "fires existing") >= done.len(), "{resumed}");
    let per_fire = jobs_per_fire(&project, "DAILY");
    assert_eq!(per_fire.len(), 7200);
    assert!(per_fire.values().all(|n| *n == 1));
}

#[test]
fn a_backfill_runs_its_jobs_and_their_dependents() {
    let project = project();
    let out = backfill(
        &project,
        &[
            "daily",
            "--from",
            "2025-01-01T00:00:00Z",
            "--to",
            "2025-01-04T00:00:00Z",
        ],
    )
    .success()
    .stdout();
    assert_eq!(row(&out, "fires created"), 3, "{out}");
    assert!(
        out.contains("jobs (dependents included): 6 completed"),
        "{out}"
    );
    let summaries = jobs_per_fire(&project, "SUMMARY");
    assert_eq!(summaries.len(), 3, "each child carries its parent's fire");
}

#[test]
fn bad_ranges_and_names_exit_2() {
    let project = project();
    for (args, says) in [
        (
            vec![
                "daly",
                "--from",
                "2025-01-01T00:00:00Z",
                "--to",
                "2025-02-01T00:00:00Z",
            ],
            "did you mean daily?",
        ),
        (
            vec![
                "daily",
                "--from",
                "2025-02-01T00:00:00Z",
                "--to",
                "2025-01-01T00:00:00Z",
            ],
            "is not before",
        ),
        (
            vec![
                "daily",
                "--from",
                "2025-01-01T00:00:00Z",
                "--to",
                "2999-01-01T00:00:00Z",
            ],
            "after now",
        ),
        (
            vec![
                "daily",
                "--from",
                "yesterday",
                "--to",
                "2025-01-01T00:00:00Z",
            ],
            "--from",
        ),
        (
            vec![
                "minutely",
                "--from",
                "2000-01-01T00:00:00Z",
                "--to",
                "2025-01-01T00:00:00Z",
            ],
            "backfill it in parts",
        ),
    ] {
        let stderr = backfill(&project, &args).status(2).stderr();
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(jobs_per_fire(&project, "DAILY").is_empty());
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// In the library: a fire the scheduler made is skipped, and each backfilled fire's jobs
/// cover the window the scheduler would have given them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_the_scheduler_made_is_skipped_and_each_fire_has_its_window() {
    let project = project();
    let mut workflow = project.workflow("w.flow");
    workflow.schedules[0].window = Some(WindowSpec::Previous(Period::Day));
    let store: Arc<dyn Store> = Arc::new(
        SledStore::open(SledConfig {
            flush: false,
            ..SledConfig::new(project.db())
        })
        .unwrap(),
    );
    let engine = common::engine::engine(Arc::new(workflow), store.clone());
    let schedule = engine.workflow.schedules[0].clone();
    let now = utc("2025-03-01T00:00:00Z");
    let made = flowctl::scheduler::fire(&engine, &schedule, utc("2025-01-10T05:30:00Z"), now)
        .await
        .unwrap();
    let made = made.job_ids();
    let fires = flowctl::backfill::fire_times(
        &schedule,
        utc("2025-01-01T00:00:00Z"),
        utc("2025-02-01T00:00:00Z"),
        now,
    )
    .unwrap();
    assert_eq!(fires.len(), 31);
    let plan = flowctl::backfill::plan(&engine.workflow, store.as_ref(), &schedule, &fires)
        .await
        .unwrap();
    assert_eq!(plan[9].existing.as_ref(), Some(&made));
    assert_eq!(plan[9].window_labels(), "2025-01-09");
    assert_eq!(plan.iter().filter(|f| f.existing.is_some()).count(), 1);
    let summary = flowctl::backfill::run(&engine, &schedule, &fires, now, |_, _| {})
        .await
        .unwrap();
    assert_eq!((summary.fires_created, summary.fires_existing), (30, 1));
    for (i, id) in summary.job_ids.iter().enumerate() {
        let job = store.get(id).await.unwrap().unwrap();
        let day = if i < 9 { i + 1 } else { i + 2 };
        assert_eq!(
            job.trigger_id,
            format!("fire:daily:2025-01-{day:02}T05:30:00+00:00")
        );
        let window = job.request.window.expect("a window");
        let previous_day = utc(&format!("2025-01-{day:02}T00:00:00Z")) - chrono::TimeDelta::days(1);
        assert_eq!(window.label(), previous_day.format("%Y-%m-%d").to_string());
    }
}
