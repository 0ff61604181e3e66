//! `report` blocks: a report type's source, output, retries and masking.

use std::time::Duration;

use crate::ast::{Block, Ident};
use crate::source_map::Span;
use crate::workflow::{DataFormat, MaskRule, ReportType};

use super::names::{Map, Scope};
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
        maskings: &Map<&str, usize>,
        masking_rules: &[Vec<(MaskRule, Span)>],
        source_used: &mut [bool],
        masking_used: &mut [bool],
    ) -> (ReportType, Vec<Span>) {
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
        let mut mask_spans = Vec::new();
        for setting in self.settings(block, REPORT_KEYS, "report") {
            match setting.key.name.as_str() {
                "source" => {
                    if let Some(id) = self.ident_value(setting) {
                        has_source = true;
                        if let Some(i) = self.resolve(&id, "source", sources) {
                            report.source = i;
                            source_used[i] = true;
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
        (report, mask_spans)
    }
}
