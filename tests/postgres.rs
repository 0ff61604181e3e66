//! Several `flowctl` processes on one PostgreSQL database: they share one queue, a SIGKILLed
//! worker's jobs are taken over, joins fire once, schedule fires are created once, and a run
//! survives its database connections being killed.
//!
//! Needs `FLOWCTL_TEST_PG` (e.g. `postgres://postgres@127.0.0.1:5432/test`); without it every
//! test prints `skipped: FLOWCTL_TEST_PG not set` and passes. Each test works in a schema of its
//! own (`?options=-csearch_path%3D…`), dropped at the end, whose name is also the connections'
//! `application_name`, so that killing "the database connections" kills only this test's.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;

use common::pg::{database_or_skip, terminate_connections};
use common::wait::until;
use common::{data, files_under, sha256_file, Flowctl, Project, Running};
use flowctl::job::{JobRequest, NewJob, Principal};
use flowctl::store::pg_test_schema::TestSchema;
use flowctl::store::{PgConfig, PgStore, Store};

/// Records every transition to COMPLETED, so that "completed exactly once" can be checked.
async fn audit_completions(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE completions (job_id text NOT NULL);
             CREATE FUNCTION audit_completion() RETURNS trigger LANGUAGE plpgsql
                 SET search_path FROM CURRENT AS $$
             BEGIN
                 INSERT INTO completions (job_id) VALUES (NEW.job_id);
                 RETURN NULL;
             END $$;
             CREATE TRIGGER audit_completion AFTER UPDATE ON jobs FOR EACH ROW
                 WHEN (NEW.status = 'COMPLETED' AND OLD.status <> 'COMPLETED')
                 EXECUTE FUNCTION audit_completion();",
        )
        .await
        .expect("install the completion audit");
}

/// A working directory with a workflow, its tiny source, and its results, on tmpfs when there
/// is one (result files are fsynced; the disk is not what is under test).
fn workdir(flow: &str, rows: usize) -> Project {
    Project::on_tmpfs("flowctl-pg-")
        .flow("w.flow", flow)
        .csv("tiny.csv", data::amounts(rows, 0))
}

/// Child processes, killed if the test ends early.
struct Processes {
    children: Vec<(String, Running)>,
}

impl Processes {
    fn new() -> Processes {
        Processes {
            children: Vec::new(),
        }
    }

    /// Starts `flowctl ARGS` in `dir` against `url`.
    fn start(&mut self, name: &str, dir: &Path, url: &str, args: &[&str]) {
        let running = Flowctl::new()
            .args(args)
            .dir(dir)
            .env("FLOWCTL_STORE", url)
            .env("FLOWCTL_MASK_KEY", "multi-process test key")
            .env("FLOWCTL_JWT_SECRET", "multi-process test secret")
            .env("FLOWCTL_LOG", "warn")
            .spawn();
        self.children.push((name.to_owned(), running));
    }

    fn get(&self, name: &str) -> &Running {
        let (_, running) = self.children.iter().find(|(n, _)| n == name).unwrap();
        running
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, running) in &self.children {
            let text = running.log();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {name} (last lines)\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn pid(&self, name: &str) -> u32 {
        self.get(name).pid()
    }

    fn kill(&mut self, name: &str) {
        let (_, running) = self.children.iter_mut().find(|(n, _)| n == name).unwrap();
        running.kill().unwrap();
    }

    /// Waits until every process says it is ready (`worker … running`, `listening on …`).
    async fn wait_until_ready(&self, timeout: Duration) {
        let ready = |running: &Running| {
            let log = running.log();
            ["listening on", "running"]
                .iter()
                .any(|line| log.contains(line))
        };
        let what = || format!("not every process started:\n{}", self.logs());
        until(timeout, Duration::from_millis(50), what, || async {
            self.children.iter().all(|(_, r)| ready(r)).then_some(())
        })
        .await
    }

    /// SIGTERM to every process still running, then waits for them.
    fn stop_all(&mut self) {
        for (_, running) in &mut self.children {
            if running.try_exit().is_none() {
                running.signal("-TERM");
            }
        }
        for (_, running) in &mut self.children {
            if running.wait_exit(Duration::from_secs(40)).is_none() {
                let _ = running.kill();
            }
        }
    }
}

async fn status_counts(client: &tokio_postgres::Client) -> BTreeMap<String, i64> {
    client
        .query("SELECT status, count(*) FROM jobs GROUP BY status", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn root(report: &str, county: &str) -> NewJob {
    NewJob {
        report_type: report.into(),
        principal: Principal {
            subject: "loadtest".into(),
            role: "WORKER".into(),
            county: Some(county.into()),
        },
        parent_job_ids: Vec::new(),
        trigger_id: "manual:loadtest".into(),
        request: JobRequest::default(),
        priority: 0,
        max_attempts: 1,
        estimated_completion: None,
    }
}

const JOIN_FLOW: &str = r#"
config {
  worker_pool_size  8
  max_jobs_per_poll 16
  poll_interval     1s
  lease             3s
  results           "results"
  scheduler         off
  all_counties      WORKER
}

roles WORKER

source tiny {
  path          "tiny.csv"
  county_column county_id
}

report A { source tiny }
report B { source tiny }
report C { source tiny }
report D { source tiny }

after A, B run C
after C run D
"#;

/// Checks the join workload of `scopes` counties: every job COMPLETED exactly once, one C per
/// county whose parents are that county's A and B, one D after it, whole result files.
async fn check_joins(client: &tokio_postgres::Client, dir: &Path, scopes: usize, killed: &[u32]) {
    let counts = status_counts(client).await;
    assert_eq!(
        counts,
        BTreeMap::from([("COMPLETED".to_string(), 4 * scopes as i64)]),
        "every job completed"
    );
    let audit = client
        .query_one(
            "SELECT count(*), count(DISTINCT job_id) FROM completions",
            &[],
        )
        .await
        .unwrap();
    let (completions, distinct): (i64, i64) = (audit.get(0), audit.get(1));
    assert_eq!(
        (completions, distinct),
        (4 * scopes as i64, 4 * scopes as i64),
        "each job completed exactly once"
    );
    let rows = client
        .query(
            "SELECT job_id, report_type, county_id, parent_job_ids, result_path, result_sha256
             FROM jobs",
            &[],
        )
        .await
        .unwrap();
    // county → report type → (job id, parent ids)
    type Jobs = Vec<(String, Vec<String>)>;
    let mut by_county: HashMap<String, HashMap<String, Jobs>> = HashMap::new();
    for row in &rows {
        let (id, report, county): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let parents: Vec<String> = row.get(3);
        by_county
            .entry(county)
            .or_default()
            .entry(report)
            .or_default()
            .push((id, parents));
        // Whole result files: the content is what the job recorded.
        let (path, sha): (String, String) = (row.get(4), row.get(5));
        let path = dir.join(path);
        assert_eq!(sha256_file(&path), sha, "{}", path.display());
    }
    assert_eq!(by_county.len(), scopes);
    for (county, reports) in &by_county {
        for report in ["A", "B", "C", "D"] {
            assert_eq!(
                reports.get(report).map_or(0, Vec::len),
                1,
                "county {county}: {report} jobs"
            );
        }
        let (a, b, c) = (&reports["A"][0], &reports["B"][0], &reports["C"][0]);
        assert_eq!(
            c.1,
            vec![a.0.clone(), b.0.clone()],
            "county {county}: C's parents"
        );
        assert_eq!(
            reports["D"][0].1,
            vec![c.0.clone()],
            "county {county}: D's parent"
        );
    }
    // No temporary file is left but a killed process's.
    for entry in files_under(&dir.join("results")) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        if let Some(rest) = name.split(".tmp-").nth(1) {
            let pid: u32 = rest.split('-').next().unwrap().parse().unwrap();
            assert!(killed.contains(&pid), "temporary file left: {name}");
        }
    }
}

/// Three `flowctl worker`s and a `flowctl serve` share 10,000 jobs with joins and chains; one
/// worker is SIGKILLed while it runs jobs, which the others take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_and_a_server_share_the_queue_and_survive_a_killed_worker() {
    let base = database_or_skip!();
    const SCOPES: usize = 2500;
    let started = Instant::now();
    let schema = TestSchema::create(&base, "mp").await;
    let url = schema.url();
    let store = PgStore::open(PgConfig::new(url.clone()))
        .await
        .expect("open the store");
    let client = schema.client().await;
    audit_completions(&client).await;
    let dir = workdir(JOIN_FLOW, 3);

    let mut processes = Processes::new();
    for name in ["worker-1", "worker-2", "worker-3"] {
        processes.start(name, dir.path(), &url, &["worker", "w.flow"]);
    }
    processes.start(
        "serve",
        dir.path(),
        &url,
        &["serve", "w.flow", "--listen", "127.0.0.1:0"],
    );
    processes.wait_until_ready(Duration::from_secs(30)).await;
    // 2,500 counties × (A, B), enqueued through the library while the processes run.
    let mut roots = Vec::new();
    for i in 0..SCOPES {
        let county = format!("county-{i}");
        roots.push(root("A", &county));
        roots.push(root("B", &county));
    }
    for batch in roots.chunks(1000) {
        store
            .enqueue(batch.to_vec(), None, Utc::now())
            .await
            .expect("enqueue");
    }

    // Kill worker 1 while it holds jobs: stopped (SIGSTOP) before its leases are counted, so
    // that the job it holds cannot finish between the count and the kill.
    let victim = processes.pid("worker-1");
    let what = || format!("worker 1 never ran a job:\n{}", processes.logs());
    until(
        Duration::from_secs(60),
        Duration::from_millis(20),
        what,
        || async {
            common::running::signal(victim, "-STOP");
            let held: i64 = client
                .query_one(
                    "SELECT count(*) FROM jobs WHERE status = 'PROCESSING' AND lease_owner LIKE $1",
                    &[&format!("%:{victim}:%")],
                )
                .await
                .unwrap()
                .get(0);
            let done = status_counts(&client)
                .await
                .get("COMPLETED")
                .copied()
                .unwrap_or(0);
            let ready = held > 0 && done > 1000;
            if !ready {
                common::running::signal(victim, "-CONT");
            }
            ready.then_some(())
        },
    )
    .await;
    processes.kill("worker-1");

    let counts = std::sync::Mutex::new(BTreeMap::new());
    let what = || {
        format!(
            "not finished: {:?}\n{}",
            counts.lock().unwrap(),
            processes.logs()
        )
    };
    until(
        Duration::from_secs(120),
        Duration::from_millis(100),
        what,
        || async {
            let now = status_counts(&client).await;
            let finished = now.get("COMPLETED").copied().unwrap_or(0) == 4 * SCOPES as i64;
            *counts.lock().unwrap() = now;
            finished.then_some(())
        },
    )
    .await;
    processes.stop_all();
    let taken_over: i64 = client
        .query_one("SELECT count(*) FROM jobs WHERE attempt > 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(taken_over > 0, "no job of the killed worker was taken over");
    check_joins(&client, dir.path(), SCOPES, &[victim]).await;
    println!(
        "10,000 jobs on 4 processes, one SIGKILLed ({taken_over} taken over): {:?}",
        started.elapsed()
    );
}

/// Two `flowctl serve`s both run an every-second schedule: each fire creates its jobs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_create_each_schedule_fire_once() {
    let base = database_or_skip!();
    let schema = TestSchema::create(&base, "mp").await;
    let url = schema.url();
    let flow = r#"
config {
  worker_pool_size  2
  poll_interval     1s
  lease             5s
  results           "results"
  scheduler         on
  all_counties      WORKER, AUDITOR
}

roles WORKER, AUDITOR

source tiny { path "tiny.csv" }

report TICK { source tiny }

schedule every_second {
  cron  "* * * * * ?"
  run   TICK
  roles WORKER, AUDITOR
}
"#;
    let dir = workdir(flow, 3);
    // Migrate first, so that the test's audit can be installed before the servers fire.
    PgStore::migrate(&url).await.expect("migrate");
    let client = schema.client().await;
    let mut processes = Processes::new();
    processes.start(
        "serve-1",
        dir.path(),
        &url,
        &["serve", "w.flow", "--listen", "127.0.0.1:0"],
    );
    processes.start(
        "serve-2",
        dir.path(),
        &url,
        &["serve", "w.flow", "--listen", "127.0.0.1:0"],
    );
    processes.wait_until_ready(Duration::from_secs(30)).await;
    let watched = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    processes.stop_all();

    let fires = client
        .query(
            "SELECT part2, cardinality(job_ids) FROM unique_keys
             WHERE kind = 'fire' AND part1 = 'every_second'",
            &[],
        )
        .await
        .unwrap();
    // Fires of the last minute are owed at start (the misfire threshold), then one a second.
    assert!(
        fires.len() >= 30,
        "{} fires in {:?}",
        fires.len(),
        watched.elapsed()
    );
    for fire in &fires {
        let jobs: i32 = fire.get(1);
        assert_eq!(
            jobs,
            2,
            "fire {} created {jobs} jobs",
            fire.get::<_, String>(0)
        );
    }
    let per_trigger = client
        .query(
            "SELECT trigger_id, count(*) FROM jobs GROUP BY trigger_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(per_trigger.len(), fires.len(), "one trigger per fire");
    for row in &per_trigger {
        let (trigger, n): (String, i64) = (row.get(0), row.get(1));
        assert_eq!(n, 2, "{trigger} created {n} jobs, expected one per role");
    }
    let distinct: HashSet<String> = fires.iter().map(|f| f.get(0)).collect();
    assert_eq!(distinct.len(), fires.len());
}

/// `flowctl run` against PostgreSQL while every database connection it has is killed, twice:
/// it reconnects and finishes, with every join fired once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_finishes_when_its_database_connections_are_killed() {
    let base = database_or_skip!();
    let schema = TestSchema::create(&base, "mp").await;
    let url = schema.url();
    const SCOPES: usize = 150;
    let counties: Vec<String> = (0..SCOPES).map(|i| format!("\"county-{i}\"")).collect();
    let flow = JOIN_FLOW
        .replace("scheduler         off", "scheduler         on")
        .replace(
            "after A, B run C",
            &format!(
                "schedule nightly {{\n  cron \"0 0 3 * * ?\"\n  run A, B\n  roles WORKER\n  \
                 counties {}\n}}\n\nafter A, B run C",
                counties.join(", ")
            ),
        )
        .replace("worker_pool_size  8", "worker_pool_size  4")
        .replace(
            "report A { source tiny }",
            "report A {\n  source tiny\n  chunk_size 5\n}",
        );
    // Enough rows (in small chunks) that the run is still going when the connections die.
    let dir = workdir(&flow, 3000);
    PgStore::migrate(&url).await.expect("migrate");
    let client = schema.client().await;
    audit_completions(&client).await;
    let mut processes = Processes::new();
    processes.start("run", dir.path(), &url, &["run", "w.flow"]);
    let mut kills = 0usize;
    let deadline = Instant::now() + Duration::from_secs(90);
    let code = loop {
        if let Some(status) = processes.children[0].1.try_exit() {
            break status.code();
        }
        let done = status_counts(&client)
            .await
            .get("COMPLETED")
            .copied()
            .unwrap_or(0);
        // Once early, once half-way. The run's connections carry the schema's name as
        // application name; the test's own do not.
        let due = [10, 2 * SCOPES as i64];
        if kills < 2
            && done >= due[kills]
            && terminate_connections(&schema, schema.name()).await > 0
        {
            println!("killed the run's connections at {done} jobs completed");
            kills += 1;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish:\n{}",
            processes.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        kills >= 1,
        "the run ended before its connections could be killed"
    );
    assert_eq!(code, Some(0), "{}", processes.logs());
    check_joins(&client, dir.path(), SCOPES, &[]).await;
}
