//! Golden tests: every `tests/data/err/*.flow` fails `flowctl check` with the
//! diagnostics in its `.stderr` file; every `tests/data/ok/*.flow` checks
//! clean and draws the graphs in its golden files; every bundled workflow
//! checks clean and is formatted. Refresh with `UPDATE_GOLDEN=1 cargo test`.

mod common;

use common::{flow_files, golden, repo, Flowctl};

#[test]
fn error_cases_match_their_diagnostics() {
    let dir = repo().join("tests/data/err");
    let files = flow_files(&dir);
    assert!(
        files.len() >= 15,
        "at least 15 error cases, found {}",
        files.len()
    );
    let mut codes = std::collections::BTreeSet::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let run = Flowctl::new().dir(&dir).args(["check", &name]).output();
        let expected_code = if name.starts_with("warnings") { 0 } else { 1 };
        assert_eq!(run.code(), expected_code, "{name}: {}", run.stderr());
        let text = format!("{}{}", run.stderr(), run.stdout());
        for code in text.split_whitespace().filter(|w| {
            w.len() == 4
                && (w.starts_with('E') || w.starts_with('W'))
                && w[1..].chars().all(|c| c.is_ascii_digit())
        }) {
            codes.insert(code.to_string());
        }
        golden(&file.with_extension("stderr"), &text);
    }
    // One case per diagnostic the compiler can emit.
    for code in [
        "E001", "E002", "E003", "E004", "E005", "E006", "E007", "E008", "E009", "E010", "E011",
        "E012", "E013", "E014", "E015", "E016", "E017", "E018", "E020", "E021", "E022", "E023",
        "E024", "E025", "W001", "W002", "W004", "W007", "W008", "W009", "W010",
    ] {
        assert!(codes.contains(code), "no error case produces {code}");
    }
}

#[test]
fn ok_cases_check_clean_and_draw_their_graphs() {
    let dir = repo().join("tests/data/ok");
    let files = flow_files(&dir);
    assert!(!files.is_empty());
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let run = Flowctl::new()
            .dir(&dir)
            .args(["check", &name])
            .output()
            .success();
        assert_eq!(run.stderr(), "", "{name} has diagnostics");
        for (format, ext) in [
            ("text", "txt"),
            ("dot", "dot"),
            ("mermaid", "mmd"),
            ("json", "json"),
        ] {
            let run = Flowctl::new()
                .dir(&dir)
                .args(["graph", &name, "--format", format])
                .output()
                .success();
            golden(&file.with_extension(ext), &run.stdout());
        }
        Flowctl::new()
            .dir(&dir)
            .args(["fmt", "--check", &name])
            .output()
            .success();
    }
}

#[test]
fn bundled_workflows_check_clean_and_are_formatted() {
    let dir = repo().join("workflows");
    let files = flow_files(&dir);
    assert!(!files.is_empty());
    for file in &files {
        let run = Flowctl::new()
            .args(["check"])
            .args([file])
            .output()
            .success();
        assert_eq!(run.stderr(), "", "{} has diagnostics", file.display());
        Flowctl::new()
            .args(["fmt", "--check"])
            .args([file])
            .output()
            .success();
    }
    // The directory as a whole is one workflow too.
    Flowctl::new()
        .args(["check"])
        .args([&dir])
        .output()
        .success();
}

#[test]
fn bundled_workflow_graph_is_golden() {
    let dir = repo().join("workflows");
    for (format, ext) in [
        ("text", "txt"),
        ("dot", "dot"),
        ("mermaid", "mmd"),
        ("json", "json"),
    ] {
        let run = Flowctl::new()
            .dir(&dir)
            .args(["graph", "reports.flow", "--format", format])
            .output()
            .success();
        golden(
            &repo().join(format!("tests/data/reports.graph.{ext}")),
            &run.stdout(),
        );
    }
}

#[test]
fn dot_output_renders_with_graphviz() {
    let dir = repo().join("workflows");
    let run = Flowctl::new()
        .dir(&dir)
        .args(["graph", "reports.flow", "--format", "dot"])
        .output()
        .success();
    let dot = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = dot else {
        // CI installs graphviz (see .ci/run) and sets CI=true: there it must run.
        assert!(
            std::env::var_os("CI").is_none(),
            "graphviz `dot` is required in CI"
        );
        eprintln!("skipped: graphviz `dot` is not installed");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(run.stdout().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
}

/// Graphviz's default fonts lack emoji and many symbols: DOT output is plain ASCII (non-ASCII
/// values become HTML entities).
#[test]
fn dot_output_uses_only_ascii() {
    let mut cases: Vec<(std::path::PathBuf, String)> = flow_files(&repo().join("tests/data/ok"))
        .into_iter()
        .map(|f| {
            (
                repo().join("tests/data/ok"),
                f.file_name().unwrap().to_string_lossy().into(),
            )
        })
        .collect();
    cases.push((repo().join("workflows"), "reports.flow".into()));
    for (dir, name) in cases {
        let out = Flowctl::new()
            .dir(&dir)
            .args(["graph", &name, "--format", "dot"])
            .output()
            .success()
            .stdout();
        let bad: Vec<char> = out.chars().filter(|c| !c.is_ascii()).collect();
        assert!(bad.is_empty(), "{name}: non-ASCII {bad:?} in:\n{out}");
    }
}

#[test]
fn mermaid_output_is_a_flowchart() {
    let dir = repo().join("workflows");
    let out = Flowctl::new()
        .dir(&dir)
        .args(["graph", "reports.flow", "--format", "mermaid"])
        .output()
        .success()
        .stdout();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("flowchart LR"));
    for line in lines {
        let line = line.trim();
        // Every line is a node `id["label"]` or an edge `a -->|"label"| b`.
        let is_node = line.contains("[\"") && line.ends_with("\"]");
        let is_edge = (line.contains(" -->|\"") || line.contains(" -.->|\""))
            && line.matches("\"|").count() == 1;
        assert!(is_node || is_edge, "not a mermaid statement: {line}");
    }
}

#[test]
fn usage_errors_exit_2() {
    Flowctl::new().args(["check"]).output().status(2);
    Flowctl::new().args(["frobnicate"]).output().status(2);
    Flowctl::new()
        .args(["check", "/no/such/file.flow"])
        .output()
        .status(2);
}
