//! Behaviour tests of `flowctl run` and `flowctl jobs`, driving the real
//! binary. Every test works in its own temporary directory (a copy of
//! `workflows/`, or a generated workflow and data) with `--db <tmp>/db`, so
//! the tests run in parallel.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{data, files_under, sha256_hex, Project};
use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A job as `flowctl jobs list --json` prints it (the HTTP API's camelCase names).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobView {
    job_id: String,
    status: String,
    report_type: String,
    role: String,
    county_id: Option<String>,
    parent_job_ids: Vec<String>,
    trigger_id: String,
    result_path: Option<String>,
    rows_written: u64,
    result_sha256: Option<String>,
    error: Option<String>,
    attempt: u32,
    version: u64,
}

/// The jobs of a project's store, as [`JobView`]s, and their results.
trait Jobs {
    /// Every job in the store.
    fn jobs(&self) -> Vec<JobView>;

    /// A job's result path, resolved against the project (paths are relative
    /// to the directory `flowctl run` ran in).
    fn result_file(&self, job: &JobView) -> PathBuf;

    /// Checks that a completed job's result file is whole: it exists, has
    /// the recorded number of data rows and the recorded SHA-256.
    fn assert_result_whole(&self, job: &JobView);
}

impl Jobs for Project {
    fn jobs(&self) -> Vec<JobView> {
        self.jobs_json()
            .into_iter()
            .map(|v| serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}")))
            .collect()
    }

    fn result_file(&self, job: &JobView) -> PathBuf {
        let p = PathBuf::from(job.result_path.as_deref().expect("a result path"));
        if p.is_absolute() {
            p
        } else {
            self.join(p)
        }
    }

    #[track_caller]
    fn assert_result_whole(&self, job: &JobView) {
        assert_eq!(job.status, "COMPLETED", "{job:?}");
        let path = self.result_file(job);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("result of {} at {}: {e}", job.job_id, path.display()));
        assert_eq!(
            job.result_sha256.as_deref(),
            Some(sha256_hex(&bytes).as_str()),
            "SHA-256 of {}",
            path.display()
        );
        assert_eq!(
            data_rows(&path, &bytes),
            job.rows_written,
            "rows of {}",
            path.display()
        );
    }
}

/// Data rows of a result: CSV records after the header, or JSON objects.
fn data_rows(path: &Path, bytes: &[u8]) -> u64 {
    if path.extension().is_some_and(|e| e == "jsonl") {
        let text = std::str::from_utf8(bytes).expect("JSONL is UTF-8");
        let mut n = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert!(v.is_object(), "{line}");
            n += 1;
        }
        n
    } else {
        csv::Reader::from_reader(bytes).byte_records().count() as u64
    }
}

/// CSV records of a file, header first.
fn read_csv(path: &Path) -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = r.headers().unwrap().clone();
    let rows = r.records().map(|r| r.unwrap()).collect();
    (header, rows)
}

/// Whether `text` holds something shaped like a full SSN, `\d{3}-\d{2}-\d{4}`.
fn has_full_ssn(text: &[u8]) -> bool {
    const SHAPE: &[u8] = b"ddd-dd-dddd";
    text.windows(SHAPE.len()).any(|w| {
        w.iter().zip(SHAPE).all(|(b, s)| match s {
            b'd' => b.is_ascii_digit(),
            _ => b == s,
        })
    })
}

fn is_temp(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().contains(".tmp-"))
}

fn by_id(jobs: &[JobView]) -> HashMap<&str, &JobView> {
    jobs.iter().map(|j| (j.job_id.as_str(), j)).collect()
}

/// The one job of `report` (and `role`), panicking if there is not exactly one.
#[track_caller]
fn only<'a>(jobs: &'a [JobView], report: &str, role: Option<&str>) -> &'a JobView {
    let found: Vec<&JobView> = jobs
        .iter()
        .filter(|j| j.report_type == report && role.is_none_or(|r| j.role == r))
        .collect();
    assert_eq!(found.len(), 1, "jobs of {report} {role:?}: {found:#?}");
    found[0]
}

/// The parents of `job` as (report type, role) pairs, sorted.
fn parent_kinds(job: &JobView, ids: &HashMap<&str, &JobView>) -> Vec<(String, String)> {
    let mut kinds: Vec<(String, String)> = job
        .parent_job_ids
        .iter()
        .map(|p| {
            let parent = ids
                .get(p.as_str())
                .unwrap_or_else(|| panic!("{} names unknown parent {p}", job.job_id));
            (parent.report_type.clone(), parent.role.clone())
        })
        .collect();
    kinds.sort();
    kinds
}

fn kinds(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// 1. The bundled workflow

#[test]
fn bundled_workflow_runs_every_schedule_and_its_whole_cascade() {
    let sb = Project::new().csv_workflow("workflows");
    let run = sb.run(["workflows/reports.flow"]).success();
    assert!(
        run.stdout().contains("94 of 94 jobs completed"),
        "{}",
        run.stdout()
    );

    let raw = sb.jobs_json();
    for key in [
        "jobId",
        "reportType",
        "countyId",
        "parentJobIds",
        "triggerId",
        "resultPath",
        "rowsWritten",
        "resultSha256",
    ] {
        assert!(raw[0].get(key).is_some(), "no {key} in {}", raw[0]);
    }
    let jobs = sb.jobs();
    assert_eq!(jobs.len(), 94, "{jobs:#?}");
    for j in &jobs {
        assert_eq!(j.status, "COMPLETED", "{j:?}");
        assert_eq!(j.attempt, 1, "{j:?}");
    }
    let triggers: BTreeSet<&str> = jobs.iter().map(|j| j.trigger_id.as_str()).collect();
    assert_eq!(triggers.len(), 1, "one cascade, one trigger: {triggers:?}");

    // Which jobs, as which roles and counties.
    let mut made: BTreeMap<(&str, &str, Option<&str>), usize> = BTreeMap::new();
    for j in &jobs {
        *made
            .entry((
                j.report_type.as_str(),
                j.role.as_str(),
                j.county_id.as_deref(),
            ))
            .or_default() += 1;
    }
    let (cw, sup, admin) = ("CASE_WORKER", "SUPERVISOR", "ADMIN");
    // ADMIN (in `all_counties`) runs once for every county; the county-scoped roles run
    // once per county their schedules name.
    let counties = ["C01", "C02", "C03", "C04", "C05", "C06"];
    let mut want: BTreeMap<(&str, &str, Option<&str>), usize> = BTreeMap::new();
    for report in [
        "DAILY_REPORT",
        "WEEKLY_REPORT",
        "DAILY_SUMMARY",
        "AUDIT_LOG",
        "WEEKLY_DIGEST",
    ] {
        want.insert((report, admin, None), 1);
        for role in [cw, sup] {
            for c in counties {
                want.insert((report, role, Some(c)), 1);
            }
        }
    }
    for report in ["MONTHLY_REPORT", "MONTHLY_SUMMARY"] {
        want.insert((report, admin, None), 1);
        for c in counties {
            want.insert((report, sup, Some(c)), 1);
        }
    }
    for c in counties {
        want.insert(("SUPERVISOR_REVIEW", sup, Some(c)), 1);
    }
    want.insert(("QUARTERLY_REPORT", admin, None), 1);
    want.insert(("YEARLY_REPORT", admin, None), 1);
    // `by ADMIN`: one brief, after ADMIN's summary only.
    want.insert(("EXECUTIVE_BRIEF", admin, None), 1);
    for c in counties {
        want.insert(("COUNTY_REPORT", admin, Some(c)), 1);
    }
    assert_eq!(made, want);

    // Parents.
    let ids = by_id(&jobs);
    let roots = [
        "DAILY_REPORT",
        "WEEKLY_REPORT",
        "MONTHLY_REPORT",
        "QUARTERLY_REPORT",
        "YEARLY_REPORT",
        "COUNTY_REPORT",
    ];
    for j in &jobs {
        let parents = parent_kinds(j, &ids);
        let role = j.role.as_str();
        let expected = match j.report_type.as_str() {
            r if roots.contains(&r) => vec![],
            "DAILY_SUMMARY" | "AUDIT_LOG" | "SUPERVISOR_REVIEW" => kinds(&[("DAILY_REPORT", role)]),
            "WEEKLY_DIGEST" => kinds(&[("DAILY_SUMMARY", role), ("WEEKLY_REPORT", role)]),
            "MONTHLY_SUMMARY" => kinds(&[("MONTHLY_REPORT", role)]),
            "EXECUTIVE_BRIEF" => {
                assert_eq!(j.parent_job_ids.len(), 1, "{j:?}");
                parents.clone()
            }
            other => panic!("unexpected report {other}"),
        };
        assert_eq!(parents, expected, "parents of {j:?}");
    }
    // The brief (fixed role ADMIN, `by ADMIN`) follows the ADMIN summary only.
    let mut brief_parents: Vec<(String, String)> = jobs
        .iter()
        .filter(|j| j.report_type == "EXECUTIVE_BRIEF")
        .flat_map(|j| parent_kinds(j, &ids))
        .collect();
    brief_parents.sort();
    assert_eq!(brief_parents, kinds(&[("MONTHLY_SUMMARY", admin)]));
    // Every job is the parent of at most one job of each child type.
    let mut child_of: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for j in &jobs {
        for p in &j.parent_job_ids {
            *child_of
                .entry((p.as_str(), j.report_type.as_str()))
                .or_default() += 1;
        }
    }
    assert!(child_of.values().all(|n| *n == 1), "{child_of:?}");

    // Results: whole, with every row (county reports split the 12,000 rows).
    for j in &jobs {
        sb.assert_result_whole(j);
        if j.county_id.is_none() {
            assert_eq!(j.rows_written, 12_000, "{j:?}");
        }
        let ext = if [
            "COUNTY_REPORT",
            "DAILY_SUMMARY",
            "EXECUTIVE_BRIEF",
            "AUDIT_LOG",
        ]
        .contains(&j.report_type.as_str())
        {
            "jsonl"
        } else {
            "csv"
        };
        let path = sb.result_file(j);
        assert_eq!(
            path,
            sb.path()
                .join("results")
                .join(&j.report_type)
                .join(format!("{}.{ext}", j.job_id))
        );
    }
    let (_, source) = read_csv(&sb.path().join("workflows/data/cases.csv"));
    for c in counties {
        let want = source.iter().filter(|r| &r[1] == c).count() as u64;
        let job = jobs
            .iter()
            .find(|j| j.county_id.as_deref() == Some(c))
            .unwrap();
        assert_eq!(job.rows_written, want, "{c}");
    }
    let leftovers: Vec<PathBuf> = files_under(&sb.path().join("results"))
        .into_iter()
        .filter(|p| is_temp(p))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. Masking and the county filter

#[test]
fn masking_and_county_filter_follow_the_principal() {
    let sb = Project::new().csv_workflow("workflows");
    let (header, source) = read_csv(&sb.path().join("workflows/data/cases.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (case_id, county, name, ssn, dob) = (
        col("case_id"),
        col("county_id"),
        col("client_name"),
        col("ssn"),
        col("date_of_birth"),
    );
    let by_case: HashMap<&str, &csv::StringRecord> =
        source.iter().map(|r| (&r[case_id], r)).collect();
    assert_eq!(source.len(), 12_000);

    // CASE_WORKER in C02: only C02 rows, no full SSN anywhere, redacted name and birth date.
    sb.run([
        "workflows/reports.flow",
        "--report",
        "DAILY_REPORT",
        "--role",
        "CASE_WORKER",
        "--county",
        "C02",
    ])
    .success();
    let jobs = sb.jobs();
    // The dependents inherit the principal: same role, same county, same masking.
    assert_eq!(jobs.len(), 3, "{jobs:#?}");
    for j in &jobs {
        assert_eq!(j.status, "COMPLETED", "{j:?}");
        assert_eq!(
            (j.role.as_str(), j.county_id.as_deref()),
            ("CASE_WORKER", Some("C02"))
        );
        sb.assert_result_whole(j);
        let bytes = std::fs::read(sb.result_file(j)).unwrap();
        assert!(!has_full_ssn(&bytes), "{} holds a full SSN", j.report_type);
    }
    let daily = only(&jobs, "DAILY_REPORT", None);
    let (out_header, rows) = read_csv(&sb.result_file(daily));
    assert_eq!(out_header, header);
    let c02 = source.iter().filter(|r| &r[county] == "C02").count();
    assert!(c02 > 0);
    assert_eq!(rows.len(), c02);
    assert_eq!(daily.rows_written, c02 as u64);
    for r in &rows {
        let orig = by_case[&r[case_id]];
        assert_eq!(&r[county], "C02");
        assert_eq!(&r[name], "****");
        assert_eq!(&r[dob], "****");
        let masked = &r[ssn];
        assert_eq!(masked.len(), 8, "{masked}");
        assert!(masked.starts_with("****"), "{masked}");
        assert!(masked[4..].bytes().all(|b| b.is_ascii_digit()), "{masked}");
        assert_eq!(&masked[4..], &orig[ssn][orig[ssn].len() - 4..]);
        // Unmasked columns pass through.
        assert_eq!(&r[col("benefit_amount")], &orig[col("benefit_amount")]);
    }
    // The JSONL dependents of the same run hold only C02 rows too.
    for report in ["DAILY_SUMMARY", "AUDIT_LOG"] {
        let j = only(&jobs, report, None);
        let text = std::fs::read_to_string(sb.result_file(j)).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["county_id"], "C02", "{line}");
            assert_eq!(v["client_name"], "****", "{line}");
        }
    }

    // SUPERVISOR in C04: names and birth dates in clear, SSN last 4 only.
    sb.run([
        "workflows/reports.flow",
        "--report",
        "DAILY_REPORT",
        "--role",
        "SUPERVISOR",
        "--county",
        "C04",
    ])
    .success();
    let jobs = sb.jobs();
    let daily = only(&jobs, "DAILY_REPORT", Some("SUPERVISOR"));
    assert_eq!(daily.county_id.as_deref(), Some("C04"));
    let bytes = std::fs::read(sb.result_file(daily)).unwrap();
    assert!(!has_full_ssn(&bytes));
    let (_, rows) = read_csv(&sb.result_file(daily));
    let c04 = source.iter().filter(|r| &r[county] == "C04").count();
    assert_eq!(rows.len(), c04);
    for r in &rows {
        assert_eq!(&r[county], "C04");
        let orig = by_case[&r[case_id]];
        assert_eq!(&r[name], &orig[name]);
        assert_eq!(&r[dob], &orig[dob]);
        assert_eq!(r[ssn].to_string(), format!("****{}", &orig[ssn][7..]));
    }

    // ADMIN, every county: all 12,000 rows in clear.
    sb.run([
        "workflows/reports.flow",
        "--report",
        "DAILY_REPORT",
        "--role",
        "ADMIN",
    ])
    .success();
    let jobs = sb.jobs();
    let daily = only(&jobs, "DAILY_REPORT", Some("ADMIN"));
    let (_, rows) = read_csv(&sb.result_file(daily));
    assert_eq!(rows, source, "ADMIN sees the source as it is");
    assert_eq!(daily.rows_written, 12_000);
}

// ---------------------------------------------------------------------------------------------
// 3. Crash and resume

/// Twelve reports over one large source: four roots, a chain of four, a
/// join, a chain after the join, a join of the two chains, and two
/// dependents of one root (one `on completion`).
const CRASH_FLOW: &str = r#"
config {
  worker_pool_size  2
  max_jobs_per_poll 2
  poll_interval     100ms
  all_counties      ADMIN
}

roles ADMIN

source big {
  path          "data/big.csv"
  county_column county_id
}

report A {
  source     big
  chunk_size 500
  retries    1
}
report B {
  source     big
  chunk_size 500
  retries    1
}
report C {
  source     big
  chunk_size 500
  retries    1
}
report D {
  source     big
  chunk_size 500
  retries    1
}
report A1 {
  source     big
  chunk_size 500
  retries    1
}
report A2 {
  source     big
  chunk_size 500
  retries    1
}
report A3 {
  source     big
  chunk_size 500
  retries    1
}
report J {
  source     big
  chunk_size 500
  retries    1
}
report J1 {
  source     big
  chunk_size 500
  retries    1
}
report FINAL {
  source     big
  chunk_size 500
  retries    1
}
report D1 {
  source     big
  chunk_size 500
  retries    1
}
report D2 {
  source     big
  format     jsonl
  chunk_size 500
  retries    1
}

schedule nightly {
  cron  "0 0 1 * * ?"
  run   A, B, C, D
  roles ADMIN
}

after A run A1
after A1 run A2
after A2 run A3
after B, C run J
after J run J1
after A3, J1 run FINAL
after D run D1
after D on completion run D2
"#;

#[test]
fn killed_run_resumes_without_duplicates_or_partial_results() {
    let sb = Project::new();
    let flow = sb.write("crash.flow", CRASH_FLOW);
    sb.write("data/big.csv", data::cases(20_000));
    let results = sb.path().join("results");

    let mut child = sb
        .with_db([std::ffi::OsStr::new("run"), flow.as_os_str()])
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a result is done while another is being written.
    let deadline = Instant::now() + Duration::from_secs(60);
    let temps_at_kill = loop {
        let files = files_under(&results);
        let done = files.iter().filter(|p| !is_temp(p)).count();
        let temps = files.iter().filter(|p| is_temp(p)).count();
        if done >= 1 && temps >= 1 {
            break temps;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("flowctl ended before it could be killed: {status}");
        }
        assert!(Instant::now() < deadline, "no result appeared in time");
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal, not exited");

    // The store shows the interruption: not everything finished.
    let before = sb.jobs();
    let unfinished: Vec<&JobView> = before
        .iter()
        .filter(|j| j.status == "QUEUED" || j.status == "PROCESSING")
        .collect();
    assert!(
        !unfinished.is_empty() || before.len() < 12,
        "the kill came too late: {before:#?}"
    );
    let processing: Vec<String> = before
        .iter()
        .filter(|j| j.status == "PROCESSING")
        .map(|j| j.job_id.clone())
        .collect();
    eprintln!(
        "killed with {} job(s) in the store, {} PROCESSING, {} temporary file(s)",
        before.len(),
        processing.len(),
        temps_at_kill
    );

    let resumed = sb
        .with_db([
            std::ffi::OsStr::new("run"),
            flow.as_os_str(),
            std::ffi::OsStr::new("--resume"),
        ])
        .output()
        .success();
    if !processing.is_empty() {
        assert!(
            resumed.stderr().contains(&format!(
                "recovered {} job(s) left running",
                processing.len()
            )),
            "{}",
            resumed.stderr()
        );
    }

    let jobs = sb.jobs();
    // Every report ran exactly once in its scope, and completed.
    let mut per_kind: BTreeMap<(String, String, Option<String>), usize> = BTreeMap::new();
    for j in &jobs {
        assert_eq!(j.status, "COMPLETED", "{j:?}");
        *per_kind
            .entry((j.report_type.clone(), j.role.clone(), j.county_id.clone()))
            .or_default() += 1;
    }
    let reports = [
        "A", "B", "C", "D", "A1", "A2", "A3", "J", "J1", "FINAL", "D1", "D2",
    ];
    let want: BTreeMap<(String, String, Option<String>), usize> = reports
        .iter()
        .map(|r| ((r.to_string(), "ADMIN".to_string(), None), 1))
        .collect();
    assert_eq!(per_kind, want, "{jobs:#?}");
    let triggers: BTreeSet<&str> = jobs.iter().map(|j| j.trigger_id.as_str()).collect();
    assert_eq!(triggers.len(), 1);

    // Jobs that were running when the process died were taken back, same id.
    let ids = by_id(&jobs);
    for id in &processing {
        let j = ids[id.as_str()];
        assert_eq!(j.attempt, 2, "{j:?}");
    }

    // Each dependency fired exactly once, with the right parents.
    let expected_parents: &[(&str, &[&str])] = &[
        ("A", &[]),
        ("B", &[]),
        ("C", &[]),
        ("D", &[]),
        ("A1", &["A"]),
        ("A2", &["A1"]),
        ("A3", &["A2"]),
        ("J", &["B", "C"]),
        ("J1", &["J"]),
        ("FINAL", &["A3", "J1"]),
        ("D1", &["D"]),
        ("D2", &["D"]),
    ];
    for (report, parents) in expected_parents {
        let j = only(&jobs, report, None);
        let got = parent_kinds(j, &ids);
        let want: Vec<(String, String)> = parents
            .iter()
            .map(|p| (p.to_string(), "ADMIN".to_string()))
            .collect();
        assert_eq!(got, kinds_sorted(want), "parents of {report}");
    }

    // Every result whole; nothing else in the results tree: no temporary
    // file, no result of a lost attempt.
    for j in &jobs {
        sb.assert_result_whole(j);
        assert_eq!(j.rows_written, 20_000);
    }
    let recorded: BTreeSet<PathBuf> = jobs.iter().map(|j| sb.result_file(j)).collect();
    let on_disk: BTreeSet<PathBuf> = files_under(&results).into_iter().collect();
    assert_eq!(
        on_disk, recorded,
        "temporary files at the kill: {temps_at_kill}"
    );
}

fn kinds_sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

/// A job left PROCESSING by a dead process whose report has no retries is
/// failed by `run --resume` ("lease ... expired on attempt 1 of 1"), yet
/// the resumed run says "nothing to resume" and exits 0.
#[test]
fn resume_exit_status_reflects_jobs_recovered_from_a_crash() {
    let sb = Project::new();
    let flow = sb.write(
        "w.flow",
        "config {\n  all_counties ADMIN\n}\nroles ADMIN\nsource s {\n  path \"data/s.csv\"\n}\nreport R {\n  source s\n}\n",
    );
    sb.write("data/s.csv", data::cases(10));
    // A run that dies while R is PROCESSING: claim it through the library,
    // then close the store without finishing the job.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use flowctl::store::{SledConfig, SledStore, Store};
        let store = SledStore::open(SledConfig::new(sb.db())).unwrap();
        let job = flowctl::job::NewJob::new("R", flowctl::job::Principal::system("ADMIN"), "t");
        store
            .enqueue(vec![job], None, chrono::Utc::now())
            .await
            .unwrap();
        let claimed = store
            .claim(
                "dead-worker",
                1,
                Duration::from_secs(30),
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
    });
    drop(runtime);

    let resumed = sb
        .with_db([
            std::ffi::OsStr::new("run"),
            flow.as_os_str(),
            std::ffi::OsStr::new("--resume"),
        ])
        .output();
    let jobs = sb.jobs();
    assert_eq!(jobs.len(), 1);
    let all_completed = jobs.iter().all(|j| j.status == "COMPLETED");
    assert_eq!(
        resumed.code(),
        if all_completed { 0 } else { 1 },
        "jobs: {jobs:#?}\nstdout:\n{}\nstderr:\n{}",
        resumed.stdout(),
        resumed.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Failure

const FAILURE_FLOW: &str = r#"
config {
  all_counties ADMIN
}
roles ADMIN

source bad {
  path          "data/bad.csv"
  county_column county_id
}
source good {
  path          "data/good.csv"
  county_column county_id
}

report IMPORT {
  source     bad
  chunk_size 100
}
report AUDIT {
  source good
  format jsonl
}
report SUMMARY {
  source good
}

after IMPORT on completion run AUDIT
after IMPORT on success run SUMMARY
"#;

/// `rows` data rows; data row `bad_row` (1-based) has one field too many.
fn cases_with_bad_row(rows: usize, bad_row: usize) -> String {
    let mut s = String::from("case_id,county_id,client_name,ssn\n");
    for i in 1..=rows {
        if i == bad_row {
            s.push_str(&format!("CASE-{i},C01,Fake Name,900-00-0000,EXTRA\n"));
        } else {
            s.push_str(&format!("CASE-{i},C01,Fake Name,900-00-{i:04}\n"));
        }
    }
    s
}

fn failure_sandbox() -> Project {
    let sb = Project::new();
    sb.write("w.flow", FAILURE_FLOW);
    // Data row 501 is line 502 of the file.
    sb.write("data/bad.csv", cases_with_bad_row(1000, 501));
    sb.write(
        "data/good.csv",
        "case_id,county_id\nCASE-1,C01\nCASE-2,C02\n",
    );
    sb
}

#[test]
fn malformed_source_row_fails_the_job_and_runs_only_on_completion_dependents() {
    let sb = failure_sandbox();
    let run = sb.run(["w.flow", "--report", "IMPORT"]).status(1);
    assert!(run.stdout().contains("FAILED"), "{}", run.stdout());

    let jobs = sb.jobs();
    let import = only(&jobs, "IMPORT", None);
    assert_eq!(import.status, "FAILED");
    let error = import.error.as_deref().unwrap_or_default();
    assert!(error.contains("bad.csv:502"), "file and line: {error}");
    assert_eq!(import.result_path, None);
    assert_eq!(import.result_sha256, None);

    // `on completion` ran after the failure; `on success` did not.
    let audit = only(&jobs, "AUDIT", None);
    assert_eq!(audit.status, "COMPLETED");
    assert_eq!(audit.parent_job_ids, vec![import.job_id.clone()]);
    assert_eq!(audit.trigger_id, import.trigger_id);
    sb.assert_result_whole(audit);
    assert_eq!(audit.rows_written, 2);
    assert!(jobs.iter().all(|j| j.report_type != "SUMMARY"), "{jobs:#?}");
    assert_eq!(jobs.len(), 2);

    // Nothing of the failed job on disk.
    let import_files = files_under(&sb.path().join("results/IMPORT"));
    assert!(import_files.is_empty(), "{import_files:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. Retry, then success

#[test]
fn an_unreadable_source_is_retried_with_backoff_until_it_can_be_read() {
    let sb = Project::new();
    // A directory where the file should be: reading it is an I/O error, which may pass.
    std::fs::create_dir_all(sb.path().join("data/late.csv")).unwrap();
    let flow = sb.write(
        "w.flow",
        r#"
config {
  poll_interval 100ms
  all_counties  ADMIN
}
roles ADMIN
source late {
  path          "data/late.csv"
  county_column county_id
}
report LATE {
  source  late
  retries 2
  backoff 200ms
}
"#,
    );
    let mut child = sb
        .with_db([
            std::ffi::OsStr::new("run"),
            flow.as_os_str(),
            std::ffi::OsStr::new("--report"),
            std::ffi::OsStr::new("LATE"),
        ])
        .spawn_with(Stdio::piped());
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = child.wait_for_line(deadline, |l| l.starts_with("retrying"));
    assert!(line.contains("LATE"), "{line}");
    assert!(
        line.contains("late.csv") && line.contains("I/O error"),
        "{line}"
    );

    // The source appears (whole, by rename) while the job waits for its retry.
    std::fs::remove_dir(sb.path().join("data/late.csv")).unwrap();
    sb.write("data/late.csv", data::cases(500));
    let (status, stdout) = child.finish(deadline);
    let stderr = child.log();
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("(attempt 2)"), "{stderr}");

    let jobs = sb.jobs();
    assert_eq!(jobs.len(), 1, "a retry is the same job: {jobs:#?}");
    let job = &jobs[0];
    assert_eq!(job.status, "COMPLETED");
    assert!((2..=3).contains(&job.attempt), "{job:?}");
    assert_eq!(job.rows_written, 500);
    sb.assert_result_whole(job);
}

#[test]
fn a_missing_source_fails_at_once_without_spending_retries() {
    let sb = Project::new();
    let flow = sb.write(
        "w.flow",
        "config {\n  all_counties ADMIN\n}\nroles ADMIN\nsource s {\n  path \"data/none.csv\"\n}\nreport R {\n  source  s\n  retries 5\n  backoff 10s\n}\n",
    );
    let run = sb.run([flow.as_os_str(), "--report".as_ref(), "R".as_ref()]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(!run.stderr().contains("retrying"), "{}", run.stderr());
    let jobs = sb.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].status.as_str(), jobs[0].attempt),
        ("FAILED", 1),
        "{jobs:?}"
    );
    assert!(
        jobs[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("does not exist"),
        "{jobs:?}"
    );
}

#[test]
fn a_mask_on_a_renamed_column_fails_the_job_and_check() {
    // The issue's reproduction: the source renames `client_name` to `name`.
    let sb = Project::new().csv_workflow("workflows");
    let data = sb.path().join("workflows/data/cases.csv");
    let text = std::fs::read_to_string(&data).unwrap();
    std::fs::write(&data, text.replacen("client_name", "name", 1)).unwrap();
    let run = sb.run([
        "workflows/reports.flow",
        "--report",
        "DAILY_REPORT",
        "--role",
        "CASE_WORKER",
        "--county",
        "C01",
    ]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let jobs = sb.jobs();
    let daily = only(&jobs, "DAILY_REPORT", Some("CASE_WORKER"));
    assert_eq!(
        (daily.status.as_str(), daily.attempt),
        ("FAILED", 1),
        "no retries: {daily:?}"
    );
    let error = daily.error.as_deref().unwrap_or("");
    assert!(
        error.contains("`client_name`") && error.contains("no row was written"),
        "{error}"
    );
    assert!(
        files_under(&sb.path().join("results/DAILY_REPORT")).is_empty(),
        "no result, not even a partial one"
    );
    let check = sb
        .flowctl()
        .args(["check", "workflows/reports.flow"])
        .output();
    assert_eq!(check.code(), 1, "{}", check.stderr());
    assert!(check.stderr().contains("E020"), "{}", check.stderr());
    assert!(check.stderr().contains("client_name"), "{}", check.stderr());
}

#[test]
fn a_county_scoped_role_without_a_county_is_refused_by_run() {
    let sb = Project::new().csv_workflow("workflows");
    for role in ["CASE_WORKER", "SUPERVISOR"] {
        let run = sb.run([
            "workflows/reports.flow",
            "--report",
            "DAILY_REPORT",
            "--role",
            role,
        ]);
        assert_eq!(run.code(), 2, "{}", run.stderr());
        assert!(run.stderr().contains("county-scoped"), "{}", run.stderr());
        assert!(run.stderr().contains("--county"), "{}", run.stderr());
    }
    assert!(sb.jobs().is_empty(), "nothing was queued");
    // ADMIN is in `all_counties`: every county's rows.
    sb.run([
        "workflows/reports.flow",
        "--report",
        "DAILY_REPORT",
        "--role",
        "ADMIN",
    ])
    .success();
}

// ---------------------------------------------------------------------------------------------
// 6. Timeout

#[test]
fn job_running_past_its_timeout_fails_with_timed_out() {
    let sb = Project::new();
    let flow = sb.write(
        "w.flow",
        r#"
config {
  all_counties ADMIN
}
roles ADMIN
source big {
  path "data/big.csv"
}
report SLOW {
  source     big
  chunk_size 10
  timeout    20ms
}
report AFTER {
  source big
}
after SLOW run AFTER
"#,
    );
    sb.write("data/big.csv", data::cases(300_000));
    let run = sb
        .run([flow.as_os_str(), "--report".as_ref(), "SLOW".as_ref()])
        .status(1);
    let jobs = sb.jobs();
    assert_eq!(jobs.len(), 1, "no `on success` dependent: {jobs:#?}");
    let job = &jobs[0];
    assert_eq!(job.status, "FAILED", "{}", run.stderr());
    let error = job.error.as_deref().unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");
    assert!(error.contains("20ms"), "{error}");
    assert_eq!(job.result_path, None);
    let left = files_under(&sb.path().join("results"));
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. Usage errors

#[test]
fn bad_parameters_and_unknown_reports_are_usage_errors() {
    let sb = Project::new().csv_workflow("workflows");
    let run = sb
        .run([
            "workflows/reports.flow",
            "--report",
            "DAILY_REPORT",
            "--set",
            "chunk_size=0",
        ])
        .status(2);
    let err = run.stderr();
    assert!(err.contains("chunk_size=0"), "{err}");
    assert!(err.contains("≥ 1"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let run = sb
        .run(["workflows/reports.flow", "--report", "DAILY_REPROT"])
        .status(2);
    let err = run.stderr();
    assert!(err.contains("unknown report DAILY_REPROT"), "{err}");
    assert!(err.contains("did you mean DAILY_REPORT"), "{err}");

    let run = sb
        .run(["workflows/reports.flow", "--report", "NO_SUCH_THING"])
        .status(2);
    assert!(
        run.stderr().contains("unknown report NO_SUCH_THING"),
        "{}",
        run.stderr()
    );

    // A bad request queues nothing, not even the valid part of it.
    let run = sb
        .run([
            "workflows/reports.flow",
            "--report",
            "DAILY_REPORT",
            "--report",
            "NO_SUCH_THING",
        ])
        .status(2);
    assert!(!run.stderr().contains("panicked"));
    assert!(sb.jobs().is_empty());
    assert!(!sb.path().join("results").exists());
}

#[test]
fn a_store_held_by_a_running_flowctl_is_refused_cleanly() {
    let sb = Project::new();
    // A run that stays alive, deterministically, until the test lets it
    // finish: its source cannot be read (a directory: an I/O error, which
    // may pass) and it retries with a growing backoff (100ms, 200ms, ...
    // about 100 s in all).
    std::fs::create_dir_all(sb.path().join("data/s.csv")).unwrap();
    let flow = sb.write(
        "w.flow",
        r#"
config {
  poll_interval 50ms
  all_counties  ADMIN
}
roles ADMIN
source s {
  path "data/s.csv"
}
report HOLD {
  source  s
  retries 10
  backoff 100ms
}
"#,
    );
    let mut child = sb
        .with_db([
            std::ffi::OsStr::new("run"),
            flow.as_os_str(),
            std::ffi::OsStr::new("--report"),
            std::ffi::OsStr::new("HOLD"),
        ])
        .spawn_with(Stdio::piped());
    let deadline = Instant::now() + Duration::from_secs(60);
    // The store is open once a job has started.
    child.wait_for_line(deadline, |l| l.starts_with("started"));

    let second = sb.run([flow.as_os_str(), "--report".as_ref(), "HOLD".as_ref()]);
    let err = second.stderr();
    assert_eq!(
        second.code(),
        2,
        "stdout:\n{}\nstderr:\n{err}",
        second.stdout()
    );
    assert!(err.contains("in use"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let list = sb.with_db(["jobs", "list"]).output().status(2);
    assert!(list.stderr().contains("in use"), "{}", list.stderr());

    // The first run is unharmed: it finishes its one job once the source exists.
    std::fs::remove_dir(sb.path().join("data/s.csv")).unwrap();
    sb.write("data/s.csv", data::cases(100));
    let (status, stdout) = child.finish(deadline);
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        child.log()
    );
    let jobs = sb.jobs();
    assert_eq!(jobs.len(), 1, "the refused run queued nothing: {jobs:#?}");
    assert_eq!(jobs[0].status, "COMPLETED");
    sb.assert_result_whole(&jobs[0]);
}

// ---------------------------------------------------------------------------------------------
// 8. jobs show / cancel / retry

#[test]
fn jobs_show_lists_children_and_cancel_refuses_finished_jobs() {
    let sb = Project::new().csv_workflow("workflows");
    sb.run([
        "workflows/reports.flow",
        "--report",
        "DAILY_REPORT",
        "--role",
        "SUPERVISOR",
        "--county",
        "C01",
    ])
    .success();
    let jobs = sb.jobs();
    assert_eq!(jobs.len(), 4, "{jobs:#?}");
    let daily = only(&jobs, "DAILY_REPORT", None);

    let show = sb
        .with_db(["jobs", "show", daily.job_id.as_str(), "--json"])
        .output()
        .success();
    let v: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
    assert_eq!(v["jobId"], daily.job_id.as_str());
    assert_eq!(v["status"], "COMPLETED");
    let children: BTreeSet<String> = v["childJobIds"]
        .as_array()
        .expect("childJobIds is a list")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = jobs
        .iter()
        .filter(|j| j.parent_job_ids.contains(&daily.job_id))
        .map(|j| j.job_id.clone())
        .collect();
    assert_eq!(want.len(), 3, "DAILY_SUMMARY, AUDIT_LOG, SUPERVISOR_REVIEW");
    assert_eq!(children, want);

    let review = only(&jobs, "SUPERVISOR_REVIEW", None);
    let show = sb
        .with_db(["jobs", "show", review.job_id.as_str(), "--json"])
        .output()
        .success();
    let v: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
    assert_eq!(v["parentJobIds"], serde_json::json!([daily.job_id]));
    assert_eq!(v["childJobIds"], serde_json::json!([]));

    // Cancelling a finished job is refused and changes nothing.
    let cancel = sb
        .with_db(["jobs", "cancel", daily.job_id.as_str()])
        .output()
        .status(1);
    assert!(
        cancel.stderr().contains("already finished (COMPLETED)"),
        "{}",
        cancel.stderr()
    );
    let after = sb.jobs();
    let again = only(&after, "DAILY_REPORT", None);
    assert_eq!(
        (again.status.as_str(), again.version),
        ("COMPLETED", daily.version)
    );
    // Unknown and malformed ids.
    sb.with_db(["jobs", "cancel", "JOB_ZZZZZZZZ"])
        .output()
        .status(2);
    sb.with_db(["jobs", "show", "not-a-job"]).output().status(2);
    // Only failed or cancelled jobs can be retried.
    sb.with_db(["jobs", "retry", daily.job_id.as_str()])
        .output()
        .status(1);
    assert_eq!(sb.jobs().len(), 4);
}

#[test]
fn jobs_retry_queues_a_new_attempt_that_resume_completes() {
    let sb = failure_sandbox();
    sb.run(["w.flow", "--report", "IMPORT"]).status(1);
    let jobs = sb.jobs();
    let failed = only(&jobs, "IMPORT", None).clone();
    assert_eq!(failed.status, "FAILED");

    // Fix the data, then retry.
    sb.write("data/bad.csv", cases_with_bad_row(1000, 0));
    let retry = sb
        .with_db(["jobs", "retry", failed.job_id.as_str()])
        .output()
        .success();
    let jobs = sb.jobs();
    let imports: Vec<&JobView> = jobs.iter().filter(|j| j.report_type == "IMPORT").collect();
    assert_eq!(imports.len(), 2);
    let new = imports
        .iter()
        .find(|j| j.job_id != failed.job_id)
        .expect("a new job");
    assert!(retry.stdout().contains(&new.job_id), "{}", retry.stdout());
    assert_eq!(new.status, "QUEUED");
    assert_eq!(new.role, failed.role);
    assert_eq!(new.trigger_id, failed.trigger_id);
    let new_id = new.job_id.clone();

    let resumed = sb.run(["w.flow", "--resume"]);
    let jobs = sb.jobs();
    let ids = by_id(&jobs);
    let new = ids[new_id.as_str()];
    assert_eq!(new.status, "COMPLETED", "{}", resumed.stderr());
    assert_eq!(new.rows_written, 1000);
    sb.assert_result_whole(new);
    // The old attempt stays FAILED; the new one's dependents ran.
    assert_eq!(ids[failed.job_id.as_str()].status, "FAILED");
    for report in ["AUDIT", "SUMMARY"] {
        let children: Vec<&&JobView> = ids
            .values()
            .filter(|j| j.report_type == report && j.parent_job_ids == vec![new_id.clone()])
            .collect();
        assert_eq!(children.len(), 1, "{report}: {jobs:#?}");
        assert_eq!(children[0].status, "COMPLETED");
    }
    assert!(
        jobs.iter()
            .all(|j| j.status == "COMPLETED" || j.job_id == failed.job_id),
        "{jobs:#?}"
    );
}

/// `flowctl jobs list | head -1` (a reader that goes away) panics with
/// "failed printing to stdout: Broken pipe" and exits 101, outside the
/// documented exit statuses (0, 1, 2).
#[test]
fn closed_stdout_is_not_a_panic() {
    let sb = Project::new();
    let mut child = sb.with_db(["jobs", "list"]).spawn_with(Stdio::piped());
    // Close the read end before flowctl prints anything.
    drop(child.child.stdout.take());
    let (status, _) = child.finish(Instant::now() + Duration::from_secs(30));
    let stderr = child.log();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(matches!(status.code(), Some(0..=2)), "{status}: {stderr}");
}
