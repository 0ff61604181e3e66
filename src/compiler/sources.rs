//! `source` blocks: where a report's data is — a file (`path`, with its `format`), a SQLite
//! database (`sqlite`) or a PostgreSQL database (`postgres`, the name of the environment
//! variable holding its URL) — and its county column.

use std::path::Path;

use crate::ast::{Block, Ident, Setting, ValueKind};
use crate::diagnostic::{Code, Diagnostic};
use crate::source_map::{FileId, Span};
use crate::workflow::{DataFormat, Source, SourceKind, SourceLocation};

use super::values::resolve_path;
use super::Compiler;

const SOURCE_KEYS: &[&str] = &["path", "sqlite", "postgres", "format", "county_column"];

/// Whether `name` looks like an environment variable's name: `[A-Z_][A-Z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The sources pass: reads one `source` block, writes the [`Source`] (a path resolved against
/// the declaring file's directory), where its settings are in the text, and its errors.
impl Compiler<'_> {
    pub(super) fn source(
        &mut self,
        file: FileId,
        name: &Ident,
        block: &Block,
    ) -> (Source, SourceLocation, bool) {
        let mut kinds: Vec<&Setting> = Vec::new();
        let mut format = None;
        let mut format_span = None;
        let mut county_column = None;
        let mut location = SourceLocation {
            name: Some(name.span),
            ..SourceLocation::default()
        };
        for setting in self.settings(block, SOURCE_KEYS, "source") {
            match setting.key.name.as_str() {
                "path" | "sqlite" | "postgres" => kinds.push(setting),
                "format" => {
                    format = self.format_value(setting);
                    format_span = Some(setting.key.span);
                }
                "county_column" => {
                    county_column = self.name_or_string(setting);
                    location.county_column = setting.values.first().map(|v| v.span);
                }
                _ => {}
            }
        }
        let dir = self.sources.get(file).dir().to_path_buf();
        if kinds.len() > 1 {
            let (first, second) = (kinds[0], kinds[1]);
            self.diags.push(
                Diagnostic::error(
                    Code::SourceKind,
                    format!(
                        "source `{}` has both `{}` and `{}`",
                        name.name, first.key.name, second.key.name
                    ),
                )
                .label(second.key.span, "a second kind of source")
                .label(first.key.span, "the first")
                .help("a source is one file or one database: keep one of `path`, `sqlite` and `postgres`"),
            );
        }
        let kind = match kinds.first() {
            None => {
                self.diags.push(
                    Diagnostic::error(
                        Code::MissingSetting,
                        format!(
                            "source `{}` has no `path`, `sqlite` or `postgres`",
                            name.name
                        ),
                    )
                    .label(name.span, "where are its rows?")
                    .help("add a line such as `path \"data/cases.csv\"`, `sqlite \"data/cases.sqlite\"` or `postgres WAREHOUSE_URL`"),
                );
                None
            }
            Some(setting) => match setting.key.name.as_str() {
                "path" => self.one_string(setting).map(|(p, span)| {
                    location.path = Some(span);
                    let format = format.or_else(|| self.inferred_format(name, &p, span));
                    SourceKind::File {
                        path: resolve_path(&dir, &p),
                        format: format.unwrap_or(DataFormat::Csv),
                    }
                }),
                "sqlite" => self.one_string(setting).map(|(p, span)| {
                    location.path = Some(span);
                    SourceKind::Sqlite {
                        path: resolve_path(&dir, &p),
                    }
                }),
                _ => self
                    .env_name(setting)
                    .map(|url_env| SourceKind::Postgres { url_env }),
            },
        };
        if let (Some(kind), Some(span)) = (&kind, format_span) {
            if kind.is_database() {
                self.diags.push(
                    Diagnostic::error(
                        Code::SourceKind,
                        format!("`format` does not apply to the {} source `{}`", kind.name(), name.name),
                    )
                    .label(span, "a database source has no file format")
                    .help("its rows are the query's: remove `format` (a report's own `format` is its result's)"),
                );
            }
        }
        let known = kind.is_some();
        let source = Source {
            name: name.name.clone(),
            kind: kind.unwrap_or(SourceKind::File {
                path: dir,
                format: DataFormat::Csv,
            }),
            county_column,
        };
        (source, location, known)
    }

    /// The format a file source's path implies; an error when it implies none.
    fn inferred_format(&mut self, name: &Ident, path: &str, span: Span) -> Option<DataFormat> {
        let inferred = match Path::new(path).extension().and_then(|e| e.to_str()) {
            Some("csv") => Some(DataFormat::Csv),
            Some("jsonl" | "ndjson") => Some(DataFormat::Jsonl),
            _ => None,
        };
        if inferred.is_none() {
            self.diags.push(
                Diagnostic::error(
                    Code::MissingSetting,
                    format!(
                        "cannot tell the format of source `{}` from its path",
                        name.name
                    ),
                )
                .label(span, "no .csv or .jsonl extension")
                .help("add `format csv` or `format jsonl`"),
            );
        }
        inferred
    }

    /// `postgres NAME`: the environment variable holding the connection URL. A quoted value is
    /// refused: it would be the URL itself, password and all.
    fn env_name(&mut self, setting: &Setting) -> Option<String> {
        let value = match setting.values.as_slice() {
            [value] => value,
            _ => return self.ident_value(setting).map(|id| id.name),
        };
        match &value.kind {
            ValueKind::Ident(name) if is_env_name(name) => Some(name.clone()),
            ValueKind::Ident(name) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::InvalidValue,
                        format!("`{name}` is not an environment variable's name"),
                    )
                    .label(value.span, "expected upper case letters, digits and `_`")
                    .help(format!(
                        "name the variable that holds the connection URL, e.g. `postgres {}`",
                        name.to_ascii_uppercase()
                    )),
                );
                None
            }
            ValueKind::Str(_) | ValueKind::RawStr(_) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::InvalidValue,
                        "a connection URL, with its password, never sits in a .flow file: name the environment variable that holds it",
                    )
                    .label(value.span, "a quoted string here")
                    .help("write `postgres WAREHOUSE_URL` and set `WAREHOUSE_URL=postgres://…` where flowctl runs"),
                );
                None
            }
            _ => {
                self.wrong_kind(value, setting, "an environment variable's name");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::compiler::test_support::{compile_text, first, significant as codes};
    use crate::workflow::SourceKind;

    const REPORT: &str = "roles A\nreport R {\n  source s\n  query \"SELECT 1\"\n}\n";

    #[test]
    fn each_kind_of_source_compiles() {
        let c = compile_text(&format!(
            "source s {{\n  sqlite \"db/x.sqlite\"\n  county_column county_id\n}}\n{REPORT}"
        ));
        let w = c.workflow.expect("compiles");
        assert_eq!(
            w.sources[0].kind,
            SourceKind::Sqlite {
                path: "db/x.sqlite".into()
            }
        );
        assert_eq!(w.sources[0].county_column.as_deref(), Some("county_id"));
        let c = compile_text(&format!(
            "source s {{\n  postgres WAREHOUSE_URL\n}}\n{REPORT}"
        ));
        let w = c.workflow.expect("compiles");
        assert_eq!(
            w.sources[0].kind,
            SourceKind::Postgres {
                url_env: "WAREHOUSE_URL".into()
            }
        );
    }

    #[test]
    fn a_postgres_url_in_the_file_is_refused() {
        let c = compile_text(&format!(
            "source s {{\n  postgres \"postgres://u:secret@h/db\"\n}}\n{REPORT}"
        ));
        assert_eq!(codes(&c), ["E014"], "{:?}", c.diagnostics);
        assert!(first(&c).message.contains("never sits in a .flow file"));
        let c = compile_text(&format!(
            "source s {{\n  postgres warehouse_url\n}}\n{REPORT}"
        ));
        assert_eq!(codes(&c), ["E014"], "{:?}", c.diagnostics);
    }

    #[test]
    fn a_source_has_exactly_one_kind() {
        let c = compile_text(&format!(
            "source s {{\n  path \"x.csv\"\n  sqlite \"x.sqlite\"\n}}\n{REPORT}"
        ));
        assert!(codes(&c).contains(&"E025"), "{:?}", c.diagnostics);
        let both = c
            .diagnostics
            .iter()
            .find(|d| d.code.as_str() == "E025")
            .unwrap();
        assert!(
            both.message.contains("`path` and `sqlite`"),
            "{}",
            both.message
        );
        let c = compile_text(&format!("source s {{\n  county_column c\n}}\n{REPORT}"));
        assert!(codes(&c).contains(&"E013"), "{:?}", c.diagnostics);
        let c = compile_text(&format!(
            "source s {{\n  sqlite \"x.sqlite\"\n  format csv\n}}\n{REPORT}"
        ));
        assert_eq!(codes(&c), ["E025"], "{:?}", c.diagnostics);
    }
}
