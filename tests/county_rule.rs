//! The county rule, one for every entry point (GRAMMAR.md, "The county rule"): a role is
//! county-scoped unless the workflow's config lists it in `all_counties`. Driven through the
//! real binary (`flowctl serve`, `run`, `check`).
//!
//! Before the fix (d645ff6) the rule was the name ADMIN, hard-coded: every workflow here lists
//! a role that is not ADMIN in `all_counties` and leaves ADMIN out, so each test fails there
//! (the config had no `all_counties` either, and such a workflow did not compile).

mod common;

use std::path::{Path, PathBuf};

use common::token::minted;
use common::{Flowctl, Project, Serve};
use serde_json::{json, Value};

const SECRET: &str = "county-rule-test-secret-0123456789abcdef";

/// Six cases in three counties, with a field to mask.
const CASES: &str = "case_id,county_id,ssn\n\
                     K1,C01,111-11-1111\nK2,C02,222-22-2222\nK3,C03,333-33-3333\n\
                     K4,C01,444-44-4444\nK5,C02,555-55-5555\nK6,C03,666-66-6666\n";

/// ADMIN is an ordinary county-scoped role here; STATE_AUDITOR sees every county. SUPERVISOR
/// and ADMIN have their `ssn` masked; CASE_WORKER, AUDITOR and STATE_AUDITOR have no mask rule.
const FLOW: &str = r#"
config {
  scheduler    off
  results      "results"
  poll_interval 1s
  all_counties STATE_AUDITOR
}

roles CASE_WORKER, SUPERVISOR, AUDITOR, ADMIN, STATE_AUDITOR

source cases {
  path          "cases.csv"
  county_column county_id
}

report CASES {
  source cases
  mask ssn redact for SUPERVISOR, ADMIN
}
"#;

/// A temporary directory holding `w.flow` (the text given) and `cases.csv`.
fn workdir(flow: &str) -> (Project, PathBuf) {
    let project = Project::new().flow("w.flow", flow).csv("cases.csv", CASES);
    let flow = project.join("w.flow");
    (project, flow)
}

fn serve(dir: &Path, flow: &Path) -> Serve {
    Serve::start(dir, flow, &dir.join("db"), SECRET)
}

fn token(role: &str, county: Option<&str>) -> String {
    minted(SECRET, role, county)
}

/// `POST /api/reports/generate` for CASES: the job id.
#[track_caller]
fn generate(server: &Serve, token: &str) -> String {
    let reply = server.post(
        "/api/reports/generate",
        token,
        &json!({"reportType": "CASES"}),
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    reply.json()["jobId"].as_str().unwrap().to_string()
}

/// The counties of a CSV result's rows (second column).
fn counties(csv: &str) -> Vec<String> {
    let mut counties: Vec<String> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    counties.sort();
    counties.dedup();
    counties
}

/// ADMIN is not in `all_counties`: its token without `countyId` is refused like any
/// county-scoped role's, on every endpoint, and no job is made.
#[test]
fn the_api_refuses_a_county_scoped_token_without_a_county() {
    let (dir, flow) = workdir(FLOW);
    let server = serve(dir.path(), &flow);
    for role in ["ADMIN", "CASE_WORKER"] {
        let bare = token(role, None);
        let reply = server.post(
            "/api/reports/generate",
            &bare,
            &json!({"reportType": "CASES"}),
        );
        assert_eq!(reply.status, 403, "{role}: {}", reply.text());
        assert!(reply.text().contains("countyId"), "{}", reply.text());
        let reply = server.get("/api/jobs", &bare);
        assert_eq!(reply.status, 403, "{role}: {}", reply.text());
    }
    // With a county, ADMIN is served, for that county only.
    let admin = token("ADMIN", Some("C02"));
    let job = server.wait_finished(&generate(&server, &admin), &admin);
    assert_eq!(
        (&job["status"], &job["countyId"]),
        (&json!("COMPLETED"), &json!("C02"))
    );
    let result = server.get(
        &format!("/api/jobs/{}/result", job["jobId"].as_str().unwrap()),
        &admin,
    );
    assert_eq!(result.status, 200, "{}", result.text());
    assert_eq!(counties(&result.text()), ["C02"]);
    let jobs = server
        .get("/api/jobs", &token("STATE_AUDITOR", None))
        .json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
}

/// STATE_AUDITOR, in `all_counties`, needs no `countyId`: its job runs for every county
/// (countyId null) and it sees every county's jobs; a county-scoped caller does not see its job.
#[test]
fn a_role_in_all_counties_sees_every_county_over_http() {
    let (dir, flow) = workdir(FLOW);
    let server = serve(dir.path(), &flow);
    let auditor = token("STATE_AUDITOR", None);
    let job = server.wait_finished(&generate(&server, &auditor), &auditor);
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(job["countyId"], Value::Null, "{job}");
    assert_eq!(job["rowsWritten"], 6, "{job}");
    let id = job["jobId"].as_str().unwrap();
    let result = server.get(&format!("/api/jobs/{id}/result"), &auditor);
    assert_eq!(result.status, 200, "{}", result.text());
    assert_eq!(counties(&result.text()), ["C01", "C02", "C03"]);

    let worker = token("CASE_WORKER", Some("C03"));
    let county_job = generate(&server, &worker);
    let listed = server.get("/api/jobs", &auditor).json();
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&id) && ids.contains(&county_job.as_str()),
        "{listed}"
    );
    assert_eq!(
        server
            .get(&format!("/api/jobs/{county_job}"), &auditor)
            .status,
        200
    );
    // The all-counties job is no county's: a county-scoped caller gets 404.
    assert_eq!(server.get(&format!("/api/jobs/{id}"), &worker).status, 404);
}

/// A CASE_WORKER result of C01 (ssn in clear) is refused to SUPERVISOR of C01 and to ADMIN of
/// C01, whose rules mask ssn, and served to AUDITOR of C01, which no rule of the report masks.
/// (Before the fix ADMIN was served every result and AUDITOR none but its own.)
#[test]
fn a_result_is_never_served_to_a_role_whose_rules_mask_it() {
    let (dir, flow) = workdir(FLOW);
    let server = serve(dir.path(), &flow);
    let worker = token("CASE_WORKER", Some("C01"));
    let id = generate(&server, &worker);
    assert_eq!(server.wait_finished(&id, &worker)["status"], "COMPLETED");
    let path = format!("/api/jobs/{id}/result");
    let own = server.get(&path, &worker);
    assert_eq!(own.status, 200, "{}", own.text());
    assert!(own.text().contains("111-11-1111"), "{}", own.text());
    for role in ["SUPERVISOR", "ADMIN"] {
        let reply = server.get(&path, &token(role, Some("C01")));
        assert_eq!(reply.status, 403, "{role}: {}", reply.text());
        assert!(!reply.text().contains("111-11-1111"));
    }
    let audit = server.get(&path, &token("AUDITOR", Some("C01")));
    assert_eq!(audit.status, 200, "{}", audit.text());
    assert_eq!(audit.body, own.body);
    // Another county's caller does not even see the job.
    assert_eq!(
        server.get(&path, &token("AUDITOR", Some("C02"))).status,
        404
    );
}

/// `after P run C as CASE_WORKER` where P ran as STATE_AUDITOR for every county: C has no
/// county to run for and fails closed, reading no row. (Before the fix it ran unfiltered and
/// handed CASE_WORKER every county's rows.)
#[test]
fn a_dependent_with_a_fixed_county_scoped_role_of_an_all_counties_parent_fails_closed() {
    let flow = r#"
config {
  results      "results"
  all_counties STATE_AUDITOR
}

roles CASE_WORKER, STATE_AUDITOR

source cases {
  path          "cases.csv"
  county_column county_id
}

report P { source cases }
report C { source cases }

after P run C as CASE_WORKER
"#;
    let (dir, flow) = workdir(flow);
    let db = dir.db();
    let run = dir
        .flowctl()
        .arg("run")
        .arg(&flow)
        .args(["--report", "P", "--role", "STATE_AUDITOR"])
        .db(&db)
        .output();
    assert_eq!(run.code(), 1, "{}\n{}", run.stdout(), run.stderr());
    let jobs = dir.jobs_json();
    let job = |report: &str| {
        jobs.iter()
            .find(|j| j["reportType"] == report)
            .unwrap_or_else(|| panic!("no {report} job: {jobs:?}"))
    };
    assert_eq!(job("P")["status"], "COMPLETED");
    let child = job("C");
    assert_eq!(child["status"], "FAILED", "{child}");
    assert_eq!(child["role"], "CASE_WORKER", "{child}");
    assert_eq!(child["countyId"], Value::Null, "{child}");
    assert!(
        child["error"]
            .as_str()
            .unwrap_or("")
            .contains("county-scoped"),
        "{child}"
    );
    assert_eq!(child["resultPath"], Value::Null, "{child}");
    let results = dir.path().join("results/C");
    let left: Vec<_> = std::fs::read_dir(&results)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "files in {}: {left:?}", results.display());
}

/// A schedule for a county-scoped role must list its counties: `check` fails with E021 and
/// `serve` refuses to start; with `counties` both accept the file.
#[test]
fn a_schedule_for_a_county_scoped_role_needs_counties() {
    let bad = format!(
        "{FLOW}\nschedule nightly {{\n  cron  \"0 0 3 * * ?\"\n  run   CASES\n  roles STATE_AUDITOR, ADMIN\n}}\n"
    );
    let (dir, flow) = workdir(&bad);
    let check = Flowctl::new().arg("check").arg(&flow).output().status(1);
    let said = format!("{}{}", check.stdout(), check.stderr());
    assert!(said.contains("E021"), "{said}");
    assert!(said.contains("ADMIN"), "{said}");
    let serve = dir
        .flowctl()
        .env("FLOWCTL_JWT_SECRET", SECRET)
        .arg("serve")
        .arg(&flow)
        .args(["--listen", "127.0.0.1:0"])
        .db(dir.db())
        .output()
        .status(1);
    assert!(serve.stderr().contains("E021"), "{}", serve.stderr());
    assert!(
        !serve.stderr().contains("listening on"),
        "{}",
        serve.stderr()
    );

    let good = bad.replace(
        "roles STATE_AUDITOR, ADMIN",
        "roles STATE_AUDITOR, ADMIN\n  counties \"C01\", \"C02\"",
    );
    dir.write("w.flow", good);
    Flowctl::new().arg("check").arg(&flow).output().success();
}
