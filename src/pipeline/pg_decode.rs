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
                // ASCII (most text) is valid UTF-8: a word-at-a-time scan, no decoder.
                if !raw.is_ascii() {
                    std::str::from_utf8(raw)?;
                }
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
                // Days since 2000-01-01; chrono for what the fast path does not write.
                let fast = <[u8; 4]>::try_from(raw)
                    .is_ok_and(|b| push_days(i64::from(i32::from_be_bytes(b)), out));
                if !fast {
                    push_date(chrono::NaiveDate::from_sql(&Type::DATE, raw)?, out);
                }
                Kind::Text
            }
            Decoder::Time => {
                push_time(chrono::NaiveTime::from_sql(&Type::TIME, raw)?, out);
                Kind::Text
            }
            Decoder::Timestamp => {
                if push_micros(raw, b' ', out) {
                    return Ok(Kind::Text);
                }
                let t = chrono::NaiveDateTime::from_sql(&Type::TIMESTAMP, raw)?;
                push_date(t.date(), out);
                out.push(b' ');
                push_time(t.time(), out);
                Kind::Text
            }
            Decoder::TimestampTz => {
                if push_micros(raw, b'T', out) {
                    out.push(b'Z');
                    return Ok(Kind::Text);
                }
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
                let mut h = [0u8; 32];
                // Cannot fail: 32 hex digits for 16 bytes.
                let _ = hex::encode_to_slice(b, &mut h);
                for (i, group) in [&h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]]
                    .into_iter()
                    .enumerate()
                {
                    if i > 0 {
                        out.push(b'-');
                    }
                    out.extend_from_slice(group);
                }
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

/// Days since 1970-01-01 of PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`): integer arithmetic only, where chrono's `NaiveDate` arithmetic and
/// field access cost about a quarter of a PostgreSQL source's decoding on the bench.
#[inline]
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `YYYY-MM-DD` of `days` since 2000-01-01 when its year is 0–9999 (as [`push_date`] writes
/// it); `false`, writing nothing, otherwise.
#[inline]
fn push_days(days: i64, out: &mut Vec<u8>) -> bool {
    let (year, month, day) = civil_from_days(days + PG_EPOCH_DAYS);
    let Ok(year) = u16::try_from(year) else {
        return false;
    };
    if year > 9999 {
        return false;
    }
    push_ymd(year, month, day, out);
    true
}

/// `YYYY-MM-DD` of a year 0–9999.
#[inline]
fn push_ymd(year: u16, month: u32, day: u32, out: &mut Vec<u8>) {
    push_4_digits(year, out);
    out.push(b'-');
    push_2_digits(month, out);
    out.push(b'-');
    push_2_digits(day, out);
}

/// A `timestamp`'s 8 bytes (microseconds since 2000-01-01 00:00) as `YYYY-MM-DD`, `sep`,
/// `HH:MM:SS` and chrono's `%.f` fraction (none, 3 or 6 digits), when its year is 0–9999;
/// `false`, writing nothing, otherwise.
#[inline]
fn push_micros(raw: &[u8], sep: u8, out: &mut Vec<u8>) -> bool {
    let Ok(bytes) = <[u8; 8]>::try_from(raw) else {
        return false;
    };
    let micros = i64::from_be_bytes(bytes);
    let (days, of_day) = (
        micros.div_euclid(MICROS_PER_DAY),
        micros.rem_euclid(MICROS_PER_DAY),
    );
    if !push_days(days, out) {
        return false;
    }
    out.push(sep);
    let secs = of_day / 1_000_000;
    let fraction = (of_day % 1_000_000) as u32;
    push_2_digits((secs / 3600) as u32, out);
    out.push(b':');
    push_2_digits((secs / 60 % 60) as u32, out);
    out.push(b':');
    push_2_digits((secs % 60) as u32, out);
    match fraction {
        0 => {}
        f if f % 1000 == 0 => push_fraction(f / 1000, 3, out),
        f => push_fraction(f, 6, out),
    }
    true
}

/// `.` and `value` as `digits` digits, with leading zeros (chrono's `%.f` fractions).
#[inline]
fn push_fraction(value: u32, digits: usize, out: &mut Vec<u8>) {
    out.push(b'.');
    let at = out.len();
    out.resize(at + digits, b'0');
    let mut rest = value;
    for slot in out[at..].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
}

/// `YYYY-MM-DD`, as chrono's `%Y-%m-%d` writes it (which years outside 0–9999 need).
#[inline]
fn push_date(date: chrono::NaiveDate, out: &mut Vec<u8>) {
    use chrono::Datelike;
    match u16::try_from(date.year()) {
        Ok(year) if year <= 9999 => push_ymd(year, date.month(), date.day(), out),
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
    if nanos % 1_000_000 == 0 {
        push_fraction(nanos / 1_000_000, 3, out);
    } else if nanos % 1000 == 0 {
        push_fraction(nanos / 1000, 6, out);
    } else {
        push_fraction(nanos, 9, out);
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
    // The digits, read in place (no copy): checked once here.
    let digits = raw.get(8..8 + 2 * ndigits).ok_or("numeric too short")?;
    let mut nonzero = false;
    for pair in digits.chunks_exact(2) {
        let d = u16::from_be_bytes([pair[0], pair[1]]);
        if d > 9999 {
            return Err("numeric digit over 9999".into());
        }
        nonzero |= d != 0;
    }
    let digit = |i: i32| {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(2 * i..2 * i + 2))
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    if sign == 0x4000 && nonzero {
        out.push(b'-');
    }
    if weight < 0 {
        out.push(b'0');
    } else {
        push_integer(i64::from(digit(0)), out);
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

    /// The fast date and timestamp writers agree with chrono's (the path they replace) on every
    /// day of years 0–9999's edges and around today, and leave other years to it.
    #[test]
    fn fast_dates_and_timestamps_write_what_chrono_writes() {
        let decode = |decoder: Decoder, raw: &[u8]| {
            let mut out = Vec::new();
            decoder
                .write(raw, &mut out)
                .map(|_| String::from_utf8(out).unwrap())
        };
        let chrono_date = |days: i32| {
            let mut out = Vec::new();
            let date = chrono::NaiveDate::from_sql(&Type::DATE, &days.to_be_bytes()).unwrap();
            push_date(date, &mut out);
            String::from_utf8(out).unwrap()
        };
        let ranges: [std::ops::Range<i32>; 3] = [
            -730_485 - 800..-730_485 + 800,   // around 0000-01-01
            -200_000..200_000,                // 1452–2547
            2_921_939 - 800..2_921_939 + 800, // around 10000-01-01
        ];
        for days in ranges.into_iter().flatten() {
            assert_eq!(
                decode(Decoder::Date, &days.to_be_bytes()).unwrap(),
                chrono_date(days),
                "{days}"
            );
        }
        for micros in [
            0i64,
            1,
            -1,
            999_999,
            1_000,
            250_000,
            123_456,
            86_399_999_999,
            -86_400_000_000,
            849_418_200_000_000,
            -63_082_281_600_000_000 - 1, // just before 0000-01-01
            252_423_993_600_000_000,     // 10000-01-01
        ] {
            let raw = micros.to_be_bytes();
            let t = chrono::NaiveDateTime::from_sql(&Type::TIMESTAMP, &raw).unwrap();
            let mut want = Vec::new();
            push_date(t.date(), &mut want);
            want.push(b' ');
            push_time(t.time(), &mut want);
            let want = String::from_utf8(want).unwrap();
            assert_eq!(decode(Decoder::Timestamp, &raw).unwrap(), want, "{micros}");
            assert_eq!(
                decode(Decoder::TimestampTz, &raw).unwrap(),
                format!("{}Z", want.replacen(' ', "T", 1)),
                "{micros}"
            );
        }
        // `infinity` and bytes of the wrong length fail as they did.
        assert!(decode(Decoder::Date, &i32::MAX.to_be_bytes()).is_err());
        assert!(decode(Decoder::Timestamp, &i64::MIN.to_be_bytes()).is_err());
        assert!(decode(Decoder::Date, &[0, 1]).is_err());
        assert!(decode(Decoder::TimestampTz, &[0; 4]).is_err());
    }

    #[test]
    fn uuids_and_text_decode_as_before() {
        let mut out = Vec::new();
        let raw = hex::decode("a0eebc999c0b4ef8bb6d6bb9bd380a11").unwrap();
        Decoder::Uuid.write(&raw, &mut out).unwrap();
        assert_eq!(out, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert!(Decoder::Uuid.write(&raw[1..], &mut out).is_err());
        out.clear();
        assert_eq!(
            Decoder::Text.write("Zoë".as_bytes(), &mut out).unwrap(),
            Kind::Text
        );
        assert_eq!(out, "Zoë".as_bytes());
        assert!(Decoder::Text.write(b"\xff", &mut out).is_err());
        assert!(Decoder::Json.write(b"\xc3", &mut out).is_err());
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
        // Negative zero is written without its sign; bad words are errors.
        assert_eq!(numeric_text(&[1, 0, 0x4000, 1, 0]), "0.0");
        let bad = |words: &[u16]| {
            let raw: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            numeric(&raw, &mut Vec::new()).is_err()
        };
        assert!(bad(&[2, 0, 0, 0, 12]), "fewer digits than it says");
        assert!(bad(&[1, 0, 0, 0, 10000]), "a digit over 9999");
        assert!(bad(&[0, 0, 0x1234, 0]), "an unknown sign");
    }
}
