//! Values as stored: a format byte, then bincode 2 (serde, standard config); the job record's
//! own stored shape ([`Record`]); and the layout version these and the keys (`keys.rs`) make.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobRequest, JobStatus};
use crate::store::{StoreError, StoreResult};

/// Version of the key layout (`keys.rs`) and the value encodings (here). Bump it with any
/// change to them.
pub const LAYOUT_VERSION: u32 = 2;
/// Layout 1 wrote all-or-nothing changes as sled batches and had no intent key; its data is
/// layout 2 as it stands, so opening it only rewrites the version.
pub(super) const UPGRADABLE_LAYOUT: u32 = 1;
/// First byte of every value but the layout version and fire times.
pub(super) const RECORD_FORMAT: u8 = 1;

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// The error for an unreadable value (or key) at `key`.
pub(super) fn corrupt(key: &[u8], message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: message.into(),
    }
}

/// A value as stored: [`RECORD_FORMAT`], then bincode.
pub(super) fn encode_value<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Sized for a typical job record, so that encoding does not grow it.
    let mut bytes = Vec::with_capacity(256);
    bytes.push(RECORD_FORMAT);
    bincode::serde::encode_into_std_write(value, &mut bytes, bincode_config())
        .expect("encoding into a Vec cannot fail");
    bytes
}

/// A value [`encode_value`] wrote, stored under `key`.
pub(super) fn decode_value<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> StoreResult<T> {
    match bytes.split_first() {
        Some((&RECORD_FORMAT, rest)) => {
            let (value, read) = bincode::serde::decode_from_slice(rest, bincode_config())
                .map_err(|error| corrupt(key, error.to_string()))?;
            if read != rest.len() {
                return Err(corrupt(key, "trailing bytes after the value"));
            }
            Ok(value)
        }
        Some((format, _)) => Err(corrupt(key, format!("unknown value format {format}"))),
        None => Err(corrupt(key, "empty value")),
    }
}

/// The job record as stored: its own type, so that the JSON shape of [`Job`] can change without
/// changing the disk format, and times are compact integers (microseconds).
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    job_id: Cow<'a, str>,
    status: u8,
    report_type: Cow<'a, str>,
    role: Cow<'a, str>,
    county: Option<Cow<'a, str>>,
    subject: Cow<'a, str>,
    parent_job_ids: Vec<Cow<'a, str>>,
    trigger_id: Cow<'a, str>,
    request: Cow<'a, JobRequest>,
    priority: u8,
    result_path: Option<Cow<'a, str>>,
    rows_written: u64,
    result_sha256: Option<Cow<'a, str>>,
    progress: u8,
    error: Option<Cow<'a, str>>,
    attempt: u32,
    max_attempts: u32,
    run_after: Option<i64>,
    cancel_requested: bool,
    created_at: i64,
    started_at: Option<i64>,
    completed_at: Option<i64>,
    estimated_completion: Option<i64>,
    lease_owner: Option<Cow<'a, str>>,
    lease_until: Option<i64>,
    version: u64,
}

/// A job's record as stored.
pub(super) fn encode_job(job: &Job) -> Vec<u8> {
    fn borrow(s: &Option<String>) -> Option<Cow<'_, str>> {
        s.as_deref().map(Cow::Borrowed)
    }
    let micros = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros());
    encode_value(&Record {
        job_id: Cow::Borrowed(job.job_id.as_str()),
        status: status_code(job.status),
        report_type: Cow::Borrowed(&job.report_type),
        role: Cow::Borrowed(&job.role),
        county: borrow(&job.county),
        subject: Cow::Borrowed(&job.subject),
        parent_job_ids: job
            .parent_job_ids
            .iter()
            .map(|id| Cow::Borrowed(id.as_str()))
            .collect(),
        trigger_id: Cow::Borrowed(&job.trigger_id),
        request: Cow::Borrowed(&job.request),
        priority: job.priority,
        result_path: borrow(&job.result_path),
        rows_written: job.rows_written,
        result_sha256: borrow(&job.result_sha256),
        progress: job.progress,
        error: borrow(&job.error),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        run_after: micros(job.run_after),
        cancel_requested: job.cancel_requested,
        created_at: job.created_at.timestamp_micros(),
        started_at: micros(job.started_at),
        completed_at: micros(job.completed_at),
        estimated_completion: micros(job.estimated_completion),
        lease_owner: borrow(&job.lease_owner),
        lease_until: micros(job.lease_until),
        version: job.version,
    })
}

/// The job a record stored under `key` holds.
pub(super) fn decode_job(key: &[u8], bytes: &[u8]) -> StoreResult<Job> {
    let record: Record<'static> = decode_value(key, bytes)?;
    let bad = |what: &str| corrupt(key, format!("invalid {what}"));
    let time = |micros: i64| DateTime::from_timestamp_micros(micros).ok_or_else(|| bad("time"));
    let opt_time = |micros: Option<i64>| micros.map(time).transpose();
    let owned = |s: Option<Cow<'static, str>>| s.map(Cow::into_owned);
    Ok(Job {
        job_id: record.job_id.parse().map_err(|_| bad("job id"))?,
        status: status_from_code(record.status).ok_or_else(|| bad("status"))?,
        report_type: record.report_type.into_owned(),
        role: record.role.into_owned(),
        county: owned(record.county),
        subject: record.subject.into_owned(),
        parent_job_ids: record
            .parent_job_ids
            .iter()
            .map(|id| id.parse().map_err(|_| bad("parent job id")))
            .collect::<StoreResult<_>>()?,
        trigger_id: record.trigger_id.into_owned(),
        request: record.request.into_owned(),
        priority: record.priority,
        result_path: owned(record.result_path),
        rows_written: record.rows_written,
        result_sha256: owned(record.result_sha256),
        progress: record.progress,
        error: owned(record.error),
        attempt: record.attempt,
        max_attempts: record.max_attempts,
        run_after: opt_time(record.run_after)?,
        cancel_requested: record.cancel_requested,
        created_at: time(record.created_at)?,
        started_at: opt_time(record.started_at)?,
        completed_at: opt_time(record.completed_at)?,
        estimated_completion: opt_time(record.estimated_completion)?,
        lease_owner: owned(record.lease_owner),
        lease_until: opt_time(record.lease_until)?,
        version: record.version,
    })
}

/// Status codes on disk. Fixed here, apart from the enum's order.
fn status_code(status: JobStatus) -> u8 {
    match status {
        JobStatus::Queued => 1,
        JobStatus::Processing => 2,
        JobStatus::Completed => 3,
        JobStatus::Failed => 4,
        JobStatus::Cancelled => 5,
    }
}

fn status_from_code(code: u8) -> Option<JobStatus> {
    JobStatus::ALL.into_iter().find(|s| status_code(*s) == code)
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use crate::job::JobStatus;
    use crate::store::conformance::{self, at, new_job};
    use crate::store::sled::keys;
    use crate::store::sled::testing::open_at;
    use crate::store::{Store, StoreError};

    #[tokio::test]
    async fn a_corrupt_record_is_reported_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        let jobs = conformance::created(
            store
                .enqueue(vec![new_job("R", "S", None); 2], None, at(0))
                .await
                .unwrap(),
        );
        let (bad, good) = (&jobs[0], &jobs[1]);
        let key = keys::job_key(
            bad.created_at.timestamp_micros(),
            &keys::id_bytes(&bad.job_id),
        );
        store
            .tree
            .insert(key, &[super::RECORD_FORMAT, 0xff, 0xff][..])
            .unwrap();
        assert!(matches!(
            store.get(&bad.job_id).await,
            Err(StoreError::Corrupt { .. })
        ));
        store.tree.insert(key, &[42u8][..]).unwrap();
        match store.get(&bad.job_id).await {
            Err(StoreError::Corrupt { key, message }) => {
                assert!(key.ends_with(bad.job_id.as_str()), "{key}");
                assert!(message.contains("format 42"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // A change to it fails the same way, and changes nothing.
        assert!(matches!(
            store.cancel(&bad.job_id, at(1)).await,
            Err(StoreError::Corrupt { .. })
        ));
        // It does not block the queue, now or after a restart.
        let claimed = store
            .claim("w", 5, Duration::from_secs(60), at(2))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].job_id, good.job_id);
        drop(store);
        let store = open_at(&path);
        assert_eq!(store.counts().await.unwrap()[&JobStatus::Processing], 1);
        assert!(matches!(
            store.get(&bad.job_id).await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// The record encoding is part of the layout: a change to `Job`, `JobRequest` or `Record`
    /// that changes these bytes needs a new `LAYOUT_VERSION` and a migration.
    #[test]
    fn record_encoding_is_pinned() {
        let mut new = new_job("DAILY_REPORT", "SUPERVISOR", Some("C1"));
        new.request.chunk_size = Some(500);
        new.request
            .params
            .insert("k".into(), crate::params::ParamValue::String("v".into()));
        new.parent_job_ids = vec!["JOB_PARENT01".parse().unwrap()];
        new.estimated_completion = Some(at(60));
        let mut job = new.into_job("JOB_ABCD1234".parse().unwrap(), at(0));
        job.status = JobStatus::Processing;
        job.lease_owner = Some("w".into());
        job.lease_until = Some(at(30));
        let bytes = super::encode_job(&job);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "010c4a4f425f4142434431323334020c4441494c595f5245504f52540a53555045525649\
             534f520102433105616c696365010c4a4f425f504152454e5430310b6d616e75616c3a74\
             65737401fbf40100000001016b017600000000000001010000fd00408e282d740d000000\
             01fd004eb52f2d740d0001017701fd00c7212c2d740d0001",
            "the on-disk record layout changed"
        );
        assert_eq!(super::decode_job(b"k", &bytes).unwrap(), job);
    }
}
