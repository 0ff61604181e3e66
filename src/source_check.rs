//! `flowctl check`'s look at the data: every column a rule names must be in its source.
//!
//! The compiler proves what the text alone can prove and reads no files; whether a mask rule
//! or a county column names a real column only the data can tell. This pass reads the header
//! of each file source (the CSV header, the keys of the first JSON object) through a function
//! the caller gives — [`crate::pipeline::read_columns`] in the CLI — and reports, at the rule
//! that names it, every column the source lacks. The pipeline applies the same rule to every
//! run before it writes a row ([`crate::pipeline`]'s column check); this pass says so earlier.
//!
//! A database source has no header of its own: each report's query has its result columns.
//! For SQLite the query is prepared on the database opened read-only (never run), so a query
//! error is reported at the report's query and its columns are checked like a file's header.
//! For PostgreSQL the same is done with a prepared statement when the source's URL variable is
//! set; otherwise a warning says the queries were not checked.
//!
//! A source that does not exist yet is a warning (data may arrive before the first fire; a
//! job that finds it missing fails at once); a source that exists but cannot be read as its
//! format, or is not a regular file, is an error.

use std::path::Path;

use crate::diagnostic::{did_you_mean, Code, Diagnostic};
use crate::pipeline::{column_preview, PipelineError};
use crate::source_map::Span;
use crate::workflow::{DataFormat, SourceKind, Workflow};

/// Holds every source's columns against the rules that name them. `read` gives a file
/// source's column names (empty for a source without any, which has no rows to leak).
pub fn check_sources(
    workflow: &Workflow,
    read: impl Fn(&Path, DataFormat) -> Result<Vec<String>, PipelineError>,
) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for (index, source) in workflow.sources.iter().enumerate() {
        let location = workflow
            .locations
            .sources
            .get(index)
            .copied()
            .unwrap_or_default();
        let at = location.path.or(location.name);
        let reports: Vec<usize> = (0..workflow.reports.len())
            .filter(|&r| workflow.reports[r].source == index)
            .collect();
        let path = match &source.kind {
            SourceKind::File { path, .. } | SourceKind::Sqlite { path } => path,
            SourceKind::Postgres { url_env } => {
                check_postgres(workflow, index, url_env, &reports, &mut diags);
                continue;
            }
        };
        match std::fs::metadata(path) {
            Err(_) => {
                diags.push(located(
                    Diagnostic::warning(
                        Code::SourceNotFound,
                        format!(
                            "source `{}`: {} does not exist",
                            source.name,
                            path.display()
                        ),
                    ),
                    at,
                    "no file here yet",
                    "a job that finds its source missing fails at once; check the path (relative to this file)",
                ));
                continue;
            }
            Ok(meta) if !meta.is_file() => {
                diags.push(located(
                    Diagnostic::error(
                        Code::BadSource,
                        format!(
                            "source `{}`: {} is not a regular file",
                            source.name,
                            path.display()
                        ),
                    ),
                    at,
                    "not a regular file",
                    match source.kind {
                        SourceKind::Sqlite { .. } => "a sqlite source is a SQLite database file",
                        _ => "a source is a CSV or JSON-lines file",
                    },
                ));
                continue;
            }
            Ok(_) => {}
        }
        match &source.kind {
            SourceKind::File { format, .. } => match read(path, *format) {
                Ok(columns) => {
                    let what = path.display().to_string();
                    check_columns(workflow, index, &reports, &columns, &what, &mut diags);
                }
                Err(e) => {
                    diags.push(located(
                        Diagnostic::error(
                            Code::BadSource,
                            format!("source `{}` cannot be read: {e}", source.name),
                        ),
                        at,
                        "its header cannot be read",
                        "a job reading it would fail the same way",
                    ));
                }
            },
            _ => {
                for &r in &reports {
                    let Some(query) = &workflow.reports[r].query else {
                        continue;
                    };
                    match crate::pipeline::describe_sqlite_query(path, &query.text) {
                        Ok((columns, _)) => {
                            let what =
                                format!("the query of report `{}`", workflow.reports[r].name);
                            check_columns(workflow, index, &[r], &columns, &what, &mut diags);
                        }
                        Err(e) => diags.push(query_error(workflow, r, &e.to_string())),
                    }
                }
            }
        }
    }
    diags
}

/// A PostgreSQL source's queries, described by the server when the URL variable is set.
fn check_postgres(
    workflow: &Workflow,
    index: usize,
    url_env: &str,
    reports: &[usize],
    diags: &mut Vec<Diagnostic>,
) {
    let source = &workflow.sources[index];
    let with_query: Vec<usize> = reports
        .iter()
        .copied()
        .filter(|&r| workflow.reports[r].query.is_some())
        .collect();
    if with_query.is_empty() {
        return;
    }
    let url = std::env::var(url_env).ok().filter(|u| !u.trim().is_empty());
    let Some(url) = url else {
        let location = workflow
            .locations
            .sources
            .get(index)
            .copied()
            .unwrap_or_default();
        diags.push(located(
            Diagnostic::warning(
                Code::SourceNotFound,
                format!(
                    "source `{}`: environment variable {url_env} is not set, so its queries were not checked against the database",
                    source.name
                ),
            ),
            location.name,
            "not checked",
            &format!("set {url_env} to the connection URL to check each query's columns; a job without it fails at once"),
        ));
        return;
    };
    for r in with_query {
        let Some(query) = &workflow.reports[r].query else {
            continue;
        };
        match crate::pipeline::describe_postgres_query(&url, &query.text) {
            Ok(columns) => {
                let what = format!("the query of report `{}`", workflow.reports[r].name);
                check_columns(workflow, index, &[r], &columns, &what, diags);
            }
            Err(e) if e.is_transient() => {
                diags.push(Diagnostic::warning(
                    Code::SourceNotFound,
                    format!(
                        "source `{}`: the database could not be reached ({e}); report `{}`'s query was not checked",
                        source.name, workflow.reports[r].name
                    ),
                ));
                // The next query would wait for the same server.
                return;
            }
            Err(e) => diags.push(query_error(workflow, r, &e.to_string())),
        }
    }
}

/// The database refused report `r`'s query: an error at the query.
fn query_error(workflow: &Workflow, r: usize, message: &str) -> Diagnostic {
    let report = &workflow.reports[r];
    let span = workflow.locations.queries.get(r).copied().flatten();
    located(
        Diagnostic::error(
            Code::BadSource,
            format!("report `{}`: its query fails: {message}", report.name),
        ),
        span,
        "the database refuses this query",
        "every job of this report would fail the same way",
    )
}

/// Holds `columns` (a file's header, or a query's result columns, named `what`) against the
/// county column of source `index` and the mask rules of `reports`.
fn check_columns(
    workflow: &Workflow,
    index: usize,
    reports: &[usize],
    columns: &[String],
    what: &str,
    diags: &mut Vec<Diagnostic>,
) {
    if columns.is_empty() {
        return;
    }
    let source = &workflow.sources[index];
    let location = workflow
        .locations
        .sources
        .get(index)
        .copied()
        .unwrap_or_default();
    let known = |name: &str| columns.iter().any(|c| c == name);
    let missing = |what: String, name: &str, span: Option<Span>| {
        let mut d = Diagnostic::error(Code::UnknownColumn, what);
        if let Some(span) = span {
            d = d.label(span, "no such column in the source's header");
        }
        d.help(match did_you_mean(name, columns.iter().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`? jobs fail before writing a row while a rule names a missing column"),
            None => format!(
                "its columns: {}; jobs fail before writing a row while a rule names a missing column",
                column_preview(columns.iter().map(String::as_bytes))
            ),
        })
    };
    if let Some(column) = &source.county_column {
        if !known(column) {
            let what = format!(
                "county column `{column}` is not a column of source `{}` ({what})",
                source.name,
            );
            diags.push(missing(what, column, location.county_column));
        }
    }
    // A rule of a shared `masking` set is reported once, however many reports use it.
    let mut reported: Vec<(&str, Option<Span>)> = Vec::new();
    for &r in reports {
        let report = &workflow.reports[r];
        let spans = workflow.locations.mask_fields.get(r);
        for (m, rule) in report.masks.iter().enumerate() {
            let span = spans.and_then(|s| s.get(m)).copied();
            if known(&rule.field) || reported.contains(&(rule.field.as_str(), span)) {
                continue;
            }
            reported.push((&rule.field, span));
            let message = format!(
                "mask rule on `{}`: no such column in source `{}` ({what}), which report `{}` reads",
                rule.field, source.name, report.name
            );
            diags.push(missing(message, &rule.field, span));
        }
    }
}

fn located(d: Diagnostic, span: Option<Span>, label: &str, help: &str) -> Diagnostic {
    match span {
        Some(span) => d.label(span, label),
        None => d,
    }
    .help(help)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::compile;
    use crate::loader::load_text;

    fn workflow(dir: &Path, text: &str) -> (Workflow, crate::source_map::SourceMap) {
        let c = compile(load_text(&dir.join("w.flow"), text.to_string()));
        let w = c.workflow.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
        (w, c.sources)
    }

    const FLOW: &str = "config {\n  all_counties ADMIN\n}\nroles CASE_WORKER, ADMIN\nsource s {\n  path \"s.csv\"\n  county_column county_id\n}\nmasking pii {\n  mask client_name redact for CASE_WORKER\n}\nreport A {\n  source s\n  masking pii\n}\nreport B {\n  source s\n  masking pii\n  mask ssn last4 except ADMIN\n}\n";

    #[test]
    fn a_mask_on_a_column_the_header_lacks_is_an_error_at_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.csv"), "county_id,name,ssn\n").unwrap();
        let (w, sources) = workflow(dir.path(), FLOW);
        let diags = check_sources(&w, crate::pipeline::read_columns);
        // The shared rule once (not once per report using it), at the field name.
        assert_eq!(diags.len(), 1, "{diags:?}");
        let d = &diags[0];
        assert_eq!(d.code, Code::UnknownColumn);
        assert!(d.is_error());
        assert_eq!(sources.text(d.primary_span().unwrap()), "client_name");
        assert!(d.message.contains("report `A`"), "{}", d.message);
        assert!(
            d.help.as_deref().unwrap().contains("`name`"),
            "{:?}",
            d.help
        );
    }

    #[test]
    fn a_missing_county_column_is_an_error_and_a_matching_header_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let (w, sources) = workflow(dir.path(), FLOW);
        let header = |columns: &'static [&'static str]| {
            move |_: &Path, _: DataFormat| Ok(columns.iter().map(|c| c.to_string()).collect())
        };
        std::fs::write(dir.path().join("s.csv"), "").unwrap();
        let diags = check_sources(&w, header(&["county", "client_name", "ssn"]));
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(sources.text(diags[0].primary_span().unwrap()), "county_id");
        assert!(check_sources(&w, header(&["county_id", "client_name", "ssn"])).is_empty());
        // A source without columns has no rows: nothing to mask or filter.
        assert!(check_sources(&w, header(&[])).is_empty());
    }

    #[test]
    fn a_missing_source_is_a_warning_and_a_directory_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = workflow(dir.path(), FLOW);
        let never = |_: &Path, _: DataFormat| -> Result<Vec<String>, PipelineError> {
            unreachable!("nothing to read")
        };
        let diags = check_sources(&w, never);
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].code, Code::SourceNotFound);
        assert!(!diags[0].is_error());
        std::fs::create_dir(dir.path().join("s.csv")).unwrap();
        let diags = check_sources(&w, never);
        assert_eq!(diags[0].code, Code::BadSource);
        assert!(diags[0].is_error());
    }

    #[test]
    fn an_unreadable_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let text = FLOW.replace("s.csv", "s.jsonl");
        std::fs::write(dir.path().join("s.jsonl"), "not json\n").unwrap();
        let (w, _) = workflow(dir.path(), &text);
        let diags = check_sources(&w, crate::pipeline::read_columns);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].code, Code::BadSource);
        assert!(
            diags[0].message.contains("bad JSON line"),
            "{}",
            diags[0].message
        );
    }

    fn with_query(w: &mut Workflow, report: usize, text: &str) {
        w.reports[report].query = Some(crate::workflow::Query {
            text: text.to_string(),
            file: None,
            placeholders: Vec::new(),
        });
    }

    #[test]
    fn a_sqlite_query_is_prepared_and_its_columns_held_against_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.sqlite");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE s (county_id TEXT, client_name TEXT, ssn TEXT, name TEXT)")
            .unwrap();
        let (mut w, sources) = workflow(dir.path(), FLOW);
        w.sources[0].kind = SourceKind::Sqlite { path: db.clone() };
        w.locations.queries = vec![None, w.locations.mask_fields[1].first().copied()];
        with_query(&mut w, 0, "SELECT county_id, client_name, ssn FROM s");
        with_query(&mut w, 1, "SELECT county_id, name AS client_name FROM s");
        let diags = check_sources(&w, crate::pipeline::read_columns);
        // Report B's query lacks `ssn` (its own rule); A's is clean.
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].code, Code::UnknownColumn);
        assert!(
            diags[0].message.contains("the query of report `B`"),
            "{}",
            diags[0].message
        );
        assert_eq!(sources.text(diags[0].primary_span().unwrap()), "ssn");

        // A query the database refuses is an error at the query; the database is not changed.
        with_query(&mut w, 1, "SELECT nope FROM s");
        with_query(&mut w, 0, "DELETE FROM s");
        let diags = check_sources(&w, crate::pipeline::read_columns);
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(diags
            .iter()
            .all(|d| d.code == Code::BadSource && d.is_error()));
        assert!(
            diags[0].message.contains("would change the database"),
            "{}",
            diags[0].message
        );
        assert!(
            diags[1].message.contains("no such column: nope"),
            "{}",
            diags[1].message
        );
        assert!(diags[1].primary_span().is_some());

        // A database that does not exist yet is a warning.
        w.sources[0].kind = SourceKind::Sqlite {
            path: dir.path().join("later.sqlite"),
        };
        let diags = check_sources(&w, crate::pipeline::read_columns);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].code, Code::SourceNotFound);
    }

    #[test]
    fn a_postgres_source_without_its_url_variable_is_not_checked_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = workflow(dir.path(), FLOW);
        w.sources[0].kind = SourceKind::Postgres {
            url_env: "SOURCE_CHECK_TEST_URL_NEVER_SET".into(),
        };
        with_query(&mut w, 0, "SELECT 1");
        let diags = check_sources(&w, crate::pipeline::read_columns);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(!diags[0].is_error());
        assert!(
            diags[0].message.contains("SOURCE_CHECK_TEST_URL_NEVER_SET")
                && diags[0].message.contains("not checked"),
            "{}",
            diags[0].message
        );
    }

    #[test]
    fn a_postgres_query_is_described_by_the_server() {
        let Some(url) = crate::store::pg_test_schema::database_url() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = workflow(dir.path(), FLOW);
        std::env::set_var("SOURCE_CHECK_TEST_PG_URL", &url);
        w.sources[0].kind = SourceKind::Postgres {
            url_env: "SOURCE_CHECK_TEST_PG_URL".into(),
        };
        with_query(
            &mut w,
            0,
            "SELECT 'x' AS county_id, 'y' AS client_name, 'z' AS ssn",
        );
        with_query(
            &mut w,
            1,
            "SELECT 'x' AS county_id, 'y' AS client_name WHERE :role = 'r'",
        );
        let diags = check_sources(&w, crate::pipeline::read_columns);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].code, Code::UnknownColumn);
        assert!(diags[0].message.contains("`ssn`"), "{}", diags[0].message);
        with_query(&mut w, 1, "SELECT * FROM no_such_table_for_check");
        let diags = check_sources(&w, crate::pipeline::read_columns);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].code, Code::BadSource);
        assert!(diags[0].message.contains("42P01"), "{}", diags[0].message);
    }
}
