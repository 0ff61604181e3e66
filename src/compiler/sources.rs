//! `source` blocks: where a report's data is, its format and county column.

use std::path::Path;

use crate::ast::{Block, Ident};
use crate::diagnostic::{Code, Diagnostic};
use crate::source_map::FileId;
use crate::workflow::{DataFormat, Source, SourceKind, SourceLocation};

use super::values::resolve_path;
use super::Compiler;

const SOURCE_KEYS: &[&str] = &["path", "format", "county_column"];

/// The sources pass: reads one `source` block, writes the [`Source`] (its path
/// resolved against the declaring file's directory), where its settings are in
/// the text, and its errors.
impl Compiler<'_> {
    pub(super) fn source(
        &mut self,
        file: FileId,
        name: &Ident,
        block: &Block,
    ) -> (Source, SourceLocation) {
        let mut path = None;
        let mut format = None;
        let mut county_column = None;
        let mut location = SourceLocation {
            name: Some(name.span),
            ..SourceLocation::default()
        };
        for setting in self.settings(block, SOURCE_KEYS, "source") {
            let value_span = setting.values.first().map(|v| v.span);
            match setting.key.name.as_str() {
                "path" => {
                    path = self.string_value(setting).map(|p| (p, setting.span));
                    location.path = value_span;
                }
                "format" => format = self.format_value(setting),
                "county_column" => {
                    county_column = self.name_or_string(setting);
                    location.county_column = value_span;
                }
                _ => {}
            }
        }
        let dir = self.sources.get(file).dir();
        let resolved = match &path {
            Some((p, _)) => resolve_path(dir, p),
            None => {
                self.missing(name, "source", "path", "path \"data/cases.csv\"");
                dir.to_path_buf()
            }
        };
        let format = format.or_else(|| {
            let (p, span) = path.as_ref()?;
            let inferred = match Path::new(p).extension().and_then(|e| e.to_str()) {
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
                    .label(*span, "no .csv or .jsonl extension")
                    .help("add `format csv` or `format jsonl`"),
                );
            }
            inferred
        });
        let source = Source {
            name: name.name.clone(),
            kind: SourceKind::File {
                path: resolved,
                format: format.unwrap_or(DataFormat::Csv),
            },
            county_column,
        };
        (source, location)
    }
}
