//! The index snapshot (`flowctl.index`): the indexes as a clean close left them, so that the
//! next open reads them instead of every record.
//!
//! Rebuilding the indexes reads every job record, which costs a few seconds per million jobs
//! and, worse, leaves sled's node pages of every record resident: measured with 100k COMPLETED
//! jobs, ~300 bytes per job on top of the indexes' ~100 (`store::sled`'s docs, "memory"). An
//! open from a snapshot reads no record, so a restarted server holds the indexes and sled's
//! page table, and pages come in only as jobs are read.
//!
//! **A snapshot is used only when it is provably the indexes of the records on disk.** It is
//! written at a clean close, after the final flush round and sled's own flush, only when every
//! committed change reached sled (the overlay empty, the store not broken). It names the commit
//! round sled held then (`mcommit`) and the layout, and carries a SHA-256 of its body. At open
//! it is taken, checked and *deleted (the deletion fsynced) before anything writes to the
//! store*, so a store changed after the snapshot was read never has a snapshot beside it: a
//! crash later leaves none, and the next open reads the records. Anything that does not match
//! (another round or layout, a torn or damaged file, an interrupted change to replay, a store
//! opened to recover from damage) is logged and the records are read, as without a snapshot.
//! Read-only copies (`open_read_only`) are made without it.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::codec::LAYOUT_VERSION;
use super::indexes::State;

/// The snapshot's file, beside sled's.
pub(super) const SNAPSHOT_FILE: &str = "flowctl.index";
const MAGIC: &[u8; 8] = b"FLOWIDX1";
/// Magic, layout (u32 BE), round (u64 BE), SHA-256 of the body.
const HEADER: usize = 8 + 4 + 8 + 32;

/// Writes the snapshot of `state`, the indexes of sled's records at commit round `round`
/// (written whole under a temporary name, then renamed; not fsynced: a snapshot lost to a
/// power cut only means the next open reads the records).
pub(super) fn write(dir: &Path, state: &State, round: u64) -> std::io::Result<()> {
    let body = bincode::serde::encode_to_vec(state.snapshot(), bincode::config::standard())
        .map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&LAYOUT_VERSION.to_be_bytes());
    bytes.extend_from_slice(&round.to_be_bytes());
    bytes.extend_from_slice(&Sha256::digest(&body));
    bytes.extend_from_slice(&body);
    let temp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&bytes)?;
    drop(file);
    std::fs::rename(&temp, dir.join(SNAPSHOT_FILE))
}

/// The snapshot in `dir`, if there is one and it holds the indexes of commit round `round`;
/// the file is gone (and its removal durable) when this returns `Ok`. `Err`: it could not be
/// removed, and the store must not open (a later crash would leave a stale snapshot).
pub(super) fn take(dir: &Path, round: u64) -> std::io::Result<Option<State>> {
    let path = dir.join(SNAPSHOT_FILE);
    let _ = std::fs::remove_file(dir.join(format!("{SNAPSHOT_FILE}.tmp")));
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            tracing::warn!(%error, "the index snapshot could not be read; reading every record");
            Vec::new()
        }
    };
    std::fs::remove_file(&path)?;
    std::fs::File::open(dir)?.sync_all()?;
    match parse(&bytes, round) {
        Ok(state) => Ok(Some(state)),
        Err(why) => {
            if !bytes.is_empty() {
                tracing::warn!("the index snapshot was not used ({why}); reading every record");
            }
            Ok(None)
        }
    }
}

/// Removes a snapshot without reading it (an open that must read the records).
pub(super) fn discard(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(SNAPSHOT_FILE)) {
        Ok(()) => std::fs::File::open(dir)?.sync_all(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

fn parse(bytes: &[u8], round: u64) -> Result<State, String> {
    let (header, body) = bytes
        .split_at_checked(HEADER)
        .ok_or("shorter than its header")?;
    if &header[..8] != MAGIC {
        return Err("not an index snapshot".into());
    }
    let layout = u32::from_be_bytes(header[8..12].try_into().map_err(|_| "header")?);
    if layout != LAYOUT_VERSION {
        return Err(format!("layout {layout}, not {LAYOUT_VERSION}"));
    }
    let taken = u64::from_be_bytes(header[12..20].try_into().map_err(|_| "header")?);
    if taken != round {
        return Err(format!(
            "taken at commit round {taken}, the store is at {round}"
        ));
    }
    if Sha256::digest(body).as_slice() != &header[20..HEADER] {
        return Err("its checksum does not match (a torn or damaged file)".into());
    }
    let (snapshot, read): (Snapshot, usize) =
        bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map_err(|error| error.to_string())?;
    if read != body.len() {
        return Err("trailing bytes".into());
    }
    State::from_snapshot(snapshot)
}

/// What a snapshot holds: every index of [`State`], as sorted lists.
#[derive(Serialize, Deserialize, Default, PartialEq, Debug)]
pub(super) struct Snapshot {
    pub(super) queue: Vec<super::indexes::QueueKey>,
    pub(super) delayed: Vec<(i64, super::indexes::QueueKey)>,
    pub(super) leases: Vec<(i64, super::keys::Id)>,
    pub(super) running: Vec<(super::keys::Id, Vec<u8>)>,
    pub(super) created: Vec<(super::keys::Id, i64)>,
    /// List key, status code, report type, county.
    pub(super) jobs: Vec<(super::indexes::ListKey, u8, u32, u32)>,
    pub(super) counts: [u64; 5],
    /// Interned names, by number.
    pub(super) names: Vec<String>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::SNAPSHOT_FILE;
    use crate::job::JobStatus;
    use crate::store::conformance::{at, new_job};
    use crate::store::sled::indexes::State;
    use crate::store::sled::testing::open_at;
    use crate::store::sled::{lock, SledStore};
    use crate::store::{ListFilter, Outcome, Store};

    /// Queued (two priorities, two counties), a retry waiting, one running, one done, one
    /// cancelled.
    async fn varied_store(path: &Path) {
        let store = open_at(path);
        let mut batch = Vec::new();
        for (priority, county) in [(1, "C1"), (9, "C2"), (5, "C1"), (9, "C1"), (0, "C3")] {
            let mut job = new_job("R", "S", Some(county));
            job.priority = priority;
            job.max_attempts = 3;
            batch.push(job);
        }
        batch.push(new_job("OTHER", "ADMIN", None));
        store.enqueue(batch, None, at(0)).await.unwrap();
        let running = store
            .claim("w", 4, Duration::from_secs(10), at(1))
            .await
            .unwrap();
        let retry = Outcome::Failure {
            error: "e".into(),
            retry_at: Some(at(50)),
        };
        let done = Outcome::Success {
            result_path: "/r/x.csv".into(),
            rows_written: 1,
            sha256: "ab".repeat(32),
        };
        for (job, outcome) in running.iter().zip([retry, Outcome::Cancelled, done]) {
            store
                .complete(&job.job_id, job.version, outcome, &[], at(2))
                .await
                .unwrap();
        }
    }

    /// The store's indexes, names resolved (their numbers depend on the order jobs were seen).
    fn indexes(store: &SledStore) -> (super::Snapshot, Vec<(String, String)>) {
        let mut snapshot = lock(&store.state).snapshot();
        let name = |names: &[String], n: u32| names.get(n as usize).cloned().unwrap_or_default();
        let named = snapshot
            .jobs
            .iter()
            .map(|(_, _, report, county)| {
                (
                    name(&snapshot.names, *report),
                    name(&snapshot.names, *county),
                )
            })
            .collect();
        for entry in &mut snapshot.jobs {
            (entry.2, entry.3) = (0, 0);
        }
        snapshot.names.sort();
        (snapshot, named)
    }

    #[tokio::test]
    async fn a_clean_close_leaves_a_snapshot_that_opens_to_the_indexes_a_scan_builds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        varied_store(&path).await;
        assert!(
            path.join(SNAPSHOT_FILE).is_file(),
            "no snapshot after a clean close"
        );
        // The same store without its snapshot: its open reads every record.
        let scanned = dir.path().join("scanned");
        crate::store::sled::open::copy_dir(&path, &scanned).unwrap();
        assert!(!scanned.join(SNAPSHOT_FILE).exists(), "copies leave it out");
        let from_snapshot = open_at(&path);
        assert!(
            !path.join(SNAPSHOT_FILE).exists(),
            "an open store keeps no snapshot beside it"
        );
        let from_records = open_at(&scanned);
        assert_eq!(indexes(&from_snapshot), indexes(&from_records));
        assert_eq!(
            from_snapshot.list(ListFilter::default()).await.unwrap(),
            from_records.list(ListFilter::default()).await.unwrap()
        );
        // And it works on: the waiting retry, the running job's lease, the queue's order.
        let next = from_snapshot
            .claim("w", 10, Duration::from_secs(100), at(60))
            .await
            .unwrap();
        assert_eq!(next.len(), 3, "two queued and the retry now due");
        assert!(next[0].priority >= next[1].priority);
        let expired = from_snapshot
            .requeue_expired(at(30), &crate::store::NoJoins)
            .await
            .unwrap();
        assert_eq!(expired.requeued.len(), 1);
    }

    /// Replaces the store's snapshot with one of no jobs at the same commit round.
    fn plant_empty_snapshot(path: &Path) {
        let bytes = std::fs::read(path.join(SNAPSHOT_FILE)).unwrap();
        let round = u64::from_be_bytes(bytes[12..20].try_into().unwrap());
        super::write(path, &State::default(), round).unwrap();
    }

    /// The snapshot is what the open reads: one of the same round, however it came there, is
    /// taken as the store's indexes (which is why it is deleted before anything writes).
    #[tokio::test]
    async fn a_snapshot_of_the_stores_round_is_what_the_open_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        varied_store(&path).await;
        plant_empty_snapshot(&path);
        let store = open_at(&path);
        assert_eq!(store.counts().await.unwrap().values().sum::<u64>(), 0);
    }

    #[tokio::test]
    async fn a_snapshot_older_than_the_store_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        varied_store(&path).await;
        let old = std::fs::read(path.join(SNAPSHOT_FILE)).unwrap();
        let store = open_at(&path);
        store
            .enqueue(vec![new_job("LATE", "S", None)], None, at(3))
            .await
            .unwrap();
        drop(store);
        // As if the old snapshot had survived the later change.
        std::fs::write(path.join(SNAPSHOT_FILE), old).unwrap();
        let store = open_at(&path);
        let counts = store.counts().await.unwrap();
        assert_eq!(counts.values().sum::<u64>(), 7, "{counts:?}");
        assert!(!path.join(SNAPSHOT_FILE).exists());
    }

    #[tokio::test]
    async fn a_damaged_or_torn_snapshot_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        varied_store(&path).await;
        let good = std::fs::read(path.join(SNAPSHOT_FILE)).unwrap();
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        for bad in [
            flipped,
            good[..good.len() / 2].to_vec(),
            good[..10].to_vec(),
            Vec::new(),
            b"not a snapshot at all, just some text long enough for a header".to_vec(),
        ] {
            std::fs::write(path.join(SNAPSHOT_FILE), &bad).unwrap();
            let store = open_at(&path);
            let counts = store.counts().await.unwrap();
            assert_eq!(counts.values().sum::<u64>(), 6);
            assert_eq!(counts[&JobStatus::Processing], 1);
            assert!(!path.join(SNAPSHOT_FILE).exists());
            drop(store);
        }
    }

    #[tokio::test]
    async fn recovering_a_store_reads_its_records_not_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        varied_store(&path).await;
        plant_empty_snapshot(&path);
        let recovered = SledStore::recover(&path).unwrap();
        assert_eq!(recovered.jobs, 6);
    }
}
