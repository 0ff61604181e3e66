//! A report's query (`query """…"""` inline, or `query_file "sql/x.sql"` read by the loader):
//! its placeholders, each of which must be a declared parameter or a built-in.
//!
//! Placeholders are found by [`crate::pipeline::sql_placeholders::scan`], which skips
//! literals, quoted identifiers and comments, and refuses the forms that would not be bound by
//! name; every diagnostic points at the exact `:name` — in the `.flow` file for an inline
//! query whose text is its source (triple-quoted, or quoted without escapes), in the `.sql`
//! file for a query file.

use crate::diagnostic::{did_you_mean, Code, Diagnostic};
use crate::params::BUILT_INS;
use crate::pipeline::sql_placeholders::{self, Dialect};
use crate::source_map::{FileId, Span};

use super::params::Declared;
use super::Compiler;

/// Where a query's text is in the files.
pub(super) enum QueryText<'a> {
    /// Byte `n` of the text is byte `start + n` of `file`.
    Mapped {
        text: &'a str,
        file: FileId,
        start: usize,
    },
    /// A quoted string with escapes: positions inside it are not the file's; diagnostics
    /// point at the whole string.
    Whole { text: &'a str, span: Span },
}

/// What the queries pass found: the distinct placeholder names (in order of first use) and
/// the first use of the window (`:interval_*`), for the window warning.
pub(super) struct Placeholders {
    pub(super) names: Vec<String>,
    pub(super) window_use: Option<Span>,
}

impl QueryText<'_> {
    pub(super) fn text(&self) -> &str {
        match self {
            QueryText::Mapped { text, .. } | QueryText::Whole { text, .. } => text,
        }
    }

    fn span(&self, range: std::ops::Range<usize>) -> Span {
        match self {
            QueryText::Mapped { file, start, .. } => Span::new(
                *file,
                start + range.start,
                start + range.end.max(range.start + 1),
            ),
            QueryText::Whole { span, .. } => *span,
        }
    }
}

/// The queries pass: reads a query's placeholders against the report's declarations.
impl Compiler<'_> {
    pub(super) fn placeholders(
        &mut self,
        query: &QueryText<'_>,
        dialect: Dialect,
        declared: &Declared,
    ) -> Option<Placeholders> {
        let found = match sql_placeholders::scan(query.text(), dialect) {
            Ok(found) => found,
            Err(e) => {
                self.diags.push(
                    Diagnostic::error(Code::BadQuery, e.error.to_string())
                        .label(query.span(e.range), "here")
                        .help(
                            "a query names its parameters as `:name`; the engine binds each \
                             value by name, never pasting it into the SQL",
                        ),
                );
                return None;
            }
        };
        let mut ok = true;
        for p in &found {
            let known = BUILT_INS.contains(&p.name.as_str())
                || declared.names.iter().any(|(n, _)| *n == p.name);
            if known {
                continue;
            }
            ok = false;
            let candidates = declared
                .names
                .iter()
                .map(|(n, _)| n.as_str())
                .chain(BUILT_INS.iter().copied());
            let help = match did_you_mean(&p.name, candidates) {
                Some(s) => format!("did you mean `:{s}`?"),
                None => format!(
                    "declare it in the report (`param {} string`), or use a built-in: {}",
                    p.name,
                    BUILT_INS.join(", ")
                ),
            };
            self.diags.push(
                Diagnostic::error(
                    Code::UnknownReference,
                    format!("unknown parameter `:{}`", p.name),
                )
                .label(
                    query.span(p.range.clone()),
                    "not a parameter of this report",
                )
                .help(help),
            );
        }
        let names = sql_placeholders::distinct(&found);
        // With an unknown placeholder, the parameter it misspells is not unused: say it once.
        let unused = if ok { declared.names.as_slice() } else { &[] };
        for (name, span) in unused {
            if !names.contains(name) {
                self.diags.push(
                    Diagnostic::warning(
                        Code::UnusedParam,
                        format!("parameter `{name}` is declared but the query never uses it"),
                    )
                    .label(*span, "declared here")
                    .help(format!(
                        "use it in the query as `:{name}`, or remove the declaration"
                    )),
                );
            }
        }
        let window_use = found
            .iter()
            .find(|p| p.name.starts_with("interval_"))
            .map(|p| query.span(p.range.clone()));
        ok.then_some(Placeholders { names, window_use })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::compiler::test_support::{compile_text, first, significant as codes};
    use crate::compiler::{compile, Compilation};
    use crate::params::{ParamType, ParamValue};

    const HEAD: &str = "roles A\nsource db {\n  sqlite \"x.sqlite\"\n}\n";

    fn report(body: &str) -> Compilation {
        compile_text(&format!("{HEAD}report R {{\n  source db\n{body}\n}}\n"))
    }

    #[test]
    fn an_inline_query_fills_text_placeholders_and_params() {
        let c = report(
            "  param status one_of(\"OPEN\", \"CLOSED\") default \"OPEN\" help \"which\"\n  param as_of date required\n  query \"\"\"\n    SELECT * FROM cases WHERE status = :status AND day = :as_of\n      AND (:county IS NULL OR county_id = :county) AND note <> ':no'\n  \"\"\"\n  window previous day\n  zone \"America/New_York\"",
        );
        assert!(codes(&c).is_empty(), "{:?}", c.diagnostics);
        let w = c.workflow.unwrap();
        let r = &w.reports[0];
        let q = r.query.as_ref().unwrap();
        assert_eq!(q.placeholders, ["status", "as_of", "county"]);
        assert!(q.text.starts_with("\n    SELECT"));
        assert_eq!(q.file, None);
        assert_eq!(r.params.len(), 2);
        assert_eq!(
            r.params[0].ty,
            ParamType::OneOf(vec!["OPEN".into(), "CLOSED".into()])
        );
        assert_eq!(r.params[0].default, Some(ParamValue::String("OPEN".into())));
        assert_eq!(r.params[0].help, "which");
        assert!(r.params[1].required && r.params[1].help.is_empty());
        assert_eq!(r.zone, chrono_tz::America::New_York);
        assert!(r.window.is_some());
    }

    #[test]
    fn an_unknown_placeholder_is_located_with_a_suggestion() {
        let c = report("  param status string\n  query \"\"\"SELECT 1\n WHERE s = :statu\"\"\"");
        assert_eq!(codes(&c), ["E002"], "{:?}", c.diagnostics);
        let d = c.diagnostics.iter().find(|d| d.is_error()).unwrap();
        assert_eq!(d.message, "unknown parameter `:statu`");
        assert_eq!(d.help.as_deref(), Some("did you mean `:status`?"));
        let span = d.primary_span().unwrap();
        assert_eq!(c.sources.text(span), ":statu");
        assert_eq!(c.sources.location(span), "w.flow:9:12");
        // A quoted string without escapes maps too; with escapes the whole string is shown.
        let c = report("  query \"SELECT :nope\"");
        assert_eq!(c.sources.text(first(&c).primary_span().unwrap()), ":nope");
        let c = report("  query \"SELECT \\\"x\\\" :nope\"");
        assert_eq!(
            c.sources.text(first(&c).primary_span().unwrap()),
            "\"SELECT \\\"x\\\" :nope\""
        );
    }

    #[test]
    fn query_rules_per_source_kind() {
        // A database source needs one query; SQLite's unnamed forms are refused.
        assert_eq!(codes(&report("")), ["E013"]);
        assert_eq!(
            codes(&report("  query \"SELECT 1\"\n  query_file \"q.sql\"")),
            ["E023", "E015"]
        );
        assert_eq!(codes(&report("  query \"SELECT ?\"")), ["E023"]);
        assert_eq!(codes(&report("  query \"SELECT 'x\"")), ["E023"]);
        // A file source takes neither a query nor parameters.
        let c = compile_text("roles A\nsource f {\n  path \"x.csv\"\n}\nreport R {\n  source f\n  param p string\n  query \"SELECT 1\"\n}\n");
        assert_eq!(codes(&c), ["E024", "E023"], "{:?}", c.diagnostics);
        assert!(c.diagnostics.iter().any(|d| d
            .message
            .contains("a query needs a sqlite or postgres source")));
    }

    #[test]
    fn a_query_file_is_read_and_located() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sql")).unwrap();
        std::fs::write(
            dir.path().join("sql/r.sql"),
            "SELECT *\nFROM t\nWHERE a = :interval_start AND b = :statu\n",
        )
        .unwrap();
        let text = format!("{HEAD}report R {{\n  source db\n  param status string\n  query_file \"sql/r.sql\"\n}}\n");
        let c = compile(crate::loader::load_text(
            &dir.path().join("w.flow"),
            text.clone(),
        ));
        let d = c
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .expect("an error");
        let at = c.sources.location(d.primary_span().unwrap());
        assert!(at.ends_with("sql/r.sql:3:35"), "{at}");
        std::fs::write(
            dir.path().join("sql/r.sql"),
            "SELECT * FROM t WHERE a >= :interval_start AND s = :status",
        )
        .unwrap();
        let c = compile(crate::loader::load_text(&dir.path().join("w.flow"), text));
        assert!(!c.has_errors(), "{:?}", c.diagnostics);
        let w = c.workflow.unwrap();
        let q = w.reports[0].query.as_ref().unwrap();
        assert_eq!(q.placeholders, ["interval_start", "status"]);
        assert!(q
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with(Path::new("sql/r.sql"))));
        assert!(q.uses_window());
    }

    #[test]
    fn a_query_file_is_fenced_like_an_include() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            format!("{HEAD}report R {{\n  source db\n  query_file \"../../etc/passwd\"\n}}\n");
        let c = compile(crate::loader::load_text(&dir.path().join("w.flow"), text));
        assert_eq!(codes(&c), ["E017"], "{:?}", c.diagnostics);
        assert!(first(&c).message.contains("cannot read query file"));
    }

    #[test]
    fn a_window_query_on_a_schedule_without_window_warns() {
        let flow = |report_window: &str, schedule_window: &str| {
            compile_text(&format!(
                "config {{\n  all_counties A\n}}\n{HEAD}report R {{\n  source db\n  query \"SELECT :interval_start\"\n{report_window}}}\nschedule s {{\n  cron \"0 0 5 * * ?\"\n  run R\n  roles A\n{schedule_window}}}\n"
            ))
        };
        assert_eq!(codes(&flow("", "")), ["W010"]);
        assert_eq!(
            codes(&flow("  window previous day\n", "")),
            Vec::<&str>::new()
        );
        assert_eq!(
            codes(&flow("", "  window previous day\n")),
            Vec::<&str>::new()
        );
    }
}
