//! Quartz-style cron expressions evaluated in an IANA time zone.
//!
//! An expression has six fields, `second minute hour day-of-month month day-of-week`, and an
//! optional seventh, `year`, as used by Spring `@Scheduled` and Quartz (`0 30 5 * * ?`,
//! `0 30 5 1 1,4,7,10 ?`, `0 */2 * * * ?`). Each field accepts `*`, numbers, ranges `a-b`,
//! steps `*/n`, `a/n`, `a-b/n` and lists `a,b,c`; the month field also accepts `JAN`-`DEC` and
//! the day-of-week field `SUN`-`SAT` (case-insensitive). Day-of-week numbers follow Quartz:
//! `1` is Sunday and `7` is Saturday. `?` ("no specific value") is accepted, alone, in the
//! day-of-month and day-of-week fields and means the same as `*`. The Quartz day specials
//! (`L`, `L-3`, `15W`, `LW` in day-of-month; `6L`, `6#3` in day-of-week) are in [`day_rule`].
//!
//! At most one of day-of-month and day-of-week may be restricted: the other is `*` or `?`
//! (`0 0 9 1 * ?`, `0 0 9 ? * MON`, `0 0 9 * * *`). Restricting both (`0 0 9 1-7 * MON`) is
//! refused, as in Quartz: Unix cron fires on days matching either field, Spring and the `cron`
//! crate on days matching both, and a schedule should not depend on which the reader assumed.
//! Both `?` (`0 0 9 ? * ?`) is refused too: it leaves the day to neither field.
//!
//! An expression that matches no date at all between 1970 and 2099 is refused: a day-of-month
//! no selected month has (`0 0 0 30 2 ?`), or Feb 29 in selected years none of which is a
//! leap year (`0 0 0 29 2 ? 2027`). One that fires only in the past (`0 0 0 * * ? 2020`) is
//! valid; `flowctl check` warns about it (W005), since that depends on the date.
//!
//! # Daylight saving time
//!
//! The schedule is evaluated on the zone's local wall clock and each local fire time is then
//! mapped to a real instant, following java.time / RFC 5545:
//!
//! * a local time that exists once fires at that instant;
//! * a local time inside a spring-forward gap fires shifted forward by the length of the gap
//!   (02:30 in America/New_York on 2026-03-08 fires at 03:30 EDT), unless the schedule is
//!   *sub-hourly* (its hour field matches every hour: `*`, `0-23`, `*/1`; hourly `0 0 * * * ?`
//!   included, `0 0 */2 * * ?` not), in which case it follows real elapsed
//!   time and the times inside the gap simply do not occur;
//! * a local time repeated at fall-back fires once, at its first occurrence, unless the schedule
//!   is sub-hourly, in which case it fires at both occurrences.
//!
//! Fire instants are strictly increasing: two local times that map to the same instant fire once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use cron::{Schedule, TimeUnitSpec};

mod day_rule;
use day_rule::DayRule;

/// One field of a cron expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

const FIELDS: [CronField; 7] = [
    CronField::Second,
    CronField::Minute,
    CronField::Hour,
    CronField::DayOfMonth,
    CronField::Month,
    CronField::DayOfWeek,
    CronField::Year,
];

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl CronField {
    /// The field's name as used in messages: `"second"`, …, `"day-of-month"`, …, `"year"`.
    pub fn name(&self) -> &'static str {
        match self {
            CronField::Second => "second",
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
            CronField::Year => "year",
        }
    }

    /// Inclusive range of values.
    fn bounds(self) -> (u32, u32) {
        match self {
            CronField::Second | CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (1, 7),
            CronField::Year => (1970, 2099),
        }
    }

    /// Largest accepted step (the `cron` crate refuses a step above the field's maximum).
    fn max_step(self) -> u32 {
        match self {
            CronField::Year => 2099 - 1970,
            other => other.bounds().1,
        }
    }

    /// Names accepted instead of numbers; index 0 is the field's minimum value.
    fn names(self) -> Option<&'static [&'static str]> {
        match self {
            CronField::Month => Some(&MONTH_NAMES),
            CronField::DayOfWeek => Some(&DAY_NAMES),
            _ => None,
        }
    }

    fn allows_question_mark(self) -> bool {
        matches!(self, CronField::DayOfMonth | CronField::DayOfWeek)
    }

    fn range_hint(self) -> &'static str {
        match self {
            CronField::Month => " (or JAN-DEC)",
            CronField::DayOfWeek => " (1 = SUN ... 7 = SAT, or SUN-SAT)",
            _ => "",
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A cron expression that could not be parsed, located in the expression text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    /// The field at fault; `None` for whole-expression problems (wrong field count).
    pub field: Option<CronField>,
    /// Byte offset of the offending token inside the expression text.
    pub offset: usize,
    /// Length in bytes of the offending token (at least 1 unless the expression is empty).
    pub len: usize,
    /// A sentence naming the field and saying what is wrong.
    pub message: String,
}

impl CronError {
    fn at(field: CronField, offset: usize, len: usize, message: String) -> CronError {
        CronError {
            field: Some(field),
            offset,
            len: len.max(1),
            message,
        }
    }
}

/// A parsed, validated Quartz-style cron expression.
#[derive(Clone)]
pub struct CronExpr {
    source: String,
    schedule: Schedule,
    /// The hour field matches every hour: the schedule follows real elapsed time across
    /// daylight-saving transitions.
    sub_hourly: bool,
    /// A Quartz day special; `schedule` then has that day field `*` and is filtered by it.
    day_rule: Option<DayRule>,
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronExpr")
            .field("source", &self.source)
            .field("sub_hourly", &self.sub_hourly)
            .finish()
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &CronExpr) -> bool {
        self.source == other.source
    }
}

impl Eq for CronExpr {}

impl FromStr for CronExpr {
    type Err = CronError;

    fn from_str(text: &str) -> Result<CronExpr, CronError> {
        CronExpr::parse(text)
    }
}

/// Span of a field of the expression text: (byte offset, text).
type Token<'a> = (usize, &'a str);

/// Splits on ASCII whitespace, keeping byte offsets.
fn split_fields(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut start = None;
    for (i, b) in text.bytes().enumerate() {
        if b.is_ascii_whitespace() {
            if let Some(s) = start.take() {
                tokens.push((s, &text[s..i]));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        tokens.push((s, &text[s..]));
    }
    tokens
}

/// Parses one value (number or name) and checks its range.
fn parse_value(field: CronField, tok: &str, offset: usize) -> Result<u32, CronError> {
    let (min, max) = field.bounds();
    if tok.is_empty() {
        return Err(CronError::at(
            field,
            offset,
            1,
            format!("{field} value is missing"),
        ));
    }
    if tok.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64: certainly out of range.
        let value = tok.parse::<u64>().unwrap_or(u64::MAX);
        if value < u64::from(min) || value > u64::from(max) {
            return Err(CronError::at(
                field,
                offset,
                tok.len(),
                format!(
                    "{field} value {tok} is out of range {min}-{max}{}",
                    field.range_hint()
                ),
            ));
        }
        return Ok(value as u32);
    }
    match field.names() {
        Some(names) if tok.bytes().all(|b| b.is_ascii_alphabetic()) => names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(tok))
            .map(|i| min + i as u32)
            .ok_or_else(|| {
                CronError::at(
                    field,
                    offset,
                    tok.len(),
                    format!(
                        "{field} name '{tok}' is unknown (use {}-{} or {min}-{max})",
                        names[0],
                        names[names.len() - 1]
                    ),
                )
            }),
        Some(_) => Err(CronError::at(
            field,
            offset,
            tok.len(),
            format!("{field} value '{tok}' is neither a number nor a name"),
        )),
        None => Err(CronError::at(
            field,
            offset,
            tok.len(),
            format!("{field} value '{tok}' is not a number"),
        )),
    }
}

/// Parses `*`, `a` or `a-b`; returns the normalized (numeric) text.
fn parse_base(field: CronField, tok: &str, offset: usize) -> Result<String, CronError> {
    if tok == "*" {
        return Ok("*".to_string());
    }
    match tok.split_once('-') {
        None => parse_value(field, tok, offset).map(|v| v.to_string()),
        Some((lo, hi)) => {
            if lo.is_empty() || hi.is_empty() {
                return Err(CronError::at(
                    field,
                    offset,
                    tok.len(),
                    format!("{field} range '{tok}' is missing a bound"),
                ));
            }
            if let Some(extra) = hi.find('-') {
                let at = offset + lo.len() + 1 + extra;
                return Err(CronError::at(
                    field,
                    at,
                    1,
                    format!("{field} range '{tok}' has more than one '-'"),
                ));
            }
            let lo_v = parse_value(field, lo, offset)?;
            let hi_v = parse_value(field, hi, offset + lo.len() + 1)?;
            if lo_v > hi_v {
                return Err(CronError::at(
                    field,
                    offset,
                    tok.len(),
                    format!(
                        "{field} range {tok} starts after it ends ({lo_v} > {hi_v}); \
                         wrap-around ranges are not supported"
                    ),
                ));
            }
            Ok(format!("{lo_v}-{hi_v}"))
        }
    }
}

/// Parses one list element: `*`, `a`, `a-b`, `*/n`, `a/n`, `a-b/n`.
fn parse_item(field: CronField, item: &str, offset: usize) -> Result<String, CronError> {
    let Some((base, step)) = item.split_once('/') else {
        return parse_base(field, item, offset);
    };
    let step_offset = offset + base.len() + 1;
    if let Some(extra) = step.find('/') {
        return Err(CronError::at(
            field,
            step_offset + extra,
            1,
            format!("{field} item '{item}' has more than one '/'"),
        ));
    }
    if base.is_empty() {
        return Err(CronError::at(
            field,
            offset,
            item.len(),
            format!("{field} item '{item}' has no start before '/' (write */{step} or 0/{step})"),
        ));
    }
    if step.is_empty() {
        return Err(CronError::at(
            field,
            offset + base.len(),
            1,
            format!("{field} item '{item}' has no step after '/'"),
        ));
    }
    let base = parse_base(field, base, offset)?;
    if !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CronError::at(
            field,
            step_offset,
            step.len(),
            format!("{field} step '{step}' is not a number"),
        ));
    }
    let step_v = step.parse::<u64>().unwrap_or(u64::MAX);
    if step_v == 0 {
        return Err(CronError::at(
            field,
            step_offset,
            step.len(),
            format!("{field} step 0 is invalid: a step must be at least 1"),
        ));
    }
    let max_step = field.max_step();
    if step_v > u64::from(max_step) {
        return Err(CronError::at(
            field,
            step_offset,
            step.len(),
            format!("{field} step {step} is out of range 1-{max_step}"),
        ));
    }
    Ok(format!("{base}/{step_v}"))
}

/// Validates one field; returns its normalized text for the `cron` crate.
fn parse_field(field: CronField, text: &str, offset: usize) -> Result<String, CronError> {
    if let Some(q) = text.find('?') {
        if text == "?" && field.allows_question_mark() {
            return Ok("*".to_string());
        }
        let message = if field.allows_question_mark() {
            format!("'?' must stand alone in {field}, not in '{text}'")
        } else {
            format!("'?' is only allowed in day-of-month and day-of-week, not in {field}")
        };
        return Err(CronError::at(field, offset + q, 1, message));
    }
    let mut out = Vec::new();
    let mut start = 0;
    for (i, part) in text.split(',').enumerate() {
        if part.is_empty() {
            // Point at the comma before the empty element (or the leading comma).
            let comma = if i == 0 { 0 } else { start - 1 };
            return Err(CronError::at(
                field,
                offset + comma,
                1,
                format!("{field} list '{text}' has an empty element"),
            ));
        }
        out.push(parse_item(field, part, offset + start)?);
        start += part.len() + 1;
    }
    Ok(out.join(","))
}

/// One day field must leave the day to the other (`*` or `?`): both restricted means "both
/// match" in Spring and the `cron` crate but "either matches" in Unix cron, and Quartz refuses
/// it; both `?` leaves the day to neither (Quartz refuses that too).
fn check_day_fields(day_of_month: Token<'_>, day_of_week: Token<'_>) -> Result<(), CronError> {
    let (offset, dow) = day_of_week;
    let dom = day_of_month.1;
    let free = |t: &str| t == "*" || t == "?";
    if dom == "?" && dow == "?" {
        return Err(CronError::at(
            CronField::DayOfWeek,
            offset,
            dow.len(),
            "'?' in both day-of-month and day-of-week leaves the day to neither: write '*' in \
             one of them for every day"
                .to_string(),
        ));
    }
    if !free(dom) && !free(dow) {
        return Err(CronError::at(
            CronField::DayOfWeek,
            offset,
            dow.len(),
            format!(
                "day-of-month '{dom}' and day-of-week '{dow}' are both restricted, which Quartz \
                 refuses (Unix cron would fire on either, Spring on both): write '?' in one of \
                 them"
            ),
        ));
    }
    Ok(())
}

fn days_in_month_max(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl CronExpr {
    /// Parses and validates a 6- or 7-field Quartz-style expression.
    pub fn parse(text: &str) -> Result<CronExpr, CronError> {
        let tokens = split_fields(text);
        if tokens.len() != 6 && tokens.len() != 7 {
            return Err(CronError {
                field: None,
                offset: 0,
                len: text.len(),
                message: format!(
                    "a cron expression has 6 or 7 fields (second minute hour day-of-month month \
                     day-of-week [year]), found {}",
                    tokens.len()
                ),
            });
        }
        let mut normalized = Vec::with_capacity(tokens.len());
        let mut day_rule = None;
        let mut rule_at = None;
        for (&field, &(offset, tok)) in FIELDS.iter().zip(tokens.iter()) {
            if field.allows_question_mark() {
                if let Some(rule) = DayRule::parse(field, tok, offset)? {
                    day_rule = Some(rule);
                    rule_at = Some((field, (offset, tok)));
                    normalized.push("*".to_string());
                    continue;
                }
            }
            normalized.push(parse_field(field, tok, offset)?);
        }
        check_day_fields(tokens[3], tokens[5])?;
        let schedule = Schedule::from_str(&normalized.join(" ")).map_err(|e| CronError {
            field: None,
            offset: 0,
            len: text.len(),
            message: format!("cron expression '{text}' was rejected: {e}"),
        })?;

        // A day-of-month that no selected month has would never fire.
        let first_day = schedule.days_of_month().iter().next().unwrap_or(1);
        let longest = schedule
            .months()
            .iter()
            .map(days_in_month_max)
            .max()
            .unwrap_or(31);
        if first_day > longest {
            let (offset, tok) = tokens[3];
            let months: Vec<&str> = schedule
                .months()
                .iter()
                .map(|m| MONTH_NAMES[(m - 1) as usize])
                .collect();
            return Err(CronError::at(
                CronField::DayOfMonth,
                offset,
                tok.len(),
                format!(
                    "day-of-month {tok} never occurs in the selected months ({})",
                    months.join(", ")
                ),
            ));
        }

        // Feb 29 in selected years none of which is a leap year: no fire at all.
        if let Some(&(offset, tok)) = tokens.get(6) {
            let epoch = DateTime::<Utc>::UNIX_EPOCH;
            if !schedule.includes(epoch) && schedule.after(&epoch).next().is_none() {
                return Err(CronError::at(
                    CronField::Year,
                    offset,
                    tok.len(),
                    format!(
                        "year {tok} has no date with the selected day-of-month {} and month {}: \
                         the expression never fires",
                        tokens[3].1, tokens[4].1
                    ),
                ));
            }
        }

        let sub_hourly = schedule.hours().is_all();
        let cron = CronExpr {
            source: text.to_string(),
            schedule,
            sub_hourly,
            day_rule,
        };
        // A special no selected month (and year) has: `30W` in February, `6#5` in a year
        // whose selected months have no fifth Friday.
        if let Some((field, (offset, tok))) = rule_at.filter(|_| {
            cron.fires_after(Tz::UTC, DateTime::<Utc>::UNIX_EPOCH - TimeDelta::seconds(1))
                .next()
                .is_none()
        }) {
            return Err(CronError::at(
                field,
                offset,
                tok.len(),
                format!(
                    "{field} '{tok}' picks no day in the selected months{}: the expression \
                     never fires",
                    if tokens.len() == 7 { " and years" } else { "" }
                ),
            ));
        }
        Ok(cron)
    }

    /// The expression text as given to [`CronExpr::parse`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Smallest fire instant strictly after `after`, evaluated in `zone`.
    ///
    /// `None` when the schedule never fires again (years are limited to 2099).
    pub fn next_after(&self, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.fires_after(zone, after).next()
    }

    /// Every fire instant strictly after `after`, in increasing order: each costs one
    /// wall-clock candidate of the expression, also next to a daylight-saving transition.
    pub fn fires_after(&self, zone: Tz, after: DateTime<Utc>) -> Fires<'_> {
        Fires::new(self, zone, after)
    }

    /// The first implementation of [`CronExpr::next_after`], kept as the oracle the fast path
    /// is tested (and benchmarked) against: it maps every local candidate from a window
    /// before `after` (hours wide when a transition is within 30 hours), so it costs
    /// thousands of candidates per call near a transition for a sub-minute schedule.
    #[doc(hidden)]
    pub fn next_after_by_scan(&self, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after_n = after.naive_utc();
        let after_local = after_n.checked_add_signed(offset_at(zone, after_n))?;
        // A transition near `after` can map local times before `after_local` to instants after
        // `after` (a gap shifts forward, an overlap repeats): start that much earlier.
        let back = transition_margin(zone, after_n);
        let start = after_local.checked_sub_signed(back)?;

        let mut best: Option<NaiveDateTime> = None;
        let mut stop_at: Option<NaiveDateTime> = None;
        let candidates = self.schedule.after(&Utc.from_utc_datetime(&start));
        for candidate in candidates.filter(|c| self.day_matches(c.naive_utc())) {
            let local = candidate.naive_utc();
            if stop_at.is_some_and(|s| local > s) {
                break;
            }
            for instant in self.map_local(zone, local).into_iter().flatten() {
                if instant > after_n && best.is_none_or(|b| instant < b) {
                    best = Some(instant);
                }
            }
            if let (Some(b), None) = (best, stop_at) {
                // Later local times map to earlier instants only near a transition, by at
                // most its jump: keep scanning that far, or stop now if none is near.
                let margin = transition_margin(zone, b);
                if margin.is_zero() {
                    break;
                }
                stop_at = Some(local.checked_add_signed(margin)?);
            }
        }
        best.map(|b| Utc.from_utc_datetime(&b))
    }

    /// All fire instants in `(from, to]`, in increasing order.
    pub fn fires_between(
        &self,
        zone: Tz,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let fires = (from < to).then(|| self.fires_after(zone, from));
        fires.into_iter().flatten().take_while(move |t| *t <= to)
    }

    /// Whether the day special, if any, picks the day of the local time `local`.
    fn day_matches(&self, local: NaiveDateTime) -> bool {
        self.day_rule.is_none_or(|rule| rule.matches(local.date()))
    }

    /// Maps a local wall-clock time to the instants (as naive UTC) at which it fires.
    fn map_local(&self, zone: Tz, local: NaiveDateTime) -> [Option<NaiveDateTime>; 2] {
        match zone.from_local_datetime(&local) {
            LocalResult::Single(t) => [Some(t.naive_utc()), None],
            LocalResult::Ambiguous(first, second) => {
                if self.sub_hourly {
                    [Some(first.naive_utc()), Some(second.naive_utc())]
                } else {
                    [Some(first.naive_utc()), None]
                }
            }
            LocalResult::None => {
                if self.sub_hourly {
                    [None, None]
                } else {
                    // Interpret with the offset in force before the gap: shifted forward by the
                    // gap's length.
                    let instant = offset_before_gap(zone, local)
                        .and_then(|off| local.checked_sub_signed(off));
                    [instant, None]
                }
            }
        }
    }
}

/// UTC offset of `zone` at the UTC instant `utc`.
fn offset_at(zone: Tz, utc: NaiveDateTime) -> TimeDelta {
    TimeDelta::seconds(i64::from(
        zone.offset_from_utc_datetime(&utc).fix().local_minus_utc(),
    ))
}

/// Zero when the zone's offset is the same 30 hours before and after `utc` (no transition
/// nearby), else the larger offset change seen, at least 3 hours.
fn transition_margin(zone: Tz, utc: NaiveDateTime) -> TimeDelta {
    let probe = TimeDelta::hours(30);
    let here = offset_at(zone, utc);
    let jump = [utc.checked_sub_signed(probe), utc.checked_add_signed(probe)]
        .into_iter()
        .flatten()
        .map(|t| (offset_at(zone, t) - here).abs())
        .max()
        .unwrap_or_default();
    if jump.is_zero() {
        jump
    } else {
        jump.max(TimeDelta::hours(3))
    }
}

/// The offset in force just before the spring-forward gap containing `local`.
pub(crate) fn offset_before_gap(zone: Tz, local: NaiveDateTime) -> Option<TimeDelta> {
    (1..=48).find_map(|hours| {
        let probe = local.checked_sub_signed(TimeDelta::hours(hours))?;
        match zone.from_local_datetime(&probe) {
            LocalResult::Single(t) => Some(offset_at(zone, t.naive_utc())),
            LocalResult::Ambiguous(_, later) => Some(offset_at(zone, later.naive_utc())),
            LocalResult::None => None,
        }
    })
}

/// The fire instants of a [`CronExpr`] in a zone after a start, in increasing order
/// ([`CronExpr::fires_after`]).
///
/// It walks the expression's local wall-clock candidates forward once and maps each to its
/// instants as [`CronExpr::next_after_by_scan`] does, without rescanning: a local hour whose
/// first and last second exist once with the same offset (every hour but those of a
/// transition) maps by subtraction; the others ask the zone candidate by candidate.
///
/// Ordering: the *regular* instant of a candidate (the only one, or the first of a repeated
/// time) grows with the local time. The other instants (a gap time shifted forward, the second
/// pass of a repeated time) are held in a heap until the next regular instant is later than
/// they are: a later candidate's instants can fall before them only when they are regular
/// and on the near side of the same transition.
pub struct Fires<'a> {
    cron: &'a CronExpr,
    zone: Tz,
    candidates: cron::ScheduleIterator<'a, Utc>,
    exhausted: bool,
    /// The regular instant of the newest candidate, not yet returned.
    regular: Option<NaiveDateTime>,
    /// Gap-shifted and second-pass instants, earliest first.
    held: BinaryHeap<Reverse<NaiveDateTime>>,
    /// The last instant returned (at first the start): every later one is after it.
    last: NaiveDateTime,
    /// The local hour mapped last, and its offset when the whole hour maps by subtraction.
    hour: Option<(NaiveDateTime, Option<TimeDelta>)>,
}

impl<'a> Fires<'a> {
    fn new(cron: &'a CronExpr, zone: Tz, after: DateTime<Utc>) -> Fires<'a> {
        let after_n = after.naive_utc();
        // A candidate at or before `after` plus the smallest offset in force nearby maps to an
        // instant at or before `after`, whatever its offset: start there.
        let probe = TimeDelta::hours(30);
        let smallest = [
            after_n.checked_sub_signed(probe),
            Some(after_n),
            after_n.checked_add_signed(probe),
        ]
        .into_iter()
        .flatten()
        .map(|t| offset_at(zone, t))
        .min()
        .unwrap_or_default();
        let start = after_n.checked_add_signed(smallest);
        Fires {
            cron,
            zone,
            candidates: cron
                .schedule
                .after(&Utc.from_utc_datetime(&start.unwrap_or(NaiveDateTime::MAX))),
            exhausted: start.is_none(),
            regular: None,
            held: BinaryHeap::new(),
            last: after_n,
            hour: None,
        }
    }

    /// The offset of every second of the local hour starting at `hour`, when they all exist
    /// once with the same offset. Assumes no zone changes its offset twice within an hour.
    fn uniform_offset(&self, hour: NaiveDateTime) -> Option<TimeDelta> {
        let end = hour.checked_add_signed(TimeDelta::seconds(3599))?;
        match (
            self.zone.from_local_datetime(&hour),
            self.zone.from_local_datetime(&end),
        ) {
            (LocalResult::Single(a), LocalResult::Single(b)) => {
                let (a, b) = (a.offset().fix(), b.offset().fix());
                (a == b).then(|| TimeDelta::seconds(i64::from(a.local_minus_utc())))
            }
            _ => None,
        }
    }

    /// The next local candidate on a day the day special picks: a candidate on another day
    /// restarts the candidates at the next picked day, so a schedule firing every second of
    /// its days costs one candidate per skipped day, not 86,400.
    fn next_candidate(&mut self) -> Option<NaiveDateTime> {
        loop {
            let local = self.candidates.next()?.naive_utc();
            let Some(rule) = self.cron.day_rule else {
                return Some(local);
            };
            if rule.matches(local.date()) {
                return Some(local);
            }
            let day = rule.next_after(local.date())?.and_hms_opt(0, 0, 0)?;
            let before = day.checked_sub_signed(TimeDelta::seconds(1))?;
            self.candidates = self.cron.schedule.after(&Utc.from_utc_datetime(&before));
        }
    }

    /// The next candidate's (regular, other) instants; `None` when there are no candidates.
    fn pull(&mut self) -> Option<(Option<NaiveDateTime>, Option<NaiveDateTime>)> {
        let local = self.next_candidate()?;
        let hour = local.with_minute(0).and_then(|t| t.with_second(0))?;
        let offset = match self.hour {
            Some((h, offset)) if h == hour => offset,
            _ => {
                let offset = self.uniform_offset(hour);
                self.hour = Some((hour, offset));
                offset
            }
        };
        if let Some(offset) = offset {
            let instant = local.checked_sub_signed(offset)?;
            if instant <= self.last {
                // Catching up to the start: skip the candidates of this hour that map before
                // it in one step instead of one by one.
                let skip_to = self
                    .last
                    .checked_add_signed(offset)?
                    .min(hour.checked_add_signed(TimeDelta::seconds(3599))?);
                if skip_to - local > TimeDelta::seconds(60) {
                    self.candidates = self.cron.schedule.after(&Utc.from_utc_datetime(&skip_to));
                }
            }
            return Some((Some(instant), None));
        }
        Some(match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) => (Some(t.naive_utc()), None),
            LocalResult::Ambiguous(first, second) => (
                Some(first.naive_utc()),
                self.cron.sub_hourly.then(|| second.naive_utc()),
            ),
            LocalResult::None => (
                None,
                if self.cron.sub_hourly {
                    None
                } else {
                    offset_before_gap(self.zone, local)
                        .and_then(|off| local.checked_sub_signed(off))
                },
            ),
        })
    }
}

impl Iterator for Fires<'_> {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        loop {
            if self.regular.is_none() && !self.exhausted {
                match self.pull() {
                    None => self.exhausted = true,
                    Some((regular, other)) => {
                        if let Some(other) = other.filter(|o| *o > self.last) {
                            self.held.push(Reverse(other));
                        }
                        self.regular = regular.filter(|r| *r > self.last);
                    }
                }
                continue;
            }
            let held = self.held.peek().map(|r| r.0);
            let instant = match (held, self.regular) {
                (None, None) => return None,
                (Some(held), regular) if regular.is_none_or(|r| held <= r) => {
                    self.held.pop();
                    held
                }
                (_, regular) => {
                    self.regular = None;
                    regular?
                }
            };
            if instant > self.last {
                self.last = instant;
                return Some(Utc.from_utc_datetime(&instant));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Weekday};
    use chrono_tz::America::New_York;
    use chrono_tz::Australia::Lord_Howe;
    use chrono_tz::Europe::London;
    use chrono_tz::UTC;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("bad test instant {s}: {e}"))
            .with_timezone(&Utc)
    }

    fn next_n(expr: &str, zone: Tz, from: &str, n: usize) -> Vec<DateTime<Utc>> {
        let cron = CronExpr::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let mut out = Vec::new();
        let mut t = utc(from);
        for _ in 0..n {
            match cron.next_after(zone, t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    fn check_table(rows: &[(&str, Tz, &str, &[&str])]) {
        for (expr, zone, from, expected) in rows {
            let got = next_n(expr, *zone, from, expected.len());
            let want: Vec<DateTime<Utc>> = expected.iter().map(|s| utc(s)).collect();
            assert_eq!(got, want, "{expr} in {zone} after {from}");
        }
    }

    const SEED: [&str; 6] = [
        "0 30 5 * * ?",
        "0 30 5 * * MON",
        "0 30 5 1 * ?",
        "0 30 5 1 1,4,7,10 ?",
        "0 30 5 1 1 ?",
        "0 */2 * * * ?",
    ];

    #[test]
    fn seed_expressions_parse_as_written() {
        for expr in SEED {
            let cron = CronExpr::parse(expr).unwrap();
            assert_eq!(cron.source(), expr);
            assert_eq!(cron.to_string(), expr);
        }
    }

    #[test]
    fn seed_expressions_in_utc() {
        check_table(&[
            (
                "0 30 5 * * ?",
                UTC,
                "2026-01-01T00:00:00Z",
                &[
                    "2026-01-01T05:30:00Z",
                    "2026-01-02T05:30:00Z",
                    "2026-01-03T05:30:00Z",
                ],
            ),
            (
                // 2026-01-01 is a Thursday.
                "0 30 5 * * MON",
                UTC,
                "2026-01-01T00:00:00Z",
                &[
                    "2026-01-05T05:30:00Z",
                    "2026-01-12T05:30:00Z",
                    "2026-01-19T05:30:00Z",
                ],
            ),
            (
                "0 30 5 1 * ?",
                UTC,
                "2026-01-01T05:30:00Z",
                &[
                    "2026-02-01T05:30:00Z",
                    "2026-03-01T05:30:00Z",
                    "2026-04-01T05:30:00Z",
                ],
            ),
            (
                "0 30 5 1 1,4,7,10 ?",
                UTC,
                "2025-12-15T00:00:00Z",
                &[
                    "2026-01-01T05:30:00Z",
                    "2026-04-01T05:30:00Z",
                    "2026-07-01T05:30:00Z",
                    "2026-10-01T05:30:00Z",
                    "2027-01-01T05:30:00Z",
                ],
            ),
            (
                "0 30 5 1 1 ?",
                UTC,
                "2026-01-01T05:29:59.5Z",
                &[
                    "2026-01-01T05:30:00Z",
                    "2027-01-01T05:30:00Z",
                    "2028-01-01T05:30:00Z",
                ],
            ),
            (
                "0 */2 * * * ?",
                UTC,
                "2026-01-01T00:00:00Z",
                &[
                    "2026-01-01T00:02:00Z",
                    "2026-01-01T00:04:00Z",
                    "2026-01-01T00:06:00Z",
                ],
            ),
            (
                "0 */2 * * * ?",
                UTC,
                "2026-12-31T23:57:30Z",
                &["2026-12-31T23:58:00Z", "2027-01-01T00:00:00Z"],
            ),
        ]);
    }

    #[test]
    fn seed_expressions_in_new_york() {
        check_table(&[
            (
                // Crosses the spring-forward transition of 2026-03-08: still 05:30 local.
                "0 30 5 * * ?",
                New_York,
                "2026-03-06T00:00:00Z",
                &[
                    "2026-03-06T05:30:00-05:00",
                    "2026-03-07T05:30:00-05:00",
                    "2026-03-08T05:30:00-04:00",
                    "2026-03-09T05:30:00-04:00",
                ],
            ),
            (
                // 2026-01-05 05:30 EST is 10:30 UTC: Monday in both.
                "0 30 5 * * MON",
                New_York,
                "2026-01-01T00:00:00Z",
                &[
                    "2026-01-05T05:30:00-05:00",
                    "2026-01-12T05:30:00-05:00",
                    "2026-01-19T05:30:00-05:00",
                ],
            ),
            (
                "0 30 5 1 * ?",
                New_York,
                "2026-02-15T00:00:00Z",
                &[
                    "2026-03-01T05:30:00-05:00",
                    "2026-04-01T05:30:00-04:00",
                    "2026-05-01T05:30:00-04:00",
                ],
            ),
            (
                "0 30 5 1 1,4,7,10 ?",
                New_York,
                "2026-01-01T00:00:00Z",
                &[
                    "2026-01-01T05:30:00-05:00",
                    "2026-04-01T05:30:00-04:00",
                    "2026-07-01T05:30:00-04:00",
                    "2026-10-01T05:30:00-04:00",
                    "2027-01-01T05:30:00-05:00",
                ],
            ),
            (
                // 2026-01-01T05:30Z is still 2025-12-31 in New York.
                "0 30 5 1 1 ?",
                New_York,
                "2026-01-01T05:30:00Z",
                &["2026-01-01T05:30:00-05:00", "2027-01-01T05:30:00-05:00"],
            ),
            (
                "0 */2 * * * ?",
                New_York,
                "2026-07-01T03:59:00Z",
                &[
                    "2026-07-01T00:00:00-04:00",
                    "2026-07-01T00:02:00-04:00",
                    "2026-07-01T00:04:00-04:00",
                ],
            ),
        ]);
    }

    #[test]
    fn counts_over_2027_in_utc() {
        let from = utc("2027-01-01T00:00:00Z");
        let to = utc("2028-01-01T00:00:00Z");
        for (expr, count) in [
            ("0 30 5 * * ?", 365),
            ("0 30 5 * * MON", 52),
            ("0 30 5 1 * ?", 12),
            ("0 30 5 1 1,4,7,10 ?", 4),
            ("0 30 5 1 1 ?", 1),
            ("0 */2 * * * ?", 262_800),
        ] {
            let cron = CronExpr::parse(expr).unwrap();
            let mut last = from;
            let mut n = 0usize;
            for t in cron.fires_between(UTC, from, to) {
                assert!(t > last, "{expr}: {t} not after {last}");
                last = t;
                n += 1;
            }
            assert_eq!(n, count, "{expr}");
        }
    }

    #[test]
    fn fires_between_is_half_open() {
        let cron = CronExpr::parse("0 0 * * * ?").unwrap();
        let got: Vec<_> = cron
            .fires_between(
                UTC,
                utc("2026-01-01T00:00:00Z"),
                utc("2026-01-01T03:00:00Z"),
            )
            .collect();
        assert_eq!(
            got,
            vec![
                utc("2026-01-01T01:00:00Z"),
                utc("2026-01-01T02:00:00Z"),
                utc("2026-01-01T03:00:00Z"),
            ]
        );
        let empty = cron.fires_between(
            UTC,
            utc("2026-01-01T03:00:00Z"),
            utc("2026-01-01T01:00:00Z"),
        );
        assert_eq!(empty.count(), 0);
    }

    #[test]
    fn spring_forward_fixed_hour_shifts_by_the_gap() {
        check_table(&[
            (
                // New York: 02:00 EST -> 03:00 EDT on 2026-03-08.
                "0 30 2 * * ?",
                New_York,
                "2026-03-07T00:00:00Z",
                &[
                    "2026-03-07T02:30:00-05:00",
                    "2026-03-08T03:30:00-04:00",
                    "2026-03-09T02:30:00-04:00",
                ],
            ),
            (
                // London: 01:00 GMT -> 02:00 BST on 2026-03-29; 01:30 is in the gap.
                "0 30 1 * * ?",
                London,
                "2026-03-28T00:00:00Z",
                &[
                    "2026-03-28T01:30:00+00:00",
                    "2026-03-29T02:30:00+01:00",
                    "2026-03-30T01:30:00+01:00",
                ],
            ),
            (
                // 02:30 exists in London that day.
                "0 30 2 * * ?",
                London,
                "2026-03-28T12:00:00Z",
                &["2026-03-29T02:30:00+01:00", "2026-03-30T02:30:00+01:00"],
            ),
            (
                // Two local times of a fixed-hour schedule map to one instant: it fires once.
                "0 0,30 2,3 * * ?",
                New_York,
                "2026-03-08T06:00:00Z",
                &[
                    "2026-03-08T03:00:00-04:00",
                    "2026-03-08T03:30:00-04:00",
                    "2026-03-09T02:00:00-04:00",
                ],
            ),
        ]);
        let shifted = next_n("0 30 2 * * ?", New_York, "2026-03-08T00:00:00Z", 1);
        assert_eq!(shifted, vec![utc("2026-03-08T07:30:00Z")]);
    }

    #[test]
    fn spring_forward_sub_hourly_follows_elapsed_time() {
        check_table(&[
            (
                "0 */30 * * * ?",
                New_York,
                "2026-03-08T06:00:00Z",
                &[
                    "2026-03-08T01:30:00-05:00",
                    "2026-03-08T03:00:00-04:00",
                    "2026-03-08T03:30:00-04:00",
                ],
            ),
            (
                "0 */30 * * * ?",
                London,
                "2026-03-29T00:00:00Z",
                &[
                    "2026-03-29T00:30:00+00:00",
                    "2026-03-29T02:00:00+01:00",
                    "2026-03-29T02:30:00+01:00",
                ],
            ),
        ]);
        for (zone, day_start, day_end) in [
            (New_York, "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"),
            (London, "2026-03-29T00:00:00Z", "2026-03-29T23:00:00Z"),
        ] {
            let cron = CronExpr::parse("0 */30 * * * ?").unwrap();
            let fires: Vec<_> = cron
                .fires_between(zone, utc(day_start), utc(day_end))
                .collect();
            // A 23-hour day: 46 half hours, all 30 minutes apart in real time.
            assert_eq!(fires.len(), 46, "{zone}");
            for pair in fires.windows(2) {
                assert_eq!(pair[1] - pair[0], TimeDelta::minutes(30), "{zone}");
            }
        }
    }

    #[test]
    fn fall_back_fixed_hour_fires_once_at_first_occurrence() {
        check_table(&[
            (
                // New York: 02:00 EDT -> 01:00 EST on 2026-11-01.
                "0 30 1 * * ?",
                New_York,
                "2026-10-31T12:00:00Z",
                &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
            ),
            (
                // Even when asked between the two occurrences.
                "0 30 1 * * ?",
                New_York,
                "2026-11-01T05:45:00Z",
                &["2026-11-02T01:30:00-05:00"],
            ),
            (
                // London: 02:00 BST -> 01:00 GMT on 2026-10-25.
                "0 30 1 * * ?",
                London,
                "2026-10-24T12:00:00Z",
                &["2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00+00:00"],
            ),
        ]);
    }

    #[test]
    fn fall_back_sub_hourly_fires_at_both_occurrences() {
        check_table(&[
            (
                "0 */30 * * * ?",
                New_York,
                "2026-11-01T04:45:00Z",
                &[
                    "2026-11-01T01:00:00-04:00",
                    "2026-11-01T01:30:00-04:00",
                    "2026-11-01T01:00:00-05:00",
                    "2026-11-01T01:30:00-05:00",
                    "2026-11-01T02:00:00-05:00",
                ],
            ),
            (
                "0 */30 * * * ?",
                London,
                "2026-10-24T23:45:00Z",
                &[
                    "2026-10-25T01:00:00+01:00",
                    "2026-10-25T01:30:00+01:00",
                    "2026-10-25T01:00:00+00:00",
                    "2026-10-25T01:30:00+00:00",
                    "2026-10-25T02:00:00+00:00",
                ],
            ),
            (
                // Asked from inside the repeated hour, second pass.
                "0 */30 * * * ?",
                New_York,
                "2026-11-01T06:10:00Z",
                &["2026-11-01T01:30:00-05:00", "2026-11-01T02:00:00-05:00"],
            ),
        ]);
        let cron = CronExpr::parse("0 */2 * * * ?").unwrap();
        let day: Vec<_> = cron
            .fires_between(
                New_York,
                utc("2026-11-01T04:00:00Z"),
                utc("2026-11-02T05:00:00Z"),
            )
            .collect();
        // A 25-hour day, every 2 minutes of real time.
        assert_eq!(day.len(), 25 * 30);
        for pair in day.windows(2) {
            assert_eq!(pair[1] - pair[0], TimeDelta::minutes(2));
        }
    }

    #[test]
    fn berlin_transitions_fixed_times_and_every_second() {
        use chrono_tz::Europe::Berlin;
        // 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
        check_table(&[
            (
                "0 30 2 * * ?",
                Berlin,
                "2026-03-28T00:00:00Z",
                &[
                    "2026-03-28T02:30:00+01:00",
                    "2026-03-29T03:30:00+02:00",
                    "2026-03-30T02:30:00+02:00",
                ],
            ),
            (
                "0 30 2 * * ?",
                Berlin,
                "2026-10-24T00:00:00Z",
                &[
                    "2026-10-24T02:30:00+02:00",
                    "2026-10-25T02:30:00+02:00",
                    "2026-10-26T02:30:00+01:00",
                ],
            ),
            (
                "* * * * * ?",
                Berlin,
                "2026-03-29T00:59:58Z",
                &[
                    "2026-03-29T01:59:59+01:00",
                    "2026-03-29T03:00:00+02:00",
                    "2026-03-29T03:00:01+02:00",
                ],
            ),
            (
                "* * * * * ?",
                Berlin,
                "2026-10-25T00:59:58Z",
                &[
                    "2026-10-25T02:59:59+02:00",
                    "2026-10-25T02:00:00+01:00",
                    "2026-10-25T02:00:01+01:00",
                ],
            ),
        ]);
        // Every second of real time: a 23-hour and a 25-hour day.
        let cron = CronExpr::parse("* * * * * ?").unwrap();
        for (from, to, hours) in [
            ("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z", 23),
            ("2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z", 25),
        ] {
            let mut n = 0i64;
            let mut last = utc(from);
            for t in cron.fires_between(Berlin, utc(from), utc(to)) {
                assert_eq!(t - last, TimeDelta::seconds(1), "{t}");
                last = t;
                n += 1;
            }
            assert_eq!(n, hours * 3600, "{from}");
        }
    }

    #[test]
    fn fires_after_walks_like_repeated_scans_across_transitions() {
        use chrono_tz::Europe::Berlin;
        // Every fire from 3 hours before to 3 hours after each transition, both ways.
        for expr in [
            "0 */5 * * * ?",
            "0 0,30 2 * * ?",
            "*/20 */20 1-3 * * ?",
            "0 45 1,2 * * ?",
        ] {
            let cron = CronExpr::parse(expr).unwrap();
            for (zone, from) in [
                (Berlin, "2026-03-28T22:00:00Z"),
                (Berlin, "2026-10-24T22:00:00Z"),
                (New_York, "2026-03-08T04:00:00Z"),
                (New_York, "2026-11-01T03:00:00Z"),
                (Lord_Howe, "2026-10-03T12:00:00Z"),
                (Lord_Howe, "2026-04-04T12:00:00Z"),
            ] {
                let from = utc(from);
                let to = from + TimeDelta::hours(6);
                let fast: Vec<_> = cron.fires_between(zone, from, to).collect();
                let mut slow = Vec::new();
                let mut t = from;
                while let Some(next) = cron.next_after_by_scan(zone, t).filter(|n| *n <= to) {
                    slow.push(next);
                    t = next;
                }
                assert_eq!(fast, slow, "{expr} in {zone} from {from}");
            }
        }
    }

    #[test]
    fn odd_zones_stay_strictly_increasing() {
        use chrono_tz::Antarctica::Casey;
        use chrono_tz::Asia::Kolkata;
        use chrono_tz::Pacific::{Apia, Chatham};
        let exprs = [
            "0 30 2 * * ?",
            "0 15 1,2 * * ?",
            "0 */15 * * * ?",
            "0 0 * * * ?",
            "0 0,30 0-3 * * ?",
            "0 45 2 ? * SUN",
        ];
        for zone in [Lord_Howe, Apia, Chatham, Casey, Kolkata, New_York] {
            for expr in exprs {
                let cron = CronExpr::parse(expr).unwrap();
                let from = utc("2011-01-01T00:00:00Z");
                let to = utc("2012-12-31T00:00:00Z");
                let mut last = from;
                for t in cron.fires_between(zone, from, to) {
                    assert!(t > last, "{expr} in {zone}: {t} after {last}");
                    last = t;
                }
            }
        }
    }

    #[test]
    fn lord_howe_half_hour_transitions() {
        check_table(&[
            (
                // 2026-10-04 02:00 +10:30 -> 02:30 +11: 02:15 is shifted by 30 minutes.
                "0 15 2 * * ?",
                Lord_Howe,
                "2026-10-02T12:00:00Z",
                &[
                    "2026-10-03T02:15:00+10:30",
                    "2026-10-04T02:45:00+11:00",
                    "2026-10-05T02:15:00+11:00",
                ],
            ),
            (
                "0 */15 * * * ?",
                Lord_Howe,
                "2026-10-03T15:00:00Z",
                &[
                    "2026-10-04T01:45:00+10:30",
                    "2026-10-04T02:30:00+11:00",
                    "2026-10-04T02:45:00+11:00",
                ],
            ),
            (
                // 2026-04-05 02:00 +11 -> 01:30 +10:30: 01:30 and 01:45 happen twice.
                "0 */15 * * * ?",
                Lord_Howe,
                "2026-04-04T14:20:00Z",
                &[
                    "2026-04-05T01:30:00+11:00",
                    "2026-04-05T01:45:00+11:00",
                    "2026-04-05T01:30:00+10:30",
                    "2026-04-05T01:45:00+10:30",
                    "2026-04-05T02:00:00+10:30",
                ],
            ),
            (
                "0 45 1 * * ?",
                Lord_Howe,
                "2026-04-04T12:00:00Z",
                &["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"],
            ),
        ]);
    }

    #[test]
    fn apia_skipped_day_fires_once() {
        // Pacific/Apia skipped 2011-12-30 entirely (-10:00 -> +14:00): noon of the missing day
        // is shifted by the 24-hour gap onto noon of 12-31, which fires only once.
        check_table(&[(
            "0 0 12 * * ?",
            chrono_tz::Pacific::Apia,
            "2011-12-29T00:00:00Z",
            &[
                "2011-12-29T12:00:00-10:00",
                "2011-12-31T12:00:00+14:00",
                "2012-01-01T12:00:00+14:00",
            ],
        )]);
    }

    #[test]
    fn day_of_week_numbers_follow_quartz() {
        // 2026-01-04 is a Sunday.
        let from = "2026-01-01T00:00:00Z";
        for (expr, weekday) in [
            ("0 0 12 ? * 1", Weekday::Sun),
            ("0 0 12 ? * SUN", Weekday::Sun),
            ("0 0 12 ? * 2", Weekday::Mon),
            ("0 0 12 ? * mon", Weekday::Mon),
            ("0 0 12 ? * 6", Weekday::Fri),
            ("0 0 12 ? * 7", Weekday::Sat),
            ("0 0 12 ? * Sat", Weekday::Sat),
        ] {
            let fires = next_n(expr, UTC, from, 5);
            assert_eq!(fires.len(), 5, "{expr}");
            for t in fires {
                assert_eq!(t.weekday(), weekday, "{expr}: {t}");
            }
        }
        assert_eq!(
            next_n("0 0 12 ? * 1", UTC, from, 1),
            vec![utc("2026-01-04T12:00:00Z")]
        );
        // Names, ranges of names, steps over names, lowercase month names.
        check_table(&[
            (
                "0 0 0 ? * MON-FRI",
                UTC,
                "2026-01-02T12:00:00Z",
                &["2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z"],
            ),
            (
                "0 0 0 ? * MON/2",
                UTC,
                "2026-01-04T12:00:00Z",
                &[
                    "2026-01-05T00:00:00Z",
                    "2026-01-07T00:00:00Z",
                    "2026-01-09T00:00:00Z",
                    "2026-01-12T00:00:00Z",
                ],
            ),
            (
                "0 0 0 1 jan,Jul ?",
                UTC,
                "2026-01-01T00:00:00Z",
                &["2026-07-01T00:00:00Z", "2027-01-01T00:00:00Z"],
            ),
            (
                "0 0 0 ? * SUN,SAT",
                UTC,
                "2026-01-01T00:00:00Z",
                &[
                    "2026-01-03T00:00:00Z",
                    "2026-01-04T00:00:00Z",
                    "2026-01-10T00:00:00Z",
                ],
            ),
        ]);
    }

    #[test]
    fn both_day_fields_restricted_is_refused() {
        for (expr, offset, len) in [
            ("0 0 9 1-7 * MON", 12, 3),
            ("0 0 9 13 * FRI", 11, 3),
            ("0 0 9 1-31 * 1-7", 13, 3),
            ("0 0 9 */2 * MON-FRI", 12, 7),
        ] {
            let err = CronExpr::parse(expr).expect_err(expr);
            assert_eq!(err.field, Some(CronField::DayOfWeek), "{expr}");
            assert_eq!((err.offset, err.len), (offset, len), "{expr}");
            assert!(
                err.message
                    .contains("are both restricted, which Quartz refuses")
                    && err.message.contains("write '?' in one of them"),
                "{expr}: {}",
                err.message
            );
        }
        // One field left to the other (`*` and `?` are the same thing): accepted.
        check_table(&[
            (
                "0 0 9 * * *",
                UTC,
                "2026-01-01T00:00:00Z",
                &["2026-01-01T09:00:00Z", "2026-01-02T09:00:00Z"],
            ),
            (
                "0 0 9 13 * *",
                UTC,
                "2026-01-01T00:00:00Z",
                &["2026-01-13T09:00:00Z", "2026-02-13T09:00:00Z"],
            ),
            (
                "0 0 9 * * FRI",
                UTC,
                "2026-01-01T00:00:00Z",
                &["2026-01-02T09:00:00Z", "2026-01-09T09:00:00Z"],
            ),
            (
                "0 0 9 ? * *",
                UTC,
                "2026-01-01T00:00:00Z",
                &["2026-01-01T09:00:00Z", "2026-01-02T09:00:00Z"],
            ),
        ]);
    }

    #[test]
    fn both_day_fields_question_mark_is_refused() {
        let err = CronExpr::parse("0 0 9 ? * ?").expect_err("? ?");
        assert_eq!(err.field, Some(CronField::DayOfWeek));
        assert_eq!((err.offset, err.len), (10, 1));
        assert_eq!(
            err.message,
            "'?' in both day-of-month and day-of-week leaves the day to neither: write '*' in \
             one of them for every day"
        );
    }

    #[test]
    fn never_firing_expressions_are_refused_year_included() {
        for (expr, field, offset, message) in [
            (
                "0 0 0 30 2 ?",
                CronField::DayOfMonth,
                6,
                "day-of-month 30 never occurs in the selected months (FEB)",
            ),
            (
                "0 0 0 30 2 ? 2026-2030",
                CronField::DayOfMonth,
                6,
                "day-of-month 30 never occurs in the selected months (FEB)",
            ),
            (
                "0 0 0 29 2 ? 2027",
                CronField::Year,
                13,
                "year 2027 has no date with the selected day-of-month 29 and month 2: the \
                 expression never fires",
            ),
            (
                "0 0 0 29 FEB ? 2097-2099",
                CronField::Year,
                15,
                "year 2097-2099 has no date with the selected day-of-month 29 and month FEB: \
                 the expression never fires",
            ),
            (
                "0 0 0 29 2 ? 2025,2026/100",
                CronField::Year,
                13,
                "year 2025,2026/100 has no date with the selected day-of-month 29 and month 2: \
                 the expression never fires",
            ),
        ] {
            let err = CronExpr::parse(expr).expect_err(expr);
            assert_eq!(err.field, Some(field), "{expr}");
            assert_eq!(err.offset, offset, "{expr}");
            assert_eq!(err.message, message, "{expr}");
        }
        // A leap year among the selected ones: valid, and fires then.
        check_table(&[(
            "0 0 0 29 2 ? 2027-2028",
            UTC,
            "2026-01-01T00:00:00Z",
            &["2028-02-29T00:00:00Z"],
        )]);
        // Fires only in the past: valid (whether it fires again depends on the date; `check`
        // warns), and has no fire after 2020.
        let past = CronExpr::parse("0 0 0 * * ? 2020").unwrap();
        assert_eq!(
            past.next_after(UTC, utc("2020-12-30T12:00:00Z")),
            Some(utc("2020-12-31T00:00:00Z"))
        );
        assert_eq!(past.next_after(UTC, utc("2020-12-31T00:00:00Z")), None);
    }

    #[test]
    fn year_field_and_rare_schedules_are_cheap() {
        check_table(&[
            (
                "0 0 0 1 1 ? 2030",
                UTC,
                "2026-01-01T00:00:00Z",
                &["2030-01-01T00:00:00Z"],
            ),
            (
                "0 0 0 1 1 ? 2030-2040/5",
                UTC,
                "2026-01-01T00:00:00Z",
                &[
                    "2030-01-01T00:00:00Z",
                    "2035-01-01T00:00:00Z",
                    "2040-01-01T00:00:00Z",
                ],
            ),
            (
                "0 0 0 29 2 ?",
                New_York,
                "2028-03-01T00:00:00Z",
                &["2032-02-29T00:00:00-05:00", "2036-02-29T00:00:00-05:00"],
            ),
            (
                "0 0 0 31 12 ? 2099",
                New_York,
                "1970-01-01T00:00:00Z",
                &["2099-12-31T00:00:00-05:00"],
            ),
        ]);
        let once = CronExpr::parse("0 0 0 1 1 ? 2030").unwrap();
        assert_eq!(once.next_after(UTC, utc("2030-01-01T00:00:00Z")), None);
        let daily = CronExpr::parse("0 0 0 * * ?").unwrap();
        assert_eq!(daily.next_after(UTC, utc("2101-01-01T00:00:00Z")), None);
        assert_eq!(
            daily.next_after(UTC, utc("1960-06-01T12:00:00Z")),
            Some(utc("1970-01-01T00:00:00Z"))
        );
        // Sub-second `after`: the fire at the next whole second is strictly after it.
        let every_second = CronExpr::parse("* * * * * ?").unwrap();
        assert_eq!(
            every_second.next_after(New_York, utc("2026-05-05T10:00:00.250Z")),
            Some(utc("2026-05-05T10:00:01Z"))
        );
    }

    #[test]
    fn parse_keeps_source_and_compares_by_it() {
        let text = "0  30\t5 * *  ?";
        let a = CronExpr::parse(text).unwrap();
        assert_eq!(a.source(), text);
        assert_eq!(format!("{a}"), text);
        assert_eq!(a.clone(), a);
        assert_ne!(a, CronExpr::parse("0 30 5 * * ?").unwrap());
        assert_eq!(text.parse::<CronExpr>().unwrap(), a);
        assert!(format!("{a:?}").contains("0  30"));
        assert_eq!(CronField::DayOfMonth.to_string(), "day-of-month");
        let names: Vec<_> = FIELDS.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "second",
                "minute",
                "hour",
                "day-of-month",
                "month",
                "day-of-week",
                "year"
            ]
        );
        for ok in [
            "0 0 0 30,31 2,4 ?",
            "0 0 0 1-31/2 * ?",
            "*/5 0-10/3 1,2,3 ? JAN-MAR *",
            "0 0 0 ? * 1-7 *",
            "00 05 23 * * ?",
        ] {
            CronExpr::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let sub_hourly = CronExpr::parse("0 0 0-23 * * ?").unwrap();
        assert!(sub_hourly.sub_hourly);
        assert!(!CronExpr::parse("0 0 0-22 * * ?").unwrap().sub_hourly);
    }

    #[test]
    fn errors_name_the_field_and_point_at_the_token() {
        use CronField::*;
        let fields_msg = "a cron expression has 6 or 7 fields (second minute hour day-of-month \
                          month day-of-week [year]), found";
        let rows: &[(&str, Option<CronField>, usize, usize, &str)] = &[
            ("", None, 0, 0, "found 0"),
            ("   ", None, 0, 3, "found 0"),
            ("0 30 5 * *", None, 0, 10, "found 5"),
            ("0 30 5 * * ? 2026 x", None, 0, 19, "found 8"),
            (
                "0 30 5 32 * ?",
                Some(DayOfMonth),
                7,
                2,
                "day-of-month value 32 is out of range 1-31",
            ),
            (
                "0 0 0 0 * ?",
                Some(DayOfMonth),
                6,
                1,
                "day-of-month value 0 is out of range 1-31",
            ),
            (
                "60 * * * * ?",
                Some(Second),
                0,
                2,
                "second value 60 is out of range 0-59",
            ),
            (
                "0 99999999999999999999999 * * * ?",
                Some(Minute),
                2,
                23,
                "minute value 99999999999999999999999 is out of range 0-59",
            ),
            (
                "0 0 24 * * ?",
                Some(Hour),
                4,
                2,
                "hour value 24 is out of range 0-23",
            ),
            (
                "0 0 1-24 * * ?",
                Some(Hour),
                6,
                2,
                "hour value 24 is out of range 0-23",
            ),
            (
                "0 0 0 ? 13 *",
                Some(Month),
                8,
                2,
                "month value 13 is out of range 1-12 (or JAN-DEC)",
            ),
            (
                "0 0 0 ? * 8",
                Some(DayOfWeek),
                10,
                1,
                "day-of-week value 8 is out of range 1-7 (1 = SUN ... 7 = SAT, or SUN-SAT)",
            ),
            (
                "0 0 0 ? * 0",
                Some(DayOfWeek),
                10,
                1,
                "day-of-week value 0 is out of range 1-7 (1 = SUN ... 7 = SAT, or SUN-SAT)",
            ),
            (
                "0 0 0 1 1 ? 1969",
                Some(Year),
                12,
                4,
                "year value 1969 is out of range 1970-2099",
            ),
            (
                "0 0 0 1 1 ? 2100",
                Some(Year),
                12,
                4,
                "year value 2100 is out of range 1970-2099",
            ),
            (
                "0 0 0 * FOO ?",
                Some(Month),
                8,
                3,
                "month name 'FOO' is unknown (use JAN-DEC or 1-12)",
            ),
            (
                "0 0 0 ? * MONDAY",
                Some(DayOfWeek),
                10,
                6,
                "day-of-week name 'MONDAY' is unknown (use SUN-SAT or 1-7)",
            ),
            (
                "0 0 0 ? * MON-XYZ",
                Some(DayOfWeek),
                14,
                3,
                "day-of-week name 'XYZ' is unknown (use SUN-SAT or 1-7)",
            ),
            (
                "0 0 x * * ?",
                Some(Hour),
                4,
                1,
                "hour value 'x' is not a number",
            ),
            (
                "0 0 MON * * ?",
                Some(Hour),
                4,
                3,
                "hour value 'MON' is not a number",
            ),
            (
                "0 0 \u{FF15} * * ?",
                Some(Hour),
                4,
                3,
                "hour value '\u{FF15}' is not a number",
            ),
            (
                "0 0 0 ? 1x *",
                Some(Month),
                8,
                2,
                "month value '1x' is neither a number nor a name",
            ),
            (
                "0 */0 * * * ?",
                Some(Minute),
                4,
                1,
                "minute step 0 is invalid: a step must be at least 1",
            ),
            (
                "0 */60 * * * ?",
                Some(Minute),
                4,
                2,
                "minute step 60 is out of range 1-59",
            ),
            (
                "0 0 0 ? * */8",
                Some(DayOfWeek),
                12,
                1,
                "day-of-week step 8 is out of range 1-7",
            ),
            (
                "0 5/x * * * ?",
                Some(Minute),
                4,
                1,
                "minute step 'x' is not a number",
            ),
            (
                "0 1/2/3 * * * ?",
                Some(Minute),
                5,
                1,
                "minute item '1/2/3' has more than one '/'",
            ),
            (
                "0 /5 * * * ?",
                Some(Minute),
                2,
                2,
                "minute item '/5' has no start before '/' (write */5 or 0/5)",
            ),
            (
                "0 5/ * * * ?",
                Some(Minute),
                3,
                1,
                "minute item '5/' has no step after '/'",
            ),
            (
                "0 0 5-3 * * ?",
                Some(Hour),
                4,
                3,
                "hour range 5-3 starts after it ends (5 > 3); wrap-around ranges are not supported",
            ),
            (
                "0 0 0 ? * FRI-MON",
                Some(DayOfWeek),
                10,
                7,
                "day-of-week range FRI-MON starts after it ends (6 > 2); wrap-around ranges are not supported",
            ),
            (
                "0 1-2-3 * * * ?",
                Some(Minute),
                5,
                1,
                "minute range '1-2-3' has more than one '-'",
            ),
            (
                "0 -5 * * * ?",
                Some(Minute),
                2,
                2,
                "minute range '-5' is missing a bound",
            ),
            (
                "? 0 0 * * ?",
                Some(Second),
                0,
                1,
                "'?' is only allowed in day-of-month and day-of-week, not in second",
            ),
            (
                "0 0 0 * ? *",
                Some(Month),
                8,
                1,
                "'?' is only allowed in day-of-month and day-of-week, not in month",
            ),
            (
                "0 0 0 1,? * ?",
                Some(DayOfMonth),
                8,
                1,
                "'?' must stand alone in day-of-month, not in '1,?'",
            ),
            (
                "0 0 0 ? * ?/2",
                Some(DayOfWeek),
                10,
                1,
                "'?' must stand alone in day-of-week, not in '?/2'",
            ),
            (
                "0 0 0 1,l * ?",
                Some(DayOfMonth),
                6,
                3,
                "day-of-month 'l' cannot be combined with other values in a list ('1,l'): a special stands alone in its field",
            ),
            (
                "0 0 0 ? * L",
                Some(DayOfWeek),
                10,
                1,
                "day-of-week 'L' alone means Saturday in Quartz but Sunday in Spring: write SAT or SUN (or 6L for the last Friday of the month)",
            ),
            (
                "0 0,,5 * * * ?",
                Some(Minute),
                3,
                1,
                "minute list '0,,5' has an empty element",
            ),
            (
                "0 0, * * * ?",
                Some(Minute),
                3,
                1,
                "minute list '0,' has an empty element",
            ),
            (
                "0 ,0 * * * ?",
                Some(Minute),
                2,
                1,
                "minute list ',0' has an empty element",
            ),
            (
                "0 0 0 31 2 ?",
                Some(DayOfMonth),
                6,
                2,
                "day-of-month 31 never occurs in the selected months (FEB)",
            ),
            (
                "0 0 0 31 APR,JUN ?",
                Some(DayOfMonth),
                6,
                2,
                "day-of-month 31 never occurs in the selected months (APR, JUN)",
            ),
        ];
        for &(expr, field, offset, len, message) in rows {
            let err = CronExpr::parse(expr).expect_err(expr);
            assert_eq!(err.field, field, "{expr}: {err:?}");
            assert_eq!((err.offset, err.len), (offset, len), "{expr}: {err:?}");
            match field {
                None => {
                    assert!(err.message.starts_with(fields_msg), "{expr}: {err:?}");
                    assert!(err.message.ends_with(message), "{expr}: {err:?}");
                }
                Some(field) => {
                    assert_eq!(err.message, message, "{expr}");
                    assert_eq!(err.to_string(), message, "{expr}");
                    assert!(err.message.contains(field.name()), "{expr}: {err:?}");
                }
            }
        }
    }

    #[test]
    fn cron_crate_candidates_match_a_brute_force_scan() {
        // The local wall-clock candidates come from `cron::Schedule::after`; check them against
        // `Schedule::includes` minute by minute.
        let start = utc("2026-01-25T00:00:00Z");
        let end = utc("2026-03-10T00:00:00Z");
        for expr in [
            "0 0 9 ? * MON",
            "0 */20 1-3 ? * MON-FRI",
            "0 30 5 1 1,2,3 ?",
            "0 15 */5 10-20/3 * ?",
            "0 0 0 ? * 1,7",
            "0 59 23 28-31 * ?",
        ] {
            let cron = CronExpr::parse(expr).unwrap();
            let got: Vec<_> = cron
                .schedule
                .after(&start)
                .take_while(|t| *t <= end)
                .collect();
            let mut want = Vec::new();
            let mut t = start + TimeDelta::minutes(1);
            while t <= end {
                if cron.schedule.includes(t) {
                    want.push(t);
                }
                t += TimeDelta::minutes(1);
            }
            assert!(!want.is_empty(), "{expr}");
            assert_eq!(got, want, "{expr}");
        }
    }

    /// Independent, slow version of `next_after`: map every local candidate in a wide window.
    fn reference_next(cron: &CronExpr, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after_n = after.naive_utc();
        let local = after_n + offset_at(zone, after_n);
        let lo = local - TimeDelta::hours(30);
        let hi = local + TimeDelta::hours(60);
        cron.schedule
            .after(&Utc.from_utc_datetime(&lo))
            .map(|c| c.naive_utc())
            .take_while(|l| *l <= hi)
            .filter(|l| cron.day_matches(*l))
            .flat_map(|l| cron.map_local(zone, l))
            .flatten()
            .filter(|t| *t > after_n)
            .min()
            .map(|t| Utc.from_utc_datetime(&t))
    }

    fn expr_strategy() -> impl Strategy<Value = String> {
        let pick = |xs: &'static [&'static str]| prop::sample::select(xs);
        (
            pick(&["0", "0,30", "*/20", "15"]),
            pick(&["0", "*/2", "*/30", "15,45", "0-10/5", "*", "30"]),
            pick(&["*", "1", "2", "1-3", "*/6", "0-23", "23", "0,12"]),
            pick(&[
                "*", "?", "1", "15", "1-7", "*/10", "L", "L-2", "LW", "15W", "1W",
            ]),
            pick(&["*", "1,4,7,10", "MAR", "NOV", "3-4,10-11", "*/2"]),
            pick(&[
                "?", "*", "MON", "SUN", "MON-FRI", "1,7", "6L", "1L", "6#3", "SUN#1",
            ]),
            pick(&["", " *", " 2026-2031"]),
        )
            .prop_map(|(s, m, h, dom, mon, dow, y)| {
                // Quartz style: one day field is restricted at most, and not both are `?`.
                let dom = match (dom, dow) {
                    ("?", "?") => "*",
                    (dom, "?" | "*") => dom,
                    _ => "?",
                };
                format!("{s} {m} {h} {dom} {mon} {dow}{y}")
            })
    }

    /// Expressions for the fast path against the scan: sub-minute ones included, where the
    /// two differ most in cost.
    fn fast_path_expr_strategy() -> impl Strategy<Value = String> {
        let pick = |xs: &'static [&'static str]| prop::sample::select(xs);
        prop_oneof![
            expr_strategy(),
            (
                pick(&["*", "*/7", "0-5", "59", "*/20"]),
                pick(&["*", "0", "*/15", "29-31", "59"]),
                pick(&["*", "2", "1-3", "0,3", "*/2"]),
                pick(&["?", "*", "1-10", "*/3"]),
                pick(&["*", "MAR", "OCT,NOV", "3-4,9-11"]),
            )
                .prop_map(|(s, m, h, dom, mon)| {
                    let dow = if dom == "?" { "*" } else { "?" };
                    format!("{s} {m} {h} {dom} {mon} {dow}")
                }),
        ]
    }

    fn zone_strategy() -> impl Strategy<Value = Tz> {
        prop::sample::select(vec![
            UTC,
            New_York,
            London,
            Lord_Howe,
            chrono_tz::Pacific::Apia,
            chrono_tz::Pacific::Chatham,
            chrono_tz::Antarctica::Casey,
            chrono_tz::Asia::Kolkata,
            chrono_tz::America::Santiago,
            chrono_tz::Europe::Moscow,
            chrono_tz::Europe::Berlin,
        ])
    }

    /// Starts of the hours in `year` at which `zone` changes its UTC offset.
    fn transitions_in_year(zone: Tz, year: i32) -> Vec<i64> {
        let start = chrono::NaiveDate::from_ymd_opt(year, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp())
            .unwrap();
        let offset =
            |ts: i64| offset_at(zone, DateTime::from_timestamp(ts, 0).unwrap().naive_utc());
        let mut previous = offset(start);
        let mut out = Vec::new();
        for hour in 1..(366 * 24) {
            let ts = start + hour * 3600;
            let current = offset(ts);
            if current != previous {
                out.push(ts);
                previous = current;
            }
        }
        out
    }

    /// A zone and an instant between 2010 and 2032, half of the time within 6 hours of one of
    /// the zone's offset transitions.
    fn zone_and_instant() -> impl Strategy<Value = (Tz, DateTime<Utc>)> {
        (
            zone_strategy(),
            2010i32..2032,
            any::<prop::sample::Index>(),
            -6 * 3600i64..6 * 3600,
            any::<bool>(),
            1_262_304_000i64..1_956_528_000,
        )
            .prop_map(|(zone, year, index, delta, near, uniform)| {
                let transitions = transitions_in_year(zone, year);
                let ts = if near && !transitions.is_empty() {
                    transitions[index.index(transitions.len())] + delta
                } else {
                    uniform
                };
                (zone, DateTime::from_timestamp(ts, 0).unwrap())
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(192))]

        #[test]
        fn next_after_is_strictly_increasing_and_matches_reference(
            expr in expr_strategy(),
            (zone, start) in zone_and_instant(),
        ) {
            let cron = CronExpr::parse(&expr).unwrap();
            let mut t = start;
            for _ in 0..4 {
                let next = cron.next_after(zone, t);
                let reference = reference_next(&cron, zone, t);
                let horizon = t + TimeDelta::hours(24);
                if next.is_some_and(|n| n <= horizon) || reference.is_some_and(|r| r <= horizon) {
                    prop_assert_eq!(next, reference, "{} in {} after {}", expr, zone, t);
                }
                match next {
                    Some(n) => {
                        prop_assert!(n > t, "{} in {}: {} not after {}", expr, zone, n, t);
                        t = n;
                    }
                    None => break,
                }
            }
        }

        #[test]
        fn next_after_matches_reference_around_transitions(
            expr in prop::sample::select(vec![
                "0 */30 * * * ?",
                "0 */15 * * * ?",
                "0 0 * * * ?",
                "30 */7 * * * ?",
                "0 0,30 1-3 * * ?",
                "0 30 2 * * ?",
                "0 15 1,2 * * ?",
                "0 0 0 * * ?",
                "0 45 23 * * ?",
                "0 0 */2 * * ?",
            ]),
            (zone, start) in zone_and_instant(),
        ) {
            let cron = CronExpr::parse(expr).unwrap();
            let mut t = start;
            for _ in 0..6 {
                let next = cron.next_after(zone, t);
                prop_assert_eq!(next, reference_next(&cron, zone, t), "{} in {} after {}", expr, zone, t);
                let Some(n) = next else { break };
                prop_assert!(n > t);
                t = n;
            }
        }

        #[test]
        fn parse_never_panics_and_errors_point_inside_the_text(
            text in "[0-9A-Za-z*?/,#\\- \u{e9}\u{FF15}]{0,30}",
        ) {
            if let Err(e) = CronExpr::parse(&text) {
                prop_assert!(e.offset + e.len <= text.len(), "{:?}: {:?}", text, e);
                prop_assert!(text.is_char_boundary(e.offset), "{:?}: {:?}", text, e);
                prop_assert!(text.is_char_boundary(e.offset + e.len), "{:?}: {:?}", text, e);
                prop_assert!(e.len >= 1 || text.is_empty(), "{:?}: {:?}", text, e);
                if let Some(field) = e.field {
                    prop_assert!(e.message.contains(field.name()), "{:?}: {:?}", text, e);
                }
            }
        }
    }

    proptest! {
        // The oracle costs thousands of candidates per call near a transition (seconds in a
        // debug build for sub-minute schedules): fewer cases.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn fast_fires_equal_the_scan_oracle(
            expr in fast_path_expr_strategy(),
            (zone, start) in zone_and_instant(),
            nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
            n in 1usize..4,
        ) {
            let cron = CronExpr::parse(&expr).unwrap();
            let start = start + TimeDelta::nanoseconds(i64::from(nanos));
            prop_assert_eq!(
                cron.next_after(zone, start),
                cron.next_after_by_scan(zone, start),
                "{} in {} after {}", expr, zone, start
            );
            let fast: Vec<_> = cron.fires_after(zone, start).take(n).collect();
            let mut slow = Vec::new();
            let mut t = start;
            while slow.len() < n {
                let Some(next) = cron.next_after_by_scan(zone, t) else { break };
                slow.push(next);
                t = next;
            }
            prop_assert_eq!(fast, slow, "{} in {} after {}", expr, zone, start);
        }

    }
}
