//! Role-based field masking (the seed's `ReportGenerationService.applyFieldMasking`).
//!
//! A [`Masker`] is built once per job from the masking rules already resolved for the
//! principal's role (`(field name, method)` pairs) and the header of the data. It resolves the
//! field names to column indexes once; masking then costs no allocation: a writer asks for each
//! field's output with [`Masker::mask_field`] (the value itself, a static `****`, or bytes in a
//! stack [`MaskBuf`]), or has a whole row copied into a reusable [`csv::ByteRecord`] with
//! [`Masker::apply`]. Hashing uses HMAC-SHA256 keyed once per job: a value shorter than 56 bytes
//! costs exactly two SHA-256 compressions.
//!
//! | method   | result                                                                  |
//! |----------|-------------------------------------------------------------------------|
//! | `redact` | `****`                                                                  |
//! | `last4`  | `****` + the last 4 characters (UTF-8 aware); ≤ 4 characters → `****`   |
//! | `hash`   | HMAC-SHA256 of the value under the job's 32-byte key, lowercase hex     |
//! | `null`   | empty CSV field, JSON `null`                                            |
//!
//! Every value of a masked column is masked, the empty string included, so the output does not
//! reveal which values were empty (except `hash`, which is deterministic by design).

use std::fmt;
use std::str::FromStr;

use csv::ByteRecord;
use hmac::{Hmac, Mac};
use sha2::digest::core_api::{Block, Buffer, UpdateCore, VariableOutputCore};
use sha2::digest::Output;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The text every `redact` value becomes, and the prefix of every `last4` value.
pub const REDACTED: &str = "****";

/// How a field is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskMethod {
    /// Replace the value by `****`.
    Redact,
    /// Keep the last 4 characters: `****1234`. Values of 4 characters or fewer become `****`.
    Last4,
    /// Keyed hash: lowercase hex of HMAC-SHA256(key, value). Stable for one key, so masked
    /// values can still be joined and counted; unlinkable across keys.
    Hash,
    /// Drop the value: an empty CSV field, `null` in JSON.
    Null,
}

impl MaskMethod {
    /// The names used in workflow files, in declaration order of the variants.
    pub const NAMES: [&'static str; 4] = ["redact", "last4", "hash", "null"];

    /// Every method, in the order of [`MaskMethod::NAMES`].
    pub const ALL: [MaskMethod; 4] = [
        MaskMethod::Redact,
        MaskMethod::Last4,
        MaskMethod::Hash,
        MaskMethod::Null,
    ];

    /// Parses a method name (exact, lowercase, as in [`MaskMethod::NAMES`]).
    pub fn from_name(s: &str) -> Option<MaskMethod> {
        match s {
            "redact" => Some(MaskMethod::Redact),
            "last4" => Some(MaskMethod::Last4),
            "hash" => Some(MaskMethod::Hash),
            "null" => Some(MaskMethod::Null),
            _ => None,
        }
    }

    /// The method's name as written in workflow files.
    pub fn name(self) -> &'static str {
        match self {
            MaskMethod::Redact => "redact",
            MaskMethod::Last4 => "last4",
            MaskMethod::Hash => "hash",
            MaskMethod::Null => "null",
        }
    }
}

impl fmt::Display for MaskMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error of `"…".parse::<MaskMethod>()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mask method `{0}` (expected one of: redact, last4, hash, null)")]
pub struct UnknownMaskMethod(pub String);

impl FromStr for MaskMethod {
    type Err = UnknownMaskMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MaskMethod::from_name(s).ok_or_else(|| UnknownMaskMethod(s.to_string()))
    }
}

/// Byte offset in `value` where its last `n` characters start, counting UTF-8 characters (a
/// character starts at every byte that is not a continuation byte `10xxxxxx`). `None` when the
/// value has `n` characters or fewer. Invalid UTF-8 degrades gracefully (never panics).
#[inline]
fn last_chars_start(value: &[u8], n: usize) -> Option<usize> {
    let mut seen = 0;
    for (i, &b) in value.iter().enumerate().rev() {
        if b & 0xC0 != 0x80 {
            seen += 1;
            if seen == n {
                // A character starts before `i` too? Then the value is longer than `n` chars.
                return value[..i].iter().any(|&c| c & 0xC0 != 0x80).then_some(i);
            }
        }
    }
    None
}

/// Masks one value with a freshly keyed masker. Convenience for code outside the row path (API
/// previews, tests); `None` for [`MaskMethod::Null`]. The row path uses [`Masker`].
pub fn mask_str(method: MaskMethod, value: &str, key: &[u8; 32]) -> Option<String> {
    let masker = Masker::new(&[], std::iter::empty::<&[u8]>(), key);
    let mut out = Vec::new();
    masker.mask_into(method, value.as_bytes(), &mut out)?;
    // The input is UTF-8, and every method keeps it so (last4 cuts at character boundaries).
    Some(String::from_utf8(out).expect("masking keeps UTF-8 valid"))
}

/// Scratch space for one masked value (the longest is a hash: 64 hex digits). Lives on the
/// stack; reused for every field.
#[derive(Clone)]
pub struct MaskBuf([u8; 64]);

impl Default for MaskBuf {
    fn default() -> Self {
        MaskBuf([0; 64])
    }
}

type Sha256Core = sha2::Sha256VarCore;

/// Lowercase hex digits of every byte value.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    table
};

/// HMAC-SHA256 (RFC 2104) with a 32-byte key, specialised for short values: the key blocks are
/// absorbed once, and a value shorter than a block is then finished straight from the block
/// level core (two compressions for up to 55 bytes), without the generic buffering of the `hmac`
/// crate. Longer values go through the `hmac` crate.
#[derive(Clone)]
struct KeyedHash {
    /// State after the `key ^ ipad` block.
    inner: Sha256Core,
    /// State after the `key ^ opad` block.
    outer: Sha256Core,
    /// The same key, for values of a block or more.
    mac: HmacSha256,
}

impl KeyedHash {
    fn new(key: &[u8; 32]) -> KeyedHash {
        // A key shorter than the block is zero-padded (RFC 2104, step 1).
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, &k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let keyed = |pad: &[u8; 64]| {
            let mut core = Sha256Core::new(32).expect("SHA-256 has 32-byte output");
            core.update_blocks(std::slice::from_ref(Block::<Sha256Core>::from_slice(pad)));
            core
        };
        KeyedHash {
            inner: keyed(&ipad),
            outer: keyed(&opad),
            mac: HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length"),
        }
    }

    /// Lowercase hex of HMAC-SHA256(key, value).
    #[inline]
    fn hex(&self, value: &[u8], out: &mut [u8; 64]) {
        let mut digest = Output::<Sha256Core>::default();
        if value.len() < 64 {
            // inner = H((K ^ ipad) || value); outer = H((K ^ opad) || inner).
            let mut core = self.inner.clone();
            core.finalize_variable_core(&mut Buffer::<Sha256Core>::new(value), &mut digest);
            let mut core = self.outer.clone();
            let inner = digest;
            core.finalize_variable_core(&mut Buffer::<Sha256Core>::new(&inner), &mut digest);
        } else {
            let mut mac = self.mac.clone();
            mac.update(value);
            digest = mac.finalize().into_bytes();
        }
        for (pair, byte) in out.chunks_exact_mut(2).zip(digest) {
            pair.copy_from_slice(&HEX_PAIRS[byte as usize]);
        }
    }
}

/// Masking rules resolved against one data header. Cheap to apply, no allocation per row.
#[derive(Clone)]
pub struct Masker {
    /// Per column of the data: the method to apply, if any.
    methods: Vec<Option<MaskMethod>>,
    keyed: KeyedHash,
    /// Whether any column is masked (fast path: rows pass through untouched).
    any: bool,
}

impl fmt::Debug for Masker {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("methods", &self.methods)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Masker {
    /// Resolves `masks` against `header` (the column names of the data, in order).
    ///
    /// Field names are matched exactly (bytes). A name absent from the header is ignored (that
    /// field is simply not in this data). If a name appears several times in `masks`, the last
    /// rule wins; if it appears several times in `header`, every such column is masked.
    pub fn new<H, S>(masks: &[(String, MaskMethod)], header: H, key: &[u8; 32]) -> Masker
    where
        H: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let methods: Vec<Option<MaskMethod>> = header
            .into_iter()
            .map(|name| {
                let name = name.as_ref();
                masks
                    .iter()
                    .rev()
                    .find(|(field, _)| field.as_bytes() == name)
                    .map(|&(_, method)| method)
            })
            .collect();
        let any = methods.iter().any(Option::is_some);
        Masker {
            methods,
            keyed: KeyedHash::new(key),
            any,
        }
    }

    /// Number of columns of the header this masker was built for.
    pub fn columns(&self) -> usize {
        self.methods.len()
    }

    /// The method applied to column `index`, if any.
    #[inline]
    pub fn method(&self, index: usize) -> Option<MaskMethod> {
        self.methods.get(index).copied().flatten()
    }

    /// Whether column `index` is masked with [`MaskMethod::Null`] (JSON writers emit `null`).
    #[inline]
    pub fn is_null(&self, index: usize) -> bool {
        matches!(self.method(index), Some(MaskMethod::Null))
    }

    /// Whether any column is masked at all.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.any
    }

    /// The value to write for column `index`: `value` itself when the column is not masked,
    /// else its masked form (in `buf` or static). [`MaskMethod::Null`] gives `b""`.
    ///
    /// Masked values never contain bytes that `value` did not (`last4` keeps a suffix of it) or
    /// other than ASCII letters, digits and `*`: they never need more quoting than the value.
    #[inline]
    pub fn mask_field<'a>(&self, index: usize, value: &'a [u8], buf: &'a mut MaskBuf) -> &'a [u8] {
        match self.method(index) {
            None => value,
            Some(method) => self.mask_with(method, value, buf),
        }
    }

    /// `value` masked with `method` (in `buf` or static); `b""` for [`MaskMethod::Null`].
    #[inline]
    pub fn mask_with<'a>(
        &self,
        method: MaskMethod,
        value: &'a [u8],
        buf: &'a mut MaskBuf,
    ) -> &'a [u8] {
        match method {
            MaskMethod::Redact => REDACTED.as_bytes(),
            MaskMethod::Last4 => match last_chars_start(value, 4) {
                // 4 UTF-8 characters are at most 16 bytes. A longer tail means invalid UTF-8
                // (stray continuation bytes): show nothing rather than guess.
                Some(start) if value.len() - start <= 16 => {
                    let tail = &value[start..];
                    buf.0[..4].copy_from_slice(REDACTED.as_bytes());
                    buf.0[4..4 + tail.len()].copy_from_slice(tail);
                    &buf.0[..4 + tail.len()]
                }
                _ => REDACTED.as_bytes(),
            },
            MaskMethod::Hash => {
                self.keyed.hex(value, &mut buf.0);
                &buf.0
            }
            MaskMethod::Null => b"",
        }
    }

    /// Writes the masked form of `value` into `out` (cleared first). Returns `None` for
    /// [`MaskMethod::Null`] (and leaves `out` empty).
    pub fn mask_into(&self, method: MaskMethod, value: &[u8], out: &mut Vec<u8>) -> Option<()> {
        out.clear();
        let mut buf = MaskBuf::default();
        out.extend_from_slice(self.mask_with(method, value, &mut buf));
        (method != MaskMethod::Null).then_some(())
    }

    /// Lowercase hex of HMAC-SHA256(key, value).
    pub fn hash_hex(&self, value: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        self.keyed.hex(value, &mut out);
        out
    }

    /// Writes the masked copy of `row` into `out` (cleared first; its allocation is reused).
    /// Writers that can take the fields one by one use [`Masker::mask_field`] and skip the copy.
    pub fn apply(&self, row: &ByteRecord, out: &mut ByteRecord) {
        out.clear();
        let mut buf = MaskBuf::default();
        for (i, field) in row.iter().enumerate() {
            out.push_field(self.mask_field(i, field, &mut buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7u8; 32];

    fn masks(pairs: &[(&str, MaskMethod)]) -> Vec<(String, MaskMethod)> {
        pairs.iter().map(|&(f, m)| (f.to_string(), m)).collect()
    }

    fn apply(masker: &Masker, row: &[&str]) -> Vec<String> {
        let mut out = ByteRecord::new();
        masker.apply(&ByteRecord::from(row.to_vec()), &mut out);
        out.iter()
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for (name, method) in MaskMethod::NAMES.iter().zip(MaskMethod::ALL) {
            assert_eq!(MaskMethod::from_name(name), Some(method));
            assert_eq!(method.name(), *name);
            assert_eq!(name.parse::<MaskMethod>().unwrap(), method);
            assert_eq!(method.to_string(), *name);
            assert_eq!(
                serde_json::to_string(&method).unwrap(),
                format!("\"{name}\"")
            );
            assert_eq!(
                serde_json::from_str::<MaskMethod>(&format!("\"{name}\"")).unwrap(),
                method
            );
        }
        assert_eq!(MaskMethod::from_name("Redact"), None);
        assert_eq!(MaskMethod::from_name("sha256"), None);
        let err = "blur".parse::<MaskMethod>().unwrap_err();
        assert!(err.to_string().contains("`blur`"), "{err}");
    }

    #[test]
    fn redact() {
        assert_eq!(
            mask_str(MaskMethod::Redact, "Jane Doe", &KEY).unwrap(),
            "****"
        );
        assert_eq!(mask_str(MaskMethod::Redact, "", &KEY).unwrap(), "****");
    }

    #[test]
    fn last4_ascii() {
        assert_eq!(
            mask_str(MaskMethod::Last4, "123-45-6789", &KEY).unwrap(),
            "****6789"
        );
        assert_eq!(
            mask_str(MaskMethod::Last4, "12345", &KEY).unwrap(),
            "****2345"
        );
    }

    #[test]
    fn last4_short_values_leak_nothing() {
        for v in ["", "1", "12", "123", "1234", "é", "日本語字"] {
            assert_eq!(
                mask_str(MaskMethod::Last4, v, &KEY).unwrap(),
                "****",
                "{v:?}"
            );
        }
    }

    #[test]
    fn last4_counts_characters_not_bytes() {
        assert_eq!(
            mask_str(MaskMethod::Last4, "José Müller", &KEY).unwrap(),
            "****ller"
        );
        assert_eq!(
            mask_str(MaskMethod::Last4, "東京都千代田区", &KEY).unwrap(),
            "****千代田区"
        );
        assert_eq!(
            mask_str(MaskMethod::Last4, "a😀😀😀😀", &KEY).unwrap(),
            "****😀😀😀😀"
        );
        // Same through the row path (stack buffer).
        let m = Masker::new(&masks(&[("n", MaskMethod::Last4)]), ["n"], &KEY);
        assert_eq!(apply(&m, &["a😀😀😀😀"]), ["****😀😀😀😀"]);
        assert_eq!(apply(&m, &["😀😀😀😀"]), ["****"]);
        assert_eq!(apply(&m, &["ñandú-4321"]), ["****4321"]);
    }

    #[test]
    fn last4_invalid_utf8_does_not_panic() {
        let m = Masker::new(&masks(&[("n", MaskMethod::Last4)]), ["n"], &KEY);
        let mut out = ByteRecord::new();
        let row = ByteRecord::from(vec![
            &b"x\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80abc"[..],
        ]);
        m.apply(&row, &mut out);
        assert!(out[0].starts_with(b"****"));
        assert_eq!(
            &out[0], b"****",
            "an invalid tail longer than 16 bytes shows nothing"
        );
        let row = ByteRecord::from(vec![&b"\x80\x80"[..]]);
        m.apply(&row, &mut out);
        assert_eq!(&out[0], b"****");
        let row = ByteRecord::from(vec![&b"ab\xffcdef"[..]]);
        m.apply(&row, &mut out);
        assert_eq!(&out[0], b"****cdef");
    }

    #[test]
    fn hash_is_stable_keyed_and_hex() {
        let a = mask_str(MaskMethod::Hash, "123-45-6789", &KEY).unwrap();
        let b = mask_str(MaskMethod::Hash, "123-45-6789", &KEY).unwrap();
        let c = mask_str(MaskMethod::Hash, "123-45-6780", &KEY).unwrap();
        let d = mask_str(MaskMethod::Hash, "123-45-6789", &[8u8; 32]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d, "a different key must give a different hash");
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        // Row path and convenience path agree.
        let m = Masker::new(&masks(&[("ssn", MaskMethod::Hash)]), ["ssn"], &KEY);
        assert_eq!(apply(&m, &["123-45-6789"]), [a]);
    }

    #[test]
    fn hash_matches_reference_hmac() {
        // The pre-keyed, cloned state gives the same MAC as keying from scratch.
        let key = [0x42u8; 32];
        let mut mac = HmacSha256::new_from_slice(&key).unwrap();
        mac.update(b"what do ya want for nothing?");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            mask_str(MaskMethod::Hash, "what do ya want for nothing?", &key).unwrap(),
            expected
        );
    }

    #[test]
    fn hash_matches_hmac_crate_for_all_lengths() {
        // Covers the one-block fast path (<= 55 bytes), its edges and the long-value path.
        let key: [u8; 32] = std::array::from_fn(|i| i as u8 * 7 + 1);
        let m = Masker::new(&[], ["x"], &key);
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 % 251) as u8).collect();
        for len in 0..data.len() {
            let mut mac = HmacSha256::new_from_slice(&key).unwrap();
            mac.update(&data[..len]);
            let expected = hex::encode(mac.finalize().into_bytes());
            assert_eq!(
                m.hash_hex(&data[..len]),
                expected.as_bytes(),
                "length {len}"
            );
        }
    }

    #[test]
    fn mask_field_borrows_unmasked_values() {
        let m = Masker::new(&masks(&[("b", MaskMethod::Last4)]), ["a", "b"], &KEY);
        let mut buf = MaskBuf::default();
        let value = b"plain".as_slice();
        assert!(std::ptr::eq(m.mask_field(0, value, &mut buf), value));
        assert_eq!(m.mask_field(1, b"123456", &mut buf), b"****3456");
        assert_eq!(m.mask_field(7, b"out of range", &mut buf), b"out of range");
    }

    #[test]
    fn null_gives_empty_field_and_none() {
        assert_eq!(mask_str(MaskMethod::Null, "x", &KEY), None);
        let m = Masker::new(&masks(&[("b", MaskMethod::Null)]), ["a", "b"], &KEY);
        assert_eq!(apply(&m, &["1", "2"]), ["1", ""]);
        assert!(m.is_null(1));
        assert!(!m.is_null(0));
        assert!(!m.is_null(99));
    }

    #[test]
    fn resolves_names_once_and_ignores_unknown_fields() {
        let m = Masker::new(
            &masks(&[
                ("ssn", MaskMethod::Last4),
                ("not_in_data", MaskMethod::Redact),
                ("client_name", MaskMethod::Redact),
            ]),
            ["case_id", "client_name", "ssn"],
            &KEY,
        );
        assert_eq!(m.columns(), 3);
        assert_eq!(m.method(0), None);
        assert_eq!(m.method(1), Some(MaskMethod::Redact));
        assert_eq!(m.method(2), Some(MaskMethod::Last4));
        assert!(m.is_active());
        assert_eq!(
            apply(&m, &["C1", "Jane Doe", "123-45-6789"]),
            ["C1", "****", "****6789"]
        );
        let none = Masker::new(&masks(&[("zzz", MaskMethod::Hash)]), ["a"], &KEY);
        assert!(!none.is_active());
        assert_eq!(apply(&none, &["v"]), ["v"]);
    }

    #[test]
    fn last_rule_wins_and_duplicate_columns_all_masked() {
        let m = Masker::new(
            &masks(&[("a", MaskMethod::Last4), ("a", MaskMethod::Redact)]),
            ["a", "b", "a"],
            &KEY,
        );
        assert_eq!(apply(&m, &["123456", "x", "654321"]), ["****", "x", "****"]);
    }

    #[test]
    fn masked_output_buffer_is_reused() {
        let m = Masker::new(&masks(&[("a", MaskMethod::Hash)]), ["a", "b"], &KEY);
        let mut out = ByteRecord::with_capacity(256, 4);
        for i in 0..100 {
            let row = ByteRecord::from(vec![format!("v{i}"), "b".to_string()]);
            m.apply(&row, &mut out);
            assert_eq!(out.len(), 2);
            assert_eq!(out[0].len(), 64);
        }
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let m = Masker::new(&[], ["a"], &[0xAB; 32]);
        let s = format!("{m:?}");
        assert!(s.contains("<redacted>"));
        assert!(!s.to_lowercase().contains("ab, ab") && !s.contains("171"));
    }
}
