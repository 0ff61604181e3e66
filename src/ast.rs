//! The syntax tree of one `.flow` file, exactly as written.
//!
//! The AST keeps every token's [`Span`] and does not interpret values: whether
//! `5x` is a valid duration or `CASE_WORKR` a declared role is the compiler's
//! business. The formatter prints this tree back; the compiler lowers it to a
//! [`crate::workflow::Workflow`].

use crate::source_map::Span;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// A quoted string, escapes already decoded.
    Str(String),
    /// A triple-quoted string (`"""…"""`), exactly as written between the quotes: it may span
    /// lines and has no escapes. It is a string wherever one is expected; the formatter prints
    /// it back verbatim.
    RawStr(String),
    /// An integer as written (it may not fit the setting's range).
    Number(i64),
    /// Digits followed by letters, e.g. `5s`, `1h30m`, `5x`: checked later.
    Duration(String),
    /// A bare name: a reference, a keyword value such as `on` or `csv`.
    Ident(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub kind: ValueKind,
    pub span: Span,
}

impl Value {
    /// What kind of value this is, in words, for "expected X, found Y" errors.
    pub fn describe(&self) -> &'static str {
        match self.kind {
            ValueKind::Str(_) | ValueKind::RawStr(_) => "a string",
            ValueKind::Number(_) => "a number",
            ValueKind::Duration(_) => "a duration",
            ValueKind::Ident(_) => "a name",
        }
    }

    /// The text of a string value (quoted or triple-quoted).
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            ValueKind::Str(s) | ValueKind::RawStr(s) => Some(s),
            _ => None,
        }
    }

    /// For a string whose text is its source byte for byte (triple-quoted, or quoted without
    /// escapes): the offset of the text's first byte in the file, so a diagnostic can point
    /// inside it.
    pub fn text_start(&self) -> Option<usize> {
        let start = self.span.start as usize;
        match &self.kind {
            ValueKind::RawStr(_) => Some(start + 3),
            ValueKind::Str(s) if self.span.len() == s.len() + 2 => Some(start + 1),
            _ => None,
        }
    }
}

/// `key value[, value...]` inside a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: Ident,
    pub values: Vec<Value>,
    pub span: Span,
}

/// `mask FIELD METHOD [for ROLES] [except ROLES]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskRule {
    pub field: Ident,
    pub method: Ident,
    pub for_roles: Vec<Ident>,
    pub except_roles: Vec<Ident>,
    pub span: Span,
}

/// The type of a `param`: a name (`string`, `date`, ...) or `one_of("A", "B")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamTypeDecl {
    Named(Ident),
    /// `one_of(VALUES)`; the span covers `one_of` to `)`.
    OneOf {
        options: Vec<Value>,
        span: Span,
    },
}

impl ParamTypeDecl {
    pub fn span(&self) -> Span {
        match self {
            ParamTypeDecl::Named(id) => id.span,
            ParamTypeDecl::OneOf { span, .. } => *span,
        }
    }
}

/// One option of a `param`, as written; the span covers the keyword and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamOption {
    Default { value: Value, span: Span },
    Required(Span),
    Help { value: Value, span: Span },
}

impl ParamOption {
    pub fn span(&self) -> Span {
        match self {
            ParamOption::Default { span, .. }
            | ParamOption::Required(span)
            | ParamOption::Help { span, .. } => *span,
        }
    }
}

/// `param NAME TYPE [default VALUE | required | help STRING]...`, options in written order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamDecl {
    pub name: Ident,
    pub ty: ParamTypeDecl,
    pub options: Vec<ParamOption>,
    pub span: Span,
}

/// `window WORD...` (`previous day`, `previous week starting sunday`, `last 36h`): the words
/// as written, read by the compiler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowDecl {
    pub words: Vec<Value>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Setting(Setting),
    Mask(MaskRule),
    Param(ParamDecl),
    Window(WindowDecl),
}

impl Entry {
    pub fn span(&self) -> Span {
        match self {
            Entry::Setting(s) => s.span,
            Entry::Mask(m) => m.span,
            Entry::Param(p) => p.span,
            Entry::Window(w) => w.span,
        }
    }
}

/// `{ ... }`: settings, mask rules, parameters and windows, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub entries: Vec<Entry>,
    pub span: Span,
}

impl Block {
    pub fn settings(&self) -> impl Iterator<Item = &Setting> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Setting(s) => Some(s),
            _ => None,
        })
    }

    pub fn masks(&self) -> impl Iterator<Item = &MaskRule> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Mask(m) => Some(m),
            _ => None,
        })
    }

    pub fn params(&self) -> impl Iterator<Item = &ParamDecl> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Param(p) => Some(p),
            _ => None,
        })
    }

    pub fn windows(&self) -> impl Iterator<Item = &WindowDecl> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Window(w) => Some(w),
            _ => None,
        })
    }
}

/// `after PARENTS [on COND] [by ROLES] run CHILD [as ROLE] [{ overrides }]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyDecl {
    pub parents: Vec<Ident>,
    pub condition: Option<Ident>,
    pub by_roles: Vec<Ident>,
    pub child: Ident,
    pub as_role: Option<Ident>,
    pub block: Option<Block>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemKind {
    Include(Value),
    Config(Block),
    Roles(Vec<Ident>),
    Source(Ident, Block),
    Masking(Ident, Block),
    Report(Ident, Block),
    Schedule(Ident, Block),
    Dependency(DependencyDecl),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: ItemKind,
    pub span: Span,
}

/// One parsed file: the items that parsed, in order. Items with syntax errors
/// are left out and reported separately.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFile {
    pub items: Vec<Item>,
}
