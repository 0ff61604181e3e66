//! What `flowctl` reads and prints for a workflow is fenced and bounded:
//! includes stay inside the workflow's root, only regular UTF-8 files of at
//! most 16 MiB are read, and diagnostics show excerpts, never whole lines or
//! files, whatever the input. Every test drives the real binary.

mod common;

use std::time::Duration;

use common::Project;

const VALID: &str = "config {\n  all_counties ADMIN\n}\n\nroles ADMIN\n\nsource cases {\n  path \"cases.csv\"\n}\n\nreport DAILY {\n  source cases\n}\n\nschedule daily {\n  cron  \"0 30 5 * * ?\"\n  run   DAILY\n  roles ADMIN\n}\n";

#[test]
fn include_outside_the_root_is_refused() {
    let dir = Project::new();
    dir.write("secret.flow", "roles TOP_SECRET_ROLE\n");
    dir.write(
        "wf/main.flow",
        format!("{VALID}include \"../secret.flow\"\ninclude \"/proc/self/environ\"\n"),
    );
    let run = dir
        .flowctl()
        .env("FLOWCTL_JWT_SECRET", "do-not-print-this-jwt-secret")
        .args(["check", "wf/main.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert_eq!(err.matches("E017 include-outside-root").count(), 2, "{err}");
    assert!(err.contains("cannot include `../secret.flow`"), "{err}");
    assert!(err.contains("--include-root"), "{err}");
    assert!(!err.contains("TOP_SECRET_ROLE"), "{err}");
    assert!(!err.contains("do-not-print-this-jwt-secret"), "{err}");
}

#[test]
fn include_root_flag_allows_another_directory() {
    let dir = Project::new();
    dir.write(
        "shared/extra.flow",
        "report EXTRA {\n  source cases\n}\n\nafter DAILY run EXTRA\n",
    );
    dir.write(
        "wf/main.flow",
        format!("{VALID}include \"../shared/extra.flow\"\n"),
    );
    dir.flowctl()
        .args(["check", "wf/main.flow"])
        .output()
        .status(1);
    let run = dir
        .flowctl()
        .args(["check", "wf/main.flow", "--include-root", "shared"])
        .output()
        .success();
    assert!(run.stdout().contains("2 reports"), "{}", run.stdout());
    // Every command that loads a workflow takes the flag.
    for command in ["graph", "plan", "schedule"] {
        dir.flowctl()
            .args([command, "wf/main.flow", "--include-root", "shared"])
            .output()
            .success();
    }
    let run = dir
        .flowctl()
        .args(["fmt", "wf/main.flow"])
        .output()
        .status(1);
    assert!(run.stderr().contains("E017"), "{}", run.stderr());
    dir.flowctl()
        .args(["fmt", "wf/main.flow", "--include-root", "shared"])
        .output()
        .success();
    // A root that does not exist is a usage error.
    dir.flowctl()
        .args(["check", "wf/main.flow", "--include-root", "nowhere"])
        .output()
        .status(2);
}

#[test]
fn the_root_of_a_directory_is_that_directory() {
    let dir = Project::new();
    dir.write("wf/main.flow", VALID);
    dir.write(
        "wf/more.flow",
        "include \"sub/inner.flow\"\ninclude \"../outer.flow\"\n",
    );
    dir.write("wf/sub/inner.flow", "# inside\n");
    dir.write("outer.flow", "# outside\n");
    let run = dir.flowctl().args(["check", "wf"]).output().status(1);
    let err = run.stderr();
    assert_eq!(err.matches("E017").count(), 1, "{err}");
    assert!(err.contains("`../outer.flow`"), "{err}");
}

#[cfg(unix)]
#[test]
fn an_include_through_a_symlink_out_of_the_root_is_refused() {
    let dir = Project::new();
    dir.write("outside/secret.flow", "roles LEAKED_ROLE\n");
    dir.write(
        "wf/main.flow",
        format!("{VALID}include \"link/secret.flow\"\n"),
    );
    std::os::unix::fs::symlink(dir.path().join("outside"), dir.path().join("wf/link")).unwrap();
    let run = dir
        .flowctl()
        .args(["check", "wf/main.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert!(err.contains("E017"), "{err}");
    assert!(!err.contains("LEAKED_ROLE"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_directory_member_symlinked_out_of_the_directory_is_refused() {
    let dir = Project::new();
    dir.write("wf/main.flow", VALID);
    dir.write("secret.txt", "LEAKED_TEXT\n");
    std::os::unix::fs::symlink(
        dir.path().join("secret.txt"),
        dir.path().join("wf/env.flow"),
    )
    .unwrap();
    let run = dir.flowctl().args(["check", "wf"]).output().status(2);
    let err = run.stderr();
    assert!(err.contains("outside the directory given"), "{err}");
    assert!(!err.contains("LEAKED_TEXT"), "{err}");
}

#[cfg(unix)]
#[test]
fn an_include_of_a_fifo_is_refused_without_blocking() {
    let dir = Project::new();
    dir.write("main.flow", format!("{VALID}include \"pipe.flow\"\n"));
    let made = std::process::Command::new("mkfifo")
        .arg(dir.path().join("pipe.flow"))
        .status()
        .unwrap();
    assert!(made.success());
    let out = dir
        .flowctl()
        .args(["check", "main.flow"])
        .output_within(Duration::from_secs(60));
    let err = out.stderr();
    assert_eq!(out.code(), 1, "{err}");
    assert!(err.contains("E018 include-not-a-file"), "{err}");
    assert!(err.contains("it is a FIFO, not a regular file"), "{err}");
    // Named on the command line, it is refused too.
    let out = dir
        .flowctl()
        .args(["check", "pipe.flow"])
        .output_within(Duration::from_secs(60));
    let err = out.stderr();
    assert_eq!(out.code(), 2, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

#[cfg(unix)]
#[test]
fn an_include_of_a_device_is_refused() {
    let dir = Project::new();
    dir.write("main.flow", format!("{VALID}include \"/dev/zero\"\n"));
    let out = dir
        .flowctl()
        .args(["check", "main.flow", "--include-root", "/dev"])
        .output_within(Duration::from_secs(60));
    let err = out.stderr();
    assert_eq!(out.code(), 1, "{err}");
    assert!(err.contains("E018"), "{err}");
    assert!(err.contains("it is a device"), "{err}");
}

#[test]
fn an_include_over_16_mib_is_refused() {
    let dir = Project::new();
    dir.write("main.flow", format!("{VALID}include \"huge.flow\"\n"));
    // Sparse: no 16 MiB written to disk.
    let huge = std::fs::File::create(dir.path().join("huge.flow")).unwrap();
    huge.set_len(16 * 1024 * 1024 + 1).unwrap();
    let run = dir
        .flowctl()
        .args(["check", "main.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert!(err.contains("E019 include-too-large"), "{err}");
    assert!(err.contains("larger than 16 MiB"), "{err}");
    // Named on the command line: a usage error with the same limit.
    let run = dir
        .flowctl()
        .args(["check", "huge.flow"])
        .output()
        .status(2);
    assert!(
        run.stderr().contains("larger than 16 MiB"),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_non_utf8_include_gets_a_clear_error() {
    let dir = Project::new();
    dir.write("main.flow", format!("{VALID}include \"latin1.flow\"\n"));
    dir.write("latin1.flow", b"# caf\xe9 BINARY_PAYLOAD\nroles A\n");
    let run = dir
        .flowctl()
        .args(["check", "main.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert!(err.contains("E015"), "{err}");
    assert!(
        err.contains("it is not UTF-8 text (invalid byte at 1:6)"),
        "{err}"
    );
    assert!(!err.contains("BINARY_PAYLOAD"), "{err}");
    let run = dir
        .flowctl()
        .args(["check", "latin1.flow"])
        .output()
        .status(2);
    assert!(run.stderr().contains("not UTF-8 text"), "{}", run.stderr());
}

#[test]
fn a_diagnostic_past_column_65535_does_not_panic() {
    let dir = Project::new();
    dir.write("wide.flow", format!("roles A\n{}}}\n", " ".repeat(70_000)));
    let run = dir
        .flowctl()
        .args(["check", "wide.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert!(err.contains("E001"), "{err}");
    assert!(err.contains("wide.flow:2:70001"), "{err}");
    assert!(err.len() < 4096, "{} bytes of diagnostics", err.len());
}

#[test]
fn a_long_line_is_shown_as_an_excerpt_and_quoted_input_is_cut() {
    let dir = Project::new();
    let zone = "Z".repeat(2 * 1024 * 1024);
    dir.write(
        "zone.flow",
        VALID.replace(
            "roles ADMIN\n}",
            &format!("roles ADMIN\n  zone  \"{zone}\"\n}}"),
        ),
    );
    let run = dir
        .flowctl()
        .args(["check", "zone.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert!(err.contains("E007 unknown-time-zone"), "{err}");
    assert!(err.contains("zone.flow:19:9"), "{err}");
    assert!(err.len() < 4096, "{} bytes of diagnostics", err.len());
    let longest = err.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(longest < 400, "a line of {longest} characters");
    assert!(err.contains('…'), "{err}");
}

#[test]
fn many_errors_render_the_first_hundred_and_count_the_rest() {
    let dir = Project::new();
    let text: String = (0..2_500).map(|i| format!("report R{i} {{\n")).collect();
    dir.write("broken.flow", &text);
    let run = dir
        .flowctl()
        .args(["check", "broken.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert_eq!(err.matches("E001 syntax").count(), 100);
    assert!(
        err.contains("… and 2400 more (2400 errors, 0 warnings) not shown"),
        "{}",
        &err[err.len().saturating_sub(500)..]
    );
    assert!(err.contains("failed: 2500 errors"), "{err}");
}

#[test]
fn control_characters_in_the_source_do_not_reach_the_terminal() {
    let dir = Project::new();
    dir.write(
        "esc.flow",
        VALID.replace(
            "roles ADMIN\n}",
            "roles ADMIN\n  zone  \"\u{1b}]0;pwned\u{7}\u{1b}[2J\"\n}",
        ),
    );
    let run = dir.flowctl().args(["check", "esc.flow"]).output().status(1);
    let err = run.stderr();
    assert!(err.contains("E007"), "{err}");
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
}

/// A workflow whose one report reads a SQLite source with `query_file "{path}"`.
fn with_query_file(path: &str) -> String {
    format!(
        "config {{\n  all_counties ADMIN\n}}\n\nroles ADMIN\n\nsource db {{\n  sqlite \"db.sqlite\"\n}}\n\nreport DAILY {{\n  source     db\n  query_file \"{path}\"\n}}\n\nschedule daily {{\n  cron  \"0 30 5 * * ?\"\n  run   DAILY\n  roles ADMIN\n}}\n"
    )
}

#[test]
fn a_query_file_is_fenced_like_an_include() {
    let dir = Project::new();
    dir.write("secret.sql", "SELECT 'TOP_SECRET_QUERY'\n");
    dir.write("wf/main.flow", with_query_file("../secret.sql"));
    let run = dir
        .flowctl()
        .args(["check", "wf/main.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert!(err.contains("E017 include-outside-root"), "{err}");
    assert!(
        err.contains("cannot read query file `../secret.sql`"),
        "{err}"
    );
    assert!(!err.contains("TOP_SECRET_QUERY"), "{err}");
    // `--include-root` admits it, as it admits an include.
    dir.flowctl()
        .args(["check", "wf/main.flow", "--include-root", "."])
        .output()
        .success();
    // Not a regular file, too large, not UTF-8: refused without being read.
    dir.write("wf/dir.sql/x", "");
    dir.write("wf/latin1.sql", b"SELECT '\xe9'\n");
    let huge = std::fs::File::create(dir.path().join("wf/huge.sql")).unwrap();
    huge.set_len(16 * 1024 * 1024 + 1).unwrap();
    for (path, expected) in [
        ("dir.sql", "E018 include-not-a-file"),
        ("huge.sql", "E019 include-too-large"),
        ("latin1.sql", "not UTF-8 text (invalid byte at 1:9)"),
        ("missing.sql", "E015 include"),
    ] {
        dir.write("wf/main.flow", with_query_file(path));
        let run = dir
            .flowctl()
            .args(["check", "wf/main.flow"])
            .output_within(Duration::from_secs(60));
        assert_eq!(run.code(), 1, "{path}: {}", run.stderr());
        assert!(run.stderr().contains(expected), "{path}: {}", run.stderr());
    }
}

#[test]
fn a_query_files_diagnostics_point_into_it() {
    let dir = Project::new();
    dir.write(
        "wf/sql/daily.sql",
        "SELECT *\n  FROM cases\n WHERE opened_on >= :interval_strat\n",
    );
    dir.write("wf/main.flow", with_query_file("sql/daily.sql"));
    let run = dir
        .flowctl()
        .args(["check", "wf/main.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert!(err.contains("unknown parameter `:interval_strat`"), "{err}");
    assert!(err.contains("sql/daily.sql:3:21"), "{err}");
    assert!(err.contains("did you mean `:interval_start`?"), "{err}");
}
