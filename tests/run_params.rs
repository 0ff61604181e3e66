//! `flowctl run`'s trigger arguments (`--param`, `--period`, `--window-start`/`--window-end`,
//! `--zone`) and `flowctl jobs show`'s parameters and window, driving the real binary.
//!
//! Until the language declares parameters, the binary's workflows declare none: these tests
//! hold what a workflow without them does (a `--param` is refused naming it, a window given is
//! stored and shown); the typed resolution is held by `tests/report_params.rs` through the
//! same engine call.

mod common;

use common::{data, Project};

const FLOW: &str = "config {\n  all_counties ADMIN\n  results \"results\"\n}\nroles ADMIN\n\
    source cases {\n  path          \"cases.csv\"\n  county_column county_id\n}\n\
    report DAILY {\n  source cases\n}\n";

fn project() -> Project {
    Project::new()
        .flow("w.flow", FLOW)
        .csv("cases.csv", data::cases(20))
}

#[test]
fn a_param_the_report_does_not_declare_exits_2_naming_it() {
    let project = project();
    let run = project
        .run(["w.flow", "--report", "DAILY", "--param", "since=2026-11-01"])
        .status(2);
    let stderr = run.stderr();
    assert!(stderr.contains("parameter 'since'"), "{stderr}");
    assert!(stderr.contains("declares no parameters"), "{stderr}");
    project
        .run(["w.flow", "--report", "DAILY", "--param", "novalue"])
        .status(2);
    // Nothing was queued.
    assert!(project.jobs_json().is_empty());
}

#[test]
fn a_period_given_is_the_jobs_window_and_jobs_show_prints_it() {
    let project = project();
    project
        .run([
            "w.flow",
            "--report",
            "DAILY",
            "--period",
            "2026-11-30",
            "--zone",
            "Europe/Berlin",
        ])
        .success();
    let jobs = project.jobs_json();
    assert_eq!(jobs.len(), 1);
    let window = &jobs[0]["request"]["window"];
    assert_eq!(
        window,
        &serde_json::json!({
            "start": "2026-11-29T23:00:00Z",
            "end": "2026-11-30T23:00:00Z",
            "zone": "Europe/Berlin",
            "kind": "day",
            "label": "2026-11-30",
        })
    );
    let id = jobs[0]["jobId"].as_str().unwrap();
    let show = project
        .with_db(["jobs", "show", id])
        .output()
        .success()
        .stdout();
    assert!(
        show.contains(
            "window     2026-11-30 (day, Europe/Berlin): 2026-11-30T00:00:00+01:00 to \
             2026-12-01T00:00:00+01:00 (end excluded)"
        ),
        "{show}"
    );
    assert!(show.contains("params     -"), "{show}");
    let json = project
        .with_db(["jobs", "show", id, "--json"])
        .output()
        .success()
        .stdout();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(&json["request"]["window"], window);
    assert_eq!(json["request"]["params"], serde_json::json!({}));
}

#[test]
fn window_bounds_make_a_span_and_bad_ones_exit_2() {
    let project = project();
    project
        .run([
            "w.flow",
            "--report",
            "DAILY",
            "--window-start",
            "2026-11-30T06:00:00Z",
            "--window-end",
            "2026-11-30T12:00:00Z",
        ])
        .success();
    let window = project.jobs_json()[0]["request"]["window"].clone();
    assert_eq!(window["kind"], "span");
    assert_eq!(window["zone"], "UTC");
    assert_eq!(window["label"], "20261130T060000Z-20261130T120000Z");
    for (args, says) in [
        (
            vec![
                "--window-start",
                "2026-11-30T12:00:00Z",
                "--window-end",
                "2026-11-30T06:00:00Z",
            ],
            "ends after it starts",
        ),
        (vec!["--period", "2026-13"], "is not a period"),
        (
            vec!["--period", "2026-11", "--zone", "Mars/Olympus"],
            "unknown time zone",
        ),
        (
            vec![
                "--window-start",
                "yesterday",
                "--window-end",
                "2026-11-30T06:00:00Z",
            ],
            "RFC 3339",
        ),
        (vec!["--zone", "UTC"], "--period or --window-start"),
    ] {
        let mut all = vec!["w.flow", "--report", "DAILY"];
        all.extend(args.iter().copied());
        let stderr = project.run(all).status(2).stderr();
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Clap's own refusals: a start without an end, a period with bounds, a window without
    // --report.
    for args in [
        vec![
            "w.flow",
            "--report",
            "DAILY",
            "--window-start",
            "2026-11-30T06:00:00Z",
        ],
        vec![
            "w.flow",
            "--report",
            "DAILY",
            "--period",
            "2026-11",
            "--window-start",
            "2026-11-30T06:00:00Z",
            "--window-end",
            "2026-11-30T07:00:00Z",
        ],
        vec!["w.flow", "--period", "2026-11"],
    ] {
        project.run(args.clone()).status(2);
    }
    assert_eq!(project.jobs_json().len(), 1);
}

#[test]
fn run_help_describes_the_trigger_arguments() {
    let help = common::Flowctl::new()
        .args(["run", "--help"])
        .output()
        .success()
        .stdout();
    for flag in [
        "--param",
        "--period",
        "--window-start",
        "--window-end",
        "--zone",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.contains("2026-W48"), "{help}");
}
