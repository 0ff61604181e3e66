//! What `flowctl` reads and prints for a workflow is fenced and bounded:
//! includes stay inside the workflow's root, only regular UTF-8 files of at
//! most 16 MiB are read, and diagnostics show excerpts, never whole lines or
//! files, whatever the input. Every test drives the real binary.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Flowctl;

const VALID: &str = "config {\n  all_counties ADMIN\n}\n\nroles ADMIN\n\nsource cases {\n  path \"cases.csv\"\n}\n\nreport DAILY {\n  source cases\n}\n\nschedule daily {\n  cron  \"0 30 5 * * ?\"\n  run   DAILY\n  roles ADMIN\n}\n";

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

/// Runs `flowctl` and kills it if it has not finished after `limit` (a
/// blocked read must fail the test, not hang it).
fn run_with_limit(cmd: Flowctl, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flowctl did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn include_outside_the_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("secret.flow"), "roles TOP_SECRET_ROLE\n");
    write(
        &dir.path().join("wf/main.flow"),
        &format!("{VALID}include \"../secret.flow\"\ninclude \"/proc/self/environ\"\n"),
    );
    let run = Flowctl::new()
        .dir(dir.path())
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
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("shared/extra.flow"),
        "report EXTRA {\n  source cases\n}\n\nafter DAILY run EXTRA\n",
    );
    write(
        &dir.path().join("wf/main.flow"),
        &format!("{VALID}include \"../shared/extra.flow\"\n"),
    );
    Flowctl::new()
        .dir(dir.path())
        .args(["check", "wf/main.flow"])
        .output()
        .status(1);
    let run = Flowctl::new()
        .dir(dir.path())
        .args(["check", "wf/main.flow", "--include-root", "shared"])
        .output()
        .success();
    assert!(run.stdout().contains("2 reports"), "{}", run.stdout());
    // Every command that loads a workflow takes the flag.
    for command in ["graph", "plan", "schedule"] {
        Flowctl::new()
            .dir(dir.path())
            .args([command, "wf/main.flow", "--include-root", "shared"])
            .output()
            .success();
    }
    let run = Flowctl::new()
        .dir(dir.path())
        .args(["fmt", "wf/main.flow"])
        .output()
        .status(1);
    assert!(run.stderr().contains("E017"), "{}", run.stderr());
    Flowctl::new()
        .dir(dir.path())
        .args(["fmt", "wf/main.flow", "--include-root", "shared"])
        .output()
        .success();
    // A root that does not exist is a usage error.
    Flowctl::new()
        .dir(dir.path())
        .args(["check", "wf/main.flow", "--include-root", "nowhere"])
        .output()
        .status(2);
}

#[test]
fn the_root_of_a_directory_is_that_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("wf/main.flow"), VALID);
    write(
        &dir.path().join("wf/more.flow"),
        "include \"sub/inner.flow\"\ninclude \"../outer.flow\"\n",
    );
    write(&dir.path().join("wf/sub/inner.flow"), "# inside\n");
    write(&dir.path().join("outer.flow"), "# outside\n");
    let run = Flowctl::new()
        .dir(dir.path())
        .args(["check", "wf"])
        .output()
        .status(1);
    let err = run.stderr();
    assert_eq!(err.matches("E017").count(), 1, "{err}");
    assert!(err.contains("`../outer.flow`"), "{err}");
}

#[cfg(unix)]
#[test]
fn an_include_through_a_symlink_out_of_the_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("outside/secret.flow"),
        "roles LEAKED_ROLE\n",
    );
    write(
        &dir.path().join("wf/main.flow"),
        &format!("{VALID}include \"link/secret.flow\"\n"),
    );
    std::os::unix::fs::symlink(dir.path().join("outside"), dir.path().join("wf/link")).unwrap();
    let run = Flowctl::new()
        .dir(dir.path())
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
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("wf/main.flow"), VALID);
    write(&dir.path().join("secret.txt"), "LEAKED_TEXT\n");
    std::os::unix::fs::symlink(
        dir.path().join("secret.txt"),
        dir.path().join("wf/env.flow"),
    )
    .unwrap();
    let run = Flowctl::new()
        .dir(dir.path())
        .args(["check", "wf"])
        .output()
        .status(2);
    let err = run.stderr();
    assert!(err.contains("outside the directory given"), "{err}");
    assert!(!err.contains("LEAKED_TEXT"), "{err}");
}

#[cfg(unix)]
#[test]
fn an_include_of_a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("main.flow"),
        &format!("{VALID}include \"pipe.flow\"\n"),
    );
    let made = std::process::Command::new("mkfifo")
        .arg(dir.path().join("pipe.flow"))
        .status()
        .unwrap();
    assert!(made.success());
    let out = run_with_limit(
        Flowctl::new().dir(dir.path()).args(["check", "main.flow"]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("E018 include-not-a-file"), "{err}");
    assert!(err.contains("it is a FIFO, not a regular file"), "{err}");
    // Named on the command line, it is refused too.
    let out = run_with_limit(
        Flowctl::new().dir(dir.path()).args(["check", "pipe.flow"]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

#[cfg(unix)]
#[test]
fn an_include_of_a_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("main.flow"),
        &format!("{VALID}include \"/dev/zero\"\n"),
    );
    let out = run_with_limit(
        Flowctl::new()
            .dir(dir.path())
            .args(["check", "main.flow", "--include-root", "/dev"]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("E018"), "{err}");
    assert!(err.contains("it is a device"), "{err}");
}

#[test]
fn an_include_over_16_mib_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("main.flow"),
        &format!("{VALID}include \"huge.flow\"\n"),
    );
    // Sparse: no 16 MiB written to disk.
    let huge = std::fs::File::create(dir.path().join("huge.flow")).unwrap();
    huge.set_len(16 * 1024 * 1024 + 1).unwrap();
    let run = Flowctl::new()
        .dir(dir.path())
        .args(["check", "main.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert!(err.contains("E019 include-too-large"), "{err}");
    assert!(err.contains("larger than 16 MiB"), "{err}");
    // Named on the command line: a usage error with the same limit.
    let run = Flowctl::new()
        .dir(dir.path())
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
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("main.flow"),
        &format!("{VALID}include \"latin1.flow\"\n"),
    );
    std::fs::write(
        dir.path().join("latin1.flow"),
        b"# caf\xe9 BINARY_PAYLOAD\nroles A\n",
    )
    .unwrap();
    let run = Flowctl::new()
        .dir(dir.path())
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
    let run = Flowctl::new()
        .dir(dir.path())
        .args(["check", "latin1.flow"])
        .output()
        .status(2);
    assert!(run.stderr().contains("not UTF-8 text"), "{}", run.stderr());
}

#[test]
fn a_diagnostic_past_column_65535_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("wide.flow"),
        &format!("roles A\n{}}}\n", " ".repeat(70_000)),
    );
    let run = Flowctl::new()
        .dir(dir.path())
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
    let dir = tempfile::tempdir().unwrap();
    let zone = "Z".repeat(2 * 1024 * 1024);
    write(
        &dir.path().join("zone.flow"),
        &VALID.replace(
            "roles ADMIN\n}",
            &format!("roles ADMIN\n  zone  \"{zone}\"\n}}"),
        ),
    );
    let run = Flowctl::new()
        .dir(dir.path())
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
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..2_500).map(|i| format!("report R{i} {{\n")).collect();
    write(&dir.path().join("broken.flow"), &text);
    let run = Flowctl::new()
        .dir(dir.path())
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
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("esc.flow"),
        &VALID.replace(
            "roles ADMIN\n}",
            "roles ADMIN\n  zone  \"\u{1b}]0;pwned\u{7}\u{1b}[2J\"\n}",
        ),
    );
    let run = Flowctl::new()
        .dir(dir.path())
        .args(["check", "esc.flow"])
        .output()
        .status(1);
    let err = run.stderr();
    assert!(err.contains("E007"), "{err}");
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
}
