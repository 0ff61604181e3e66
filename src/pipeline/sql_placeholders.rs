//! Named placeholders (`:name`) in a PostgreSQL query, numbered for the wire (`$1`).
//!
//! PostgreSQL's protocol binds parameters by position; a report's query names them. The
//! scanner below finds `:name` outside string literals (`'…'`, `E'…'`), quoted identifiers
//! (`"…"`), dollar-quoted strings (`$tag$…$tag$`), and comments (`-- …`, nested `/* … */`), leaves
//! casts (`::date`) alone, and replaces each name with its number — the same number for every
//! use of a name. Only placeholders are written into the query text, never a value. A
//! positional `$1` in the query is refused: values are bound to names.

/// Why a query's placeholders cannot be numbered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("the query uses the positional placeholder `${0}`; name its parameters (`:name`)")]
    Positional(String),
    #[error("the query has an unterminated {0}")]
    Unterminated(&'static str),
}

/// The query with `:name` replaced by `$n`, and the names in number order.
pub fn number(query: &str) -> Result<(String, Vec<String>), PlaceholderError> {
    let bytes = query.as_bytes();
    let mut out = String::with_capacity(query.len());
    let mut names: Vec<String> = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => {
                // `E'…'` allows backslash escapes; `''` is a quote in either.
                let escapes = i > 0 && matches!(bytes[i - 1], b'E' | b'e') && !ident(bytes, i - 1);
                i = skip_quoted(bytes, i, b'\'', escapes)
                    .ok_or(PlaceholderError::Unterminated("string literal"))?;
            }
            b'"' => {
                i = skip_quoted(bytes, i, b'"', false)
                    .ok_or(PlaceholderError::Unterminated("quoted identifier"))?;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &bytes[i..]).map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(bytes, i)
                    .ok_or(PlaceholderError::Unterminated("comment"))?;
            }
            b'$' => {
                if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) && !ident(bytes, i) {
                    let digits = bytes[i + 1..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                    return Err(PlaceholderError::Positional(
                        query[i + 1..i + 1 + digits].to_string(),
                    ));
                }
                match dollar_tag(bytes, i) {
                    Some(tag_end) if !ident(bytes, i) => {
                        let tag = &query[i..tag_end];
                        let body = &query[tag_end..];
                        let close = body
                            .find(tag)
                            .ok_or(PlaceholderError::Unterminated("dollar-quoted string"))?;
                        i = tag_end + close + tag.len();
                    }
                    _ => i += 1,
                }
            }
            b':' if bytes.get(i + 1) == Some(&b':') => i += 2,
            b':' if bytes
                .get(i + 1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_' || *b >= 0x80)
                && !(i > 0 && bytes[i - 1] == b':') =>
            {
                // As PostgreSQL's identifiers: non-ASCII letters are part of a name.
                let len = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b >= 0x80)
                    .count();
                let name = &query[i + 1..i + 1 + len];
                let number = match names.iter().position(|n| n == name) {
                    Some(at) => at + 1,
                    None => {
                        names.push(name.to_string());
                        names.len()
                    }
                };
                out.push_str(&query[copied..i]);
                out.push('$');
                out.push_str(&number.to_string());
                i += 1 + len;
                copied = i;
            }
            _ => i += 1,
        }
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

/// The index after a (nested) `/* … */` comment starting at `start`.
fn skip_block_comment(bytes: &[u8], start: usize) -> Option<usize> {
    let (mut depth, mut i) = (0usize, start);
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
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
