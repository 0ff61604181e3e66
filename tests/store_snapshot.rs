//! The embedded store's index snapshot (`flowctl.index`, `store::sled::snapshot`) through the
//! real binary: a clean exit leaves one; an open takes it away before it writes, so a run
//! killed later restarts from the records, with every job it had made.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{data, files_under, Project};

/// Two roots, a chain of three after one, a dependent of the other: five jobs a run.
const FLOW: &str = r#"
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
}
report B {
  source     big
  chunk_size 500
}
report A1 {
  source     big
  chunk_size 500
}
report A2 {
  source     big
  chunk_size 500
}
report B1 {
  source     big
  chunk_size 500
}

schedule nightly {
  cron  "0 0 1 * * ?"
  run   A, B
  roles ADMIN
}

after A run A1
after A1 run A2
after B run B1
"#;

const JOBS_PER_RUN: usize = 5;

fn finished_results(project: &Project) -> usize {
    files_under(&project.join("results"))
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|name| !name.to_string_lossy().contains(".tmp"))
        })
        .count()
}

fn statuses(project: &Project) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for job in project.jobs_json() {
        *counts
            .entry(job["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    counts
}

#[test]
fn a_run_killed_after_an_open_from_the_snapshot_restarts_from_its_records() {
    let project = Project::new()
        .flow("w.flow", FLOW)
        .csv("data/big.csv", data::cases(40_000));
    let snapshot = project.db().join("flowctl.index");

    project.run(["w.flow"]).success();
    assert!(snapshot.is_file(), "a clean exit leaves the index snapshot");
    assert_eq!(
        statuses(&project),
        BTreeMap::from([("COMPLETED".to_string(), JOBS_PER_RUN)])
    );
    assert!(snapshot.is_file(), "a read-only look leaves it where it is");
    let first = finished_results(&project);

    // A second run opens from the snapshot; kill it once it has finished a result.
    let mut child = project
        .with_db(["run", "w.flow"])
        .command()
        .current_dir(project.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if finished_results(&project) > first {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("flowctl ended before it could be killed: {status}");
        }
        assert!(Instant::now() < deadline, "no result appeared in time");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().code(), None, "killed by a signal");
    assert!(
        !snapshot.exists(),
        "the open took the snapshot away before it wrote, so the crash left none"
    );

    // The restart reads the records: the first run's jobs and the second's are all there,
    // and resuming finishes the second.
    project
        .with_db(["run", "w.flow", "--resume"])
        .dir(project.path())
        .output()
        .success();
    assert_eq!(
        statuses(&project),
        BTreeMap::from([("COMPLETED".to_string(), 2 * JOBS_PER_RUN)])
    );
    assert!(snapshot.is_file());
}
