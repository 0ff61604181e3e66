//! Values as stored: a format byte, then bincode 2 (serde, standard config); the job record's
//! own stored shape ([`Record`]); and the layout version these and the keys (`keys.rs`) make.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc, Weekday};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobRequest, JobStatus};
use crate::params::ParamValue;
use crate::store::{StoreError, StoreResult};
use crate::window::{Period, Window, WindowKind};

/// Version of the key layout (`keys.rs`) and the value encodings (here). Bump it with any
/// change to them.
///
/// - 1 → 2: all-or-nothing changes stopped being sled batches and got an intent key.
/// - 2 → 3: a job's request holds typed parameters and the run's window; its record is written
///   with format byte 2 ([`JOB_FORMAT_3`]). Records of layout 2 keep their [`RECORD_FORMAT`]
///   byte and are read as what they were (their parameters were text, they had no window), so
///   opening an older store rewrites only the version, and each record takes the new format at
///   its next change.
/// - 3 → 4: a result's SHA-256 is stored as its 32 bytes ([`StoredDigest`], format byte
///   [`JOB_FORMAT`]); records of layout 3 are read as they are, as above.
pub const LAYOUT_VERSION: u32 = 4;
/// Layouts whose data this layout reads as it stands: opening them only rewrites the version.
pub(super) const UPGRADABLE_LAYOUTS: [u32; 3] = [1, 2, 3];
/// First byte of every value but the layout version and fire times (and of a job record of
/// layout 1 or 2).
pub(super) const RECORD_FORMAT: u8 = 1;
/// First byte of a job record of layout 3: [`Record`] with a [`StoredRequest`] and the digest
/// as hex text.
pub(super) const JOB_FORMAT_3: u8 = 2;
/// First byte of a job record of layout 4: [`Record`] with a [`StoredRequest`] and a
/// [`StoredDigest`].
pub(super) const JOB_FORMAT: u8 = 3;

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
/// changing the disk format, and times are compact integers (microseconds). `R` is the
/// request's shape: [`StoredRequest`] today, [`RequestV2`] in records of layout 1 and 2. `D`
/// is the result's digest: [`StoredDigest`] today, its hex text in records of layouts 1–3.
#[derive(Serialize, Deserialize)]
struct Record<'a, R, D> {
    job_id: Cow<'a, str>,
    status: u8,
    report_type: Cow<'a, str>,
    role: Cow<'a, str>,
    county: Option<Cow<'a, str>>,
    subject: Cow<'a, str>,
    parent_job_ids: Vec<Cow<'a, str>>,
    trigger_id: Cow<'a, str>,
    request: R,
    priority: u8,
    result_path: Option<Cow<'a, str>>,
    rows_written: u64,
    result_sha256: Option<D>,
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

/// A job's request as stored (layout 3).
#[derive(Serialize, Deserialize)]
struct StoredRequest<'a> {
    chunk_size: Option<u32>,
    data_format: Option<Cow<'a, str>>,
    priority: Option<u8>,
    target_system: Option<Cow<'a, str>>,
    /// bincode's serde form of [`ParamValue`]: the variant's index, then its value (a date and
    /// a timestamp as their ISO 8601 text); `record_encoding_is_pinned` holds every variant.
    params: Cow<'a, BTreeMap<String, ParamValue>>,
    window: Option<StoredWindow<'a>>,
}

/// A result's SHA-256 as stored (layout 4): its 32 bytes, not its 64 hex digits (a COMPLETED
/// record is ~15% smaller: every finished job's record is held by sled's pages, in memory as
/// on disk). A digest that is not 64 lowercase hex digits (none that flowctl makes) is kept as
/// the text it is.
#[derive(Serialize, Deserialize)]
enum StoredDigest<'a> {
    Bytes([u8; 32]),
    Text(Cow<'a, str>),
}

impl<'a> StoredDigest<'a> {
    fn of(text: &'a str) -> StoredDigest<'a> {
        // Lowercase only: an uppercase digest must read back as the text it was.
        let lower_hex = text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut bytes = [0u8; 32];
        if lower_hex && hex::decode_to_slice(text, &mut bytes).is_ok() {
            StoredDigest::Bytes(bytes)
        } else {
            StoredDigest::Text(Cow::Borrowed(text))
        }
    }

    fn into_hex(self) -> String {
        match self {
            StoredDigest::Bytes(bytes) => hex::encode(bytes),
            StoredDigest::Text(text) => text.into_owned(),
        }
    }
}

/// A window as stored: instants in microseconds, the kind as a code
/// ([`window_kind_code`]).
#[derive(Serialize, Deserialize)]
struct StoredWindow<'a> {
    start: i64,
    end: i64,
    zone: Cow<'a, str>,
    kind: u8,
}

/// A job's request in records of layout 1 and 2: parameters were text, there was no window.
#[derive(Serialize, Deserialize)]
struct RequestV2 {
    chunk_size: Option<u32>,
    data_format: Option<String>,
    priority: Option<u8>,
    target_system: Option<String>,
    params: BTreeMap<String, String>,
}

impl From<RequestV2> for JobRequest {
    fn from(old: RequestV2) -> JobRequest {
        JobRequest {
            chunk_size: old.chunk_size,
            data_format: old.data_format,
            priority: old.priority,
            target_system: old.target_system,
            // No release wrote any (nothing declared parameters); kept as the text they were.
            params: old
                .params
                .into_iter()
                .map(|(k, v)| (k, ParamValue::String(v)))
                .collect(),
            window: None,
        }
    }
}

/// Window kinds on disk: 0 a span, 1–5 day, week, month, quarter, year; a week's first day is
/// `10 + days from Monday` (10 for an ISO week, 16 for a week starting on Sunday).
fn window_kind_code(kind: WindowKind) -> u8 {
    match kind {
        WindowKind::Span => 0,
        WindowKind::Period(Period::Day) => 1,
        WindowKind::Period(Period::Week { starts }) => {
            10 + u8::try_from(starts.num_days_from_monday()).unwrap_or(0)
        }
        WindowKind::Period(Period::Month) => 3,
        WindowKind::Period(Period::Quarter) => 4,
        WindowKind::Period(Period::Year) => 5,
    }
}

fn window_kind_from_code(code: u8) -> Option<WindowKind> {
    Some(match code {
        0 => WindowKind::Span,
        1 => WindowKind::Period(Period::Day),
        3 => WindowKind::Period(Period::Month),
        4 => WindowKind::Period(Period::Quarter),
        5 => WindowKind::Period(Period::Year),
        10..=16 => WindowKind::Period(Period::Week {
            starts: Weekday::try_from(code - 10).ok()?,
        }),
        _ => return None,
    })
}

fn stored_request(request: &JobRequest) -> StoredRequest<'_> {
    StoredRequest {
        chunk_size: request.chunk_size,
        data_format: request.data_format.as_deref().map(Cow::Borrowed),
        priority: request.priority,
        target_system: request.target_system.as_deref().map(Cow::Borrowed),
        params: Cow::Borrowed(&request.params),
        // Window instants are kept to the microsecond when a job is made
        // (`Window::truncated_to_micros`), like every time of the record.
        window: request.window.as_ref().map(|w| StoredWindow {
            start: w.start.timestamp_micros(),
            end: w.end.timestamp_micros(),
            zone: Cow::Borrowed(&w.zone),
            kind: window_kind_code(w.kind),
        }),
    }
}

fn job_request(key: &[u8], stored: StoredRequest<'static>) -> StoreResult<JobRequest> {
    let bad = |what: &str| corrupt(key, format!("invalid {what}"));
    let window = match stored.window {
        None => None,
        Some(w) => {
            let time = |micros: i64| {
                DateTime::from_timestamp_micros(micros).ok_or_else(|| bad("window time"))
            };
            let zone: chrono_tz::Tz = w.zone.parse().map_err(|_| bad("window zone"))?;
            Some(Window {
                start: time(w.start)?,
                end: time(w.end)?,
                zone: zone.name().to_string(),
                kind: window_kind_from_code(w.kind).ok_or_else(|| bad("window kind"))?,
            })
        }
    };
    Ok(JobRequest {
        chunk_size: stored.chunk_size,
        data_format: stored.data_format.map(Cow::into_owned),
        priority: stored.priority,
        target_system: stored.target_system.map(Cow::into_owned),
        params: stored.params.into_owned(),
        window,
    })
}

/// A job's record as stored.
pub(super) fn encode_job(job: &Job) -> Vec<u8> {
    encode_record(JOB_FORMAT, &record_of(job, StoredDigest::of))
}

fn encode_record<R: Serialize, D: Serialize>(format: u8, record: &Record<'_, R, D>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    bytes.push(format);
    bincode::serde::encode_into_std_write(record, &mut bytes, bincode_config())
        .expect("encoding into a Vec cannot fail");
    bytes
}

/// `job` as stored, its digest in the shape `digest` makes.
fn record_of<'a, D>(
    job: &'a Job,
    digest: impl FnOnce(&'a str) -> D,
) -> Record<'a, StoredRequest<'a>, D> {
    fn borrow(s: &Option<String>) -> Option<Cow<'_, str>> {
        s.as_deref().map(Cow::Borrowed)
    }
    let micros = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros());
    Record {
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
        request: stored_request(&job.request),
        priority: job.priority,
        result_path: borrow(&job.result_path),
        rows_written: job.rows_written,
        result_sha256: job.result_sha256.as_deref().map(digest),
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
    }
}

/// A record as layout 3 wrote it (the digest as hex text): for the tests of reading old stores.
#[cfg(test)]
pub(super) fn encode_job_layout_3(job: &Job) -> Vec<u8> {
    encode_record(JOB_FORMAT_3, &record_of(job, Cow::Borrowed))
}

/// The job a record stored under `key` holds, of this layout or of layouts 1–3.
pub(super) fn decode_job(key: &[u8], bytes: &[u8]) -> StoreResult<Job> {
    match bytes.split_first() {
        Some((&JOB_FORMAT, rest)) => {
            let record: Record<'static, StoredRequest<'static>, StoredDigest<'static>> =
                decode_exact(key, rest)?;
            job_from_record(key, record, StoredDigest::into_hex, |request| {
                job_request(key, request)
            })
        }
        Some((&JOB_FORMAT_3, rest)) => {
            let record: Record<'static, StoredRequest<'static>, Cow<'static, str>> =
                decode_exact(key, rest)?;
            job_from_record(key, record, Cow::into_owned, |request| {
                job_request(key, request)
            })
        }
        Some((&RECORD_FORMAT, _)) => {
            let record: Record<'static, RequestV2, Cow<'static, str>> = decode_value(key, bytes)?;
            job_from_record(key, record, Cow::into_owned, |request| Ok(request.into()))
        }
        Some((format, _)) => Err(corrupt(key, format!("unknown value format {format}"))),
        None => Err(corrupt(key, "empty value")),
    }
}

/// A bincode value that fills `bytes` exactly.
fn decode_exact<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> StoreResult<T> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode_config())
        .map_err(|error| corrupt(key, error.to_string()))?;
    if read != bytes.len() {
        return Err(corrupt(key, "trailing bytes after the value"));
    }
    Ok(value)
}

fn job_from_record<R, D>(
    key: &[u8],
    record: Record<'static, R, D>,
    digest: impl FnOnce(D) -> String,
    request: impl FnOnce(R) -> StoreResult<JobRequest>,
) -> StoreResult<Job> {
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
        request: request(record.request)?,
        priority: record.priority,
        result_path: owned(record.result_path),
        rows_written: record.rows_written,
        result_sha256: record.result_sha256.map(digest),
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
pub(super) fn status_code(status: JobStatus) -> u8 {
    match status {
        JobStatus::Queued => 1,
        JobStatus::Processing => 2,
        JobStatus::Completed => 3,
        JobStatus::Failed => 4,
        JobStatus::Cancelled => 5,
    }
}

pub(super) fn status_from_code(code: u8) -> Option<JobStatus> {
    JobStatus::ALL.into_iter().find(|s| status_code(*s) == code)
}

#[cfg(test)]
pub(super) mod tests {

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

    /// A job with every kind of value the record holds: each parameter type, a window.
    fn full_job() -> crate::job::Job {
        use crate::params::ParamValue;
        use chrono::NaiveDate;
        let mut new = new_job("DAILY_REPORT", "SUPERVISOR", Some("C1"));
        new.request.chunk_size = Some(500);
        new.request.params = [
            ("a_string", ParamValue::String("x'; --".into())),
            ("an_integer", ParamValue::Integer(-42)),
            ("a_decimal", ParamValue::Decimal("-12.50".into())),
            (
                "a_date",
                ParamValue::Date(NaiveDate::from_ymd_opt(2026, 11, 30).unwrap()),
            ),
            ("a_timestamp", ParamValue::Timestamp(at(90))),
            ("a_boolean", ParamValue::Boolean(true)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        new.request.window = Some(
            crate::window::WindowSpec::Previous(crate::window::Period::Week {
                starts: chrono::Weekday::Sun,
            })
            .window_at(at(0), chrono_tz::Europe::Berlin)
            .unwrap(),
        );
        new.parent_job_ids = vec!["JOB_PARENT01".parse().unwrap()];
        new.estimated_completion = Some(at(60));
        let mut job = new.into_job("JOB_ABCD1234".parse().unwrap(), at(0));
        job.status = JobStatus::Processing;
        job.lease_owner = Some("w".into());
        job.lease_until = Some(at(30));
        job
    }

    /// The record encoding is part of the layout: a change to `Job`, `JobRequest`,
    /// `ParamValue`, `Window` or `Record` that changes these bytes needs a new
    /// `LAYOUT_VERSION` and a way to read the old records.
    #[test]
    fn record_encoding_is_pinned() {
        let job = completed_job(HEX);
        let bytes = super::encode_job(&job);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "030c4a4f425f4142434431323334030c4441494c595f5245504f52540a53555045525649\
             534f520102433105616c696365010c4a4f425f504152454e5430310b6d616e75616c3a74\
             65737401fbf4010000000609615f626f6f6c65616e050106615f64617465030a32303236\
             2d31312d333009615f646563696d616c02062d31322e353008615f737472696e67000678\
             273b202d2d0b615f74696d657374616d700414323033302d30312d30315430303a30313a\
             33305a0a616e5f696e7465676572015301fd00384262c1720d00fd00780904db730d000d\
             4575726f70652f4265726c696e100001412f7661722f6c69622f666c6f7763746c2f7265\
             73756c74732f4441494c595f5245504f52542f323032362d31312d33302f4a4f425f4142\
             4344313233342e637376fbd2040100e3b0c44298fc1c149afbf4c8996fb92427ae41e464\
             9b934ca495991b7852b855640001010000fd00408e282d740d000001fd808aeb2d2d740d\
             0001fd004eb52f2d740d00000001",
            "the on-disk record layout changed"
        );
        assert_eq!(super::decode_job(b"k", &bytes).unwrap(), job);
    }

    #[test]
    fn every_window_kind_survives_the_record() {
        use crate::window::{Period, Window, WindowKind, WindowSpec};
        let mut job = full_job();
        let mut kinds = vec![WindowKind::Span];
        kinds.extend(
            [Period::Day, Period::Month, Period::Quarter, Period::Year].map(WindowKind::Period),
        );
        for day in 0..7u8 {
            kinds.push(WindowKind::Period(Period::Week {
                starts: chrono::Weekday::try_from(day).unwrap(),
            }));
        }
        for kind in kinds {
            let base = WindowSpec::Previous(Period::Day)
                .window_at(at(0), chrono_tz::America::Santiago)
                .unwrap();
            job.request.window = Some(Window { kind, ..base });
            let bytes = super::encode_job(&job);
            assert_eq!(super::decode_job(b"k", &bytes).unwrap(), job, "{kind:?}");
        }
        job.request.window = None;
        job.request.params.clear();
        let bytes = super::encode_job(&job);
        assert_eq!(super::decode_job(b"k", &bytes).unwrap(), job);
    }

    /// The record `record_encoding_is_pinned` held at layout 3 (the digest as text; this job
    /// has none), byte for byte as that release wrote it.
    const LAYOUT_3_RECORD: &str =
        "020c4a4f425f4142434431323334020c4441494c595f5245504f52540a53555045525649\
             534f520102433105616c696365010c4a4f425f504152454e5430310b6d616e75616c3a74\
             65737401fbf4010000000609615f626f6f6c65616e050106615f64617465030a32303236\
             2d31312d333009615f646563696d616c02062d31322e353008615f737472696e67000678\
             273b202d2d0b615f74696d657374616d700414323033302d30312d30315430303a30313a\
             33305a0a616e5f696e7465676572015301fd00384262c1720d00fd00780904db730d000d\
             4575726f70652f4265726c696e1000000000000001010000fd00408e282d740d00000001\
             fd004eb52f2d740d0001017701fd00c7212c2d740d0001";

    #[test]
    fn a_layout_3_record_reads_back_as_it_was_written() {
        let bytes: Vec<u8> = (0..LAYOUT_3_RECORD.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&LAYOUT_3_RECORD[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(bytes[0], super::JOB_FORMAT_3);
        assert_eq!(super::decode_job(b"k", &bytes).unwrap(), full_job());
        // The old encoder, kept for tests, writes those bytes still; with a digest, it reads
        // back, and a change writes it in this layout, 32 bytes shorter.
        assert_eq!(super::encode_job_layout_3(&full_job()), bytes);
        let done = completed_job(HEX);
        let old = super::encode_job_layout_3(&done);
        assert_eq!(super::decode_job(b"k", &old).unwrap(), done);
        let new = super::encode_job(&done);
        assert_eq!(new.len() + 32, old.len());
    }

    pub(in crate::store::sled) const HEX: &str =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// A COMPLETED job as a report leaves it: result file, digest, no lease.
    pub(in crate::store::sled) fn completed_job(sha256: &str) -> crate::job::Job {
        let mut job = full_job();
        job.status = JobStatus::Completed;
        job.lease_owner = None;
        job.lease_until = None;
        job.completed_at = Some(at(45));
        job.rows_written = 1234;
        job.progress = 100;
        job.result_path =
            Some("/var/lib/flowctl/results/DAILY_REPORT/2026-11-30/JOB_ABCD1234.csv".into());
        job.result_sha256 = Some(sha256.into());
        job
    }

    #[test]
    fn a_result_digest_is_stored_as_its_32_bytes() {
        let hex = HEX;
        let job = completed_job(hex);
        let bytes = super::encode_job(&job);
        assert_eq!(super::decode_job(b"k", &bytes).unwrap(), job);
        // The digest's bytes are in the record; its hex text is not.
        let raw: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert!(bytes.windows(32).any(|w| w == raw.as_slice()));
        assert!(!bytes.windows(64).any(|w| w == hex.as_bytes()));
    }

    #[test]
    fn a_digest_that_is_not_lowercase_hex_is_kept_as_its_text() {
        for odd in [
            "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "zz",
            "",
            "é3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        ] {
            let job = completed_job(odd);
            let bytes = super::encode_job(&job);
            assert_eq!(super::decode_job(b"k", &bytes).unwrap(), job, "{odd:?}");
        }
    }

    /// The record `record_encoding_is_pinned` held at layout 2 (parameters as text, no window),
    /// byte for byte as that release wrote it.
    pub(in crate::store::sled) const LAYOUT_2_RECORD: &str =
        "010c4a4f425f4142434431323334020c4441494c595f5245504f52540a53555045525649\
         534f520102433105616c696365010c4a4f425f504152454e5430310b6d616e75616c3a74\
         65737401fbf40100000001016b017600000000000001010000fd00408e282d740d000000\
         01fd004eb52f2d740d0001017701fd00c7212c2d740d0001";

    pub(in crate::store::sled) fn layout_2_bytes() -> Vec<u8> {
        (0..LAYOUT_2_RECORD.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&LAYOUT_2_RECORD[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_layout_2_record_reads_back_with_its_text_params_and_no_window() {
        let job = super::decode_job(b"k", &layout_2_bytes()).unwrap();
        assert_eq!(job.job_id.as_str(), "JOB_ABCD1234");
        assert_eq!(job.report_type, "DAILY_REPORT");
        assert_eq!(job.request.chunk_size, Some(500));
        assert_eq!(
            job.request.params,
            [(
                "k".to_string(),
                crate::params::ParamValue::String("v".into())
            )]
            .into()
        );
        assert_eq!(job.request.window, None);
        assert_eq!(job.lease_until, Some(at(30)));
        // Written again, it takes this layout's format.
        let bytes = super::encode_job(&job);
        assert_eq!(bytes[0], super::JOB_FORMAT);
        assert_eq!(super::decode_job(b"k", &bytes).unwrap(), job);
    }
}
