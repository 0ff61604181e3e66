//! Named placeholders (`:name`) in a report's query: found for the compiler, numbered for
//! PostgreSQL's wire (`$1`).
//!
//! A report's query names its parameters (`:name`, in SQLite and PostgreSQL alike). [`scan`]
//! finds each `:name` outside string literals (`'…'`, and PostgreSQL's `E'…'`), quoted
//! identifiers (`"…"`, and SQLite's `` `…` `` and `[…]`), PostgreSQL's dollar-quoted strings
//! (`$tag$…$tag$`) and comments (`-- …`, `/* … */`, nested in PostgreSQL), leaves casts
//! (`::date`) alone, and returns each use with its byte range, so the compiler can check the
//! names and point at a wrong one. Placeholders a value would not be bound to by name are
//! refused: a positional `$1` in either dialect, and SQLite's other forms (`?`, `?NNN`,
//! `@name`, `$name`), which SQLite would otherwise leave unbound (NULL). In PostgreSQL `?` and
//! `@` are operators (`jsonb ? 'key'`, `@ -5`) and stay as they are.
//!
//! PostgreSQL's protocol binds parameters by position: [`number`] replaces each name with its
//! number — the same number for every use of a name. Only placeholders are written into the
//! query text, never a value.

use std::ops::Range;

/// Why a query's placeholders cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("the query uses the positional placeholder `${0}`; name its parameters (`:name`)")]
    Positional(String),
    #[error(
        "the query uses the SQLite placeholder `{0}`; a value is bound by name: write `:name`"
    )]
    Unnamed(String),
    #[error("the query has an unterminated {0}")]
    Unterminated(&'static str),
}

/// Where a query's placeholders are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One use of a named placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// The name, without its `:`.
    pub name: String,
    /// The byte range of `:name` in the query.
    pub range: Range<usize>,
}

/// A [`PlaceholderError`] and the byte range of the query text it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ScanError {
    pub error: PlaceholderError,
    pub range: Range<usize>,
}

/// Every use of a named placeholder in `query`, in order.
pub fn scan(query: &str, dialect: Dialect) -> Result<Vec<Placeholder>, ScanError> {
    let pg = dialect == Dialect::Postgres;
    let bytes = query.as_bytes();
    let mut found = Vec::new();
    let unterminated = |what, from: usize| ScanError {
        error: PlaceholderError::Unterminated(what),
        range: from..bytes.len(),
    };
    let name_len = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b >= 0x80)
            .count()
    };
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => {
                // `E'…'` allows backslash escapes in PostgreSQL; `''` is a quote in either.
                let escapes =
                    pg && i > 0 && matches!(bytes[i - 1], b'E' | b'e') && !ident(bytes, i - 1);
                i = skip_quoted(bytes, i, b'\'', escapes)
                    .ok_or_else(|| unterminated("string literal", i))?;
            }
            b'"' => {
                i = skip_quoted(bytes, i, b'"', false)
                    .ok_or_else(|| unterminated("quoted identifier", i))?;
            }
            b'`' if !pg => {
                i = skip_quoted(bytes, i, b'`', false)
                    .ok_or_else(|| unterminated("quoted identifier", i))?;
            }
            b'[' if !pg => {
                i = memchr::memchr(b']', &bytes[i..])
                    .map(|n| i + n + 1)
                    .ok_or_else(|| unterminated("quoted identifier", i))?;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &bytes[i..]).map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(bytes, i, pg).ok_or_else(|| unterminated("comment", i))?;
            }
            b'$' if ident(bytes, i) => i += 1,
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                return Err(ScanError {
                    error: PlaceholderError::Positional(query[i + 1..i + 1 + digits].to_string()),
                    range: i..i + 1 + digits,
                });
            }
            b'$' if pg => match dollar_tag(bytes, i) {
                Some(tag_end) => {
                    let tag = &query[i..tag_end];
                    let close = query[tag_end..]
                        .find(tag)
                        .ok_or_else(|| unterminated("dollar-quoted string", i))?;
                    i = tag_end + close + tag.len();
                }
                None => i += 1,
            },
            b'$' | b'@' if !pg && name_len(i + 1) > 0 => {
                let end = i + 1 + name_len(i + 1);
                return Err(ScanError {
                    error: PlaceholderError::Unnamed(query[i..end].to_string()),
                    range: i..end,
                });
            }
            b'?' if !pg => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let end = i + 1 + digits;
                return Err(ScanError {
                    error: PlaceholderError::Unnamed(query[i..end].to_string()),
                    range: i..end,
                });
            }
            b':' if bytes.get(i + 1) == Some(&b':') => i += 2,
            b':' if bytes
                .get(i + 1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_' || *b >= 0x80)
                && !(i > 0 && bytes[i - 1] == b':') =>
            {
                // As the databases' identifiers: non-ASCII letters are part of a name.
                let end = i + 1 + name_len(i + 1);
                found.push(Placeholder {
                    name: query[i + 1..end].to_string(),
                    range: i..end,
                });
                i = end;
            }
            _ => i += 1,
        }
    }
    Ok(found)
}

/// The distinct names of `placeholders`, in order of first use.
pub fn distinct(placeholders: &[Placeholder]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in placeholders {
        if !names.contains(&p.name) {
            names.push(p.name.clone());
        }
    }
    names
}

/// The PostgreSQL query with `:name` replaced by `$n`, and the names in number order.
pub fn number(query: &str) -> Result<(String, Vec<String>), PlaceholderError> {
    rewrite(query, |number, out| {
        out.push('$');
        out.push_str(&number.to_string());
    })
}

/// The PostgreSQL query with each `:name` replaced by what `with` writes for its number (1 for
/// the first name used, the same number for every use of a name), and the names in number
/// order. What `with` writes is the caller's text, never a value.
pub fn rewrite(
    query: &str,
    mut with: impl FnMut(usize, &mut String),
) -> Result<(String, Vec<String>), PlaceholderError> {
    let found = scan(query, Dialect::Postgres).map_err(|e| e.error)?;
    let names = distinct(&found);
    let mut out = String::with_capacity(query.len());
    let mut copied = 0;
    for p in &found {
        let number = names
            .iter()
            .position(|n| *n == p.name)
            .map_or(0, |at| at + 1);
        out.push_str(&query[copied..p.range.start]);
        with(number, &mut out);
        copied = p.range.end;
    }
    out.push_str(&query[copied..]);
    Ok((out, names))
}

/// Whether the byte at `i` continues an identifier (so `E'` or `$` there is not special).
fn ident(bytes: &[u8], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')
}

/// The index after the closing `quote` of the quoted run starting at `start`.
fn skip_quoted(bytes: &[u8], start: usize, quote: u8, escapes: bool) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            b if b == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The index after a `/* … */` comment starting at `start` (nested when `nests`, as in
/// PostgreSQL; SQLite's ends at the first `*/`).
fn skip_block_comment(bytes: &[u8], start: usize, nests: bool) -> Option<usize> {
    let (mut depth, mut i) = (0usize, start);
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') if nests || depth == 0 => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The end of a dollar-quote tag (`$$`, `$tag$`) starting at `start`.
fn dollar_tag(bytes: &[u8], start: usize) -> Option<usize> {
    let len = bytes[start + 1..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    let end = start + 1 + len;
    (bytes.get(end) == Some(&b'$') && !bytes.get(start + 1).is_some_and(u8::is_ascii_digit))
        .then_some(end + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(query: &str) -> (String, Vec<String>) {
        number(query).unwrap()
    }

    #[test]
    fn each_use_is_found_with_its_range() {
        let query = "SELECT ':no' FROM t WHERE a = :status AND b > :min_amount OR a = :status";
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let found = scan(query, dialect).unwrap();
            let ranges: Vec<&str> = found.iter().map(|p| &query[p.range.clone()]).collect();
            assert_eq!(ranges, [":status", ":min_amount", ":status"]);
            assert_eq!(distinct(&found), ["status", "min_amount"]);
        }
    }

    #[test]
    fn sqlite_forms_that_bind_by_position_or_prefix_are_refused() {
        for (query, form) in [
            ("SELECT * FROM t WHERE a = ?", "?"),
            ("SELECT * FROM t WHERE a = ?12", "?12"),
            ("SELECT * FROM t WHERE a = @status", "@status"),
            ("SELECT * FROM t WHERE a = $status", "$status"),
        ] {
            let err = scan(query, Dialect::Sqlite).unwrap_err();
            assert_eq!(err.error, PlaceholderError::Unnamed(form.into()), "{query}");
            assert_eq!(&query[err.range.clone()], form);
            assert!(err.to_string().contains("write `:name`"), "{err}");
        }
        // Inside literals, identifiers and comments they are text.
        let quiet = "SELECT '?', \"@a\", `$b`, [c?] -- ?\n/* @d */ FROM t WHERE x = :y";
        assert_eq!(distinct(&scan(quiet, Dialect::Sqlite).unwrap()), ["y"]);
        // PostgreSQL's `?` and `@` are operators; `$1` is refused in both.
        assert!(scan("SELECT doc ? 'k', @ -5 FROM t", Dialect::Postgres).is_ok());
        let err = scan("SELECT $1", Dialect::Sqlite).unwrap_err();
        assert_eq!(err.error, PlaceholderError::Positional("1".into()));
        assert_eq!(err.range, 7..9);
    }

    #[test]
    fn sqlite_block_comments_do_not_nest() {
        let query = "SELECT /* /* */ :a";
        assert_eq!(distinct(&scan(query, Dialect::Sqlite).unwrap()), ["a"]);
        assert_eq!(
            scan(query, Dialect::Postgres).unwrap_err().error,
            PlaceholderError::Unterminated("comment")
        );
    }

    #[test]
    fn names_become_numbers_once_each() {
        let (sql, names) = numbered(
            "SELECT * FROM cases WHERE opened_on >= :interval_start_date AND opened_on < :interval_end_date \
             AND (county_id = :county OR :county IS NULL)",
        );
        assert_eq!(
            sql,
            "SELECT * FROM cases WHERE opened_on >= $1 AND opened_on < $2 AND (county_id = $3 OR $3 IS NULL)"
        );
        assert_eq!(
            names,
            ["interval_start_date", "interval_end_date", "county"]
        );
    }

    #[test]
    fn literals_identifiers_comments_and_casts_are_left_alone() {
        let query = "SELECT ':no', E'it\\'s :no', 'a''b :no', \"col:no\", $$ :no $$, $x$ :no $x$, \
                     x::date, '2026-01-01'::timestamp -- :no\n/* :no /* :no */ :no */ FROM t WHERE a = :yes";
        let (sql, names) = numbered(query);
        assert_eq!(names, ["yes"]);
        assert!(sql.ends_with("WHERE a = $1"), "{sql}");
        assert_eq!(sql.matches(":no").count(), 10, "{sql}");
        assert!(
            sql.contains("x::date") && sql.contains("'::timestamp"),
            "{sql}"
        );
    }

    #[test]
    fn positional_placeholders_and_unterminated_runs_are_refused() {
        assert_eq!(
            number("SELECT $1").unwrap_err(),
            PlaceholderError::Positional("1".into())
        );
        assert_eq!(
            number("SELECT a FROM t WHERE b = $12")
                .unwrap_err()
                .to_string(),
            "the query uses the positional placeholder `$12`; name its parameters (`:name`)"
        );
        // `$1` inside a literal is not a placeholder; an identifier may contain `$`.
        assert_eq!(
            numbered("SELECT '$1', col$1 FROM t").1,
            Vec::<String>::new()
        );
        for (query, what) in [
            ("SELECT 'abc", "string literal"),
            ("SELECT \"abc", "quoted identifier"),
            ("SELECT /* abc", "comment"),
            ("SELECT $q$ abc", "dollar-quoted string"),
        ] {
            assert_eq!(
                number(query).unwrap_err(),
                PlaceholderError::Unterminated(what),
                "{query}"
            );
        }
    }

    #[test]
    fn non_ascii_text_around_placeholders_survives() {
        let (sql, names) = numbered("SELECT 'Zoë' AS ñ WHERE name = :név_1 -- ünïcode\n");
        assert_eq!(sql, "SELECT 'Zoë' AS ñ WHERE name = $1 -- ünïcode\n");
        assert_eq!(names, ["név_1"]);
    }

    proptest::proptest! {
        /// Any text: no panic, and without placeholders the query comes back unchanged.
        #[test]
        fn any_query_numbers_without_panicking(query in "[a-z:$'\"\\\\/*\\- \n\u{e9}0-9E_]{0,40}") {
            if let Ok((sql, names)) = number(&query) {
                if names.is_empty() {
                    proptest::prop_assert_eq!(sql, query);
                } else {
                    proptest::prop_assert!(sql.contains("$1"));
                }
            }
        }
    }
}
