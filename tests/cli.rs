//! Behaviour tests of the command line's newcomer-facing surface, driving the real binary: the
//! warning about a generated masking key, `--help` texts, `jobs list --report` typos.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Flowctl, Project};

const WARNING: &str = "FLOWCTL_MASK_KEY is not set";

/// A workflow of two unscheduled reports over a three-row CSV, at `w.flow`.
fn small_workflow() -> Project {
    Project::new()
        .csv(
            "cases.csv",
            "case_id,county_id,ssn\n1,C01,123456789\n2,C02,987654321\n3,C01,555443333\n",
        )
        .flow(
            "w.flow",
            "config {\n  all_counties ADMIN\n}\n\nroles ADMIN\n\nsource cases {\n  path          \"cases.csv\"\n  county_column county_id\n}\n\n\
             report DAILY_REPORT {\n  source cases\n  mask ssn hash\n}\n\n\
             report DAILY_SUMMARY {\n  source cases\n}\n",
        )
}

/// `flowctl` in `dir`, with `FLOWCTL_MASK_KEY` set to `key` or removed.
fn flowctl(dir: &Path, key: Option<&str>) -> Flowctl {
    let flowctl = Flowctl::new()
        .dir(dir)
        .env_remove("FLOWCTL_MASK_KEY")
        .env_remove("FLOWCTL_STORE")
        .env_remove("FLOWCTL_DB")
        .env(
            "FLOWCTL_JWT_SECRET",
            "a test secret that is long enough for HS256",
        );
    match key {
        Some(key) => flowctl.env("FLOWCTL_MASK_KEY", key),
        None => flowctl,
    }
}

/// Starts a long-running command, collects its stderr until a line starting with `ready`, then
/// stops it with SIGTERM (SIGKILL if it does not stop) and returns the lines seen.
fn stderr_until_ready(flowctl: Flowctl, ready: &str) -> String {
    let mut child = flowctl.spawn();
    child.wait_for_line(Instant::now() + Duration::from_secs(30), |line| {
        line.starts_with(ready)
    });
    child.stop(Duration::from_secs(30));
    child.log()
}

#[test]
fn a_generated_mask_key_is_warned_about() {
    let project = small_workflow();
    let dir = project.path();
    let flow = project.join("w.flow");
    let db = project.db();
    let run = |key: Option<&str>| {
        let out = flowctl(dir, key)
            .arg("run")
            .arg(&flow)
            .args(["--report", "DAILY_REPORT"])
            .db(&db)
            .output();
        let stderr = out.stderr();
        assert_eq!(out.code(), 0, "{stderr}");
        stderr
    };

    // `run`: without the variable, said once, naming the variable and the key file.
    let stderr = run(None);
    assert_eq!(stderr.matches(WARNING).count(), 1, "{stderr}");
    assert!(stderr.contains("mask.key"), "{stderr}");
    // Also when the key file already exists (still per store).
    let stderr = run(None);
    assert_eq!(stderr.matches(WARNING).count(), 1, "{stderr}");
    // With the variable: nothing.
    let stderr = run(Some("a shared secret"));
    assert!(!stderr.contains("FLOWCTL_MASK_KEY"), "{stderr}");
    // Nor when no report masks with `hash`: the key is not used.
    let text = std::fs::read_to_string(&flow).unwrap();
    project.write("w.flow", text.replace("mask ssn hash", "mask ssn redact"));
    let stderr = run(None);
    assert!(!stderr.contains("FLOWCTL_MASK_KEY"), "{stderr}");
    project.write("w.flow", text);

    // `serve` and `worker`: in the log, before they are ready.
    for key in [None, Some("a shared secret")] {
        let serve = flowctl(dir, key)
            .arg("serve")
            .arg(&flow)
            .args(["--listen", "127.0.0.1:0"])
            .db(&db);
        let log = stderr_until_ready(serve, "listening on");
        let worker = flowctl(dir, key).arg("worker").arg(&flow).db(&db);
        let log = format!("{log}\n{}", stderr_until_ready(worker, "worker "));
        let expected = if key.is_none() { 2 } else { 0 };
        assert_eq!(log.matches(WARNING).count(), expected, "{key:?}:\n{log}");
    }
}

/// Every subcommand, argument and listed value of `flowctl` says what it is in `--help`
/// (clap's own `help` and `version` aside).
#[test]
fn every_cli_argument_has_help() {
    use clap::CommandFactory;

    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = arg.get_help().or(arg.get_long_help());
            if help.is_none_or(|h| h.to_string().trim().is_empty()) {
                missing.push(format!("{path} <{id}>"));
            }
            if arg.get_action().takes_values() && !arg.is_hide_possible_values_set() {
                for value in arg.get_possible_values() {
                    if value
                        .get_help()
                        .is_none_or(|h| h.to_string().trim().is_empty())
                    {
                        missing.push(format!("{path} <{id}> value {}", value.get_name()));
                    }
                }
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let path = format!("{path} {}", sub.get_name());
            let about = sub.get_about().or(sub.get_long_about());
            if about.is_none_or(|h| h.to_string().trim().is_empty()) {
                missing.push(path.clone());
            }
            walk(sub, &path, missing);
        }
    }

    let cmd = flowctl::cli::Cli::command();
    let mut missing = Vec::new();
    walk(&cmd, "flowctl", &mut missing);
    assert!(missing.is_empty(), "no help for:\n{}", missing.join("\n"));
}

#[test]
fn an_unknown_report_type_in_jobs_list_gets_a_did_you_mean() {
    let project = small_workflow();
    let dir = project.path();
    let flow = project.join("w.flow");
    let jobs = |args: &[&str]| {
        let out = flowctl(dir, Some("k"))
            .args(["jobs", "list"])
            .args(args)
            .args(["--db", "db"])
            .output();
        (out.output.status.code(), out.stdout(), out.stderr())
    };

    // An empty store without a workflow knows no report type: any is an empty list.
    let (code, _, stderr) = jobs(&["--report", "DAILY_REPROT"]);
    assert_eq!(code, Some(0), "{stderr}");

    let out = flowctl(dir, Some("k"))
        .arg("run")
        .arg(&flow)
        .args(["--report", "DAILY_REPORT", "--db", "db"])
        .output();
    assert_eq!(out.code(), 0);

    // Against the stored jobs' report types.
    let (code, stdout, stderr) = jobs(&["--report", "DAILY_REPROT"]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("unknown report type `DAILY_REPROT`; did you mean `DAILY_REPORT`?"),
        "{stderr}"
    );
    let (code, _, stderr) = jobs(&["--report", "daily_report"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("did you mean `DAILY_REPORT`?"), "{stderr}");
    let (code, _, stderr) = jobs(&["--report", "NOTHING_LIKE_IT"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("unknown report type `NOTHING_LIKE_IT`; known: DAILY_REPORT"),
        "{stderr}"
    );
    let (code, stdout, stderr) = jobs(&["--report", "DAILY_REPORT"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("DAILY_REPORT"), "{stdout}");

    // Against the workflow's report types: DAILY_SUMMARY has no job yet but is known.
    let (code, _, stderr) = jobs(&["--workflow", "w.flow", "--report", "DAILY_SUMARY"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("unknown report type `DAILY_SUMARY`; did you mean `DAILY_SUMMARY`?"),
        "{stderr}"
    );
    let (code, _, stderr) = jobs(&["--workflow", "w.flow", "--report", "DAILY_SUMMARY"]);
    assert_eq!(code, Some(0), "{stderr}");
}

/// A clone has nothing beside it: the docs (every Markdown file, every comment in the code)
/// never point outside the repository, every relative Markdown link resolves, and every
/// section the code cites (`DESIGN.md, "Job record"`) is one of the repository's DESIGN.md.
#[test]
fn docs_never_point_outside_the_repository() {
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    files(&path, out);
                }
            } else if name.ends_with(".md") || name.ends_with(".rs") || name.ends_with(".pest") {
                out.push(path);
            }
        }
    }
    let root = common::repo();
    let mut all = Vec::new();
    files(&root, &mut all);
    let design = std::fs::read_to_string(root.join("DESIGN.md")).expect("DESIGN.md in the repo");
    let sections: Vec<&str> = design
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    let mut problems = Vec::new();
    for file in &all {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(&root).unwrap().display().to_string();
        let is_md = rel.ends_with(".md");
        for (n, line) in text.lines().enumerate() {
            let doc =
                is_md || line.trim_start().starts_with("//") || line.trim_start().starts_with('#');
            if !doc {
                continue;
            }
            for outside in ["../shared", "/work/", "shared/DESIGN", "shared/STYLE"] {
                if line.contains(outside) {
                    problems.push(format!("{rel}:{}: points outside: {line}", n + 1));
                }
            }
            for (at, _) in line.match_indices("DESIGN.md, \"") {
                let cited = line[at + 12..].split('"').next().unwrap_or_default();
                if !sections.contains(&cited) {
                    problems.push(format!("{rel}:{}: no DESIGN.md section {cited:?}", n + 1));
                }
            }
            if is_md {
                for (at, _) in line.match_indices("](") {
                    let target = line[at + 2..].split(')').next().unwrap_or_default();
                    let target = target.split('#').next().unwrap_or_default();
                    if target.is_empty() || target.contains("://") {
                        continue;
                    }
                    let base = file.parent().unwrap();
                    if !base.join(target).exists() {
                        problems.push(format!("{rel}:{}: broken link {target}", n + 1));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `FLOWCTL_RESULT_SYNC` picks how results are made durable: every method completes a run with
/// whole results; a name that is none of them stops the run before a job is made, naming the
/// variable and the choices.
#[test]
fn result_sync_methods_complete_and_a_bad_one_is_refused() {
    for method in ["auto", "syncfs", "fdatasync", "serial"] {
        let project = small_workflow();
        let run = flowctl(project.path(), Some("k".repeat(32).as_str()))
            .env("FLOWCTL_RESULT_SYNC", method)
            .args(["run", "w.flow", "--report", "DAILY_REPORT"])
            .db(project.db())
            .output()
            .success();
        assert!(
            run.stdout().contains("1 of 1 jobs completed"),
            "{method}: {}",
            run.stdout()
        );
        let results = common::files_under(&project.join("results"));
        assert_eq!(results.len(), 1, "{method}: {results:?}");
        let csv = std::fs::read_to_string(&results[0]).unwrap();
        assert_eq!(csv.lines().count(), 4, "{method}: {csv}");
    }
    let project = small_workflow();
    let refused = flowctl(project.path(), Some("k".repeat(32).as_str()))
        .env("FLOWCTL_RESULT_SYNC", "sometimes")
        .args(["run", "w.flow", "--report", "DAILY_REPORT"])
        .db(project.db())
        .output()
        .status(2);
    assert!(
        refused
            .stderr()
            .contains("FLOWCTL_RESULT_SYNC=sometimes: expected auto, syncfs, fdatasync or serial"),
        "{}",
        refused.stderr()
    );
    assert!(!project.join("results").exists(), "no job ran");
}
