//! Byte scans over 8-byte words (SWAR, "Bit Twiddling Hacks"): exact tests for the presence of
//! a byte value, or of a byte below a bound, in a whole word at a time. A row is scanned once;
//! only rows that hold a special byte somewhere are then encoded field by field.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether some byte of `word` is below `n` (`n <= 128`).
#[inline]
fn word_has_less(word: u64, n: u8) -> bool {
    word.wrapping_sub(ONES * n as u64) & !word & HIGHS != 0
}

/// Whether some byte of `word` equals `b`.
#[inline]
fn word_has(word: u64, b: u8) -> bool {
    word_has_less(word ^ (ONES * b as u64), 1)
}

/// Whether any byte of `bytes` is special: `word` tests 8 bytes at once, `byte` one.
#[inline]
fn any_byte(bytes: &[u8], word: impl Fn(u64) -> bool, byte: impl Fn(u8) -> bool) -> bool {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        if word(u64::from_le_bytes(w.try_into().expect("8 bytes"))) {
            return true;
        }
    }
    words.remainder().iter().any(|&b| byte(b))
}

/// Bytes that force a CSV field into quotes, as the csv crate's writer decides with its
/// default settings: delimiter, quote, CR, LF.
#[inline]
pub(super) fn needs_csv_quotes(bytes: &[u8]) -> bool {
    any_byte(
        bytes,
        |w| word_has(w, b',') | word_has(w, b'"') | word_has(w, b'\n') | word_has(w, b'\r'),
        |b| matches!(b, b',' | b'"' | b'\n' | b'\r'),
    )
}

/// Bytes a JSON string must escape: controls, quote, backslash.
#[inline]
pub(super) fn needs_json_escapes(bytes: &[u8]) -> bool {
    any_byte(
        bytes,
        |w| word_has_less(w, 0x20) | word_has(w, b'"') | word_has(w, b'\\'),
        |b| b < 0x20 || b == b'"' || b == b'\\',
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_scans_are_exact() {
        // Every byte value at every position of a word and of the remainder.
        for len in [1usize, 7, 8, 9, 16, 23] {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[pos] = b;
                    let csv = matches!(b, b',' | b'"' | b'\n' | b'\r');
                    let json = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_csv_quotes(&bytes), csv, "{len} {pos} {b}");
                    assert_eq!(needs_json_escapes(&bytes), json, "{len} {pos} {b}");
                }
            }
        }
        // Neighbouring bytes must not create false hits (borrows across bytes).
        for a in 0..=255u8 {
            for b in [0u8, 1, 0x1f, 0x20, 0x21, 0x2b, 0x2c, 0x2d, 0x7f, 0x80, 0xff] {
                let bytes = [a, b, a, b, a, b, a, b];
                let csv = [a, b]
                    .iter()
                    .any(|&c| matches!(c, b',' | b'"' | b'\n' | b'\r'));
                let json = [a, b].iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
                assert_eq!(needs_csv_quotes(&bytes), csv, "{a} {b}");
                assert_eq!(needs_json_escapes(&bytes), json, "{a} {b}");
            }
        }
    }
}
