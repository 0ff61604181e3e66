//! Located compiler messages with stable codes, and their rendering.
//!
//! The compiler produces [`Diagnostic`]s: plain data with spans. Only
//! [`render`] turns them into the text a person reads (through miette), so the
//! compiler never depends on how or where they are shown.

use std::fmt;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan};

use crate::source_map::{FileId, SourceMap, Span};

mod excerpt;

pub use excerpt::{Excerpt, MAX_LINE_CHARS};

/// The most diagnostics drawn in full; the rest are counted.
pub const MAX_RENDERED: usize = 100;
/// The most characters of user input a message quotes between backticks.
pub const MAX_QUOTE_CHARS: usize = 60;
/// The most characters of a message, a label or a help text.
pub const MAX_MESSAGE_CHARS: usize = 400;
/// The most labels drawn for one diagnostic (a long cycle has one per edge).
pub const MAX_LABELS: usize = 10;
/// Names longer than this get no "did you mean" (and cost nothing to compare).
const MAX_SUGGESTED_NAME_CHARS: usize = 100;

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
    IncludeOutsideRoot,
    IncludeNotAFile,
    IncludeTooLarge,
    UnknownColumn,
    CountyRequired,
    BadSource,
    BadQuery,
    BadParam,
    SourceKind,
    NeverTriggered,
    UnusedSource,
    UnusedMasking,
    SourceNotFound,
    RunsTwice,
    RunsPerParentScope,
    NeverFiresAgain,
    UnusedParam,
    WindowNeeded,
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
            Code::IncludeOutsideRoot => "E017",
            Code::IncludeNotAFile => "E018",
            Code::IncludeTooLarge => "E019",
            Code::UnknownColumn => "E020",
            Code::CountyRequired => "E021",
            Code::BadSource => "E022",
            Code::BadQuery => "E023",
            Code::BadParam => "E024",
            Code::SourceKind => "E025",
            Code::NeverTriggered => "W001",
            Code::UnusedSource => "W002",
            Code::UnusedMasking => "W003",
            Code::SourceNotFound => "W004",
            Code::RunsTwice => "W007",
            Code::RunsPerParentScope => "W008",
            Code::NeverFiresAgain => "W005",
            Code::UnusedParam => "W009",
            Code::WindowNeeded => "W010",
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
            Code::IncludeOutsideRoot => "include-outside-root",
            Code::IncludeNotAFile => "include-not-a-file",
            Code::IncludeTooLarge => "include-too-large",
            Code::UnknownColumn => "unknown-column",
            Code::CountyRequired => "county-required",
            Code::BadSource => "bad-source",
            Code::BadQuery => "bad-query",
            Code::BadParam => "bad-param",
            Code::SourceKind => "source-kind",
            Code::NeverTriggered => "never-triggered",
            Code::UnusedSource => "unused-source",
            Code::UnusedMasking => "unused-masking",
            Code::SourceNotFound => "source-not-found",
            Code::RunsTwice => "runs-twice",
            Code::RunsPerParentScope => "runs-per-parent-scope",
            Code::NeverFiresAgain => "never-fires-again",
            Code::UnusedParam => "unused-param",
            Code::WindowNeeded => "window-needed",
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
    /// A diagnostic; any text it quotes between backticks is cut to
    /// [`MAX_QUOTE_CHARS`], the whole to [`MAX_MESSAGE_CHARS`].
    pub fn error(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: bounded(message.into()),
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
            message: bounded(message.into()),
        });
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(bounded(help.into()));
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
    let chars = name.chars().count();
    if chars > MAX_SUGGESTED_NAME_CHARS {
        return None;
    }
    let limit = (chars / 3).max(1);
    let lower = name.to_lowercase();
    let lower_chars = lower.chars().count();
    candidates
        .filter_map(|c| {
            let c_lower = c.to_lowercase();
            // The distance is at least the difference in length.
            if c_lower.chars().count().abs_diff(lower_chars) > limit {
                return None;
            }
            let d = if c_lower == lower {
                0
            } else {
                levenshtein(&lower, &c_lower)
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

/// Draws one diagnostic with its source lines, carets and help. What is shown
/// is bounded whatever the input: a few lines around each label, each cut to
/// [`MAX_LINE_CHARS`] characters around its label (see [`Excerpt`]).
pub fn render(diag: &Diagnostic, sources: &SourceMap, options: RenderOptions) -> String {
    let theme = if options.color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(options.width)
        .with_links(false)
        .with_context_lines(excerpt::CONTEXT_LINES);
    let report = MietteView::new(diag, sources);
    let mut out = String::new();
    if handler.render_report(&mut out, &report).is_err() {
        // Rendering into a String cannot fail in practice; fall back to a plain line.
        out = plain(diag, sources);
        out.push('\n');
    }
    out
}

/// Draws the first [`MAX_RENDERED`] diagnostics, then one line counting the
/// ones left out.
pub fn render_all<'a>(
    out: &mut impl std::io::Write,
    diagnostics: impl IntoIterator<Item = &'a Diagnostic>,
    sources: &SourceMap,
    options: RenderOptions,
) -> std::io::Result<()> {
    let (mut errors, mut warnings) = (0usize, 0usize);
    for (i, d) in diagnostics.into_iter().enumerate() {
        if i < MAX_RENDERED {
            write!(out, "{}", render(d, sources, options))?;
        } else if d.is_error() {
            errors += 1;
        } else {
            warnings += 1;
        }
    }
    if errors + warnings > 0 {
        writeln!(
            out,
            "… and {} more ({errors} error{}, {warnings} warning{}) not shown",
            errors + warnings,
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" },
        )?;
    }
    Ok(())
}

/// One line per diagnostic: `file:line:col: error[E002]: message`.
pub fn plain(diag: &Diagnostic, sources: &SourceMap) -> String {
    let location = diag
        .primary_span()
        .map(|s| format!("{}: ", printable(&sources.location(s))))
        .unwrap_or_default();
    let kind = match diag.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    format!(
        "{location}{kind}[{}]: {}",
        diag.code.as_str(),
        bounded(diag.message.clone())
    )
}

/// `text` with every backtick-quoted part cut to [`MAX_QUOTE_CHARS`]
/// characters and the whole to [`MAX_MESSAGE_CHARS`] (cuts marked `…`);
/// control characters other than line ends and tabs, and any inside quotes,
/// are written as escapes. Text within bounds is returned as it is.
pub fn bounded(text: String) -> String {
    let within = text.chars().count() <= MAX_MESSAGE_CHARS
        && text
            .split('`')
            .skip(1)
            .step_by(2)
            .all(|q| q.chars().count() <= MAX_QUOTE_CHARS)
        && !text.chars().any(|c| needs_escape(c, false));
    if within {
        return text;
    }
    let mut out = String::new();
    let (mut chars, mut quoted, mut in_quote, mut cut) = (0usize, 0usize, false, false);
    for c in text.chars() {
        if c == '`' {
            in_quote = !in_quote;
            quoted = 0;
            cut = false;
        } else if in_quote {
            quoted += 1;
            if quoted > MAX_QUOTE_CHARS {
                if !cut {
                    out.push('…');
                    chars += 1;
                    cut = true;
                }
                continue;
            }
        }
        if chars >= MAX_MESSAGE_CHARS {
            out.push('…');
            if in_quote {
                out.push('`');
            }
            break;
        }
        if needs_escape(c, in_quote) {
            let escaped: String = c.escape_default().collect();
            chars += escaped.chars().count();
            out.push_str(&escaped);
        } else {
            out.push(c);
            chars += 1;
        }
    }
    out
}

fn needs_escape(c: char, in_quote: bool) -> bool {
    match c {
        '\n' | '\t' => in_quote,
        c => c.is_control() || is_bidi_control(c),
    }
}

/// The invisible characters that reorder text on a terminal (bidirectional marks, embeddings,
/// overrides and isolates): never shown as they are, in messages or in source excerpts.
pub(crate) fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A file name as shown: control characters escaped.
pub(crate) fn printable(name: &str) -> String {
    if name.chars().any(|c| needs_escape(c, true)) {
        name.chars()
            .map(|c| {
                if needs_escape(c, true) {
                    c.escape_default().collect()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        name.to_string()
    }
}

/// Adapter from our data to miette's trait. Labels in the primary file are
/// drawn together; labels in other files become related reports of their own,
/// so a duplicate defined in two files points at both. miette sees excerpts
/// of the files, never a whole file.
#[derive(Debug)]
struct MietteView {
    code: String,
    severity: miette::Severity,
    message: String,
    help: Option<String>,
    source: Option<Excerpt>,
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
        let labels = &diag.labels[..diag.labels.len().min(MAX_LABELS)];
        let mut help = diag.help.clone().map(bounded);
        if diag.labels.len() > labels.len() {
            let more = format!(
                "({} more locations not shown)",
                diag.labels.len() - labels.len()
            );
            help = Some(match help {
                Some(h) => format!("{h}\n{more}"),
                None => more,
            });
        }
        let mut view = MietteView {
            code: diag.code.to_string(),
            severity,
            message: bounded(diag.message.clone()),
            help,
            source: None,
            labels: Vec::new(),
            related: Vec::new(),
        };
        if let Some(file) = primary_file {
            let in_file: Vec<&Label> = labels.iter().filter(|l| l.span.file == file).collect();
            let (excerpt, spans) = excerpt_of(sources, file, &in_file);
            view.source = Some(excerpt);
            for (i, (label, span)) in in_file.iter().zip(spans).enumerate() {
                let text = label_text(label);
                view.labels.push(if i == 0 {
                    LabeledSpan::new_primary_with_span(text, span)
                } else {
                    LabeledSpan::new_with_span(text, span)
                });
            }
        }
        for label in labels.iter().filter(|l| Some(l.span.file) != primary_file) {
            let (excerpt, spans) = excerpt_of(sources, label.span.file, &[label]);
            view.related.push(MietteView {
                code: String::new(),
                severity: miette::Severity::Advice,
                message: bounded(label.message.clone()),
                help: None,
                source: Some(excerpt),
                labels: spans
                    .into_iter()
                    .map(|span| LabeledSpan::new_with_span(None, span))
                    .collect(),
                related: Vec::new(),
            });
        }
        view
    }
}

fn label_text(label: &Label) -> Option<String> {
    (!label.message.is_empty()).then(|| bounded(label.message.clone()))
}

fn excerpt_of(
    sources: &SourceMap,
    file: FileId,
    labels: &[&Label],
) -> (Excerpt, Vec<miette::SourceSpan>) {
    let spans: Vec<_> = labels
        .iter()
        .map(|l| l.span.start as usize..l.span.end as usize)
        .collect();
    Excerpt::new(sources.get(file), &spans)
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
