//! Located compiler messages with stable codes, and their rendering.
//!
//! The compiler produces [`Diagnostic`]s: plain data with spans. Only
//! [`render`] turns them into the text a person reads (through miette), so the
//! compiler never depends on how or where they are shown.

use std::fmt;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};

use crate::source_map::{SourceMap, Span};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// Stable diagnostic codes. Never renumber: users search for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    Syntax,
    UnknownReference,
    Duplicate,
    Cycle,
    SelfDependency,
    InvalidCron,
    UnknownZone,
    BadDuration,
    BadMaskMethod,
    RepeatedParent,
    OutOfRange,
    UnknownSetting,
    MissingSetting,
    InvalidValue,
    Include,
    MaskRoles,
    UnknownColumn,
    CountyRequired,
    BadSource,
    NeverTriggered,
    UnusedSource,
    UnusedMasking,
    SourceNotFound,
    RunsTwice,
    RunsPerParentScope,
    NeverFiresAgain,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "E001",
            Code::UnknownReference => "E002",
            Code::Duplicate => "E003",
            Code::Cycle => "E004",
            Code::SelfDependency => "E005",
            Code::InvalidCron => "E006",
            Code::UnknownZone => "E007",
            Code::BadDuration => "E008",
            Code::BadMaskMethod => "E009",
            Code::RepeatedParent => "E010",
            Code::OutOfRange => "E011",
            Code::UnknownSetting => "E012",
            Code::MissingSetting => "E013",
            Code::InvalidValue => "E014",
            Code::Include => "E015",
            Code::MaskRoles => "E016",
            Code::UnknownColumn => "E020",
            Code::CountyRequired => "E021",
            Code::BadSource => "E022",
            Code::NeverTriggered => "W001",
            Code::UnusedSource => "W002",
            Code::UnusedMasking => "W003",
            Code::SourceNotFound => "W004",
            Code::RunsTwice => "W007",
            Code::RunsPerParentScope => "W008",
            Code::NeverFiresAgain => "W005",
        }
    }

    /// Short kebab-case name shown next to the number, e.g. `E004 dependency-cycle`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Syntax => "syntax",
            Code::UnknownReference => "unknown-reference",
            Code::Duplicate => "duplicate-definition",
            Code::Cycle => "dependency-cycle",
            Code::SelfDependency => "self-dependency",
            Code::InvalidCron => "invalid-cron",
            Code::UnknownZone => "unknown-time-zone",
            Code::BadDuration => "bad-duration",
            Code::BadMaskMethod => "bad-mask-method",
            Code::RepeatedParent => "repeated-parent",
            Code::OutOfRange => "out-of-range",
            Code::UnknownSetting => "unknown-setting",
            Code::MissingSetting => "missing-setting",
            Code::InvalidValue => "invalid-value",
            Code::Include => "include",
            Code::MaskRoles => "mask-roles",
            Code::UnknownColumn => "unknown-column",
            Code::CountyRequired => "county-required",
            Code::BadSource => "bad-source",
            Code::NeverTriggered => "never-triggered",
            Code::UnusedSource => "unused-source",
            Code::UnusedMasking => "unused-masking",
            Code::SourceNotFound => "source-not-found",
            Code::RunsTwice => "runs-twice",
            Code::RunsPerParentScope => "runs-per-parent-scope",
            Code::NeverFiresAgain => "never-fires-again",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.as_str(), self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    /// The first label is the primary location.
    pub labels: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            labels: Vec::new(),
            help: None,
        }
    }

    pub fn warning(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    pub fn label(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn primary_span(&self) -> Option<Span> {
        self.labels.first().map(|l| l.span)
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The closest candidate within a small edit distance, if any.
pub fn did_you_mean<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    let lower = name.to_lowercase();
    candidates
        .filter_map(|c| {
            let d = if c.to_lowercase() == lower {
                0
            } else {
                levenshtein(&lower, &c.to_lowercase())
            };
            (d <= limit).then_some((d, c))
        })
        .min()
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// How to draw diagnostics.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions {
    pub color: bool,
    pub width: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            color: false,
            width: 100,
        }
    }
}

/// Draws one diagnostic with its source lines, carets and help.
pub fn render(diag: &Diagnostic, sources: &SourceMap, options: RenderOptions) -> String {
    let theme = if options.color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(options.width)
        .with_links(false);
    let report = MietteView::new(diag, sources);
    let mut out = String::new();
    if handler.render_report(&mut out, &report).is_err() {
        // Rendering into a String cannot fail in practice; fall back to a plain line.
        out = plain(diag, sources);
    }
    out
}

/// One line per diagnostic: `file:line:col: error[E002]: message`.
pub fn plain(diag: &Diagnostic, sources: &SourceMap) -> String {
    let location = diag
        .primary_span()
        .map(|s| format!("{}: ", sources.location(s)))
        .unwrap_or_default();
    let kind = match diag.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    format!("{location}{kind}[{}]: {}", diag.code.as_str(), diag.message)
}

/// Adapter from our data to miette's trait. Labels in the primary file are
/// drawn together; labels in other files become related reports of their own,
/// so a duplicate defined in two files points at both.
#[derive(Debug)]
struct MietteView {
    code: String,
    severity: miette::Severity,
    message: String,
    help: Option<String>,
    source: Option<NamedSource<String>>,
    labels: Vec<LabeledSpan>,
    related: Vec<MietteView>,
}

impl MietteView {
    fn new(diag: &Diagnostic, sources: &SourceMap) -> MietteView {
        let severity = match diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        };
        let primary_file = diag.primary_span().map(|s| s.file);
        let mut view = MietteView {
            code: diag.code.to_string(),
            severity,
            message: diag.message.clone(),
            help: diag.help.clone(),
            source: primary_file.map(|f| named_source(sources, f)),
            labels: Vec::new(),
            related: Vec::new(),
        };
        for (i, label) in diag.labels.iter().enumerate() {
            let span = SourceSpan::new((label.span.start as usize).into(), label.span.len());
            let text = (!label.message.is_empty()).then(|| label.message.clone());
            if Some(label.span.file) == primary_file {
                view.labels.push(if i == 0 {
                    LabeledSpan::new_primary_with_span(text, span)
                } else {
                    LabeledSpan::new_with_span(text, span)
                });
            } else {
                view.related.push(MietteView {
                    code: String::new(),
                    severity: miette::Severity::Advice,
                    message: label.message.clone(),
                    help: None,
                    source: Some(named_source(sources, label.span.file)),
                    labels: vec![LabeledSpan::new_with_span(None, span)],
                    related: Vec::new(),
                });
            }
        }
        view
    }
}

fn named_source(sources: &SourceMap, file: crate::source_map::FileId) -> NamedSource<String> {
    let f = sources.get(file);
    NamedSource::new(f.name.clone(), f.text.to_string())
}

impl fmt::Display for MietteView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MietteView {}

impl miette::Diagnostic for MietteView {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        (!self.code.is_empty()).then(|| Box::new(&self.code) as Box<dyn fmt::Display>)
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(self.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        if self.related.is_empty() {
            None
        } else {
            Some(Box::new(
                self.related.iter().map(|r| r as &dyn miette::Diagnostic),
            ))
        }
    }
}
