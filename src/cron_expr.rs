//! Placeholder until the cron module lands.
use chrono::{DateTime, Utc};
use std::str::FromStr;
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronField { Second, Minute, Hour, DayOfMonth, Month, DayOfWeek, Year }
impl CronField { pub fn name(&self) -> &'static str { "field" } }
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError { pub field: Option<CronField>, pub offset: usize, pub len: usize, pub message: String }
#[derive(Debug, Clone)]
pub struct CronExpr { source: String, schedule: cron::Schedule }
impl PartialEq for CronExpr { fn eq(&self, o: &Self) -> bool { self.source == o.source } }
impl CronExpr {
    pub fn parse(text: &str) -> Result<CronExpr, CronError> {
        cron::Schedule::from_str(text).map(|s| CronExpr { source: text.to_string(), schedule: s })
            .map_err(|e| CronError { field: None, offset: 0, len: text.len().max(1), message: e.to_string() })
    }
    pub fn source(&self) -> &str { &self.source }
    pub fn next_after(&self, zone: chrono_tz::Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&after.with_timezone(&zone)).next().map(|t| t.with_timezone(&Utc))
    }
}
impl std::fmt::Display for CronExpr { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.source) } }
