//! The bundled workflow as a newcomer runs it: `workflows/reports.flow` on the sample case
//! database, through the real binary. Each report covers its own period, summaries are real
//! aggregates of that period, and masking and the county rule hold on query results.
//!
//! The expected figures are computed here with SQLite from the same database file, so the
//! tests hold whatever the generator's data.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::Project;

/// The bundled project, copied to a temporary directory.
fn bundle() -> Project {
    Project::new().bundled("workflows")
}

fn db(project: &Project) -> rusqlite::Connection {
    rusqlite::Connection::open(project.path().join("workflows/data/cases.sqlite"))
        .expect("the sample database opens")
}

/// Cases opened or closed in `[start, end)` (local dates), optionally in one county.
fn activity(project: &Project, start: &str, end: &str, county: Option<&str>) -> u64 {
    db(project)
        .query_row(
            "SELECT count(*) FROM cases
              WHERE ((opened_on >= ?1 AND opened_on < ?2) OR (closed_on >= ?1 AND closed_on < ?2))
                AND (?3 IS NULL OR county_id = ?3)",
            rusqlite::params![start, end, county],
            |row| row.get::<_, i64>(0),
        )
        .expect("the count query runs") as u64
}

fn jobs(project: &Project) -> Vec<serde_json::Value> {
    project.jobs_json()
}

fn of<'a>(jobs: &'a [serde_json::Value], report: &str, role: &str) -> Vec<&'a serde_json::Value> {
    jobs.iter()
        .filter(|j| j["reportType"] == report && j["role"] == role)
        .collect()
}

fn result(project: &Project, job: &serde_json::Value) -> PathBuf {
    let path = job["resultPath"]
        .as_str()
        .expect("a completed job names its result");
    project.path().join(path)
}

fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).expect("the result is CSV");
    let header = reader
        .headers()
        .expect("a header")
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.expect("a record").iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("the result is text")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[test]
fn the_first_command_runs_every_schedule_and_every_job_completes() {
    let project = bundle();
    let run = project.run(["workflows/reports.flow"]).success();
    assert!(run.stdout().contains("jobs completed"), "{}", run.stdout());
    let jobs = jobs(&project);
    assert!(jobs.len() > 90, "{} jobs", jobs.len());
    for j in &jobs {
        assert_eq!(j["status"], "COMPLETED", "{j}");
        // Every report of the bundle reads its period: its result sits under the period's label.
        let window = &j["request"]["window"];
        let label = window["label"].as_str().unwrap_or_default();
        let path = j["resultPath"].as_str().unwrap_or_default();
        if j["reportType"] == "COUNTY_REPORT" {
            assert!(window.is_null(), "the county sweep is a snapshot: {j}");
        } else {
            assert!(!label.is_empty(), "{j}");
            assert!(path.contains(&format!("/{label}/")), "{path} for {label}");
        }
    }
}

#[test]
fn a_daily_report_covers_its_day_and_its_summary_aggregates_that_day() {
    let project = bundle();
    project
        .run([
            "workflows/reports.flow",
            "--report",
            "DAILY_REPORT",
            "--role",
            "ADMIN",
            "--period",
            "2026-11-30",
        ])
        .success();
    let jobs = jobs(&project);
    let daily = of(&jobs, "DAILY_REPORT", "ADMIN");
    assert_eq!(daily.len(), 1);
    let daily = daily[0];
    assert_eq!(daily["request"]["window"]["label"], "2026-11-30");
    assert!(daily["resultPath"]
        .as_str()
        .unwrap()
        .starts_with("results/DAILY_REPORT/2026-11-30/"));
    let want = activity(&project, "2026-11-30", "2026-12-01", None);
    assert!(want > 0, "the sample data has activity on 2026-11-30");
    assert_eq!(daily["rowsWritten"], want);
    let (header, rows) = csv_rows(&result(&project, daily));
    let opened = header.iter().position(|h| h == "opened_on").unwrap();
    let closed = header.iter().position(|h| h == "closed_on").unwrap();
    for r in &rows {
        assert!(
            r[opened] == "2026-11-30" || r[closed] == "2026-11-30",
            "a row outside the day: {r:?}"
        );
    }

    // The summary covers its parent's day, with the same cases counted by county and status,
    // written as JSON numbers.
    let summary = of(&jobs, "DAILY_SUMMARY", "ADMIN");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["request"]["window"], daily["request"]["window"]);
    let lines = jsonl(&result(&project, summary[0]));
    assert!(!lines.is_empty());
    let mut by_county: BTreeMap<String, u64> = BTreeMap::new();
    for line in &lines {
        assert!(line["cases"].is_u64(), "counts are numbers: {line}");
        assert!(line["benefit_total"].is_number(), "{line}");
        *by_county
            .entry(line["county_id"].as_str().unwrap().to_string())
            .or_default() += line["cases"].as_u64().unwrap();
    }
    assert_eq!(by_county.values().sum::<u64>(), want);
    for (county, cases) in &by_county {
        assert_eq!(
            *cases,
            activity(&project, "2026-11-30", "2026-12-01", Some(county)),
            "{county}"
        );
    }
}

#[test]
fn daily_and_yearly_reports_differ_by_their_periods() {
    let project = bundle();
    for (report, period) in [("DAILY_REPORT", "2026-11-30"), ("YEARLY_REPORT", "2025")] {
        project
            .run([
                "workflows/reports.flow",
                "--report",
                report,
                "--role",
                "ADMIN",
                "--period",
                period,
            ])
            .success();
    }
    let jobs = jobs(&project);
    let daily = of(&jobs, "DAILY_REPORT", "ADMIN")[0];
    let yearly = of(&jobs, "YEARLY_REPORT", "ADMIN")[0];
    assert_eq!(
        yearly["rowsWritten"],
        activity(&project, "2025-01-01", "2026-01-01", None)
    );
    assert_ne!(daily["resultSha256"], yearly["resultSha256"]);
    assert!(yearly["rowsWritten"].as_u64() > daily["rowsWritten"].as_u64());
}

#[test]
fn a_county_scoped_run_of_the_bundle_sees_its_county_masked() {
    let project = bundle();
    project
        .run([
            "workflows/reports.flow",
            "--report",
            "DAILY_REPORT",
            "--role",
            "CASE_WORKER",
            "--county",
            "C02",
            "--period",
            "2026-11-30",
        ])
        .success();
    let jobs = jobs(&project);
    assert!(!jobs.is_empty());
    for j in &jobs {
        assert_eq!(j["status"], "COMPLETED", "{j}");
        assert_eq!(j["countyId"], "C02", "{j}");
    }
    let daily = of(&jobs, "DAILY_REPORT", "CASE_WORKER")[0];
    assert_eq!(
        daily["rowsWritten"],
        activity(&project, "2026-11-30", "2026-12-01", Some("C02"))
    );
    let (header, rows) = csv_rows(&result(&project, daily));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for r in &rows {
        assert_eq!(r[col("county_id")], "C02");
        assert_eq!(r[col("client_name")], "****");
        assert_eq!(r[col("date_of_birth")], "****");
        assert!(r[col("ssn")].starts_with("****"), "{r:?}");
    }
}

#[test]
fn an_unknown_or_ill_typed_parameter_is_refused_with_its_name() {
    let project = bundle();
    for (pair, code_word) in [("statu=OPEN", "statu"), ("status=MAYBE", "status")] {
        let run = project
            .flowctl()
            .args([
                "run",
                "workflows/reports.flow",
                "--report",
                "DAILY_REPORT",
                "--role",
                "ADMIN",
                "--param",
                pair,
            ])
            .db(project.db())
            .output();
        assert_eq!(run.code(), 2, "{pair}: {}", run.stderr());
        assert!(run.stderr().contains(code_word), "{}", run.stderr());
    }
    assert!(
        jobs(&project).is_empty(),
        "a refused parameter creates no job"
    );

    project
        .run([
            "workflows/reports.flow",
            "--report",
            "DAILY_REPORT",
            "--role",
            "ADMIN",
            "--period",
            "2026-11-30",
            "--param",
            "status=CLOSED",
        ])
        .success();
    let jobs = jobs(&project);
    let daily = of(&jobs, "DAILY_REPORT", "ADMIN")[0];
    assert_eq!(daily["request"]["params"]["status"]["string"], "CLOSED");
    let (header, rows) = csv_rows(&result(&project, daily));
    let status = header.iter().position(|h| h == "case_status").unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r[status] == "CLOSED"));
}
