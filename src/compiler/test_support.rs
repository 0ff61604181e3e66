//! Helpers for the compiler's unit tests: compile a text, list the codes.

use std::path::Path;

use super::{compile, Compilation};

/// Compiles `text` as the file `w.flow`.
pub(super) fn compile_text(text: &str) -> Compilation {
    compile(crate::loader::load_text(
        Path::new("w.flow"),
        text.to_string(),
    ))
}

/// The codes of the diagnostics, in order.
pub(super) fn codes(c: &Compilation) -> Vec<&'static str> {
    c.diagnostics.iter().map(|d| d.code.as_str()).collect()
}

/// Two roles, a source with a county column, and a report `R` that reads it.
pub(super) const BASE: &str = "roles CASE_WORKER, ADMIN\nsource s {\n  path \"s.csv\"\n  county_column county_id\n}\nreport R {\n  source s\n}\n";

/// [`codes`] without W001 (never-triggered), which a workflow without schedules always has.
pub(super) fn significant(c: &Compilation) -> Vec<&'static str> {
    codes(c).into_iter().filter(|c| *c != "W001").collect()
}

/// The first diagnostic that is not W001.
pub(super) fn first(c: &Compilation) -> &crate::diagnostic::Diagnostic {
    c.diagnostics
        .iter()
        .find(|d| d.code.as_str() != "W001")
        .expect("a diagnostic besides W001")
}
