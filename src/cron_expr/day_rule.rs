//! The Quartz day specials that month-end and "n-th weekday" reports need, as Quartz and
//! Spring's `CronExpression` accept them:
//!
//! | field | text | days |
//! |---|---|---|
//! | day-of-month | `L` | the last day of the month |
//! | day-of-month | `L-3` | three days before the last (`L-0` is `L`; at most `L-30`) |
//! | day-of-month | `15W` | the weekday (Monday–Friday) nearest the 15th, within the month |
//! | day-of-month | `LW` | the last weekday of the month |
//! | day-of-week | `6L`, `FRIL` | the last Friday of the month |
//! | day-of-week | `6#3`, `FRI#3` | the third Friday of the month (`#1`–`#5`) |
//!
//! `nW` moves a Saturday to the Friday before and a Sunday to the Monday after, but never out of
//! the month: `1W` on a Saturday is Monday the 3rd, and `nW` on a Sunday that is the month's last
//! day is the Friday before. A month without the day (`30W` in February, a fifth Friday that
//! does not exist) has no fire, as a plain `30` has none. A special stands alone in its field
//! (no lists or ranges with it, as in Quartz). `L` alone in day-of-week is refused: Quartz reads
//! it as Saturday, Spring as Sunday.
//!
//! Each special picks at most one day of a month, so a schedule with one is the `cron` crate's
//! schedule with that field `*`, filtered by [`DayRule::matches`]; the fire iterator jumps to
//! [`DayRule::next_after`] instead of walking every candidate of the days between.

use chrono::{Datelike, NaiveDate, Weekday};

use super::{CronError, CronField, DAY_NAMES};

/// The last year a schedule fires in (as the `cron` crate's iterator).
const LAST_YEAR: i32 = 2099;

/// One Quartz day special.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DayRule {
    /// `L` (`before` 0) or `L-n`: the last day of the month, or `before` days before it.
    LastDay { before: u32 },
    /// `nW`: the weekday nearest the `n`th, within the month.
    NearestWeekday(u32),
    /// `LW`: the last weekday of the month.
    LastWeekday,
    /// `dL` / `DDDL`: the last such day-of-week of the month.
    LastOf(Weekday),
    /// `d#k` / `DDD#k`: the `k`th such day-of-week of the month.
    Nth(Weekday, u32),
}

impl DayRule {
    /// Parses `text`, the whole day-of-month or day-of-week field at `offset`: `Ok(None)` when
    /// it holds no special.
    pub(super) fn parse(
        field: CronField,
        text: &str,
        offset: usize,
    ) -> Result<Option<DayRule>, CronError> {
        let error = |message: String| CronError::at(field, offset, text.len(), message);
        let items: Vec<&str> = text.split(',').collect();
        let special = items.iter().position(|item| is_special(field, item));
        let Some(at) = special else {
            return Ok(None);
        };
        if items.len() > 1 {
            return Err(error(format!(
                "{field} '{}' cannot be combined with other values in a list ('{text}'): a \
                 special stands alone in its field",
                items[at]
            )));
        }
        let upper = text.to_ascii_uppercase();
        match field {
            CronField::DayOfMonth => parse_day_of_month(&upper).map_err(error).map(Some),
            _ => parse_day_of_week(&upper).map_err(error).map(Some),
        }
    }

    /// The day of `year`-`month` this rule picks, if the month has one.
    pub(super) fn day_in(&self, year: i32, month: u32) -> Option<u32> {
        let last = days_in_month(year, month)?;
        let weekday = |day: u32| NaiveDate::from_ymd_opt(year, month, day).map(|d| d.weekday());
        match *self {
            DayRule::LastDay { before } => last.checked_sub(before).filter(|d| *d >= 1),
            DayRule::NearestWeekday(n) => {
                if n > last {
                    return None;
                }
                Some(match weekday(n)? {
                    Weekday::Sat if n == 1 => 3,
                    Weekday::Sat => n - 1,
                    Weekday::Sun if n == last => n - 2,
                    Weekday::Sun => n + 1,
                    _ => n,
                })
            }
            DayRule::LastWeekday => Some(match weekday(last)? {
                Weekday::Sat => last - 1,
                Weekday::Sun => last - 2,
                _ => last,
            }),
            DayRule::LastOf(wanted) => {
                let back =
                    (weekday(last)?.num_days_from_sunday() + 7 - wanted.num_days_from_sunday()) % 7;
                Some(last - back)
            }
            DayRule::Nth(wanted, k) => {
                let first =
                    (wanted.num_days_from_sunday() + 7 - weekday(1)?.num_days_from_sunday()) % 7
                        + 1;
                Some(first + 7 * (k - 1)).filter(|d| *d <= last)
            }
        }
    }

    /// Whether the rule picks `date`.
    pub(super) fn matches(&self, date: NaiveDate) -> bool {
        self.day_in(date.year(), date.month()) == Some(date.day())
    }

    /// The first date after `date` the rule picks, up to the end of 2099.
    pub(super) fn next_after(&self, date: NaiveDate) -> Option<NaiveDate> {
        let (mut year, mut month) = (date.year(), date.month());
        while year <= LAST_YEAR {
            if let Some(day) = self.day_in(year, month) {
                let found = NaiveDate::from_ymd_opt(year, month, day)?;
                if found > date {
                    return Some(found);
                }
            }
            (year, month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
        }
        None
    }
}

/// Whether one list item of a day field is (or tries to be) a special.
fn is_special(field: CronField, item: &str) -> bool {
    let upper = item.to_ascii_uppercase();
    match field {
        CronField::DayOfMonth => upper.starts_with('L') || upper.ends_with('W'),
        CronField::DayOfWeek => upper.contains('#') || upper.ends_with('L'),
        _ => false,
    }
}

fn parse_day_of_month(upper: &str) -> Result<DayRule, String> {
    if upper == "L" {
        return Ok(DayRule::LastDay { before: 0 });
    }
    if upper == "LW" {
        return Ok(DayRule::LastWeekday);
    }
    if let Some(n) = upper.strip_prefix("L-") {
        return match number(n) {
            Some(before) if before <= 30 => Ok(DayRule::LastDay { before }),
            _ => Err(format!(
                "day-of-month 'L-{n}': the days before the last day must be a number from 0 to 30"
            )),
        };
    }
    if let Some(n) = upper.strip_suffix('W') {
        return match number(n) {
            Some(day) if (1..=31).contains(&day) => Ok(DayRule::NearestWeekday(day)),
            _ => Err(format!(
                "day-of-month '{upper}': 'W' (nearest weekday) follows one day from 1 to 31 \
                 (15W), or L (LW)"
            )),
        };
    }
    Err(format!(
        "day-of-month '{upper}' is not a Quartz special: use L, L-n, LW or nW (15W)"
    ))
}

fn parse_day_of_week(upper: &str) -> Result<DayRule, String> {
    if upper == "L" {
        return Err(
            "day-of-week 'L' alone means Saturday in Quartz but Sunday in Spring: \
                    write SAT or SUN (or 6L for the last Friday of the month)"
                .to_string(),
        );
    }
    if let Some((day, k)) = upper.split_once('#') {
        let wanted = weekday(day).ok_or_else(|| {
            format!("day-of-week '{upper}': '#' follows one day-of-week, 1-7 or SUN-SAT (6#3)")
        })?;
        return match number(k) {
            Some(k) if (1..=5).contains(&k) => Ok(DayRule::Nth(wanted, k)),
            _ => Err(format!(
                "day-of-week '{upper}': the week after '#' must be 1 to 5 (6#3: the third Friday)"
            )),
        };
    }
    if let Some(day) = upper.strip_suffix('L') {
        return weekday(day).map(DayRule::LastOf).ok_or_else(|| {
            format!("day-of-week '{upper}': 'L' follows one day-of-week, 1-7 or SUN-SAT (6L)")
        });
    }
    Err(format!("day-of-week '{upper}' is not a Quartz special"))
}

/// A day-of-week as Quartz numbers them (`1` is Sunday) or names them.
fn weekday(text: &str) -> Option<Weekday> {
    let index = match number(text) {
        Some(n) if (1..=7).contains(&n) => n - 1,
        Some(_) => return None,
        None => DAY_NAMES.iter().position(|d| *d == text)? as u32,
    };
    WEEKDAYS.get(index as usize).copied()
}

/// The days of the week from Sunday, as Quartz numbers them.
const WEEKDAYS: [Weekday; 7] = [
    Weekday::Sun,
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
];

/// A short decimal number (at most 3 digits, so no overflow).
fn number(text: &str) -> Option<u32> {
    (!text.is_empty() && text.len() <= 3 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn days_in_month(year: i32, month: u32) -> Option<u32> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)?
    };
    u32::try_from((next - first).num_days()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(field: CronField, text: &str) -> DayRule {
        DayRule::parse(field, text, 0).unwrap().unwrap()
    }

    fn days(rule: DayRule, year: i32) -> Vec<(u32, u32)> {
        (1..=12)
            .filter_map(|m| rule.day_in(year, m).map(|d| (m, d)))
            .collect()
    }

    #[test]
    fn last_day_and_days_before_it_follow_month_lengths_and_leap_years() {
        let l = rule(CronField::DayOfMonth, "L");
        assert_eq!(l.day_in(2024, 2), Some(29));
        assert_eq!(l.day_in(2026, 2), Some(28));
        assert_eq!(l.day_in(2026, 4), Some(30));
        assert_eq!(l.day_in(2026, 12), Some(31));
        let l3 = rule(CronField::DayOfMonth, "l-3");
        assert_eq!(l3.day_in(2026, 2), Some(25));
        assert_eq!(l3.day_in(2026, 1), Some(28));
        // L-30 exists only in 31-day months.
        let l30 = rule(CronField::DayOfMonth, "L-30");
        assert_eq!(l30.day_in(2026, 1), Some(1));
        assert_eq!(l30.day_in(2026, 2), None);
        assert_eq!(l30.day_in(2026, 4), None);
    }

    #[test]
    fn nearest_weekday_stays_in_its_month() {
        // 2026-08-15 is a Saturday: the Friday before.
        assert_eq!(rule(CronField::DayOfMonth, "15W").day_in(2026, 8), Some(14));
        // 2026-03-15 is a Sunday: the Monday after.
        assert_eq!(rule(CronField::DayOfMonth, "15W").day_in(2026, 3), Some(16));
        // 2026-08-01 is a Saturday: not July 31st but Monday the 3rd.
        assert_eq!(rule(CronField::DayOfMonth, "1W").day_in(2026, 8), Some(3));
        // 2026-05-31 is a Sunday and the month's last day: the Friday before.
        assert_eq!(rule(CronField::DayOfMonth, "31W").day_in(2026, 5), Some(29));
        // A weekday is itself; a month without the day has none.
        assert_eq!(rule(CronField::DayOfMonth, "15W").day_in(2026, 1), Some(15));
        assert_eq!(rule(CronField::DayOfMonth, "30W").day_in(2026, 2), None);
    }

    #[test]
    fn last_weekday_of_the_month() {
        let lw = rule(CronField::DayOfMonth, "LW");
        // 2026-05-31 Sunday → 29; 2026-01-31 Saturday → 30; 2026-03-31 Tuesday → 31.
        assert_eq!(lw.day_in(2026, 5), Some(29));
        assert_eq!(lw.day_in(2026, 1), Some(30));
        assert_eq!(lw.day_in(2026, 3), Some(31));
    }

    #[test]
    fn last_and_nth_day_of_week_by_number_and_name() {
        // Fridays of 2026-01: 2, 9, 16, 23, 30.
        assert_eq!(rule(CronField::DayOfWeek, "6L").day_in(2026, 1), Some(30));
        assert_eq!(rule(CronField::DayOfWeek, "FRIL").day_in(2026, 1), Some(30));
        assert_eq!(rule(CronField::DayOfWeek, "6#3").day_in(2026, 1), Some(16));
        assert_eq!(rule(CronField::DayOfWeek, "fri#1").day_in(2026, 1), Some(2));
        assert_eq!(rule(CronField::DayOfWeek, "6#5").day_in(2026, 1), Some(30));
        // February 2026 has four Fridays.
        assert_eq!(rule(CronField::DayOfWeek, "6#5").day_in(2026, 2), None);
        // Sundays (1) of 2026-03: 1, 8, 15, 22, 29.
        assert_eq!(rule(CronField::DayOfWeek, "1#1").day_in(2026, 3), Some(1));
        assert_eq!(rule(CronField::DayOfWeek, "1L").day_in(2026, 3), Some(29));
        assert_eq!(rule(CronField::DayOfWeek, "7L").day_in(2026, 3), Some(28));
        // A fifth Friday: only in the months that have one.
        assert_eq!(
            days(rule(CronField::DayOfWeek, "6#5"), 2026),
            [(1, 30), (5, 29), (7, 31), (10, 30)]
        );
    }

    #[test]
    fn next_after_jumps_to_the_next_picked_day_and_stops_after_2099() {
        let l = rule(CronField::DayOfMonth, "L");
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(l.next_after(d(2026, 1, 15)), Some(d(2026, 1, 31)));
        assert_eq!(l.next_after(d(2026, 1, 31)), Some(d(2026, 2, 28)));
        assert_eq!(l.next_after(d(2099, 12, 31)), None);
        let fifth = rule(CronField::DayOfWeek, "6#5");
        assert_eq!(fifth.next_after(d(2026, 1, 30)), Some(d(2026, 5, 29)));
        for rule in [l, fifth, rule(CronField::DayOfMonth, "15W")] {
            let mut at = d(2026, 1, 1);
            for _ in 0..40 {
                let next = rule.next_after(at).unwrap();
                assert!(next > at && rule.matches(next), "{rule:?} {at} → {next}");
                at = next;
            }
        }
    }

    #[test]
    fn plain_fields_are_not_specials() {
        for (field, text) in [
            (CronField::DayOfMonth, "1-7"),
            (CronField::DayOfMonth, "*/2"),
            (CronField::DayOfWeek, "MON-FRI"),
            (CronField::DayOfWeek, "1,7"),
        ] {
            assert_eq!(DayRule::parse(field, text, 0).unwrap(), None, "{text}");
        }
    }

    #[test]
    fn malformed_specials_say_what_is_wrong() {
        for (field, text, says) in [
            (CronField::DayOfMonth, "L-31", "0 to 30"),
            (CronField::DayOfMonth, "L-x", "0 to 30"),
            (CronField::DayOfMonth, "32W", "1 to 31"),
            (CronField::DayOfMonth, "0W", "1 to 31"),
            (CronField::DayOfMonth, "1-5W", "1 to 31"),
            (CronField::DayOfMonth, "1,L", "cannot be combined"),
            (CronField::DayOfMonth, "LX", "not a Quartz special"),
            (
                CronField::DayOfWeek,
                "L",
                "Saturday in Quartz but Sunday in Spring",
            ),
            (CronField::DayOfWeek, "6#0", "1 to 5"),
            (CronField::DayOfWeek, "6#6", "1 to 5"),
            (CronField::DayOfWeek, "8#1", "one day-of-week"),
            (CronField::DayOfWeek, "#1", "one day-of-week"),
            (CronField::DayOfWeek, "8L", "one day-of-week"),
            (CronField::DayOfWeek, "MON,6L", "cannot be combined"),
        ] {
            let error = DayRule::parse(field, text, 4).unwrap_err();
            assert!(error.message.contains(says), "{text}: {}", error.message);
            assert_eq!((error.offset, error.len), (4, text.len()), "{text}");
        }
    }
}

/// The specials in whole expressions: fire times, daylight saving, and never-firing days.
#[cfg(test)]
mod fires {
    use chrono::{DateTime, TimeDelta, Utc};
    use chrono_tz::Europe::Berlin;
    use chrono_tz::Tz;

    use super::super::CronExpr;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fires(expr: &str, zone: Tz, from: &str, n: usize) -> Vec<String> {
        let cron = CronExpr::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        cron.fires_after(zone, utc(from))
            .take(n)
            .map(|t| t.with_timezone(&zone).to_rfc3339())
            .collect()
    }

    #[test]
    fn month_end_and_nth_weekday_schedules_fire_on_their_days() {
        assert_eq!(
            fires("0 30 5 L * ?", Berlin, "2026-01-01T00:00:00Z", 4),
            [
                "2026-01-31T05:30:00+01:00",
                "2026-02-28T05:30:00+01:00",
                "2026-03-31T05:30:00+02:00",
                "2026-04-30T05:30:00+02:00",
            ]
        );
        assert_eq!(
            fires("0 0 18 L-3 * ?", Tz::UTC, "2026-02-25T18:00:00Z", 2),
            ["2026-03-28T18:00:00+00:00", "2026-04-27T18:00:00+00:00"]
        );
        assert_eq!(
            fires("0 0 9 LW * ?", Tz::UTC, "2026-05-01T00:00:00Z", 2),
            ["2026-05-29T09:00:00+00:00", "2026-06-30T09:00:00+00:00"]
        );
        assert_eq!(
            fires("0 0 9 15W * ?", Tz::UTC, "2026-08-01T00:00:00Z", 2),
            ["2026-08-14T09:00:00+00:00", "2026-09-15T09:00:00+00:00"]
        );
        // The third Friday of each quarter's last month.
        assert_eq!(
            fires("0 0 7 ? 3,6,9,12 6#3", Berlin, "2026-01-01T00:00:00Z", 4),
            [
                "2026-03-20T07:00:00+01:00",
                "2026-06-19T07:00:00+02:00",
                "2026-09-18T07:00:00+02:00",
                "2026-12-18T07:00:00+01:00",
            ]
        );
        assert_eq!(
            fires("0 0 12 ? * FRIL 2026", Tz::UTC, "2026-11-01T00:00:00Z", 3),
            ["2026-11-27T12:00:00+00:00", "2026-12-25T12:00:00+00:00"]
        );
    }

    /// The last Sunday of March and of October are Berlin's transition days: a special keeps
    /// the daylight-saving rules (an every-second schedule follows elapsed time: 23 and 25
    /// hours of fires), and a fixed time in the gap shifts forward.
    #[test]
    fn a_day_special_on_a_transition_day_keeps_the_dst_rules() {
        let every_second = CronExpr::parse("* * * ? * 1L").unwrap();
        let count = |from: &str, to: &str| {
            every_second
                .fires_between(Berlin, utc(from), utc(to))
                .count()
        };
        assert_eq!(
            count("2026-03-28T22:59:59Z", "2026-03-29T21:59:59Z"),
            23 * 3600
        );
        assert_eq!(
            count("2026-10-24T21:59:59Z", "2026-10-25T22:59:59Z"),
            25 * 3600
        );
        assert_eq!(
            fires("0 30 2 ? * 1L", Berlin, "2026-03-01T00:00:00Z", 1),
            ["2026-03-29T03:30:00+02:00"]
        );
        assert_eq!(
            fires("0 30 2 ? * 1L", Berlin, "2026-10-01T00:00:00Z", 1),
            ["2026-10-25T02:30:00+02:00"]
        );
    }

    #[test]
    fn fires_equal_repeated_scans_for_sparse_specials() {
        for expr in [
            "0 0 0 L * ?",
            "0 15 3 ? * 2#1",
            "30 30 2 LW * ?",
            "0 0 */6 1W * ?",
        ] {
            let cron = CronExpr::parse(expr).unwrap();
            for zone in [
                Berlin,
                chrono_tz::America::New_York,
                chrono_tz::Pacific::Apia,
            ] {
                let mut t = utc("2026-01-01T00:00:00Z");
                for fire in cron.fires_after(zone, t).take(24) {
                    assert_eq!(
                        cron.next_after_by_scan(zone, t),
                        Some(fire),
                        "{expr} {zone}"
                    );
                    t = fire;
                }
            }
        }
    }

    #[test]
    fn a_special_that_picks_no_day_is_refused() {
        for (expr, says) in [
            (
                "0 0 0 30W 2 ?",
                "day-of-month '30W' picks no day in the selected months",
            ),
            ("0 0 0 L-30 2,4 ?", "day-of-month 'L-30' picks no day"),
            (
                "0 0 0 ? 2 6#5 2026",
                "day-of-week '6#5' picks no day in the selected months and years",
            ),
        ] {
            let error = CronExpr::parse(expr).unwrap_err();
            assert!(error.message.contains(says), "{expr}: {}", error.message);
        }
        // February has a fifth Friday in some years (2036).
        assert_eq!(
            fires("0 0 0 ? 2 6#5", Tz::UTC, "2026-01-01T00:00:00Z", 1),
            ["2036-02-29T00:00:00+00:00"]
        );
        // Past the last fire, none.
        let cron = CronExpr::parse("0 0 0 L 12 ? 2026").unwrap();
        assert_eq!(cron.next_after(Tz::UTC, utc("2026-12-31T00:00:00Z")), None);
        assert!(cron
            .next_after(Tz::UTC, utc("2026-12-30T00:00:00Z") - TimeDelta::days(1))
            .is_some());
    }
}
