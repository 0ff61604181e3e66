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

/// Appends an integer in decimal (no formatting machinery: this runs for every integer field
/// of a database source).
#[inline]
pub(super) fn push_integer(n: i64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends a finite float in shortest round-trip form (`1.5`, `0.1`, `1e20`: a JSON number)
/// and returns [`Kind::Real`]; NaN and infinities as PostgreSQL writes them (`NaN`,
/// `Infinity`, `-Infinity`), as [`Kind::Text`], since no JSON number holds them.
#[inline]
pub(super) fn push_float(x: f64, out: &mut Vec<u8>) -> Kind {
    if x.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
        Kind::Real
    } else {
        out.extend_from_slice(if x.is_nan() {
            b"NaN"
        } else if x > 0.0 {
            b"Infinity"
        } else {
            b"-Infinity"
        });
        Kind::Text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_json_numbers() {
        for n in [0i64, 7, -7, 1234567890, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            push_integer(n, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
        for (x, text) in [
            (1.5, "1.5"),
            (-0.25, "-0.25"),
            (0.1, "0.1"),
            (1e20, "1e20"),
            (1.0, "1.0"),
        ] {
            let mut out = Vec::new();
            assert_eq!(push_float(x, &mut out), Kind::Real);
            let written = String::from_utf8(out).unwrap();
            assert_eq!(written, text);
            assert_eq!(serde_json::from_str::<f64>(&written).unwrap(), x);
        }
        let mut out = Vec::new();
        assert_eq!(push_float(f64::NEG_INFINITY, &mut out), Kind::Text);
        assert_eq!(out, b"-Infinity");
    }
}
