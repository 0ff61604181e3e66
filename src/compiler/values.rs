//! Values: the checks every setting of a block goes through (known key, given
//! once, one value of the right kind and range), and the value kinds
//! themselves — durations ([`parse_duration`], [`humanize`]) and paths
//! relative to the declaring file ([`resolve_path`]).

use std::path::Path;
use std::time::Duration;

use crate::ast::{Block, Ident, Setting, Value, ValueKind};
use crate::diagnostic::{did_you_mean, Code, Diagnostic};
use crate::source_map::Span;
use crate::workflow::DataFormat;

use super::Compiler;

/// The values pass, called by each block's pass: reads one setting at a time,
/// writes an error to `diags` for each value it refuses (and returns `None`).
impl Compiler<'_> {
    /// The block's settings, minus unknown keys and duplicates (both reported).
    pub(super) fn settings<'b>(
        &mut self,
        block: &'b Block,
        allowed: &[&str],
        what: &str,
    ) -> Vec<&'b Setting> {
        let mut out: Vec<&Setting> = Vec::new();
        for s in block.settings() {
            if !allowed.contains(&s.key.name.as_str()) {
                let mut d = Diagnostic::error(
                    Code::UnknownSetting,
                    format!("unknown setting `{}` in {what}", s.key.name),
                )
                .label(s.key.span, "unknown setting");
                d = d.help(match did_you_mean(&s.key.name, allowed.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("{what} settings: {}", allowed.join(", ")),
                });
                self.diags.push(d);
                continue;
            }
            if let Some(first) = out.iter().find(|o| o.key.name == s.key.name) {
                self.diags.push(
                    Diagnostic::error(
                        Code::Duplicate,
                        format!("setting `{}` is given more than once", s.key.name),
                    )
                    .label(s.key.span, "given again here")
                    .label(first.key.span, "first given here")
                    .help("keep one of them"),
                );
                continue;
            }
            out.push(s);
        }
        // Parameters belong in reports, windows in reports and schedules.
        if what != "report" {
            for p in block.params() {
                self.diags.push(
                    Diagnostic::error(
                        Code::UnknownSetting,
                        format!("a `param` is not allowed in a {what}"),
                    )
                    .label(p.span, "not allowed here")
                    .help("parameters are declared in the `report` whose query uses them"),
                );
            }
        }
        if !matches!(what, "report" | "schedule") {
            for w in block.windows() {
                self.diags.push(
                    Diagnostic::error(
                        Code::UnknownSetting,
                        format!("a `window` is not allowed in a {what}"),
                    )
                    .label(w.span, "not allowed here")
                    .help("a `schedule` says what period its fires cover; a `report` gives the default for other triggers"),
                );
            }
        }
        // Mask rules belong in reports; a dependency reports its own.
        if !matches!(what, "report" | "dependency") {
            for m in block.masks() {
                self.diags.push(
                    Diagnostic::error(
                        Code::UnknownSetting,
                        format!("mask rules are not allowed in a {what}"),
                    )
                    .label(m.span, "not allowed here")
                    .help("mask rules go in a `report` or a `masking` block"),
                );
            }
        }
        out
    }

    /// A required setting is absent: an error at the declaration's name, with an example line.
    pub(super) fn missing(&mut self, name: &Ident, kind: &str, key: &str, example: &str) {
        self.diags.push(
            Diagnostic::error(
                Code::MissingSetting,
                format!("{kind} `{}` has no `{key}`", name.name),
            )
            .label(name.span, format!("`{key}` is required"))
            .help(format!("add a line such as `{example}`")),
        );
    }

    /// The setting's value when it has exactly one (else an error at the second).
    pub(super) fn one<'v>(&mut self, setting: &'v Setting) -> Option<&'v Value> {
        if setting.values.len() == 1 {
            return setting.values.first();
        }
        let extra = &setting.values[1];
        self.diags.push(
            Diagnostic::error(
                Code::InvalidValue,
                format!("`{}` takes a single value", setting.key.name),
            )
            .label(extra.span, "unexpected second value"),
        );
        None
    }

    /// A value of the wrong kind (a string where a name is expected, ...).
    pub(super) fn wrong_kind(&mut self, value: &Value, setting: &Setting, expected: &str) {
        self.diags.push(
            Diagnostic::error(
                Code::InvalidValue,
                format!(
                    "`{}` expects {expected}, found {}",
                    setting.key.name,
                    value.describe()
                ),
            )
            .label(value.span, format!("expected {expected}")),
        );
    }

    /// The setting's single value as a quoted string, with its span.
    pub(super) fn one_string(&mut self, setting: &Setting) -> Option<(String, Span)> {
        let v = self.one(setting)?;
        match &v.kind {
            ValueKind::Str(s) | ValueKind::RawStr(s) => Some((s.clone(), v.span)),
            _ => {
                self.wrong_kind(v, setting, "a quoted string");
                None
            }
        }
    }

    /// The setting's single value as a quoted string.
    pub(super) fn string_value(&mut self, setting: &Setting) -> Option<String> {
        self.one_string(setting).map(|(s, _)| s)
    }

    /// `value` as a name.
    pub(super) fn as_ident(&mut self, value: &Value, setting: &Setting) -> Option<Ident> {
        match &value.kind {
            ValueKind::Ident(name) => Some(Ident {
                name: name.clone(),
                span: value.span,
            }),
            _ => {
                self.wrong_kind(value, setting, "a name");
                None
            }
        }
    }

    /// The setting's single value as a name.
    pub(super) fn ident_value(&mut self, setting: &Setting) -> Option<Ident> {
        let v = self.one(setting)?;
        self.as_ident(v, setting)
    }

    /// The setting's single value, a name or a quoted string.
    pub(super) fn name_or_string(&mut self, setting: &Setting) -> Option<String> {
        let v = self.one(setting)?;
        match &v.kind {
            ValueKind::Str(s) | ValueKind::RawStr(s) | ValueKind::Ident(s) => Some(s.clone()),
            _ => {
                self.wrong_kind(v, setting, "a name or a string");
                None
            }
        }
    }

    /// A switch: `on`/`off` (or `true`/`false`, `yes`/`no`).
    pub(super) fn bool_value(&mut self, setting: &Setting) -> Option<bool> {
        let id = self.ident_value(setting)?;
        match id.name.as_str() {
            "on" | "true" | "yes" => Some(true),
            "off" | "false" | "no" => Some(false),
            _ => {
                self.bad_keyword(&id, "switch value", &["on", "off"]);
                None
            }
        }
    }

    /// A data format name (`csv`, `jsonl`).
    pub(super) fn format_value(&mut self, setting: &Setting) -> Option<DataFormat> {
        let id = self.ident_value(setting)?;
        let f = DataFormat::from_name(&id.name);
        if f.is_none() {
            self.bad_keyword(&id, "format", &DataFormat::NAMES);
        }
        f
    }

    /// A whole number from `min` to `max`.
    pub(super) fn int_value(&mut self, setting: &Setting, min: i64, max: i64) -> Option<i64> {
        let v = self.one(setting)?;
        let ValueKind::Number(n) = v.kind else {
            self.wrong_kind(v, setting, "a whole number");
            return None;
        };
        if n < min || n > max {
            self.diags.push(
                Diagnostic::error(
                    Code::OutOfRange,
                    format!(
                        "`{}` must be between {min} and {max}, not {n}",
                        setting.key.name
                    ),
                )
                .label(v.span, "out of range")
                .help(format!("use a value from {min} to {max}")),
            );
            return None;
        }
        Some(n)
    }

    /// A duration of at least `min` (`30s`; a bare number is refused: it has no unit).
    pub(super) fn duration_value(&mut self, setting: &Setting, min: Duration) -> Option<Duration> {
        let v = self.one(setting)?;
        let d = match &v.kind {
            ValueKind::Duration(text) => match parse_duration(text) {
                Ok(d) => d,
                Err(why) => {
                    self.diags.push(
                        Diagnostic::error(Code::BadDuration, format!("bad duration `{text}`: {why}"))
                            .label(v.span, "not a duration")
                            .help("write a number and a unit: ms, s, m, h or d, e.g. `500ms`, `30s`, `1h30m`"),
                    );
                    return None;
                }
            },
            ValueKind::Number(n) => {
                self.diags.push(
                    Diagnostic::error(Code::BadDuration, format!("bad duration `{n}`: no unit"))
                        .label(v.span, "which unit?")
                        .help(format!(
                            "write `{n}s`, `{n}m` or another unit: ms, s, m, h, d"
                        )),
                );
                return None;
            }
            _ => {
                self.wrong_kind(v, setting, "a duration such as `30s`");
                return None;
            }
        };
        if d < min {
            self.diags.push(
                Diagnostic::error(
                    Code::OutOfRange,
                    format!("`{}` must be at least {}", setting.key.name, humanize(min)),
                )
                .label(v.span, "too short"),
            );
            return None;
        }
        Some(d)
    }

    /// An IANA time zone (`zone "America/New_York"`), with a did-you-mean for a typo.
    pub(super) fn zone_value(&mut self, setting: &Setting) -> Option<chrono_tz::Tz> {
        let (z, span) = self.one_string(setting)?;
        match z.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                let suggestion = did_you_mean(&z, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
                self.diags.push(
                    Diagnostic::error(Code::UnknownZone, format!("unknown time zone `{z}`"))
                        .label(span, "not an IANA time zone")
                        .help(match suggestion {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => "use an IANA name such as `UTC`, `America/New_York` or `Europe/London`".to_string(),
                        }),
                );
                None
            }
        }
    }

    /// An unknown keyword among `allowed`, with a did-you-mean suggestion.
    pub(super) fn bad_keyword(&mut self, id: &Ident, what: &str, allowed: &[&str]) {
        let mut d = Diagnostic::error(Code::InvalidValue, format!("unknown {what} `{}`", id.name))
            .label(id.span, format!("not a {what}"));
        d = d.help(match did_you_mean(&id.name, allowed.iter().copied()) {
            Some(s) => format!(
                "did you mean `{s}`? expected one of: {}",
                allowed.join(", ")
            ),
            None => format!("expected one of: {}", allowed.join(", ")),
        });
        self.diags.push(d);
    }
}

/// `p` relative to `dir`, with `.` and `..` folded lexically so paths read
/// well in output (`workflows/../results` is `results`).
pub(super) fn resolve_path(dir: &Path, p: &str) -> std::path::PathBuf {
    use std::path::Component;
    let path = Path::new(p);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    let mut out = std::path::PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let last_is_normal =
                    matches!(out.components().next_back(), Some(Component::Normal(_)));
                if last_is_normal {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// `500ms`, `30s`, `2m`, `1h30m`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty".into());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number before `{rest}`"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_string())?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let millis = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err("a number has no unit".into()),
            other => {
                return Err(format!(
                    "unknown unit `{other}` (expected ms, s, m, h or d)"
                ))
            }
        };
        let part = n
            .checked_mul(millis)
            .ok_or_else(|| "too long".to_string())?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(|| "too long".to_string())?;
    }
    Ok(total)
}

/// Canonical text of a duration, the inverse of [`parse_duration`].
pub fn humanize(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5x")
            .unwrap_err()
            .contains("unknown unit `x`"));
        assert_eq!(humanize(Duration::from_secs(5400)), "1h30m");
        assert_eq!(humanize(Duration::from_millis(1500)), "1s500ms");
    }
}
