//! The flush thread's side of the store ([`Writer`]): one round drains the overlay into sled
//! (behind an intent if needed), numbers the round, fsyncs, and advances the commit
//! watermark. A failed write or fsync stops the store.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use super::flusher::Round;
use super::indexes::State;
use super::intent::{encode_intent, INTENT};
use super::keys::META_COMMIT;
use super::lock;
use super::overlay::{Drained, LAZY_WRITE_DELAY};
use super::watermark::Watermark;
use crate::store::StoreError;

/// The flush thread's side of the store: moves the overlay into sled, then fsyncs.
pub(super) struct Writer {
    /// sled's database, for its fsync (`Db::flush`).
    pub(super) db: sled::Db,
    /// The `flowctl` tree.
    pub(super) tree: sled::Tree,
    /// The intent's tree (see `intent.rs`).
    pub(super) intents: sled::Tree,
    /// The store's state, with the overlay this drains.
    pub(super) state: Arc<Mutex<State>>,
    /// [`SledConfig::flush`](super::SledConfig::flush).
    pub(super) fsync: bool,
    /// The store's subscribers, woken when it stops so that a dispatcher notices at once.
    pub(super) wake: watch::Sender<u64>,
    /// The last commit round made durable, beside sled (see [`Watermark`]).
    pub(super) watermark: Watermark,
}

impl Writer {
    /// One round: returns whether it fsynced.
    pub(super) fn write(&mut self, round: Round) -> Result<bool, String> {
        let lazy_before = match round {
            Round::Waited | Round::Tick => Instant::now().checked_sub(LAZY_WRITE_DELAY),
            Round::Final => None,
        };
        let (drained, fault) = {
            let mut state = lock(&self.state);
            if let Some(failure) = &state.broken {
                return Err(failure.to_string());
            }
            (
                state.overlay.drain(lazy_before),
                state.injected_fault.clone(),
            )
        };
        if drained.writes.is_empty() && round == Round::Tick {
            return Ok(false);
        }
        // Each round that writes with fsync numbers itself in sled, last, and in the
        // watermark once sled's fsync is done: at open, a log that ends before the watermark's
        // round lost durable changes.
        let numbered = self.fsync && !drained.writes.is_empty();
        let round_number = self.watermark.round + 1;
        let applied = match fault {
            Some(fault) if !drained.writes.is_empty() => Err(sled::Error::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                fault.to_string(),
            ))),
            _ => self.apply(&drained).and_then(|()| {
                if numbered {
                    self.tree
                        .insert(META_COMMIT, &round_number.to_be_bytes())
                        .map(drop)?;
                }
                Ok(())
            }),
        };
        if let Err(error) = applied {
            // Part of the drain may be in sled, and nothing says which: only the next open
            // (rebuilding the indexes, replaying the intent) can be trusted to agree with the
            // records. Refuse every later change until then.
            return Err(self.stop(format!("a change was only partly written ({error})")));
        }
        lock(&self.state).overlay.written(&drained);
        if self.fsync {
            if let Err(error) = self.db.flush() {
                // Nothing written since the last good fsync can be trusted to be on disk.
                return Err(self.stop(format!("fsync failed ({error})")));
            }
            if numbered {
                let sync = round == Round::Final;
                if let Err(error) = self.watermark.advance(round_number, sync) {
                    return Err(self.stop(format!("writing the commit watermark failed ({error})")));
                }
            }
        }
        Ok(self.fsync)
    }

    /// Stops the store: every later change fails with [`StoreError::Stopped`].
    fn stop(&self, failure: String) -> String {
        tracing::error!(%failure, "the job store stopped accepting changes; restart flowctl");
        lock(&self.state).broken = Some(failure.as_str().into());
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
        failure
    }

    fn apply(&self, drained: &Drained) -> sled::Result<()> {
        if drained.intent {
            let writes = drained
                .writes
                .iter()
                .map(|(key, value, _)| (key.as_ref(), value.as_deref()));
            self.intents.insert(INTENT, encode_intent(writes))?;
        }
        for (key, value, _) in &drained.writes {
            match value {
                Some(value) => self.tree.insert(key, value.clone()).map(drop)?,
                None => self.tree.remove(key).map(drop)?,
            }
        }
        Ok(())
    }
}

/// The error of every change refused after the store stopped (`failure` says why).
pub(super) fn broken(failure: &str) -> StoreError {
    StoreError::Stopped {
        reason: format!("{failure}; restart flowctl to recover it"),
    }
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use crate::job::JobStatus;
    use crate::store::conformance::{self, at, new_job};
    use crate::store::sled::overlay;
    use crate::store::sled::testing::{open_at, raw_sled, stored_job};
    use crate::store::{Cas, Outcome, Store};

    /// A claim is seen at once by every read, reaches sled within about `LAZY_WRITE_DELAY`
    /// without anyone waiting for it, and a completion soon after writes the record once.
    #[tokio::test]
    async fn claims_reach_disk_late_and_completions_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_at(&dir.path().join("db"));
        let jobs = conformance::created(
            store
                .enqueue(vec![new_job("R", "S", None); 2], None, at(0))
                .await
                .unwrap(),
        );
        assert_eq!(
            stored_job(&store.tree, &jobs[0]).unwrap().status,
            JobStatus::Queued
        );
        let started = std::time::Instant::now();
        let claimed = store
            .claim("w", 2, Duration::from_secs(30), at(1))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        let seen = store.get(&claimed[0].job_id).await.unwrap().unwrap();
        assert_eq!(seen.status, JobStatus::Processing);
        if started.elapsed() < overlay::LAZY_WRITE_DELAY {
            assert_eq!(
                stored_job(&store.tree, &claimed[0]).unwrap().status,
                JobStatus::Queued,
                "a claim is not written at once"
            );
        }
        // The completion is on disk when it returns, whatever became of the claim.
        let Cas::Applied(done) = store
            .complete(
                &claimed[0].job_id,
                claimed[0].version,
                Outcome::Cancelled,
                &[],
                at(2),
            )
            .await
            .unwrap()
        else {
            panic!("not applied")
        };
        assert_eq!(stored_job(&store.tree, &done.job), Some(done.job.clone()));
        // The other claim gets there on its own.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stored_job(&store.tree, &claimed[1]).unwrap().status != JobStatus::Processing {
            assert!(
                std::time::Instant::now() < deadline,
                "the claim never reached sled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            stored_job(&store.tree, &claimed[1]),
            Some(claimed[1].clone())
        );
    }

    /// Closing writes what is still on its way, lazy writes included.
    #[tokio::test]
    async fn closing_writes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        let claimed = conformance::start(&store, new_job("R", "S", None), at(1)).await;
        drop(store);
        let db = raw_sled(&path);
        let tree = db.open_tree("flowctl").unwrap();
        assert_eq!(stored_job(&tree, &claimed), Some(claimed));
    }
}
