//! PostgreSQL's binary values as the text a report writes, with their [`Kind`]: integers,
//! shortest round-trip floats, exact numerics, ISO dates and times (a `timestamptz` in UTC,
//! `…Z`), hyphenated UUIDs, JSON as its text, `bytea` as hex.
//!
//! Both ways a PostgreSQL source reads rows hand their values here (binary `DataRow` fields
//! from `query_raw`, and the fields of `COPY … (FORMAT binary)` in `pg_copy`, which are the same
//! bytes: each type's `send` function), so the two write byte-identical text.

use std::error::Error as StdError;
use std::io::Write as _;

use tokio_postgres::types::{FromSql, Type};

use super::value_kind::{push_float, push_integer, Kind};

pub(super) type DecodeResult = Result<Kind, Box<dyn StdError + Sync + Send>>;

/// How one column's binary values become text.
#[derive(Debug, Clone, Copy)]
pub(super) enum Decoder {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
    Json,
    Jsonb,
    Bytea,
}

impl Decoder {
    pub(super) fn for_type(ty: &Type) -> Option<Decoder> {
        Some(match *ty {
            Type::BOOL => Decoder::Bool,
            Type::INT2 => Decoder::Int2,
            Type::INT4 => Decoder::Int4,
            Type::INT8 => Decoder::Int8,
            Type::OID => Decoder::Oid,
            Type::FLOAT4 => Decoder::Float4,
            Type::FLOAT8 => Decoder::Float8,
            Type::NUMERIC => Decoder::Numeric,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Decoder::Text,
            Type::DATE => Decoder::Date,
            Type::TIME => Decoder::Time,
            Type::TIMESTAMP => Decoder::Timestamp,
            Type::TIMESTAMPTZ => Decoder::TimestampTz,
            Type::UUID => Decoder::Uuid,
            Type::JSON => Decoder::Json,
            Type::JSONB => Decoder::Jsonb,
            Type::BYTEA => Decoder::Bytea,
            _ => return None,
        })
    }

    /// Appends the value's text to `out`; its kind.
    pub(super) fn write(self, raw: &[u8], out: &mut Vec<u8>) -> DecodeResult {
        Ok(match self {
            Decoder::Bool => {
                out.extend_from_slice(if bool::from_sql(&Type::BOOL, raw)? {
                    b"true"
                } else {
                    b"false"
                });
                Kind::Bool
            }
            Decoder::Int2 => integer(i64::from(i16::from_sql(&Type::INT2, raw)?), out),
            Decoder::Int4 => integer(i64::from(i32::from_sql(&Type::INT4, raw)?), out),
            Decoder::Int8 => integer(i64::from_sql(&Type::INT8, raw)?, out),
            Decoder::Oid => integer(i64::from(u32::from_sql(&Type::OID, raw)?), out),
            Decoder::Float4 => push_float(float4(f32::from_sql(&Type::FLOAT4, raw)?), out),
            Decoder::Float8 => push_float(f64::from_sql(&Type::FLOAT8, raw)?, out),
            Decoder::Numeric => numeric(raw, out)?,
            Decoder::Text | Decoder::Json => {
                // The connection's client_encoding is UTF8; checked all the same, since JSON
                // output writes the bytes as they are.
                std::str::from_utf8(raw)?;
                out.extend_from_slice(raw);
                if matches!(self, Decoder::Json) {
                    Kind::Json
                } else {
                    Kind::Text
                }
            }
            Decoder::Jsonb => {
                let (version, text) = raw.split_first().ok_or("empty jsonb")?;
                if *version != 1 {
                    return Err(format!("jsonb version {version}").into());
                }
                std::str::from_utf8(text)?;
                out.extend_from_slice(text);
                Kind::Json
            }
            Decoder::Date => {
                push_date(chrono::NaiveDate::from_sql(&Type::DATE, raw)?, out);
                Kind::Text
            }
            Decoder::Time => {
                push_time(chrono::NaiveTime::from_sql(&Type::TIME, raw)?, out);
                Kind::Text
            }
            Decoder::Timestamp => {
                let t = chrono::NaiveDateTime::from_sql(&Type::TIMESTAMP, raw)?;
                push_date(t.date(), out);
                out.push(b' ');
                push_time(t.time(), out);
                Kind::Text
            }
            Decoder::TimestampTz => {
                let t = chrono::DateTime::<chrono::Utc>::from_sql(&Type::TIMESTAMPTZ, raw)?;
                let t = t.naive_utc();
                push_date(t.date(), out);
                out.push(b'T');
                push_time(t.time(), out);
                out.push(b'Z');
                Kind::Text
            }
            Decoder::Uuid => {
                let b: [u8; 16] = raw.try_into().map_err(|_| "uuid of the wrong length")?;
                let h = hex::encode(b);
                let _ = write!(
                    out,
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                );
                Kind::Text
            }
            Decoder::Bytea => {
                let at = out.len();
                out.resize(at + 2 * raw.len(), 0);
                // Cannot fail: the slice is exactly twice as long as the bytes.
                let _ = hex::encode_to_slice(raw, &mut out[at..]);
                Kind::Blob
            }
        })
    }
}

/// `n` (below 10000) as four digits, with leading zeros.
#[inline]
fn push_4_digits(n: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[
        b'0' + (n / 1000 % 10) as u8,
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

#[inline]
fn push_2_digits(n: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]);
}

/// `YYYY-MM-DD`, as chrono's `%Y-%m-%d` writes it (which years outside 0–9999 need).
#[inline]
fn push_date(date: chrono::NaiveDate, out: &mut Vec<u8>) {
    use chrono::Datelike;
    match u16::try_from(date.year()) {
        Ok(year) if year <= 9999 => {
            push_4_digits(year, out);
            out.push(b'-');
            push_2_digits(date.month(), out);
            out.push(b'-');
            push_2_digits(date.day(), out);
        }
        _ => {
            let _ = write!(out, "{}", date.format("%Y-%m-%d"));
        }
    }
}

/// `HH:MM:SS` and the fraction as chrono's `%.f` writes it: none, or 3, 6 or 9 digits.
#[inline]
fn push_time(time: chrono::NaiveTime, out: &mut Vec<u8>) {
    use chrono::Timelike;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        // A leap second: chrono's own writer.
        let _ = write!(out, "{}", time.format("%H:%M:%S%.f"));
        return;
    }
    push_2_digits(time.hour(), out);
    out.push(b':');
    push_2_digits(time.minute(), out);
    out.push(b':');
    push_2_digits(time.second(), out);
    if nanos == 0 {
        return;
    }
    let (value, digits) = if nanos % 1_000_000 == 0 {
        (nanos / 1_000_000, 3)
    } else if nanos % 1000 == 0 {
        (nanos / 1000, 6)
    } else {
        (nanos, 9)
    };
    out.push(b'.');
    let at = out.len();
    out.resize(at + digits, b'0');
    let mut rest = value;
    for slot in out[at..].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
}

#[inline]
fn integer(n: i64, out: &mut Vec<u8>) -> Kind {
    push_integer(n, out);
    Kind::Integer
}

/// A float4 as the f64 its shortest text reads as (`0.1f32` → `0.1`, not the
/// `0.10000000149011612` of its binary value).
fn float4(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    ryu::Buffer::new()
        .format_finite(x)
        .parse()
        .unwrap_or(f64::from(x))
}

/// PostgreSQL's binary `numeric` as exact decimal text: `ndigits`, `weight`, `sign`, `dscale`
/// (16 bits each), then base-10000 digits, the first worth 10000^weight.
fn numeric(raw: &[u8], out: &mut Vec<u8>) -> DecodeResult {
    let word = |i: usize| -> Result<u16, Box<dyn StdError + Sync + Send>> {
        raw.get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "numeric too short".into())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => {
            out.extend_from_slice(b"NaN");
            return Ok(Kind::Text);
        }
        0xD000 => {
            out.extend_from_slice(b"Infinity");
            return Ok(Kind::Text);
        }
        0xF000 => {
            out.extend_from_slice(b"-Infinity");
            return Ok(Kind::Text);
        }
        other => return Err(format!("numeric sign {other:#x}").into()),
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    if digits.iter().any(|d| *d > 9999) {
        return Err("numeric digit over 9999".into());
    }
    let digit = |i: i32| {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0)
    };
    if sign == 0x4000 && digits.iter().any(|d| *d != 0) {
        out.push(b'-');
    }
    if weight < 0 {
        out.push(b'0');
    } else {
        let _ = write!(out, "{}", digit(0));
        for i in 1..=weight {
            push_4_digits(digit(i), out);
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let start = out.len();
        let mut i = weight + 1;
        while out.len() - start < dscale {
            push_4_digits(digit(i), out);
            i += 1;
        }
        out.truncate(start + dscale);
    }
    Ok(Kind::Decimal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_text(words: &[u16]) -> String {
        let raw: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let mut out = Vec::new();
        numeric(&raw, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn dates_and_times_are_written_as_chrono_writes_them() {
        use chrono::{NaiveDate, NaiveTime};
        let times = [
            NaiveTime::from_hms_opt(5, 30, 0).unwrap(),
            NaiveTime::from_hms_milli_opt(5, 30, 0, 250).unwrap(),
            NaiveTime::from_hms_micro_opt(23, 59, 59, 123_456).unwrap(),
            NaiveTime::from_hms_nano_opt(0, 0, 1, 7).unwrap(),
            NaiveTime::from_hms_milli_opt(23, 59, 59, 1500).unwrap(),
        ];
        for time in times {
            let mut out = Vec::new();
            push_time(time, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                time.format("%H:%M:%S%.f").to_string()
            );
        }
        for (y, m, d) in [
            (2026, 2, 28),
            (1, 1, 1),
            (9999, 12, 31),
            (10000, 1, 1),
            (-44, 3, 15),
        ] {
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            let mut out = Vec::new();
            push_date(date, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                date.format("%Y-%m-%d").to_string()
            );
        }
    }

    #[test]
    fn numerics_decode_exactly() {
        // ndigits, weight, sign, dscale, digits…
        assert_eq!(numeric_text(&[0, 0, 0, 0]), "0");
        assert_eq!(numeric_text(&[0, 0, 0, 2]), "0.00");
        assert_eq!(numeric_text(&[1, 0, 0, 0, 12]), "12");
        assert_eq!(numeric_text(&[2, 0, 0x4000, 2, 12, 5000]), "-12.50");
        assert_eq!(numeric_text(&[1, 0xFFFF, 0, 4, 5]), "0.0005");
        assert_eq!(numeric_text(&[2, 1, 0, 0, 1, 0]), "10000");
        assert_eq!(numeric_text(&[1, 2, 0, 0, 7]), "700000000");
        assert_eq!(
            numeric_text(&[3, 1, 0, 6, 1234, 5678, 9012]),
            "12345678.901200"
        );
        assert_eq!(numeric_text(&[0, 0, 0xC000, 0]), "NaN");
    }
}
