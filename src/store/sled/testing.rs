//! Helpers for the unit tests of the sled store's files.

use std::time::Duration;

use super::codec::decode_job;
use super::keys::{id_bytes, job_key};
use super::{SledConfig, SledStore};

/// sled itself, once the store that held `path` has let go of it.
pub(super) fn raw_sled(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(error) => panic!("{error}"),
        }
    }
}

/// Opens the store at `path`.
pub(super) fn open_at(path: &std::path::Path) -> SledStore {
    SledStore::open(SledConfig::new(path)).expect("open")
}

/// `job`'s record as `tree` holds it (not the overlay).
pub(super) fn stored_job(tree: &sled::Tree, job: &crate::job::Job) -> Option<crate::job::Job> {
    let key = job_key(job.created_at.timestamp_micros(), &id_bytes(&job.job_id));
    let bytes = tree.get(key).unwrap()?;
    Some(decode_job(&key, &bytes).unwrap())
}
