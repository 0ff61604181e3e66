//! The kind of a field's value as a database source read it: typed outputs (JSON lines) write
//! numbers, booleans, JSON and NULL as such, not as strings. File sources carry text only.

/// What a field holds; its bytes are the value's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// SQL NULL (the field is empty).
    Null,
    /// A whole number.
    Integer,
    /// A finite float in shortest round-trip form.
    Real,
    /// An exact decimal (PostgreSQL `numeric`), digits as the database holds them.
    Decimal,
    /// `true` or `false`.
    Bool,
    Text,
    /// JSON text, written as JSON.
    Json,
    /// Bytes, as lowercase hex.
    Blob,
}
