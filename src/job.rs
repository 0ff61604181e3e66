//! The job record: one execution of one report type for one principal (DESIGN.md, "Job record"),
//! with its identifier, its status and what it was asked to do.
//!
//! These are plain values. The serde shapes here are the public JSON shape (the HTTP API and
//! `flowctl jobs --json` print them); the on-disk encoding belongs to each store.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::params::ParamValue;
use crate::window::Window;

/// `JOB_` followed by 8 characters from `[A-Z0-9]`.
///
/// Drawn from the thread-local CSPRNG, so ids are not guessable in sequence. The space is
/// 36^8 ≈ 2.8 × 10^12, so collisions do happen at millions of jobs: a store refuses to insert an
/// id it already holds and draws again.
///
/// Serialized as a plain string (like `#[serde(transparent)]`), but deserializing validates the
/// format.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct JobId(String);

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl JobId {
    pub const PREFIX: &'static str = "JOB_";
    /// Number of random characters after the prefix.
    pub const RANDOM_LEN: usize = 8;
    /// Total length in bytes; ids are ASCII, so stores may use them as fixed-width keys.
    pub const LEN: usize = Self::PREFIX.len() + Self::RANDOM_LEN;
    const ALPHABET: &'static [u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

    /// A fresh random id. Uniqueness is the store's business (it retries on a collision).
    pub fn generate() -> JobId {
        let mut rng = rand::rng();
        let mut id = String::with_capacity(Self::LEN);
        id.push_str(Self::PREFIX);
        for _ in 0..Self::RANDOM_LEN {
            id.push(char::from(
                Self::ALPHABET[rng.random_range(0..Self::ALPHABET.len())],
            ));
        }
        JobId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn validate(s: &str) -> Result<(), JobIdError> {
        let valid = s.len() == Self::LEN
            && s.starts_with(Self::PREFIX)
            && s.bytes()
                .skip(Self::PREFIX.len())
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if valid {
            Ok(())
        } else {
            Err(JobIdError(s.to_owned()))
        }
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job id {0:?}: expected JOB_ followed by 8 characters from A-Z and 0-9")]
pub struct JobIdError(pub String);

impl FromStr for JobId {
    type Err = JobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobId::validate(s)?;
        Ok(JobId(s.to_owned()))
    }
}

impl TryFrom<String> for JobId {
    type Error = JobIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        JobId::validate(&s)?;
        Ok(JobId(s))
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Where a job is in its life. See `status::transition` for the moves between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// A terminal job never changes status again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "QUEUED",
            JobStatus::Processing => "PROCESSING",
            JobStatus::Completed => "COMPLETED",
            JobStatus::Failed => "FAILED",
            JobStatus::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status {0:?}: expected QUEUED, PROCESSING, COMPLETED, FAILED or CANCELLED")]
pub struct JobStatusError(pub String);

impl FromStr for JobStatus {
    type Err = JobStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| JobStatusError(s.to_owned()))
    }
}

/// Who a job runs as: from the verified JWT for an HTTP trigger, or the system principal for a
/// schedule fire. Never a token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    pub subject: String,
    pub role: String,
    #[serde(rename = "countyId")]
    pub county: Option<String>,
}

impl Principal {
    pub const SYSTEM_SUBJECT: &'static str = "system";

    /// The built-in principal a schedule fire runs as, with the role the schedule names.
    pub fn system(role: impl Into<String>) -> Principal {
        Principal {
            subject: Self::SYSTEM_SUBJECT.to_owned(),
            role: role.into(),
            county: None,
        }
    }
}

/// What a job was asked for: the seed's request body, minus anything the principal decides.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    #[serde(default)]
    pub chunk_size: Option<u32>,
    #[serde(default)]
    pub data_format: Option<String>,
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub target_system: Option<String>,
    /// The report's declared parameters, resolved when the job was created (defaults filled
    /// in); a dependent gets its parent's.
    #[serde(default)]
    pub params: BTreeMap<String, ParamValue>,
    /// The period of data the run covers; a dependent gets its parent's.
    #[serde(default)]
    pub window: Option<Window>,
}

/// The job record of DESIGN.md. Times are kept to the microsecond, as PostgreSQL keeps them, so
/// every store returns the same values it was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub job_id: JobId,
    pub status: JobStatus,
    pub report_type: String,
    pub role: String,
    #[serde(rename = "countyId")]
    pub county: Option<String>,
    pub subject: String,
    pub parent_job_ids: Vec<JobId>,
    pub trigger_id: String,
    pub request: JobRequest,
    /// Higher runs first.
    pub priority: u8,
    pub result_path: Option<String>,
    pub rows_written: u64,
    pub result_sha256: Option<String>,
    /// 0–100.
    pub progress: u8,
    pub error: Option<String>,
    /// 1 for the first run, +1 for every retry or lease expiry.
    pub attempt: u32,
    pub max_attempts: u32,
    /// Not claimable before this time (retry backoff).
    pub run_after: Option<DateTime<Utc>>,
    /// A cancel arrived while the job was PROCESSING; the worker stops at its next chunk.
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub estimated_completion: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    /// Bumped by every change; every change is a compare-and-swap on it.
    pub version: u64,
}

impl Job {
    /// The join scope of this job's completion event: (role, county).
    pub fn scope(&self) -> (&str, Option<&str>) {
        (&self.role, self.county.as_deref())
    }
}

/// What `Store::enqueue` needs to create a job; the store fills in the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    pub report_type: String,
    pub principal: Principal,
    pub parent_job_ids: Vec<JobId>,
    pub trigger_id: String,
    pub request: JobRequest,
    pub priority: u8,
    /// At least 1: a job always gets its first attempt (0 is stored as 1).
    pub max_attempts: u32,
    pub estimated_completion: Option<DateTime<Utc>>,
}

impl NewJob {
    /// The record of this job as enqueued: QUEUED, version 1, first attempt.
    pub fn into_job(self, job_id: JobId, now: DateTime<Utc>) -> Job {
        Job {
            job_id,
            status: JobStatus::Queued,
            report_type: self.report_type,
            role: self.principal.role,
            county: self.principal.county,
            subject: self.principal.subject,
            parent_job_ids: self.parent_job_ids,
            trigger_id: self.trigger_id,
            request: self.request,
            priority: self.priority,
            result_path: None,
            rows_written: 0,
            result_sha256: None,
            progress: 0,
            error: None,
            attempt: 1,
            max_attempts: self.max_attempts.max(1),
            run_after: None,
            cancel_requested: false,
            created_at: now,
            started_at: None,
            completed_at: None,
            estimated_completion: self.estimated_completion,
            lease_owner: None,
            lease_until: None,
            version: 1,
        }
    }

    /// A root job with default priority, one attempt and an empty request.
    pub fn new(
        report_type: impl Into<String>,
        principal: Principal,
        trigger_id: impl Into<String>,
    ) -> NewJob {
        NewJob {
            report_type: report_type.into(),
            principal,
            parent_job_ids: Vec::new(),
            trigger_id: trigger_id.into(),
            request: JobRequest::default(),
            priority: 0,
            max_attempts: 1,
            estimated_completion: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_documented_format() {
        for _ in 0..1000 {
            let id = JobId::generate();
            assert_eq!(id.as_str().parse::<JobId>().unwrap(), id);
            assert_eq!(id.as_str().len(), JobId::LEN);
        }
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "JOB_",
            "JOB_ABC",
            "JOB_abcdefgh",
            "JOB_ABCDEFGHI",
            "job_ABCDEFGH",
            "JOB-ABCDEFGH",
            "JOB_ABCD-FGH",
            "JOB_ABCDÉFG",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?} was accepted");
            assert!(serde_json::from_str::<JobId>(&format!("{bad:?}")).is_err());
        }
    }

    #[test]
    fn ids_are_not_sequential() {
        // A sequence-guessing attacker would need consecutive ids to share a long prefix.
        let a = JobId::generate();
        let b = JobId::generate();
        assert_ne!(a, b);
        assert_ne!(a.as_str()[..10], b.as_str()[..10]);
    }

    #[test]
    fn status_json_is_screaming_case_and_round_trips() {
        for status in JobStatus::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(status.as_str().parse::<JobStatus>().unwrap(), status);
            assert_eq!(serde_json::from_str::<JobStatus>(&json).unwrap(), status);
        }
        assert!("DONE".parse::<JobStatus>().is_err());
    }

    #[test]
    fn job_json_uses_the_api_field_names() {
        let created = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let job = Job {
            job_id: "JOB_ABCD1234".parse().unwrap(),
            status: JobStatus::Queued,
            report_type: "DAILY_REPORT".into(),
            role: "SUPERVISOR".into(),
            county: Some("C1".into()),
            subject: "alice".into(),
            parent_job_ids: vec![],
            trigger_id: "manual:1".into(),
            request: JobRequest::default(),
            priority: 5,
            result_path: None,
            rows_written: 0,
            result_sha256: None,
            progress: 0,
            error: None,
            attempt: 1,
            max_attempts: 3,
            run_after: None,
            cancel_requested: false,
            created_at: created,
            started_at: None,
            completed_at: None,
            estimated_completion: None,
            lease_owner: None,
            lease_until: None,
            version: 1,
        };
        let value = serde_json::to_value(&job).unwrap();
        assert_eq!(value["jobId"], "JOB_ABCD1234");
        assert_eq!(value["status"], "QUEUED");
        assert_eq!(value["countyId"], "C1");
        assert_eq!(value["reportType"], "DAILY_REPORT");
        assert_eq!(value["parentJobIds"], serde_json::json!([]));
        assert_eq!(value["createdAt"], "2030-03-17T17:46:40Z");
        assert!(value.get("county").is_none());
        let text = value.to_string().to_lowercase();
        assert!(!text.contains("token") && !text.contains("jwt"));
        assert_eq!(serde_json::from_value::<Job>(value).unwrap(), job);
    }

    #[test]
    fn system_principal() {
        let p = Principal::system("SUPERVISOR");
        assert_eq!(p.subject, "system");
        assert_eq!(p.role, "SUPERVISOR");
        assert_eq!(p.county, None);
    }

    #[test]
    fn request_json_shows_typed_params_and_the_window() {
        let request = JobRequest {
            params: [
                (
                    "since".to_string(),
                    ParamValue::Date(chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()),
                ),
                ("limit".to_string(), ParamValue::Integer(5)),
            ]
            .into(),
            window: Some(crate::window::Window::period("2026-11-30", chrono_tz::UTC).unwrap()),
            ..JobRequest::default()
        };
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(
            value["params"],
            serde_json::json!({"limit": {"integer": 5}, "since": {"date": "2026-11-01"}})
        );
        assert_eq!(value["window"]["label"], "2026-11-30");
        assert_eq!(value["window"]["kind"], "day");
        assert_eq!(
            serde_json::from_value::<JobRequest>(value).unwrap(),
            request
        );
        // A request stored before parameters and windows existed reads back without them.
        let old: JobRequest = serde_json::from_str(r#"{"chunkSize": 5}"#).unwrap();
        assert!(old.params.is_empty() && old.window.is_none());
    }
}
