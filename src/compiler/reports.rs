//! `report` blocks: a report type's source, output, retries and masking; on a database
//! source its query, parameters, default window and zone.

use std::time::Duration;

use crate::ast::{Block, Ident, Setting};
use crate::diagnostic::{Code, Diagnostic};
use crate::pipeline::sql_placeholders::Dialect;
use crate::source_map::Span;
use crate::workflow::{DataFormat, MaskRule, Query, ReportType, SourceKind};

use super::names::{Map, Scope};
use super::params::Declared;
use super::queries::QueryText;
use super::values::resolve_path;
use super::Compiler;

const REPORT_KEYS: &[&str] = &[
    "source",
    "format",
    "chunk_size",
    "priority",
    "target",
    "retries",
    "backoff",
    "timeout",
    "masking",
    "query",
    "query_file",
    "zone",
];

/// The largest `chunk_size`, of a report or of a dependency's override.
pub(super) const MAX_CHUNK_SIZE: i64 = 10_000_000;

/// The reports pass: reads one `report` block, resolving its source and shared
/// maskings by name (marking them used in `source_used`/`masking_used`), writes
/// the [`ReportType`] with the spans of its mask fields, and the errors.
impl Compiler<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn report(
        &mut self,
        name: &Ident,
        block: &Block,
        scope: &Scope<'_>,
        sources: &Map<&str, usize>,
        source_kinds: &[Option<SourceKind>],
        maskings: &Map<&str, usize>,
        masking_rules: &[Vec<(MaskRule, Span)>],
        source_used: &mut [bool],
        masking_used: &mut [bool],
    ) -> (ReportType, Vec<Span>, Option<Span>, Option<Span>) {
        let mut report = ReportType {
            name: name.name.clone(),
            source: 0,
            format: DataFormat::Csv,
            chunk_size: 1000,
            priority: 5,
            target: None,
            retries: 0,
            backoff: Duration::from_secs(30),
            timeout: None,
            masks: Vec::new(),
            query: None,
            params: Vec::new(),
            window: None,
            zone: chrono_tz::UTC,
        };
        let mut has_source = false;
        let mut source_kind: Option<&SourceKind> = None;
        let mut query: Option<&Setting> = None;
        let mut query_file: Option<&Setting> = None;
        let mut mask_spans = Vec::new();
        for setting in self.settings(block, REPORT_KEYS, "report") {
            match setting.key.name.as_str() {
                "source" => {
                    if let Some(id) = self.ident_value(setting) {
                        has_source = true;
                        if let Some(i) = self.resolve(&id, "source", sources) {
                            report.source = i;
                            source_used[i] = true;
                            source_kind = source_kinds.get(i).and_then(Option::as_ref);
                        }
                    }
                }
                "format" => {
                    if let Some(f) = self.format_value(setting) {
                        report.format = f;
                    }
                }
                "chunk_size" => {
                    if let Some(n) = self.int_value(setting, 1, MAX_CHUNK_SIZE) {
                        report.chunk_size = n as u32;
                    }
                }
                "priority" => {
                    if let Some(n) = self.int_value(setting, 0, 255) {
                        report.priority = n as u8;
                    }
                }
                "target" => report.target = self.name_or_string(setting),
                "retries" => {
                    if let Some(n) = self.int_value(setting, 0, 100) {
                        report.retries = n as u32;
                    }
                }
                "backoff" => {
                    if let Some(d) = self.duration_value(setting, Duration::ZERO) {
                        report.backoff = d;
                    }
                }
                "timeout" => {
                    if let Some(d) = self.duration_value(setting, Duration::from_millis(1)) {
                        report.timeout = Some(d);
                    }
                }
                "query" => query = Some(setting),
                "query_file" => query_file = Some(setting),
                "zone" => {
                    if let Some(tz) = self.zone_value(setting) {
                        report.zone = tz;
                    }
                }
                "masking" => {
                    for value in &setting.values {
                        if let Some(id) = self.as_ident(value, setting) {
                            if let Some(i) = self.resolve(&id, "masking", maskings) {
                                masking_used[i] = true;
                                for (rule, span) in &masking_rules[i] {
                                    report.masks.push(rule.clone());
                                    mask_spans.push(*span);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let (inline, inline_spans): (Vec<MaskRule>, Vec<Span>) = block
            .masks()
            .filter_map(|rule| self.mask_rule(rule, scope))
            .unzip();
        // Inline rules come first: they override a shared masking's rule for
        // the same field.
        report.masks.splice(0..0, inline);
        mask_spans.splice(0..0, inline_spans);
        if !has_source {
            self.missing(name, "report", "source", "source cases");
        }
        report.window = self.window(block);
        let declared = self.params(block);
        let mut window_use = None;
        match source_kind {
            // No source, one that does not resolve or one of no known kind: already an error.
            None => {}
            Some(SourceKind::File { .. }) => {
                for setting in [query, query_file].into_iter().flatten() {
                    self.diags.push(
                        Diagnostic::error(
                            Code::BadQuery,
                            "a file source's report reads the whole file; a query needs a sqlite or postgres source",
                        )
                        .label(setting.key.span, "a query on a file source")
                        .help("remove it, or point `source` at a `sqlite` or `postgres` source"),
                    );
                }
                for p in block.params() {
                    self.diags.push(
                        Diagnostic::error(
                            Code::BadParam,
                            format!(
                                "report `{}` reads a file source: a parameter needs a query",
                                name.name
                            ),
                        )
                        .label(p.span, "nothing would use it")
                        .help("parameters are bound into a sqlite or postgres source's query"),
                    );
                }
            }
            Some(kind) => {
                let dialect = match kind {
                    SourceKind::Sqlite { .. } => Dialect::Sqlite,
                    _ => Dialect::Postgres,
                };
                let (q, w) = self.report_query(name, kind, query, query_file, dialect, &declared);
                report.query = q;
                window_use = w;
            }
        }
        report.params = declared.specs;
        // Where `flowctl check` points a query error the database reports: the query's value.
        let query_span = query
            .or(query_file)
            .and_then(|s| s.values.first())
            .map(|v| v.span);
        (report, mask_spans, window_use, query_span)
    }

    /// The query of a report on a database source: exactly one of `query` and `query_file`.
    fn report_query(
        &mut self,
        name: &Ident,
        kind: &SourceKind,
        query: Option<&Setting>,
        query_file: Option<&Setting>,
        dialect: Dialect,
        declared: &Declared,
    ) -> (Option<Query>, Option<Span>) {
        match (query, query_file) {
            (Some(inline), Some(file)) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::BadQuery,
                        format!("report `{}` has both `query` and `query_file`", name.name),
                    )
                    .label(file.key.span, "a second query")
                    .label(inline.key.span, "the first")
                    .help("a report runs one query: keep one of them"),
                );
                (None, None)
            }
            (None, None) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::MissingSetting,
                        format!(
                            "report `{}` reads the {} source but has no query",
                            name.name,
                            kind.name()
                        ),
                    )
                    .label(name.span, "`query` or `query_file` is required")
                    .help("add `query \"\"\"SELECT …\"\"\"` or `query_file \"sql/report.sql\"`"),
                );
                (None, None)
            }
            (Some(setting), None) => {
                let Some(value) = self.one(setting) else {
                    return (None, None);
                };
                let Some(text) = value.as_str() else {
                    self.wrong_kind(value, setting, "a query in quotes (`\"\"\"…\"\"\"`)");
                    return (None, None);
                };
                let located = match value.text_start() {
                    Some(start) => QueryText::Mapped {
                        text,
                        file: value.span.file,
                        start,
                    },
                    None => QueryText::Whole {
                        text,
                        span: value.span,
                    },
                };
                self.query(&located, None, dialect, declared)
            }
            (None, Some(setting)) => {
                let Some((path, span)) = self.one_string(setting) else {
                    return (None, None);
                };
                // The loader read it, or said why not.
                let Some(&file) = self.query_files.get(&span) else {
                    return (None, None);
                };
                let text = &self.sources.get(file).text;
                let located = QueryText::Mapped {
                    text,
                    file,
                    start: 0,
                };
                let resolved = resolve_path(self.sources.get(span.file).dir(), &path);
                self.query(&located, Some(resolved), dialect, declared)
            }
        }
    }

    fn query(
        &mut self,
        located: &QueryText<'_>,
        file: Option<std::path::PathBuf>,
        dialect: Dialect,
        declared: &Declared,
    ) -> (Option<Query>, Option<Span>) {
        match self.placeholders(located, dialect, declared) {
            Some(found) => (
                Some(Query {
                    text: located.text().to_string(),
                    file,
                    placeholders: found.names,
                }),
                found.window_use,
            ),
            None => (None, None),
        }
    }
}
