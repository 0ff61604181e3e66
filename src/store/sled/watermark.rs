//! The commit watermark: detecting a lost suffix of sled's log (see [`Watermark`]).

use std::path::Path;
use std::time::{Duration, Instant};

use super::codec::corrupt;
use super::keys::META_COMMIT;
use crate::store::{StoreError, StoreResult};

/// The watermark's file, beside sled's.
pub const WATERMARK_FILE: &str = "flowctl.commit";
const WATERMARK_MAGIC: &[u8; 8] = b"FLOWCTL\x01";
const WATERMARK_SLOT: usize = 32;

/// The number of the last commit round known durable, kept beside sled.
///
/// sled recovers the longest prefix of its log that reads back whole: a flipped bit or a
/// truncated segment loses everything after it, silently (completed jobs QUEUED again, jobs
/// gone). So every round of the group commit that writes numbers itself: it writes
/// `mcommit` = its number in sled, last, fsyncs sled, then writes the number here (fsynced
/// every [`WATERMARK_SYNC_INTERVAL`] and on close). At open, a log whose `mcommit` is below the
/// watermark lost durable rounds, and the store is refused ([`StoreError::Damaged`]) until
/// `flowctl store recover --accept-loss` takes what is left. The reverse (sled one round ahead,
/// a crash between the two fsyncs) is normal.
///
/// Two 32-byte slots (magic, round BE, the first 16 bytes of the SHA-256 of both); round `n` is
/// written to slot `n % 2`, so a torn write leaves the other, older one, which never raises a
/// false alarm. Stores opened without fsync ([`SledConfig::flush`] off) do not number rounds.
///
/// [`SledConfig::flush`]: super::SledConfig::flush
pub(super) struct Watermark {
    file: std::fs::File,
    /// The last round recorded.
    pub(super) round: u64,
    /// When the file was last fsynced.
    synced: Instant,
}

/// How often the watermark is fsynced: written every round (a `pwrite` of 32 bytes), it is
/// fsynced at most this often, and on close. Its fdatasync takes ~3.8 ms against ~0.2 ms for
/// sled's flush of a round (`cargo bench --bench store`, "commit watermark", p50 on this
/// machine): in every round it would multiply the flush thread's time per round many times
/// over; once a second it takes 0.4% of it. What reaches the disk is never ahead of sled (it
/// is written after sled's flush), so the lag raises no false alarm; it only means that after a
/// power cut, damage to the last second of rounds goes undetected.
const WATERMARK_SYNC_INTERVAL: Duration = Duration::from_secs(1);

fn watermark_slot(round: u64) -> [u8; WATERMARK_SLOT] {
    use sha2::Digest;
    let mut slot = [0; WATERMARK_SLOT];
    slot[..8].copy_from_slice(WATERMARK_MAGIC);
    slot[8..16].copy_from_slice(&round.to_be_bytes());
    let sum = sha2::Sha256::digest(&slot[..16]);
    slot[16..].copy_from_slice(&sum[..16]);
    slot
}

impl Watermark {
    /// The round the file holds; `None` if there is no file.
    pub(super) fn read(dir: &Path) -> StoreResult<Option<u64>> {
        let bytes = match std::fs::read(dir.join(WATERMARK_FILE)) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let round = bytes
            .chunks_exact(WATERMARK_SLOT)
            .filter_map(|slot| {
                let round = u64::from_be_bytes(slot[8..16].try_into().ok()?);
                (slot == watermark_slot(round)).then_some(round)
            })
            .max();
        match round {
            Some(round) => Ok(Some(round)),
            None => Err(StoreError::Damaged {
                path: dir.to_owned(),
                missing: format!("its commit watermark ({WATERMARK_FILE}) is unreadable"),
            }),
        }
    }

    /// Writes a new file holding `round`, durably (temporary file, fsync, rename, fsync of the
    /// directory).
    pub(super) fn create(dir: &Path, round: u64) -> StoreResult<Watermark> {
        use std::io::Write;
        let path = dir.join(WATERMARK_FILE);
        let tmp = dir.join(format!("{WATERMARK_FILE}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&[watermark_slot(round), watermark_slot(round)].concat())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Watermark::open(dir, round)
    }

    /// The existing file, holding `round`.
    pub(super) fn open(dir: &Path, round: u64) -> StoreResult<Watermark> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(WATERMARK_FILE))?;
        Ok(Watermark {
            file,
            round,
            synced: Instant::now(),
        })
    }

    /// Records that round `round` is durable in sled; fsyncs the file if `sync` or if
    /// [`WATERMARK_SYNC_INTERVAL`] has passed.
    pub(super) fn advance(&mut self, round: u64, sync: bool) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let offset = (round % 2) * WATERMARK_SLOT as u64;
        self.file.write_all_at(&watermark_slot(round), offset)?;
        if sync || self.synced.elapsed() >= WATERMARK_SYNC_INTERVAL {
            self.file.sync_data()?;
            self.synced = Instant::now();
        }
        self.round = round;
        Ok(())
    }
}

/// The last commit round sled's log holds (0: none).
pub(super) fn read_commit(tree: &sled::Tree) -> StoreResult<u64> {
    match tree.get(META_COMMIT).map_err(StoreError::Sled)? {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt(META_COMMIT, "the commit round is not 8 bytes")),
    }
}

#[cfg(test)]
mod tests {

    use crate::store::conformance::{at, new_job};
    use crate::store::sled::testing::open_at;
    use crate::store::sled::{SledConfig, SledStore};
    use crate::store::{Store, StoreError};

    /// A crash between sled's fsync and the watermark's leaves sled a round ahead: normal, not
    /// damage. A watermark ahead of sled is damage.
    #[tokio::test]
    async fn the_watermark_may_lag_sled_by_a_round_but_never_lead_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        for _ in 0..3 {
            store
                .enqueue(vec![new_job("R", "S", None)], None, at(0))
                .await
                .unwrap();
        }
        let round = super::read_commit(&store.tree).unwrap();
        assert!(round >= 3, "{round}");
        drop(store);
        super::Watermark::create(&path, round - 1).unwrap();
        let store = reopen(&path).expect("sled a round ahead opens");
        assert_eq!(super::read_commit(&store.tree).unwrap(), round);
        drop(store);
        super::Watermark::create(&path, round + 1).unwrap();
        match reopen(&path) {
            Err(StoreError::Damaged { missing, .. }) => {
                assert!(missing.contains("missing"), "{missing}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a store behind its watermark was opened"),
        }
        let recovered = SledStore::recover(&path).unwrap();
        assert_eq!(
            (recovered.survived, recovered.durable, recovered.jobs),
            (round, Some(round + 1), 3)
        );
        reopen(&path).expect("a recovered store opens");
    }

    fn reopen(path: &std::path::Path) -> Result<SledStore, StoreError> {
        SledStore::open(SledConfig::new(path))
    }
}
