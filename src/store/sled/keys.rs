//! The key layout, and job ids and times as key bytes.
//!
//! # Layout (version [`LAYOUT_VERSION`])
//!
//! One sled tree, `flowctl`, and the intent's own, `flowctl-intent` (one key, `w`: the last
//! intent). In `flowctl` the first byte of a key says what it holds. Keys are big-endian so that
//! ranges sort; job ids are their 12 ASCII bytes. Values start with a format byte, then bincode
//! 2 (serde, standard config; see `codec.rs`).
//!
//! | key                                                     | value                    |
//! |---------------------------------------------------------|--------------------------|
//! | `j` created_at (µs), job id                             | the job record           |
//! | `c` parent id, child id                                 | empty                    |
//! | `J` join id, role, county (each length-prefixed)        | [`JoinState`]            |
//! | `u` `f` schedule, fire time / `i` subject, key          | the job ids it created   |
//! | `f` schedule                                            | last fire time (µs, BE)  |
//! | `m` `layout`                                            | layout version (u32, BE) |
//! | `m` `commit`                                            | last commit round (u64, BE) |
//!
//! Beside sled's files (`conf`, `db`, `blobs/`, `snap.*`), the directory holds `flowctl.commit`,
//! the commit watermark (see `Watermark`), `mask.key` (the masking key, `masking_key`) and,
//! while the store is closed, `flowctl.index` (the index snapshot, `snapshot.rs`).
//!
//! [`LAYOUT_VERSION`]: super::LAYOUT_VERSION
//! [`JoinState`]: crate::store::JoinState

use chrono::{DateTime, Utc};

use super::codec::corrupt;
use crate::job::JobId;
use crate::store::{StoreResult, UniqueKey};

/// First byte of a job record's key.
pub(super) const JOB: u8 = b'j';
/// First byte of a child index key.
pub(super) const CHILD: u8 = b'c';
/// First byte of a join state's key.
pub(super) const JOIN: u8 = b'J';
const UNIQUE: u8 = b'u';
/// First byte of a schedule's last fire time's key.
pub(super) const FIRE: u8 = b'f';
/// The layout version's key (see `check_layout`).
pub(super) const META_LAYOUT: &[u8] = b"mlayout";
/// The number of the last commit round written to sled (u64, BE; see `Watermark`).
pub(super) const META_COMMIT: &[u8] = b"mcommit";

/// A job id as its 12 bytes.
pub(super) type Id = [u8; JobId::LEN];

/// A job id's bytes.
pub(super) fn id_bytes(job_id: &JobId) -> Id {
    job_id
        .as_str()
        .as_bytes()
        .try_into()
        .expect("a job id is 12 ASCII bytes")
}

/// The job id of 12 bytes (an index entry's, a key's).
pub(super) fn job_id_from(id: &[u8]) -> StoreResult<JobId> {
    std::str::from_utf8(id)
        .ok()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| corrupt(id, "not a job id"))
}

/// The job id `at` bytes into `key`.
pub(super) fn job_id_at(key: &[u8], at: usize) -> StoreResult<JobId> {
    match key.get(at..at + JobId::LEN) {
        Some(id) => job_id_from(id),
        None => Err(corrupt(key, "no job id where the layout puts one")),
    }
}

/// `j`, created_at, id: records sort by age, so that new jobs are appended and the jobs a
/// queue works on (the oldest queued, the recently claimed) share leaves. 21 bytes: sled keeps
/// it inline, with no allocation.
pub(super) fn job_key(created_micros: i64, id: &Id) -> [u8; 1 + 8 + JobId::LEN] {
    let mut key = [JOB; 1 + 8 + JobId::LEN];
    key[1..9].copy_from_slice(&micros_key(created_micros));
    key[9..].copy_from_slice(id);
    key
}

/// Microseconds since the epoch, sign bit flipped, big-endian: sorts as the times do.
fn micros_key(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

/// Microseconds since the epoch, sign bit flipped, big-endian: sorts as the times do.
pub(super) fn time_key(time: DateTime<Utc>) -> [u8; 8] {
    micros_key(time.timestamp_micros())
}

/// The time `bytes` hold (as [`time_key`] wrote it), stored under `key`.
pub(super) fn time_from_key(key: &[u8], bytes: &[u8]) -> StoreResult<DateTime<Utc>> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(key, "a time is not 8 bytes"))?;
    let micros = (u64::from_be_bytes(raw) ^ (1 << 63)) as i64;
    DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt(key, "a time is out of range"))
}

fn push_part(key: &mut Vec<u8>, part: &[u8]) {
    // u32 length prefix: parts are names and keys, which can hold any character.
    key.extend_from_slice(&(part.len() as u32).to_be_bytes());
    key.extend_from_slice(part);
}

/// The key of a join's state for one scope: join id, role and county.
pub(super) fn join_key(join_id: &str, role: &str, county: Option<&str>) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + join_id.len() + role.len());
    key.push(JOIN);
    push_part(&mut key, join_id.as_bytes());
    push_part(&mut key, role.as_bytes());
    match county {
        Some(county) => {
            key.push(1);
            push_part(&mut key, county.as_bytes());
        }
        None => key.push(0),
    }
    key
}

/// The key of a unique key (a schedule's fire time, an idempotency key).
pub(super) fn unique_key(unique: &UniqueKey) -> Vec<u8> {
    let mut key = vec![UNIQUE];
    match unique {
        UniqueKey::Fire {
            schedule,
            fire_time,
        } => {
            key.push(b'f');
            push_part(&mut key, schedule.as_bytes());
            key.extend_from_slice(&time_key(*fire_time));
        }
        UniqueKey::Idempotency { subject, key: idem } => {
            key.push(b'i');
            push_part(&mut key, subject.as_bytes());
            push_part(&mut key, idem.as_bytes());
        }
    }
    key
}
