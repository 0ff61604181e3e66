//! Text to [`FlowFile`]: the pest grammar in `grammar/flow.pest` plus error
//! recovery.
//!
//! **Parsing never fails**: it returns the items that parsed and a diagnostic
//! for each one that did not. Items are parsed one at a time; after a syntax
//! error the parser skips to the next line that starts with a top-level
//! keyword, so one typo does not hide the rest of the file's errors.

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;

use crate::ast::{
    Block, DependencyDecl, Entry, FlowFile, Ident, Item, ItemKind, MaskRule, ParamDecl,
    ParamOption, ParamTypeDecl, Setting, Value, ValueKind, WindowDecl,
};
use crate::diagnostic::{did_you_mean, Code, Diagnostic};
use crate::source_map::{FileId, Span};

mod fast;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/flow.pest"]
struct FlowParser;

/// Top-level keywords: where the parser may resume after an error.
pub const ITEM_KEYWORDS: [&str; 8] = [
    "include", "config", "roles", "source", "masking", "report", "schedule", "after",
];

pub struct Parsed {
    pub file: FlowFile,
    pub diagnostics: Vec<Diagnostic>,
}

pub fn parse(file: FileId, text: &str) -> Parsed {
    // A valid file parses in one pass, without pest's machinery.
    match fast::parse(file, text) {
        Some(parsed) => parsed,
        None => parse_with_pest(file, text),
    }
}

/// The hand-written one-pass parser alone: `None` when the file does not match the grammar.
#[doc(hidden)]
pub fn parse_fast(file: FileId, text: &str) -> Option<Parsed> {
    fast::parse(file, text)
}

/// [`parse`] with the pest parser alone: what the hand-written fast path must agree with.
#[doc(hidden)]
pub fn parse_with_pest(file: FileId, text: &str) -> Parsed {
    pest_parse(file, text, true)
}

/// [`parse_with_pest`] whose recovery gives pest the whole rest of the text
/// for every item (quadratic): what parsing items from prefixes must agree
/// with.
#[doc(hidden)]
pub fn parse_with_pest_whole_rest(file: FileId, text: &str) -> Parsed {
    pest_parse(file, text, false)
}

fn pest_parse(file: FileId, text: &str, prefixes: bool) -> Parsed {
    let mut items = Vec::new();
    let mut diagnostics = Vec::new();
    // A valid file parses in one pass.
    if let Ok(pairs) = FlowParser::parse(Rule::file, text) {
        let mut builder = Builder {
            file,
            base: 0,
            diagnostics: &mut diagnostics,
        };
        for pair in pairs {
            if !matches!(pair.as_rule(), Rule::nl | Rule::EOI) {
                items.push(builder.item(pair));
            }
        }
        return Parsed {
            file: FlowFile { items },
            diagnostics,
        };
    }
    // Recovery: one item at a time, skipping to the next declaration after
    // an error.
    let mut pos = 0;
    loop {
        pos = skip_trivia(text, pos);
        if pos >= text.len() {
            break;
        }
        match parse_item(text, pos, prefixes) {
            Ok(mut pairs) => {
                let Some(pair) = pairs.next() else { break };
                let end = pair.as_span().end();
                let mut builder = Builder {
                    file,
                    base: pos,
                    diagnostics: &mut diagnostics,
                };
                items.push(builder.item(pair));
                // `item_line` also consumed the line end; continue after it.
                let consumed = pairs.last().map_or(end, |p| p.as_span().end()).max(end);
                pos += consumed.max(1);
            }
            Err(err) => {
                let at = match err.location {
                    InputLocation::Pos(p) => p,
                    InputLocation::Span((p, _)) => p,
                };
                if let Some(open) = unterminated_raw_string(text, pos, pos + at) {
                    // The rest of the file is inside the string: nothing after it is a
                    // declaration to recover at.
                    diagnostics.push(
                        Diagnostic::error(Code::Syntax, "unterminated `\"\"\"` string")
                            .label(
                                Span::new(file, open, open + 3),
                                "this string is never closed",
                            )
                            .help("a triple-quoted string ends at the next `\"\"\"`, which may be on a later line"),
                    );
                    break;
                }
                diagnostics.push(syntax_error(file, text, pos + at, at == 0, &err.variant));
                pos = resume_point(text, pos);
            }
        }
    }
    Parsed {
        file: FlowFile { items },
        diagnostics,
    }
}

/// One `item_line` at `pos`, parsed from as little of the text as gives the
/// answer the whole rest would give.
///
/// pest's error costs the length of its input after the error (it looks for
/// the start of the error's line from the end of the input), so parsing the
/// rest of the file for every broken item would make recovery quadratic.
/// The item is parsed from a prefix that ends at a line start instead: first
/// up to the next line that starts a declaration, then twice as much, and so
/// on. A prefix gives the whole text's answer unless the parser reached its
/// end: every token before it is the same, and reaching the end shows up as an
/// error (or a match) at the end, after which the prefix is widened.
fn parse_item(
    text: &str,
    pos: usize,
    prefixes: bool,
) -> Result<pest::iterators::Pairs<'_, Rule>, pest::error::Error<Rule>> {
    let mut cut = if prefixes {
        resume_point(text, pos)
    } else {
        text.len()
    };
    loop {
        let rest = &text[pos..cut];
        let at_end = cut >= text.len();
        let result = FlowParser::parse(Rule::item_line, rest);
        let reached_cut = match &result {
            // Matched up to the end of the prefix, not up to a line end.
            Ok(pairs) => pairs.clone().any(|p| p.as_rule() == Rule::EOI),
            Err(err) => {
                let at = match err.location {
                    InputLocation::Pos(p) => p,
                    InputLocation::Span((p, _)) => p,
                };
                at >= rest.len()
            }
        };
        if at_end || !reached_cut {
            return result;
        }
        let target = pos + 2 * (cut - pos).max(64);
        cut = match text
            .as_bytes()
            .get(target..)
            .and_then(|t| memchr::memchr(b'\n', t))
        {
            Some(i) => target + i + 1,
            None => text.len(),
        };
    }
}

/// Skips blanks, line ends and comments.
fn skip_trivia(text: &str, mut pos: usize) -> usize {
    let bytes = text.as_bytes();
    while pos < bytes.len() {
        match bytes[pos] {
            b' ' | b'\t' | b'\r' | b'\n' => pos += 1,
            b'#' => {
                while pos < bytes.len() && bytes[pos] != b'\n' {
                    pos += 1;
                }
            }
            _ => break,
        }
    }
    pos
}

/// Start of the next line after `from` that begins with a top-level keyword.
fn resume_point(text: &str, from: usize) -> usize {
    let mut line_start = match text[from..].find('\n') {
        Some(i) => from + i + 1,
        None => return text.len(),
    };
    while line_start < text.len() {
        let line = &text[line_start..];
        if ITEM_KEYWORDS.iter().any(|kw| {
            line.starts_with(kw)
                && !line[kw.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        }) {
            return line_start;
        }
        line_start = match line.find('\n') {
            Some(i) => line_start + i + 1,
            None => text.len(),
        };
    }
    text.len()
}

fn describe_rule(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::ident | Rule::ident_list | Rule::parents => "a name",
        Rule::string | Rule::string_inner => "a quoted string",
        Rule::raw_string | Rule::raw_quote => "a triple-quoted string",
        Rule::default_value => "a default value (a string, a number, `true` or `false`)",
        Rule::help_text => "a help text in quotes",
        Rule::window_words => "a window such as `previous day`, `previous month` or `last 36h`",
        Rule::paren_open => "`(`",
        Rule::paren_close => "`)`",
        Rule::param_type => {
            "a parameter type (string, integer, decimal, date, timestamp, boolean or one_of(...))"
        }
        Rule::one_of | Rule::kw_one_of => "`one_of`",
        Rule::param_default | Rule::kw_default => "`default`",
        Rule::param_required | Rule::kw_required => "`required`",
        Rule::param_help | Rule::kw_help => "`help`",
        Rule::param_decl | Rule::kw_param => "`param`",
        Rule::window_decl | Rule::kw_window => "`window`",
        Rule::escape => "an escape (\\\" \\\\ \\n \\t \\r or \\u{...})",
        Rule::number => "a number",
        Rule::duration => "a duration such as `30s`",
        Rule::value_list => "a value",
        Rule::EOI => "end of file",
        Rule::nl => "end of line",
        Rule::comma => "`,`",
        Rule::block | Rule::open => "`{`",
        Rule::close => "`}`",
        Rule::setting => "a setting",
        Rule::mask_rule | Rule::kw_mask => "`mask`",
        Rule::condition | Rule::kw_on => "`on`",
        Rule::by_roles | Rule::kw_by => "`by`",
        Rule::as_role | Rule::kw_as => "`as`",
        Rule::for_roles | Rule::kw_for => "`for`",
        Rule::except_roles | Rule::kw_except => "`except`",
        Rule::kw_run => "`run`",
        Rule::include | Rule::kw_include => "`include`",
        Rule::config | Rule::kw_config => "`config`",
        Rule::roles | Rule::kw_roles => "`roles`",
        Rule::source | Rule::kw_source => "`source`",
        Rule::masking | Rule::kw_masking => "`masking`",
        Rule::report | Rule::kw_report => "`report`",
        Rule::schedule | Rule::kw_schedule => "`schedule`",
        Rule::dependency | Rule::kw_after => "`after`",
        _ => return None,
    })
}

fn found_at(text: &str, at: usize) -> String {
    let rest = &text[at.min(text.len())..];
    let Some(c) = rest.chars().next() else {
        return "end of file".to_string();
    };
    if c == '\n' || c == '\r' {
        return "end of line".to_string();
    }
    if c.is_alphanumeric() || c == '_' {
        let word: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .take(40)
            .collect();
        return format!("`{word}`");
    }
    if c == '"' {
        return "a string".to_string();
    }
    format!("`{c}`")
}

fn syntax_error(
    file: FileId,
    text: &str,
    at: usize,
    at_item_start: bool,
    variant: &ErrorVariant<Rule>,
) -> Diagnostic {
    if let Some(d) = unterminated_string(file, text, at) {
        return d;
    }
    let found = found_at(text, at);
    let mut expected: Vec<&str> = Vec::new();
    if let ErrorVariant::ParsingError { positives, .. } = variant {
        for rule in positives {
            if let Some(d) = describe_rule(*rule) {
                if !expected.contains(&d) {
                    expected.push(d);
                }
            }
        }
    }
    // Where a declaration should start, list the declarations.
    if at_item_start {
        expected = vec!["a declaration (`config`, `roles`, `source`, `masking`, `report`, `schedule`, `after` or `include`)"];
    }
    if expected.contains(&"end of line") {
        expected.retain(|e| *e != "end of file");
    }
    let message = if expected.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {}, found {found}", join_or(&expected))
    };
    let rest = &text[at.min(text.len())..];
    let word_len: usize = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .map(char::len_utf8)
        .sum();
    let width = match rest.chars().next() {
        Some(c) if c != '\n' && c != '\r' => word_len.max(c.len_utf8()),
        _ => 0,
    };
    let keyword_typo = if at_item_start {
        did_you_mean(&rest[..word_len], ITEM_KEYWORDS.iter().copied())
    } else {
        None
    };
    let typo_help;
    let help = if let Some(kw) = keyword_typo {
        typo_help = format!("did you mean `{kw}`?");
        typo_help.as_str()
    } else if found == "end of line" && expected.contains(&"`{`") {
        "a block opens with `{` on the same line as its declaration"
    } else if found == "end of file" {
        "is a `}` missing?"
    } else {
        "see GRAMMAR.md for the syntax of each declaration"
    };
    Diagnostic::error(Code::Syntax, message)
        .label(Span::new(file, at, at + width), "here")
        .help(help)
}

/// Where a `"""` opens, between `from` (an item's start) and the error at `at`, that has no
/// closing `"""` in the rest of the text. Comments and one-line strings are skipped, so a `"""`
/// inside them opens nothing.
fn unterminated_raw_string(text: &str, from: usize, at: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    while i <= at && i < bytes.len() {
        match bytes[i] {
            b'#' => i = memchr::memchr(b'\n', &bytes[i..]).map_or(bytes.len(), |n| i + n),
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                match memchr::memmem::find(&bytes[i + 3..], b"\"\"\"") {
                    Some(n) => i += 3 + n + 3,
                    None => return Some(i),
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && !matches!(bytes[i], b'"' | b'\n') {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// A `"` with no closing quote on its line explains most errors at a string.
fn unterminated_string(file: FileId, text: &str, at: usize) -> Option<Diagnostic> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = &text[line_start..line_end];
    let mut open: Option<usize> = None;
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match (c, open) {
            ('#', None) => break,
            ('"', None) => open = Some(i),
            ('"', Some(_)) => open = None,
            ('\\', Some(_)) => {
                chars.next();
            }
            _ => {}
        }
    }
    let start = line_start + open?;
    Some(
        Diagnostic::error(Code::Syntax, "unterminated string")
            .label(
                Span::new(file, start, line_end.max(start + 1)),
                "this string has no closing `\"`",
            )
            .help("close the string with `\"` on the same line; write a newline inside it as \\n"),
    )
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

struct Builder<'d> {
    file: FileId,
    base: usize,
    diagnostics: &'d mut Vec<Diagnostic>,
}

impl Builder<'_> {
    /// The pair's span without trailing blanks and comments. Pest keeps the
    /// whitespace it skipped before a failed optional or repeated part inside
    /// the enclosing rule, so the tight end is the end of the last token.
    fn span(&self, pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        Span::new(
            self.file,
            self.base + s.start(),
            self.base + tight_end(pair),
        )
    }

    /// Span of an atomic token: already tight.
    fn token_span(&self, pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.file, self.base + s.start(), self.base + s.end())
    }

    fn ident(&self, pair: Pair<'_, Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.token_span(&pair),
        }
    }

    fn ident_list(&self, pair: Pair<'_, Rule>) -> Vec<Ident> {
        pair.into_inner()
            .filter(|p| p.as_rule() == Rule::ident)
            .map(|p| self.ident(p))
            .collect()
    }

    fn item(&mut self, pair: Pair<'_, Rule>) -> Item {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let mut inner = pair.into_inner().filter(|p| !is_keyword(p.as_rule()));
        let kind = match rule {
            Rule::include => {
                let value = inner.next().map(|p| self.value(p));
                ItemKind::Include(value.unwrap_or(Value {
                    kind: ValueKind::Str(String::new()),
                    span,
                }))
            }
            Rule::config => ItemKind::Config(self.block_or_empty(inner.next(), span)),
            Rule::roles => {
                ItemKind::Roles(inner.next().map_or_else(Vec::new, |p| self.ident_list(p)))
            }
            Rule::source | Rule::masking | Rule::report | Rule::schedule => {
                let name = inner.next().map_or_else(
                    || Ident {
                        name: String::new(),
                        span,
                    },
                    |p| self.ident(p),
                );
                let block = self.block_or_empty(inner.next(), span);
                match rule {
                    Rule::source => ItemKind::Source(name, block),
                    Rule::masking => ItemKind::Masking(name, block),
                    Rule::report => ItemKind::Report(name, block),
                    _ => ItemKind::Schedule(name, block),
                }
            }
            _ => ItemKind::Dependency(self.dependency(inner, span)),
        };
        Item { kind, span }
    }

    fn dependency<'i>(
        &mut self,
        inner: impl Iterator<Item = Pair<'i, Rule>>,
        span: Span,
    ) -> DependencyDecl {
        let mut dep = DependencyDecl {
            parents: Vec::new(),
            condition: None,
            by_roles: Vec::new(),
            child: Ident {
                name: String::new(),
                span,
            },
            as_role: None,
            block: None,
        };
        for p in inner {
            match p.as_rule() {
                Rule::parents => {
                    dep.parents = p.into_inner().flat_map(|l| self.ident_list(l)).collect()
                }
                Rule::condition => dep.condition = self.last_ident(p),
                Rule::by_roles => {
                    dep.by_roles = p
                        .into_inner()
                        .filter(|p| p.as_rule() == Rule::ident_list)
                        .flat_map(|l| self.ident_list(l))
                        .collect()
                }
                Rule::ident => dep.child = self.ident(p),
                Rule::as_role => dep.as_role = self.last_ident(p),
                Rule::block => dep.block = Some(self.block(p)),
                _ => {}
            }
        }
        dep
    }

    fn last_ident(&self, pair: Pair<'_, Rule>) -> Option<Ident> {
        pair.into_inner()
            .filter(|p| p.as_rule() == Rule::ident)
            .last()
            .map(|p| self.ident(p))
    }

    fn block_or_empty(&mut self, pair: Option<Pair<'_, Rule>>, span: Span) -> Block {
        match pair {
            Some(p) => self.block(p),
            None => Block {
                entries: Vec::new(),
                span,
            },
        }
    }

    fn block(&mut self, pair: Pair<'_, Rule>) -> Block {
        let span = self.span(&pair);
        let entries = pair
            .into_inner()
            .filter_map(|p| match p.as_rule() {
                Rule::setting => Some(Entry::Setting(self.setting(p))),
                Rule::mask_rule => Some(Entry::Mask(self.mask_rule(p))),
                Rule::param_decl => Some(Entry::Param(self.param_decl(p))),
                Rule::window_decl => Some(Entry::Window(self.window_decl(p))),
                _ => None,
            })
            .collect();
        Block { entries, span }
    }

    fn setting(&mut self, pair: Pair<'_, Rule>) -> Setting {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let key = inner.next().map_or_else(
            || Ident {
                name: String::new(),
                span,
            },
            |p| self.ident(p),
        );
        let values = inner
            .flat_map(|list| list.into_inner())
            .filter(|v| !matches!(v.as_rule(), Rule::comma | Rule::nl))
            .map(|v| self.value(v))
            .collect();
        Setting { key, values, span }
    }

    fn mask_rule(&mut self, pair: Pair<'_, Rule>) -> MaskRule {
        let span = self.span(&pair);
        let mut idents = Vec::new();
        let mut for_roles = Vec::new();
        let mut except_roles = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => idents.push(self.ident(p)),
                Rule::for_roles => {
                    for_roles = p
                        .into_inner()
                        .filter(|p| p.as_rule() == Rule::ident_list)
                        .flat_map(|l| self.ident_list(l))
                        .collect()
                }
                Rule::except_roles => {
                    except_roles = p
                        .into_inner()
                        .filter(|p| p.as_rule() == Rule::ident_list)
                        .flat_map(|l| self.ident_list(l))
                        .collect()
                }
                _ => {}
            }
        }
        let mut idents = idents.into_iter();
        let empty = Ident {
            name: String::new(),
            span,
        };
        MaskRule {
            field: idents.next().unwrap_or_else(|| empty.clone()),
            method: idents.next().unwrap_or(empty),
            for_roles,
            except_roles,
            span,
        }
    }

    fn param_decl(&mut self, pair: Pair<'_, Rule>) -> ParamDecl {
        let span = self.span(&pair);
        let mut name = Ident {
            name: String::new(),
            span,
        };
        let mut ty = ParamTypeDecl::Named(name.clone());
        let mut options = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = self.ident(p),
                Rule::param_type => {
                    let Some(inner) = p.into_inner().next() else {
                        continue;
                    };
                    ty = match inner.as_rule() {
                        Rule::one_of => {
                            let span = self.span(&inner);
                            let options = inner
                                .into_inner()
                                .filter(|p| p.as_rule() == Rule::value_list)
                                .flat_map(|list| list.into_inner())
                                .filter(|v| !matches!(v.as_rule(), Rule::comma | Rule::nl))
                                .map(|v| self.value(v))
                                .collect();
                            ParamTypeDecl::OneOf { options, span }
                        }
                        _ => ParamTypeDecl::Named(self.ident(inner)),
                    };
                }
                Rule::param_default | Rule::param_help => {
                    let span = self.span(&p);
                    let help = p.as_rule() == Rule::param_help;
                    let value = p
                        .into_inner()
                        .filter(|v| matches!(v.as_rule(), Rule::default_value | Rule::help_text))
                        .flat_map(|v| v.into_inner())
                        .next()
                        .map(|v| self.value(v))
                        .unwrap_or(Value {
                            kind: ValueKind::Str(String::new()),
                            span,
                        });
                    options.push(if help {
                        ParamOption::Help { value, span }
                    } else {
                        ParamOption::Default { value, span }
                    });
                }
                Rule::param_required => options.push(ParamOption::Required(self.token_span(&p))),
                _ => {}
            }
        }
        ParamDecl {
            name,
            ty,
            options,
            span,
        }
    }

    fn window_decl(&mut self, pair: Pair<'_, Rule>) -> WindowDecl {
        let span = self.span(&pair);
        let words = pair
            .into_inner()
            .filter(|p| p.as_rule() == Rule::window_words)
            .flat_map(|p| p.into_inner())
            .map(|v| self.value(v))
            .collect();
        WindowDecl { words, span }
    }

    fn value(&mut self, pair: Pair<'_, Rule>) -> Value {
        let span = self.token_span(&pair);
        let text = pair.as_str();
        let kind = match pair.as_rule() {
            Rule::raw_string => ValueKind::RawStr(
                pair.into_inner()
                    .find(|p| p.as_rule() == Rule::raw_inner)
                    .map_or("", |p| p.as_str())
                    .to_string(),
            ),
            Rule::string => {
                let raw = pair.into_inner().next().map_or("", |p| p.as_str());
                ValueKind::Str(unescape(raw, span, self.diagnostics))
            }
            Rule::number => number_value(text, span, self.diagnostics),
            Rule::duration => ValueKind::Duration(text.to_string()),
            _ => ValueKind::Ident(text.to_string()),
        };
        Value { kind, span }
    }
}

/// A `number` token's value; one too large for 64 bits is an error (and `i64::MAX`).
fn number_value(text: &str, span: Span, diagnostics: &mut Vec<Diagnostic>) -> ValueKind {
    match text.parse::<i64>() {
        Ok(n) => ValueKind::Number(n),
        Err(_) => {
            diagnostics.push(
                Diagnostic::error(Code::OutOfRange, format!("number `{text}` is too large"))
                    .label(span, "does not fit in 64 bits"),
            );
            ValueKind::Number(i64::MAX)
        }
    }
}

/// Decodes `\" \\ \n \t \r \u{...}`. The grammar admits only these forms,
/// so the one thing left to check is that a `\u{...}` is a real character.
fn unescape(raw: &str, span: Span, diagnostics: &mut Vec<Diagnostic>) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.char_indices();
    while let Some((_, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some((_, 'n')) => out.push('\n'),
            Some((_, 't')) => out.push('\t'),
            Some((_, 'r')) => out.push('\r'),
            Some((_, 'u')) => {
                let hex: String = chars
                    .by_ref()
                    .map(|(_, c)| c)
                    .skip_while(|c| *c == '{')
                    .take_while(|c| *c != '}')
                    .collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => diagnostics.push(
                        Diagnostic::error(
                            Code::Syntax,
                            format!("`\\u{{{hex}}}` is not a valid character"),
                        )
                        .label(span, "in this string")
                        .help(
                            "a \\u{...} escape takes a Unicode scalar value in hex, e.g. \\u{e9}",
                        ),
                    ),
                }
            }
            Some((_, other)) => out.push(other),
            None => {}
        }
    }
    out
}

fn tight_end(pair: &Pair<'_, Rule>) -> usize {
    // Blocks end at their `}` and strings at their closing quote: both tight.
    if matches!(
        pair.as_rule(),
        Rule::block | Rule::string | Rule::raw_string | Rule::one_of
    ) {
        return pair.as_span().end();
    }
    match pair.clone().into_inner().last() {
        Some(last) => tight_end(&last),
        None => pair.as_span().end(),
    }
}

fn is_keyword(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::kw_include
            | Rule::kw_config
            | Rule::kw_roles
            | Rule::kw_source
            | Rule::kw_masking
            | Rule::kw_report
            | Rule::kw_schedule
            | Rule::kw_after
            | Rule::kw_on
            | Rule::kw_by
            | Rule::kw_run
            | Rule::kw_as
            | Rule::kw_mask
            | Rule::kw_for
            | Rule::kw_except
            | Rule::kw_param
            | Rule::kw_window
            | Rule::kw_one_of
            | Rule::kw_default
            | Rule::kw_required
            | Rule::kw_help
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::{ParamOption, ParamTypeDecl};

    fn parse_ok(text: &str) -> FlowFile {
        let parsed = parse(FileId(0), text);
        assert!(
            parsed.diagnostics.is_empty(),
            "unexpected diagnostics: {:?}",
            parsed.diagnostics
        );
        parsed.file
    }

    #[test]
    fn parses_every_item_kind() {
        let file = parse_ok(
            r#"
# a comment
include "other.flow"
config {
  poll_interval 5s   # trailing comment
  worker_pool_size 2
}
roles CASE_WORKER, SUPERVISOR,
      ADMIN
source cases {
  path "data/cases.csv"
}
masking pii {
  mask ssn last4 for CASE_WORKER except ADMIN
}
report DAILY_REPORT {
  source cases
  mask client_name redact
}
schedule daily {
  cron "0 30 5 * * ?"
}
after DAILY_REPORT on success by SUPERVISOR run DAILY_SUMMARY as ADMIN {
  chunk_size 500
}
after A, B run C
"#,
        );
        assert_eq!(file.items.len(), 9);
        let ItemKind::Roles(roles) = &file.items[2].kind else {
            panic!("roles expected")
        };
        assert_eq!(roles.len(), 3);
        let ItemKind::Dependency(dep) = &file.items[7].kind else {
            panic!("dependency expected")
        };
        assert_eq!(dep.parents[0].name, "DAILY_REPORT");
        assert_eq!(
            dep.condition.as_ref().map(|c| c.name.as_str()),
            Some("success")
        );
        assert_eq!(dep.by_roles[0].name, "SUPERVISOR");
        assert_eq!(dep.child.name, "DAILY_SUMMARY");
        assert_eq!(dep.as_role.as_ref().map(|c| c.name.as_str()), Some("ADMIN"));
        assert!(dep.block.is_some());
        let ItemKind::Dependency(join) = &file.items[8].kind else {
            panic!("dependency expected")
        };
        assert_eq!(join.parents.len(), 2);
    }

    #[test]
    fn spans_point_at_the_text() {
        let text = "report R {\n  source cases\n}\n";
        let file = parse_ok(text);
        let ItemKind::Report(name, block) = &file.items[0].kind else {
            panic!()
        };
        assert_eq!(&text[name.span.start as usize..name.span.end as usize], "R");
        let s = block.settings().next().unwrap();
        assert_eq!(
            &text[s.key.span.start as usize..s.key.span.end as usize],
            "source"
        );
        assert_eq!(
            &text[s.values[0].span.start as usize..s.values[0].span.end as usize],
            "cases"
        );
    }

    #[test]
    fn string_escapes() {
        let file = parse_ok(r#"include "a\"b\\c\n\t\u{e9}""#);
        let ItemKind::Include(v) = &file.items[0].kind else {
            panic!()
        };
        assert_eq!(v.kind, ValueKind::Str("a\"b\\c\n\t\u{e9}".into()));
    }

    #[test]
    fn values_are_classified() {
        let file = parse_ok("config {\n a 5s, 1h30m, 12, -3, on, \"x\"\n}");
        let ItemKind::Config(block) = &file.items[0].kind else {
            panic!()
        };
        let kinds: Vec<_> = block
            .settings()
            .next()
            .unwrap()
            .values
            .iter()
            .map(|v| v.kind.clone())
            .collect();
        assert_eq!(
            kinds,
            vec![
                ValueKind::Duration("5s".into()),
                ValueKind::Duration("1h30m".into()),
                ValueKind::Number(12),
                ValueKind::Number(-3),
                ValueKind::Ident("on".into()),
                ValueKind::Str("x".into()),
            ]
        );
    }

    #[test]
    fn recovers_after_a_syntax_error() {
        let text =
            "report A {\n  source\n}\nreport B {\n  source s\n}\nbogus\nreport C {\n source s\n}\n";
        let parsed = parse(FileId(0), text);
        let names: Vec<_> = parsed
            .file
            .items
            .iter()
            .filter_map(|i| match &i.kind {
                ItemKind::Report(n, _) => Some(n.name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(names, vec!["B", "C"]);
        assert_eq!(parsed.diagnostics.len(), 2, "{:?}", parsed.diagnostics);
        assert!(parsed.diagnostics.iter().all(|d| d.code == Code::Syntax));
    }

    /// Recovery parses an item from a prefix of the text that ends at the
    /// next line starting with a keyword; an item going on past that line
    /// (an unindented block) is parsed whole all the same.
    #[test]
    fn recovery_reads_an_item_past_a_line_that_starts_a_declaration() {
        let text = "report A {\nsource s\nroles r\n}\nbogus\nreport B {\nsource s\n  x 1 2\n}\n";
        let parsed = parse_with_pest(FileId(0), text);
        let whole = parse_with_pest_whole_rest(FileId(0), text);
        assert_eq!(parsed.file, whole.file);
        assert_eq!(parsed.diagnostics, whole.diagnostics);
        let ItemKind::Report(name, block) = &parsed.file.items[0].kind else {
            panic!("{:?}", parsed.file.items)
        };
        assert_eq!(name.name, "A");
        assert_eq!(block.settings().count(), 2);
        // `bogus`; `2` in B; then `source s`, where recovery resumed, wants a block.
        assert_eq!(parsed.diagnostics.len(), 3, "{:?}", parsed.diagnostics);
    }

    #[test]
    fn syntax_errors_speak_words_not_rules() {
        let parsed = parse(FileId(0), "report A\n");
        let msg = &parsed.diagnostics[0].message;
        assert!(msg.contains("`{`"), "{msg}");
        assert!(!msg.contains("Rule"), "{msg}");
    }

    /// Corners of the grammar, written out: the hand-written parser accepts exactly what pest
    /// accepts, with the same tree (the property tests cover generated files).
    #[test]
    fn fast_parser_agrees_with_pest_on_corners() {
        for text in [
            "",
            "\u{feff}roles A",
            "roles A # no line end",
            "roles A\r\n",
            "roles A\rroles B",
            "report A{}",
            "report A {}\n",
            "report A\t{\n}",
            "report # c\nA {}",
            "report A { # c\n source s # d\n}",
            "report A {\n  source s\n  mask ssn last4 for A, # c\n B except C # d\n}",
            "report A {\n  mask ssn last4 for\n}",
            "report A {\n  mask\tssn  last4\n}",
            "report A {\n  masks x\n}",
            "report A {\n  mask x\n}",
            "report A { source s }",
            "report A {\n  a 1 b 2\n}",
            "config {\n a 5s3\n}",
            "config {\n a 12_\n}",
            "config {\n a -\n}",
            "config {\n a -7, 99999999999999999999\n}",
            "config {\n a \"\\u{110000}\", \"\\u{1234567}\"\n}",
            "config {\n a \"\\q\"\n}",
            "config {\n a \"x\n}",
            "config {\n a 1,\n\n   # c\n   2\n}",
            "config {\n a 1 ,2\n}",
            "include\"x.flow\"",
            "include \"x.flow\" # c",
            "after A run B",
            "after A,B run C{\n}",
            "after A on run X",
            "after A on success by S, T run B as ADMIN {\n chunk_size 5\n}",
            "after A by S run B",
            "after A run B as",
            "after  A\trun B",
            "afterA run B",
            "after A run B\nafter B run C\n\n",
            "roles A,\n B",
            "roles A,",
            "source s {\n path \"p\"\n}\nmasking m {\n mask a redact\n}\nschedule x {\n cron \"* * * * * ?\"\n}",
            "schedule\nx {}",
            "report é {}",
            "report A {}}",
            "}",
            "\u{0}",
            "report A {\n query \"\"\"SELECT 1\"\"\"\n}",
            "report A {\n query \"\"\"\nSELECT ':x' -- # no comment\n  FROM t\n\"\"\" # c\n}",
            "report A {\n query \"\"\"\"\"\"\n}",
            "report A {\n query \"\"\"a\"\"\"\"\n}",
            "report A {\n query \"\"\"a\"\"\",\"b\"\n}",
            "report A {\n query \"\"\"never closed\n}",
            "report A {\n query \"\"\n}",
            "include \"\"\"x.flow\"\"\"",
            "report A {\n param status one_of(\"OPEN\", \"CLOSED\") default \"OPEN\" help \"which\"\n}",
            "report A {\n param as_of date required help \"day\" # c\n}",
            "report A {\n param x string\n param y decimal default \"0\"\n}",
            "report A {\n param x one_of (\"a\",\n  \"b\" )\n}",
            "report A {\n param x one_of()\n}",
            "report A {\n param x one_of(\"a\",)\n}",
            "report A {\n param x one_of \"a\"\n}",
            "report A {\n param x one_ofx\n}",
            "report A {\n param x\n}",
            "report A {\n param x string default\n}",
            "report A {\n param x string required default 1 required help x\n}",
            "report A { param x string }",
            "report A {\n params x\n}",
            "report A {\n window previous day\n}",
            "report A {\n window previous week starting sunday # c\n}",
            "report A {\n window last 36h\n}",
            "report A {\n window\n}",
            "report A {\n window 5\n}",
            "report A {\n windows 5\n}",
            "schedule s { window previous month }",
        ] {
            let pest = parse_with_pest(FileId(0), text);
            match parse_fast(FileId(0), text) {
                Some(fast) => {
                    assert_eq!(fast.file, pest.file, "{text:?}");
                    assert_eq!(fast.diagnostics, pest.diagnostics, "{text:?}");
                }
                None => assert!(
                    pest.diagnostics.iter().any(|d| d.code == Code::Syntax),
                    "fast parser gave up on {text:?}, which pest accepts"
                ),
            }
        }
    }

    /// The new entry forms take the fast path when valid.
    #[test]
    fn fast_parser_takes_queries_params_and_windows() {
        for text in [
            "report A {\n query \"\"\"\nSELECT ':x' -- # no\n\"\"\" # c\n}",
            "report A {\n param s one_of(\"A\", \"B\") default \"A\" help \"h\"\n param d date required # c\n}",
            "report A {\n param x one_of (\"a\",\n  \"b\" ) required\n}",
            "report A { window last 36h }",
            "schedule s {\n window previous week starting sunday # c\n cron \"x\"\n}",
        ] {
            let fast = parse_fast(FileId(0), text);
            assert!(fast.is_some(), "gave up on {text:?}");
            assert_eq!(fast.map(|p| p.file), Some(parse_with_pest(FileId(0), text).file));
        }
    }

    #[test]
    fn triple_quoted_strings_span_lines_verbatim() {
        let text = "report A {\n  query \"\"\"\n  SELECT \"a\", '#b' -- \\n\n\"\"\"\n}\n";
        let file = parse_ok(text);
        let ItemKind::Report(_, block) = &file.items[0].kind else {
            panic!()
        };
        let query = &block.settings().next().unwrap().values[0];
        assert_eq!(
            query.kind,
            ValueKind::RawStr("\n  SELECT \"a\", '#b' -- \\n\n".into())
        );
        assert_eq!(query.text_start(), Some(query.span.start as usize + 3));
        assert!(text[query.span.start as usize..query.span.end as usize].ends_with("\"\"\""));
    }

    #[test]
    fn params_and_windows_keep_their_parts() {
        let file = parse_ok(
            "report A {\n  param s one_of(\"OPEN\", \"CLOSED\") default \"OPEN\" help \"h\"\n  param d date required\n  window previous week starting sunday\n}\n",
        );
        let ItemKind::Report(_, block) = &file.items[0].kind else {
            panic!()
        };
        let params: Vec<_> = block.params().collect();
        assert_eq!(params.len(), 2);
        assert_eq!(params[0].name.name, "s");
        let ParamTypeDecl::OneOf { options, .. } = &params[0].ty else {
            panic!("{:?}", params[0].ty)
        };
        assert_eq!(options.len(), 2);
        assert!(matches!(params[0].options[0], ParamOption::Default { .. }));
        assert!(matches!(params[0].options[1], ParamOption::Help { .. }));
        assert!(matches!(params[1].options[..], [ParamOption::Required(_)]));
        let words: Vec<_> = block
            .windows()
            .next()
            .unwrap()
            .words
            .iter()
            .map(|w| w.kind.clone())
            .collect();
        assert_eq!(words.len(), 4);
        assert_eq!(words[3], ValueKind::Ident("sunday".into()));
    }

    #[test]
    fn an_unterminated_triple_quoted_string_points_where_it_opened() {
        let text = "report A {\n  query \"\"\"\n  SELECT 1\nreport B {\n  source s\n}\n";
        let parsed = parse(FileId(0), text);
        assert_eq!(parsed.diagnostics.len(), 1, "{:?}", parsed.diagnostics);
        let d = &parsed.diagnostics[0];
        assert!(d.message.contains("unterminated"), "{}", d.message);
        assert_eq!(d.primary_span().map(|s| s.start), Some(19));
    }

    #[test]
    fn one_of_without_parentheses_asks_for_them() {
        let parsed = parse(FileId(0), "report A {\n  param s one_of \"A\"\n}\n");
        let msg = &parsed.diagnostics[0].message;
        assert!(msg.contains("expected `(`"), "{msg}");
    }

    #[test]
    fn empty_and_comment_only_files_parse() {
        assert!(parse_ok("").items.is_empty());
        assert!(parse_ok("# only a comment\n\n   # another")
            .items
            .is_empty());
    }
}
