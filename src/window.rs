//! The data window of a run: the period of data a report covers.
//!
//! A schedule says what period each of its fires covers (`window previous day`), a report may
//! give a default for manual triggers, and a trigger may give one outright. A window is a
//! half-open interval of instants, `[start, end)`, as Airflow's data intervals are: the daily
//! 05:30 fire of 2026-12-01 covers `[2026-11-30 00:00, 2026-12-01 00:00)` in the schedule's
//! zone. Periods are calendar periods on the zone's wall clock, so a day is 23 or 25 hours long
//! across a daylight-saving change; a fixed duration (`window 6h`) is elapsed time ending at
//! the fire.
//!
//! A period starts at the first instant of its first day, as java.time's `atStartOfDay`: a
//! midnight inside a spring-forward gap (America/Santiago, Asia/Beirut) starts at the end of the
//! gap, a repeated midnight at its first occurrence, and a day a zone skipped (Pacific/Apia,
//! 2011-12-30) is empty.
//!
//! "Previous" is relative to the fire's local date: the period before the one the fire falls
//! in. Weeks start on Monday (ISO 8601) unless the spec names another day.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, TimeDelta, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// A calendar period of a zone's wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Period {
    Day,
    /// Seven days from `starts` (Monday for ISO weeks).
    Week {
        starts: Weekday,
    },
    Month,
    /// Three months from January, April, July or October.
    Quarter,
    Year,
}

/// What period a fire (or a trigger without an explicit window) covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WindowSpec {
    /// The calendar period before the one the fire falls in.
    Previous(Period),
    /// This much elapsed time, ending at the fire.
    Last(Duration),
}

/// How a window came about, for its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowKind {
    Period(Period),
    /// A fixed duration, or bounds a trigger gave.
    Span,
}

/// The period of data one run covers: `[start, end)`, read in `zone`.
///
/// Its JSON (the API's job record, the PostgreSQL store's `request_data`) is
/// `{"start", "end", "zone", "kind", "weekStarts"?, "label"}`: `kind` is `day`, `week`, `month`,
/// `quarter`, `year` or `span`, `weekStarts` (`monday` … `sunday`) is there for a week only,
/// and `label` is [`Window::label`], written for people and ignored when read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WindowJson", into = "WindowJson")]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The IANA zone whose wall clock the period follows (and its local dates are read in).
    pub zone: String,
    pub kind: WindowKind,
}

/// Why a window cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("unknown time zone '{0}'")]
    UnknownZone(String),
    #[error("a window ends after it starts: {start} is not before {end}")]
    Empty {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("the window falls outside the dates flowctl can represent")]
    OutOfRange,
    #[error(
        "'{0}' is not a period: use a day (2026-11-30), an ISO week (2026-W48), a month \
         (2026-11), a quarter (2026-Q4) or a year (2026)"
    )]
    BadPeriod(String),
}

/// [`Window`]'s JSON shape.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WindowJson {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    zone: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    week_starts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

impl From<Window> for WindowJson {
    fn from(w: Window) -> WindowJson {
        let label = Some(w.label());
        let (kind, week_starts) = match w.kind {
            WindowKind::Period(Period::Week { starts }) => ("week", Some(day_name(starts))),
            WindowKind::Period(period) => (period.name(), None),
            WindowKind::Span => ("span", None),
        };
        WindowJson {
            start: w.start,
            end: w.end,
            zone: w.zone,
            kind: kind.to_string(),
            week_starts: week_starts.map(str::to_string),
            label,
        }
    }
}

impl TryFrom<WindowJson> for Window {
    type Error = String;

    fn try_from(j: WindowJson) -> Result<Window, String> {
        let kind = match (j.kind.as_str(), j.week_starts.as_deref()) {
            ("week", starts) => {
                let starts = match starts {
                    None => Weekday::Mon,
                    Some(day) => weekday(day).ok_or_else(|| {
                        format!("weekStarts: '{day}' is not a day of the week (monday … sunday)")
                    })?,
                };
                WindowKind::Period(Period::Week { starts })
            }
            ("span", None) => WindowKind::Span,
            (name, None) => WindowKind::Period(Period::from_name(name).ok_or_else(|| {
                format!("kind: '{name}' is not day, week, month, quarter, year or span")
            })?),
            (_, Some(_)) => return Err("weekStarts is only for a week".to_string()),
        };
        let zone: Tz = j
            .zone
            .parse()
            .map_err(|_| WindowError::UnknownZone(j.zone.clone()).to_string())?;
        // A period a zone skipped is empty (Apia's 2011-12-30); none ends before it starts.
        if j.start > j.end {
            return Err(WindowError::Empty {
                start: j.start,
                end: j.end,
            }
            .to_string());
        }
        Ok(Window {
            start: j.start,
            end: j.end,
            zone: zone.name().to_string(),
            kind,
        })
    }
}

impl Period {
    /// The period's name in a window's JSON and in a trigger's `period` (`day`, `week`, …).
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week { .. } => "week",
            Period::Month => "month",
            Period::Quarter => "quarter",
            Period::Year => "year",
        }
    }

    fn from_name(name: &str) -> Option<Period> {
        Some(match name {
            "day" => Period::Day,
            "week" => Period::Week {
                starts: Weekday::Mon,
            },
            "month" => Period::Month,
            "quarter" => Period::Quarter,
            "year" => Period::Year,
            _ => return None,
        })
    }
}

/// A day's name as the DSL and the JSON write it (`monday`).
pub fn day_name(day: Weekday) -> &'static str {
    DAYS.iter()
        .find(|(_, d)| *d == day)
        .map_or("monday", |(n, _)| n)
}

impl WindowSpec {
    /// The words the DSL uses for a spec: `previous day`, `previous week`, `previous week
    /// starting sunday`, `previous month`, `previous quarter`, `previous year`; a duration
    /// (`6h`) is parsed by the caller and given as [`WindowSpec::Last`].
    pub fn parse_period(text: &str) -> Result<WindowSpec, String> {
        let words: Vec<String> = text
            .split_ascii_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let period = match words.as_slice() {
            ["previous", "day"] => Period::Day,
            ["previous", "week"] => Period::Week {
                starts: Weekday::Mon,
            },
            ["previous", "week", "starting", day] => Period::Week {
                starts: weekday(day).ok_or_else(|| {
                    format!("'{day}' is not a day of the week (monday … sunday, or mon … sun)")
                })?,
            },
            ["previous", "month"] => Period::Month,
            ["previous", "quarter"] => Period::Quarter,
            ["previous", "year"] => Period::Year,
            _ => {
                return Err(format!(
                    "'{text}' is not a window: use previous day, previous week [starting DAY], \
                     previous month, previous quarter, previous year, or a duration (24h)"
                ))
            }
        };
        Ok(WindowSpec::Previous(period))
    }

    /// The window of a fire at `fire`, in `zone`.
    pub fn window_at(&self, fire: DateTime<Utc>, zone: Tz) -> Result<Window, WindowError> {
        let (start, end, kind) = match *self {
            WindowSpec::Last(duration) => {
                let span = TimeDelta::from_std(duration).map_err(|_| WindowError::OutOfRange)?;
                let start = fire
                    .checked_sub_signed(span)
                    .ok_or(WindowError::OutOfRange)?;
                (start, fire, WindowKind::Span)
            }
            WindowSpec::Previous(period) => {
                let today = fire.with_timezone(&zone).date_naive();
                let current = period_start(period, today);
                let previous = step(period, current, -1).ok_or(WindowError::OutOfRange)?;
                (
                    start_of_day(zone, previous).ok_or(WindowError::OutOfRange)?,
                    start_of_day(zone, current).ok_or(WindowError::OutOfRange)?,
                    WindowKind::Period(period),
                )
            }
        };
        Ok(Window {
            start,
            end,
            zone: zone.name().to_string(),
            kind,
        })
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowSpec::Previous(Period::Day) => f.write_str("previous day"),
            WindowSpec::Previous(Period::Week {
                starts: Weekday::Mon,
            }) => f.write_str("previous week"),
            WindowSpec::Previous(Period::Week { starts }) => {
                let name = DAYS
                    .iter()
                    .find(|(_, d)| d == starts)
                    .map_or("?", |(n, _)| n);
                write!(f, "previous week starting {name}")
            }
            WindowSpec::Previous(Period::Month) => f.write_str("previous month"),
            WindowSpec::Previous(Period::Quarter) => f.write_str("previous quarter"),
            WindowSpec::Previous(Period::Year) => f.write_str("previous year"),
            WindowSpec::Last(d) => write!(f, "{}", crate::compiler::humanize(*d)),
        }
    }
}

impl Window {
    /// A window a trigger gives: `[start, end)`, its dates read in `zone`.
    pub fn between(
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        zone: &str,
    ) -> Result<Window, WindowError> {
        let zone: Tz = zone
            .parse()
            .map_err(|_| WindowError::UnknownZone(zone.to_string()))?;
        if start >= end {
            return Err(WindowError::Empty { start, end });
        }
        Ok(Window {
            start,
            end,
            zone: zone.name().to_string(),
            kind: WindowKind::Span,
        })
    }

    /// The calendar period a trigger names, in `zone`: a day `2026-11-30`, an ISO week
    /// `2026-W48` (Monday to Monday), a month `2026-11`, a quarter `2026-Q4` or a year `2026` —
    /// the forms [`Window::label`] writes, so a result's folder name gives its window back.
    pub fn period(text: &str, zone: Tz) -> Result<Window, WindowError> {
        let bad = || WindowError::BadPeriod(crate::diagnostic::bounded(text.to_string()));
        let text = text.trim();
        let number = |s: &str| -> Option<u32> {
            (!s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let year = |s: &str| {
            (s.len() == 4)
                .then(|| number(s))
                .flatten()
                .and_then(|y| i32::try_from(y).ok())
        };
        let parts: Vec<&str> = text.split('-').collect();
        let (period, first) = match parts.as_slice() {
            [y] => (
                Period::Year,
                NaiveDate::from_ymd_opt(year(y).ok_or_else(bad)?, 1, 1),
            ),
            [y, w] if w.starts_with('W') => {
                let week = number(&w[1..]).filter(|_| w.len() == 3).ok_or_else(bad)?;
                (
                    Period::Week {
                        starts: Weekday::Mon,
                    },
                    NaiveDate::from_isoywd_opt(year(y).ok_or_else(bad)?, week, Weekday::Mon),
                )
            }
            [y, q] if q.starts_with('Q') => {
                let quarter = number(&q[1..])
                    .filter(|n| q.len() == 2 && (1..=4).contains(n))
                    .ok_or_else(bad)?;
                (
                    Period::Quarter,
                    NaiveDate::from_ymd_opt(year(y).ok_or_else(bad)?, quarter * 3 - 2, 1),
                )
            }
            [y, m] if m.len() == 2 => (
                Period::Month,
                NaiveDate::from_ymd_opt(year(y).ok_or_else(bad)?, number(m).ok_or_else(bad)?, 1),
            ),
            [y, m, d] if m.len() == 2 && d.len() == 2 => (
                Period::Day,
                NaiveDate::from_ymd_opt(
                    year(y).ok_or_else(bad)?,
                    number(m).ok_or_else(bad)?,
                    number(d).ok_or_else(bad)?,
                ),
            ),
            _ => return Err(bad()),
        };
        let first = first.ok_or_else(bad)?;
        let next = step(period, first, 1).ok_or(WindowError::OutOfRange)?;
        Ok(Window {
            start: start_of_day(zone, first).ok_or(WindowError::OutOfRange)?,
            end: start_of_day(zone, next).ok_or(WindowError::OutOfRange)?,
            zone: zone.name().to_string(),
            kind: WindowKind::Period(period),
        })
    }

    /// This window with its instants cut to the microsecond, as every time of a job record is
    /// kept (PostgreSQL's precision), so that every store gives back what it was given.
    pub fn truncated_to_micros(mut self) -> Window {
        use chrono::SubsecRound;
        self.start = self.start.trunc_subsecs(6);
        self.end = self.end.trunc_subsecs(6);
        self
    }

    /// The zone, parsed (a stored window always names a zone that parses).
    pub fn tz(&self) -> Tz {
        self.zone.parse().unwrap_or(Tz::UTC)
    }

    /// The local date the window starts on.
    pub fn start_date(&self) -> NaiveDate {
        self.start.with_timezone(&self.tz()).date_naive()
    }

    /// The local date the window ends on (exclusive: the day after a daily window's day).
    pub fn end_date(&self) -> NaiveDate {
        self.end.with_timezone(&self.tz()).date_naive()
    }

    /// A short name for the window, safe in a file path: `2026-11-30` for a day, `2026-W48`
    /// for an ISO week (`2026-11-29+7d` for a week starting on another day), `2026-11`,
    /// `2026-Q4`, `2026`; `20261130T053000Z-20261201T053000Z` for a span.
    pub fn label(&self) -> String {
        let start = self.start_date();
        match self.kind {
            WindowKind::Period(Period::Day) => start.format("%Y-%m-%d").to_string(),
            WindowKind::Period(Period::Week {
                starts: Weekday::Mon,
            }) => {
                let week = start.iso_week();
                format!("{}-W{:02}", week.year(), week.week())
            }
            WindowKind::Period(Period::Week { .. }) => format!("{}+7d", start.format("%Y-%m-%d")),
            WindowKind::Period(Period::Month) => start.format("%Y-%m").to_string(),
            WindowKind::Period(Period::Quarter) => {
                format!("{}-Q{}", start.year(), start.month0() / 3 + 1)
            }
            WindowKind::Period(Period::Year) => start.format("%Y").to_string(),
            WindowKind::Span => format!(
                "{}-{}",
                self.start.format("%Y%m%dT%H%M%SZ"),
                self.end.format("%Y%m%dT%H%M%SZ")
            ),
        }
    }
}

/// The first day of the period that contains `date`.
fn period_start(period: Period, date: NaiveDate) -> NaiveDate {
    match period {
        Period::Day => date,
        Period::Week { starts } => {
            let back =
                (7 + date.weekday().num_days_from_monday() - starts.num_days_from_monday()) % 7;
            date - TimeDelta::days(i64::from(back))
        }
        Period::Month => date.with_day(1).unwrap_or(date),
        Period::Quarter => {
            NaiveDate::from_ymd_opt(date.year(), date.month0() / 3 * 3 + 1, 1).unwrap_or(date)
        }
        Period::Year => NaiveDate::from_ymd_opt(date.year(), 1, 1).unwrap_or(date),
    }
}

/// The first day of the period `n` periods from the one starting on `start`.
fn step(period: Period, start: NaiveDate, n: i32) -> Option<NaiveDate> {
    let months = |m: i32| {
        if m >= 0 {
            start.checked_add_months(chrono::Months::new(m.unsigned_abs()))
        } else {
            start.checked_sub_months(chrono::Months::new(m.unsigned_abs()))
        }
    };
    match period {
        Period::Day => start.checked_add_signed(TimeDelta::days(i64::from(n))),
        Period::Week { .. } => start.checked_add_signed(TimeDelta::weeks(i64::from(n))),
        Period::Month => months(n),
        Period::Quarter => months(3 * n),
        Period::Year => months(12 * n),
    }
}

/// The first instant of `date` in `zone` (java.time's `atStartOfDay`).
pub fn start_of_day(zone: Tz, date: NaiveDate) -> Option<DateTime<Utc>> {
    let midnight = date.and_hms_opt(0, 0, 0)?;
    match zone.from_local_datetime(&midnight) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        // Midnight in a gap: the day starts where the gap ends, the transition's instant.
        LocalResult::None => {
            let before = crate::cron_expr::offset_before_gap(zone, midnight)?;
            Some(Utc.from_utc_datetime(&midnight.checked_sub_signed(before)?))
        }
    }
}

/// The days of the week as the DSL writes them.
const DAYS: [(&str, Weekday); 7] = [
    ("monday", Weekday::Mon),
    ("tuesday", Weekday::Tue),
    ("wednesday", Weekday::Wed),
    ("thursday", Weekday::Thu),
    ("friday", Weekday::Fri),
    ("saturday", Weekday::Sat),
    ("sunday", Weekday::Sun),
];

fn weekday(word: &str) -> Option<Weekday> {
    DAYS.iter()
        .find(|(name, _)| *name == word || (word.len() == 3 && name.starts_with(word)))
        .map(|(_, day)| *day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn spec(text: &str) -> WindowSpec {
        WindowSpec::parse_period(text).unwrap()
    }

    /// (spec, zone, fire, start, end, label, hours): the table the issue asks for — DST
    /// changes, month ends, leap years, each kind.
    #[test]
    fn windows_of_fires_across_dst_month_ends_and_leap_years() {
        use chrono_tz::America::{New_York, Santiago};
        use chrono_tz::Europe::Berlin;
        use chrono_tz::Pacific::Apia;
        let rows: &[(&str, Tz, &str, &str, &str, &str, i64)] = &[
            // A plain day.
            (
                "previous day",
                Berlin,
                "2026-12-01T04:30:00Z",
                "2026-11-29T23:00:00Z",
                "2026-11-30T23:00:00Z",
                "2026-11-30",
                24,
            ),
            // The spring-forward day is 23 hours, the fall-back day 25.
            (
                "previous day",
                Berlin,
                "2026-03-30T03:30:00Z",
                "2026-03-28T23:00:00Z",
                "2026-03-29T22:00:00Z",
                "2026-03-29",
                23,
            ),
            (
                "previous day",
                Berlin,
                "2026-10-26T04:30:00Z",
                "2026-10-24T22:00:00Z",
                "2026-10-25T23:00:00Z",
                "2026-10-25",
                25,
            ),
            (
                "previous day",
                New_York,
                "2026-03-09T09:30:00Z",
                "2026-03-08T05:00:00Z",
                "2026-03-09T04:00:00Z",
                "2026-03-08",
                23,
            ),
            // A fire just after local midnight covers the day before, not the one before that.
            (
                "previous day",
                Berlin,
                "2026-12-01T23:00:01Z",
                "2026-11-30T23:00:00Z",
                "2026-12-01T23:00:00Z",
                "2026-12-01",
                24,
            ),
            // Midnight in a gap: Santiago springs forward at 00:00 (2026-09-06), the day
            // starts at 01:00 local, 04:00Z.
            (
                "previous day",
                Santiago,
                "2026-09-07T12:00:00Z",
                "2026-09-06T04:00:00Z",
                "2026-09-07T03:00:00Z",
                "2026-09-06",
                23,
            ),
            // Apia skipped 2011-12-30 entirely: the day after it, the 31st, starts where the
            // 29th ended.
            (
                "previous day",
                Apia,
                "2011-12-31T12:00:00Z",
                "2011-12-30T10:00:00Z",
                "2011-12-31T10:00:00Z",
                "2011-12-31",
                24,
            ),
            // Leap day and month ends.
            (
                "previous day",
                Tz::UTC,
                "2028-03-01T05:30:00Z",
                "2028-02-29T00:00:00Z",
                "2028-03-01T00:00:00Z",
                "2028-02-29",
                24,
            ),
            (
                "previous month",
                Tz::UTC,
                "2028-03-01T05:30:00Z",
                "2028-02-01T00:00:00Z",
                "2028-03-01T00:00:00Z",
                "2028-02",
                29 * 24,
            ),
            (
                "previous month",
                Tz::UTC,
                "2027-03-01T05:30:00Z",
                "2027-02-01T00:00:00Z",
                "2027-03-01T00:00:00Z",
                "2027-02",
                28 * 24,
            ),
            (
                "previous month",
                Berlin,
                "2026-04-01T03:30:00Z",
                "2026-02-28T23:00:00Z",
                "2026-03-31T22:00:00Z",
                "2026-03",
                31 * 24 - 1,
            ),
            (
                "previous month",
                Berlin,
                "2027-01-01T04:30:00Z",
                "2026-11-30T23:00:00Z",
                "2026-12-31T23:00:00Z",
                "2026-12",
                31 * 24,
            ),
            // ISO weeks start on Monday; 2026-12-31 is in 2026-W53, 2027-01-01 too.
            (
                "previous week",
                Berlin,
                "2026-11-30T04:30:00Z",
                "2026-11-22T23:00:00Z",
                "2026-11-29T23:00:00Z",
                "2026-W48",
                168,
            ),
            (
                "previous week",
                Tz::UTC,
                "2027-01-04T05:30:00Z",
                "2026-12-28T00:00:00Z",
                "2027-01-04T00:00:00Z",
                "2026-W53",
                168,
            ),
            (
                "previous week",
                Berlin,
                "2026-03-30T03:30:00Z",
                "2026-03-22T23:00:00Z",
                "2026-03-29T22:00:00Z",
                "2026-W13",
                167,
            ),
            // A mid-week fire covers the whole week before.
            (
                "previous week",
                Tz::UTC,
                "2026-12-03T05:30:00Z",
                "2026-11-23T00:00:00Z",
                "2026-11-30T00:00:00Z",
                "2026-W48",
                168,
            ),
            (
                "previous week starting sunday",
                Tz::UTC,
                "2026-12-01T05:30:00Z",
                "2026-11-22T00:00:00Z",
                "2026-11-29T00:00:00Z",
                "2026-11-22+7d",
                168,
            ),
            // Quarters and years.
            (
                "previous quarter",
                Berlin,
                "2026-04-01T03:30:00Z",
                "2025-12-31T23:00:00Z",
                "2026-03-31T22:00:00Z",
                "2026-Q1",
                90 * 24 - 1,
            ),
            (
                "previous quarter",
                Tz::UTC,
                "2026-02-15T00:00:00Z",
                "2025-10-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
                "2025-Q4",
                92 * 24,
            ),
            (
                "previous year",
                Tz::UTC,
                "2029-01-01T05:30:00Z",
                "2028-01-01T00:00:00Z",
                "2029-01-01T00:00:00Z",
                "2028",
                366 * 24,
            ),
            (
                "previous year",
                Berlin,
                "2027-01-01T04:30:00Z",
                "2025-12-31T23:00:00Z",
                "2026-12-31T23:00:00Z",
                "2026",
                365 * 24,
            ),
        ];
        // The skipped day itself is empty.
        let w = spec("previous day")
            .window_at(utc("2011-12-30T12:00:00Z"), Apia)
            .unwrap();
        assert_eq!(
            (w.start, w.end),
            (utc("2011-12-30T10:00:00Z"), utc("2011-12-30T10:00:00Z"))
        );
        for &(text, zone, fire, start, end, label, hours) in rows {
            let w = spec(text).window_at(utc(fire), zone).unwrap();
            let row = format!("{text} in {zone} at {fire}");
            assert_eq!((w.start, w.end), (utc(start), utc(end)), "{row}");
            assert_eq!(w.label(), label, "{row}");
            assert_eq!((w.end - w.start).num_hours(), hours, "{row}");
            assert_eq!(w.zone, zone.name(), "{row}");
        }
    }

    #[test]
    fn a_duration_window_is_elapsed_time_ending_at_the_fire() {
        let fire = utc("2026-03-29T01:30:00Z");
        let w = WindowSpec::Last(Duration::from_secs(6 * 3600))
            .window_at(fire, chrono_tz::Europe::Berlin)
            .unwrap();
        assert_eq!((w.start, w.end), (utc("2026-03-28T19:30:00Z"), fire));
        assert_eq!(w.label(), "20260328T193000Z-20260329T013000Z");
        assert_eq!(w.start_date().to_string(), "2026-03-28");
    }

    #[test]
    fn consecutive_daily_fires_tile_time_without_gaps_or_overlaps() {
        let zone = chrono_tz::America::Santiago;
        let day = spec("previous day");
        let mut fire = utc("2026-01-01T09:30:00Z");
        let mut previous: Option<Window> = None;
        for _ in 0..800 {
            let w = day.window_at(fire, zone).unwrap();
            assert!(w.start < w.end, "{w:?}");
            if let Some(p) = &previous {
                assert_eq!(p.end, w.start, "{p:?} then {w:?}");
            }
            previous = Some(w);
            fire += TimeDelta::days(1);
        }
    }

    #[test]
    fn specs_parse_and_print_back() {
        for text in [
            "previous day",
            "previous week",
            "previous week starting sunday",
            "previous month",
            "previous quarter",
            "previous year",
        ] {
            assert_eq!(spec(text).to_string(), text);
        }
        assert_eq!(
            spec("Previous  Week starting SUN").to_string(),
            "previous week starting sunday"
        );
        for bad in [
            "previous",
            "next day",
            "previous fortnight",
            "previous week starting funday",
        ] {
            assert!(WindowSpec::parse_period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_given_window_is_checked() {
        let (a, b) = (utc("2026-11-30T00:00:00Z"), utc("2026-12-01T00:00:00Z"));
        let w = Window::between(a, b, "Europe/Berlin").unwrap();
        assert_eq!(
            (w.start_date().to_string(), w.end_date().to_string()),
            ("2026-11-30".into(), "2026-12-01".into())
        );
        assert!(matches!(
            Window::between(b, a, "UTC"),
            Err(WindowError::Empty { .. })
        ));
        assert!(matches!(
            Window::between(a, a, "UTC"),
            Err(WindowError::Empty { .. })
        ));
        assert!(matches!(
            Window::between(a, b, "Mars/Olympus"),
            Err(WindowError::UnknownZone(_))
        ));
    }

    #[test]
    fn window_json_names_its_kind_and_label_and_reads_back() {
        let berlin = chrono_tz::Europe::Berlin;
        let month = spec("previous month")
            .window_at(utc("2026-12-01T04:30:00Z"), berlin)
            .unwrap();
        let json = serde_json::to_value(&month).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "start": "2026-10-31T23:00:00Z",
                "end": "2026-11-30T23:00:00Z",
                "zone": "Europe/Berlin",
                "kind": "month",
                "label": "2026-11",
            })
        );
        let sunday_week = spec("previous week starting sunday")
            .window_at(utc("2026-12-01T05:30:00Z"), Tz::UTC)
            .unwrap();
        let span = Window::between(
            utc("2026-11-30T00:00:00Z"),
            utc("2026-11-30T06:00:00Z"),
            "UTC",
        )
        .unwrap();
        for w in [&month, &sunday_week, &span] {
            let text = serde_json::to_string(w).unwrap();
            assert_eq!(&serde_json::from_str::<Window>(&text).unwrap(), w, "{text}");
        }
        assert_eq!(
            serde_json::to_value(&sunday_week).unwrap()["weekStarts"],
            "sunday"
        );
        // The label is for people: a wrong or missing one does not change the window.
        let mut edited = json.clone();
        edited["label"] = "whatever".into();
        assert_eq!(serde_json::from_value::<Window>(edited).unwrap(), month);
        for (field, value) in [
            ("kind", serde_json::json!("fortnight")),
            ("zone", serde_json::json!("Mars/Olympus")),
            ("weekStarts", serde_json::json!("monday")),
            ("start", serde_json::json!("2026-12-01T00:00:00Z")),
        ] {
            let mut bad = json.clone();
            bad[field] = value;
            assert!(serde_json::from_value::<Window>(bad).is_err(), "{field}");
        }
    }

    #[test]
    fn a_named_period_is_the_window_its_label_names() {
        let berlin = chrono_tz::Europe::Berlin;
        for (text, start, end) in [
            ("2026-11-30", "2026-11-29T23:00:00Z", "2026-11-30T23:00:00Z"),
            ("2026-03-29", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"),
            ("2026-W48", "2026-11-22T23:00:00Z", "2026-11-29T23:00:00Z"),
            ("2026-11", "2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z"),
            ("2026-Q1", "2025-12-31T23:00:00Z", "2026-03-31T22:00:00Z"),
            ("2028", "2027-12-31T23:00:00Z", "2028-12-31T23:00:00Z"),
        ] {
            let w = Window::period(text, berlin).unwrap();
            assert_eq!((w.start, w.end), (utc(start), utc(end)), "{text}");
            assert_eq!(w.label(), text);
        }
        // The window a schedule gives a fire is the one its label names.
        let fire = spec("previous day")
            .window_at(utc("2026-12-01T04:30:00Z"), berlin)
            .unwrap();
        assert_eq!(Window::period(&fire.label(), berlin).unwrap(), fire);
        for bad in [
            "",
            "2026-13",
            "2026-02-30",
            "2026-W54",
            "2026-Q5",
            "2026-Q0",
            "26-11",
            "2026-1",
            "2026-11-3",
            "2026/11/30",
            "yesterday",
            "2026-11-30T00:00",
        ] {
            assert!(
                matches!(Window::period(bad, berlin), Err(WindowError::BadPeriod(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn instants_are_kept_to_the_microsecond() {
        let start = utc("2026-11-30T00:00:00.123456789Z");
        let w = Window::between(start, utc("2026-12-01T00:00:00Z"), "UTC")
            .unwrap()
            .truncated_to_micros();
        assert_eq!(w.start, utc("2026-11-30T00:00:00.123456Z"));
    }
}
