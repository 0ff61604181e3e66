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
            ValueKind::Str(_) => "a string",
            ValueKind::Number(_) => "a number",
            ValueKind::Duration(_) => "a duration",
            ValueKind::Ident(_) => "a name",
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Setting(Setting),
    Mask(MaskRule),
}

impl Entry {
    pub fn span(&self) -> Span {
        match self {
            Entry::Setting(s) => s.span,
            Entry::Mask(m) => m.span,
        }
    }
}

/// `{ ... }`: settings and mask rules, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub entries: Vec<Entry>,
    pub span: Span,
}

impl Block {
    pub fn settings(&self) -> impl Iterator<Item = &Setting> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Setting(s) => Some(s),
            Entry::Mask(_) => None,
        })
    }

    pub fn masks(&self) -> impl Iterator<Item = &MaskRule> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Mask(m) => Some(m),
            Entry::Setting(_) => None,
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
