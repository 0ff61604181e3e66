//! Report parameters: declared with a type, validated when a job is created, bound (never
//! spliced) into a source's query.
//!
//! A report declares each of its parameters with a [`ParamType`], a default or `required`, and
//! a help text. A trigger gives values as text (`flowctl run --param k=v`) or JSON (the HTTP
//! `params` object); [`resolve`] checks every given name against the declarations (an unknown
//! one is refused with a did-you-mean), parses each value by its type, fills in defaults, and
//! refuses a missing required one — before any job exists. The resolved values are stored in
//! the job record and passed on to dependents.
//!
//! Values keep their type up to the driver: a `decimal` stays its exact decimal text (no
//! binary float on the way), a `date` a calendar date, a `timestamp` an instant in UTC.
//!
//! The engine's built-in parameters ([`BUILT_INS`]: the window, the principal, the job, the
//! trigger) are reserved: a report cannot declare one.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// Names the engine binds for every run; a report cannot declare them.
pub const BUILT_INS: [&str; 8] = [
    "interval_start",
    "interval_end",
    "interval_start_date",
    "interval_end_date",
    "county",
    "role",
    "job_id",
    "trigger",
];

/// Longest text value, in bytes (a parameter is a value, not a document).
pub const MAX_TEXT: usize = 4096;

/// The type of a declared parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParamType {
    String,
    /// A signed 64-bit integer.
    Integer,
    /// An exact decimal number, kept as its text (`-12.50`).
    Decimal,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// An instant, RFC 3339 with an offset (`2026-11-30T05:30:00+01:00`).
    Timestamp,
    Boolean,
    /// One of these strings.
    OneOf(Vec<String>),
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamType::String => f.write_str("string"),
            ParamType::Integer => f.write_str("integer"),
            ParamType::Decimal => f.write_str("decimal"),
            ParamType::Date => f.write_str("date"),
            ParamType::Timestamp => f.write_str("timestamp"),
            ParamType::Boolean => f.write_str("boolean"),
            ParamType::OneOf(options) => {
                let quoted: Vec<String> = options.iter().map(|o| format!("\"{o}\"")).collect();
                write!(f, "one of {}", quoted.join(", "))
            }
        }
    }
}

impl ParamType {
    /// The DSL's name for a type (`one of` lists are written as such, not by name).
    pub fn from_name(name: &str) -> Option<ParamType> {
        Some(match name {
            "string" => ParamType::String,
            "integer" => ParamType::Integer,
            "decimal" => ParamType::Decimal,
            "date" => ParamType::Date,
            "timestamp" => ParamType::Timestamp,
            "boolean" => ParamType::Boolean,
            _ => return None,
        })
    }

    /// The names [`ParamType::from_name`] knows.
    pub const NAMES: [&'static str; 6] = [
        "string",
        "integer",
        "decimal",
        "date",
        "timestamp",
        "boolean",
    ];
}

/// A typed parameter value. Its JSON (the API's and the PostgreSQL store's) names its type:
/// `{"date": "2026-11-30"}`, `{"decimal": "12.50"}`, `{"integer": 3}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamValue {
    String(String),
    Integer(i64),
    /// Normalized decimal text: optional `-`, digits, optional `.digits`.
    Decimal(String),
    Date(NaiveDate),
    Timestamp(DateTime<Utc>),
    Boolean(bool),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::String(s) | ParamValue::Decimal(s) => f.write_str(s),
            ParamValue::Integer(n) => write!(f, "{n}"),
            ParamValue::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            ParamValue::Timestamp(t) => f.write_str(&t.to_rfc3339()),
            ParamValue::Boolean(b) => write!(f, "{b}"),
        }
    }
}

impl ParamValue {
    /// The type's name, as a declaration writes it (`date`); `string` for a one-of value.
    pub fn type_name(&self) -> &'static str {
        match self {
            ParamValue::String(_) => "string",
            ParamValue::Integer(_) => "integer",
            ParamValue::Decimal(_) => "decimal",
            ParamValue::Date(_) => "date",
            ParamValue::Timestamp(_) => "timestamp",
            ParamValue::Boolean(_) => "boolean",
        }
    }

    /// The value as JSON: numbers stay numbers where JSON holds them exactly (integers),
    /// decimals stay exact text.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ParamValue::Integer(n) => serde_json::Value::from(*n),
            ParamValue::Boolean(b) => serde_json::Value::Bool(*b),
            other => serde_json::Value::String(other.to_string()),
        }
    }
}

/// One declared parameter of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub name: String,
    pub ty: ParamType,
    /// `None` with `required`; otherwise the value a trigger that omits it gets (`None` and not
    /// required: the parameter is bound as NULL).
    pub default: Option<ParamValue>,
    pub required: bool,
    pub help: String,
}

/// Why a parameter value was refused; names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter '{param}': {message}")]
pub struct ParamError {
    pub param: String,
    /// A stable code: `unknown_param`, `missing_param`, `invalid_param`.
    pub code: &'static str,
    pub message: String,
}

impl ParamError {
    fn invalid(spec: &ParamSpec, message: String) -> ParamError {
        ParamError {
            param: spec.name.clone(),
            code: "invalid_param",
            message,
        }
    }
}

/// A value as a trigger gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum Given {
    /// From the command line: parsed by the declared type.
    Text(String),
    /// From JSON: a string is parsed by the type, a number or boolean must fit it.
    Json(serde_json::Value),
}

impl ParamSpec {
    /// Parses a value given as text by this parameter's type.
    pub fn parse_text(&self, text: &str) -> Result<ParamValue, ParamError> {
        if text.len() > MAX_TEXT {
            return Err(ParamError::invalid(
                self,
                format!("the value is {} bytes; at most {MAX_TEXT}", text.len()),
            ));
        }
        let bad = |what: &str| ParamError::invalid(self, format!("`{}` is not {what}", clip(text)));
        Ok(match &self.ty {
            ParamType::String => ParamValue::String(text.to_string()),
            ParamType::Integer => ParamValue::Integer(
                text.trim()
                    .parse::<i64>()
                    .map_err(|_| bad("an integer (a whole number from -2^63 to 2^63-1)"))?,
            ),
            ParamType::Decimal => ParamValue::Decimal(
                normalize_decimal(text.trim()).ok_or_else(|| bad("a decimal number (-12.50)"))?,
            ),
            ParamType::Date => ParamValue::Date(
                NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                    .map_err(|_| bad("a date (YYYY-MM-DD)"))?,
            ),
            ParamType::Timestamp => ParamValue::Timestamp(
                DateTime::parse_from_rfc3339(text.trim())
                    .map_err(|_| bad("a timestamp with an offset (2026-11-30T05:30:00Z)"))?
                    .with_timezone(&Utc),
            ),
            ParamType::Boolean => ParamValue::Boolean(match text.trim() {
                "true" => true,
                "false" => false,
                _ => return Err(bad("a boolean (true or false)")),
            }),
            ParamType::OneOf(options) => {
                if !options.iter().any(|o| o == text) {
                    return Err(ParamError::invalid(
                        self,
                        format!("`{}` is not one of {}", clip(text), options.join(", ")),
                    ));
                }
                ParamValue::String(text.to_string())
            }
        })
    }

    /// Checks a JSON value against this parameter's type.
    pub fn parse_json(&self, value: &serde_json::Value) -> Result<ParamValue, ParamError> {
        use serde_json::Value;
        match (value, &self.ty) {
            (Value::String(s), _) => self.parse_text(s),
            (Value::Number(n), ParamType::Integer) => {
                n.as_i64().map(ParamValue::Integer).ok_or_else(|| {
                    ParamError::invalid(self, format!("{n} is not an integer from -2^63 to 2^63-1"))
                })
            }
            // The number's own text: serde_json keeps what it read for integers; a float is
            // printed shortest-round-trip, so `12.5` stays `12.5`.
            (Value::Number(n), ParamType::Decimal) => self.parse_text(&n.to_string()),
            (Value::Bool(b), ParamType::Boolean) => Ok(ParamValue::Boolean(*b)),
            (other, ty) => Err(ParamError::invalid(
                self,
                format!("expected {ty}, got {}", json_kind(other)),
            )),
        }
    }
}

/// A given text as a message quotes it: cut to a short excerpt, control characters escaped.
fn clip(text: &str) -> String {
    crate::diagnostic::bounded(format!("`{text}`"))
        .trim_matches('`')
        .to_string()
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `-0012.50` → `-12.50`; `None` if not a decimal. Exponents are refused (they hide size).
fn normalize_decimal(text: &str) -> Option<String> {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() && frac.is_none_or(str::is_empty) {
        return None;
    }
    if !all_digits(int) || !frac.is_none_or(|f| !f.is_empty() && all_digits(f)) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let zero = int == "0" && frac.is_none_or(|f| f.bytes().all(|b| b == b'0'));
    let sign = if zero { "" } else { sign };
    Some(match frac {
        Some(f) => format!("{sign}{int}.{f}"),
        None => format!("{sign}{int}"),
    })
}

/// The values of a run: each declared parameter's given value, parsed by its type, or its
/// default. Refuses unknown names (with a did-you-mean), missing required ones, and values that
/// do not fit their type; the first refusal in name order is returned, so the answer is stable.
pub fn resolve(
    specs: &[ParamSpec],
    given: &BTreeMap<String, Given>,
) -> Result<BTreeMap<String, ParamValue>, ParamError> {
    for name in given.keys() {
        if !specs.iter().any(|s| &s.name == name) {
            let hint = crate::diagnostic::did_you_mean(name, specs.iter().map(|s| s.name.as_str()))
                .map(|m| format!("; did you mean '{m}'?"))
                .unwrap_or_else(|| {
                    if specs.is_empty() {
                        "; this report declares no parameters".to_string()
                    } else {
                        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                        format!("; it declares {}", names.join(", "))
                    }
                });
            return Err(ParamError {
                param: clip(name),
                code: "unknown_param",
                message: format!("the report has no such parameter{hint}"),
            });
        }
    }
    let mut values = BTreeMap::new();
    let mut specs: Vec<&ParamSpec> = specs.iter().collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    for spec in specs {
        let value = match given.get(&spec.name) {
            Some(Given::Text(text)) => spec.parse_text(text)?,
            Some(Given::Json(json)) => spec.parse_json(json)?,
            None => match (&spec.default, spec.required) {
                (Some(default), _) => default.clone(),
                (None, true) => {
                    return Err(ParamError {
                        param: spec.name.clone(),
                        code: "missing_param",
                        message: format!("required ({}): {}", spec.ty, spec.help),
                    })
                }
                (None, false) => continue,
            },
        };
        values.insert(spec.name.clone(), value);
    }
    Ok(values)
}

/// Parses `k=v` pairs from the command line.
pub fn parse_cli_pairs(pairs: &[String]) -> Result<BTreeMap<String, Given>, ParamError> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(ParamError {
                param: clip(pair),
                code: "invalid_param",
                message: "expected NAME=VALUE".to_string(),
            });
        };
        if out
            .insert(name.trim().to_string(), Given::Text(value.to_string()))
            .is_some()
        {
            return Err(ParamError {
                param: name.trim().to_string(),
                code: "invalid_param",
                message: "given twice".to_string(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(name: &str, ty: ParamType, default: Option<ParamValue>, required: bool) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            ty,
            default,
            required,
            help: format!("the {name}"),
        }
    }

    fn specs() -> Vec<ParamSpec> {
        vec![
            spec(
                "min_amount",
                ParamType::Decimal,
                Some(ParamValue::Decimal("0".into())),
                false,
            ),
            spec(
                "limit",
                ParamType::Integer,
                Some(ParamValue::Integer(100)),
                false,
            ),
            spec("since", ParamType::Date, None, true),
            spec(
                "status",
                ParamType::OneOf(vec!["OPEN".into(), "CLOSED".into()]),
                None,
                false,
            ),
            spec("at", ParamType::Timestamp, None, false),
            spec(
                "closed_only",
                ParamType::Boolean,
                Some(ParamValue::Boolean(false)),
                false,
            ),
            spec("note", ParamType::String, None, false),
        ]
    }

    fn text(pairs: &[(&str, &str)]) -> BTreeMap<String, Given> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Given::Text(v.to_string())))
            .collect()
    }

    #[test]
    fn values_are_parsed_by_type_and_defaults_filled() {
        let values = resolve(
            &specs(),
            &text(&[
                ("since", "2026-11-01"),
                ("limit", " 25 "),
                ("min_amount", "-0012.50"),
                ("at", "2026-11-30T05:30:00+01:00"),
            ]),
        )
        .unwrap();
        assert_eq!(
            values["since"],
            ParamValue::Date(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap())
        );
        assert_eq!(values["limit"], ParamValue::Integer(25));
        assert_eq!(values["min_amount"], ParamValue::Decimal("-12.50".into()));
        assert_eq!(values["at"].to_string(), "2026-11-30T04:30:00+00:00");
        assert_eq!(values["closed_only"], ParamValue::Boolean(false));
        // Optional without a default: not bound at all (NULL).
        assert!(!values.contains_key("status") && !values.contains_key("note"));
    }

    #[test]
    fn every_refusal_names_the_parameter_and_says_why() {
        for (pairs, param, code, says) in [
            (
                vec![("limit", "10")],
                "since",
                "missing_param",
                "required (date)",
            ),
            (
                vec![("since", "2026-13-01")],
                "since",
                "invalid_param",
                "is not a date",
            ),
            (
                vec![("since", "2026-11-01"), ("limit", "1.5")],
                "limit",
                "invalid_param",
                "is not an integer",
            ),
            (
                vec![("since", "2026-11-01"), ("limit", "99999999999999999999")],
                "limit",
                "invalid_param",
                "is not an integer",
            ),
            (
                vec![("since", "2026-11-01"), ("min_amount", "1e9")],
                "min_amount",
                "invalid_param",
                "is not a decimal",
            ),
            (
                vec![("since", "2026-11-01"), ("min_amount", "1.")],
                "min_amount",
                "invalid_param",
                "is not a decimal",
            ),
            (
                vec![("since", "2026-11-01"), ("status", "open")],
                "status",
                "invalid_param",
                "is not one of OPEN, CLOSED",
            ),
            (
                vec![("since", "2026-11-01"), ("closed_only", "yes")],
                "closed_only",
                "invalid_param",
                "is not a boolean",
            ),
            (
                vec![("since", "2026-11-01"), ("at", "2026-11-30 05:30")],
                "at",
                "invalid_param",
                "is not a timestamp",
            ),
            (
                vec![("since", "2026-11-01"), ("limt", "3")],
                "limt",
                "unknown_param",
                "did you mean 'limit'?",
            ),
            (
                vec![("since", "2026-11-01"), ("zzz", "3")],
                "zzz",
                "unknown_param",
                "it declares",
            ),
        ] {
            let error = resolve(&specs(), &text(&pairs)).unwrap_err();
            assert_eq!(
                (error.param.as_str(), error.code),
                (param, code),
                "{pairs:?}: {error}"
            );
            assert!(error.to_string().contains(says), "{pairs:?}: {error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("parameter '{param}': ")),
                "{error}"
            );
        }
        let error = resolve(&[], &text(&[("x", "1")])).unwrap_err();
        assert!(error.message.contains("declares no parameters"), "{error}");
    }

    #[test]
    fn json_values_must_fit_the_type() {
        let given = |v: serde_json::Value| {
            let mut g = text(&[("since", "2026-11-01")]);
            g.insert("limit".into(), Given::Json(v));
            resolve(&specs(), &g).map(|v| v["limit"].clone())
        };
        assert_eq!(given(json!(7)).unwrap(), ParamValue::Integer(7));
        assert_eq!(given(json!("7")).unwrap(), ParamValue::Integer(7));
        assert!(given(json!(7.5)).is_err());
        assert!(given(json!(true))
            .unwrap_err()
            .message
            .contains("expected integer, got a boolean"));
        assert!(given(json!(null)).is_err());
        assert!(given(json!([1])).is_err());
        let decimal = specs()[0].parse_json(&json!(12.5)).unwrap();
        assert_eq!(decimal, ParamValue::Decimal("12.5".into()));
        assert_eq!(
            specs()[5].parse_json(&json!(true)).unwrap(),
            ParamValue::Boolean(true)
        );
    }

    #[test]
    fn text_values_are_bounded_and_quoted_only_clipped() {
        let long = "x".repeat(MAX_TEXT + 1);
        let error = specs()[6].parse_text(&long).unwrap_err();
        assert!(error.message.contains("at most 4096"), "{error}");
        let error = specs()[1].parse_text(&"9".repeat(3000)).unwrap_err();
        assert!(error.message.len() < 300, "{}", error.message.len());
        // A string keeps what it was given, quotes and all: it is bound, never spliced.
        let sneaky = "x'; DROP TABLE cases; -- $1";
        assert_eq!(
            specs()[6].parse_text(sneaky).unwrap(),
            ParamValue::String(sneaky.into())
        );
    }

    #[test]
    fn decimals_normalize_without_losing_digits() {
        for (input, want) in [
            ("0", Some("0")),
            ("-0", Some("0")),
            ("-0.00", Some("0.00")),
            ("007", Some("7")),
            ("+3.140", Some("3.140")),
            (".5", Some("0.5")),
            (
                "12345678901234567890.123456789",
                Some("12345678901234567890.123456789"),
            ),
            ("", None),
            ("-", None),
            (".", None),
            ("1.2.3", None),
            ("1,5", None),
            ("NaN", None),
        ] {
            assert_eq!(normalize_decimal(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn cli_pairs_split_at_the_first_equals_sign() {
        let pairs = parse_cli_pairs(&["a=1".into(), "b=x=y".into(), "c=".into()]).unwrap();
        assert_eq!(pairs["b"], Given::Text("x=y".into()));
        assert_eq!(pairs["c"], Given::Text(String::new()));
        assert_eq!(
            parse_cli_pairs(&["novalue".into()]).unwrap_err().code,
            "invalid_param"
        );
        assert!(parse_cli_pairs(&["a=1".into(), "a=2".into()])
            .unwrap_err()
            .message
            .contains("twice"));
    }

    #[test]
    fn params_survive_the_job_record_codec() {
        let values = resolve(
            &specs(),
            &text(&[("since", "2026-11-01"), ("at", "2026-11-30T05:30:00Z")]),
        )
        .unwrap();
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&values, config).unwrap();
        let (back, _): (BTreeMap<String, ParamValue>, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, values);
        assert_eq!(values["limit"].to_json(), json!(100));
        assert_eq!(values["min_amount"].to_json(), json!("0"));
    }
}
