//! The in-memory indexes (`State`): everything derived from the job records.
//!
//! **sled holds the truth; every index is derived.** sled stores the job records, join state,
//! unique keys, fire times and the parent → child index. The claim queue, the retry and lease
//! indexes, the newest-first list index and the status counters live in memory (`State`) and
//! are rebuilt from the records when the store opens. They describe every committed change,
//! written to sled yet or not; a crash loses them together with whatever had not reached
//! disk, so they can never disagree with the records they are rebuilt from. (What they cost
//! in memory: `store::sled`'s docs, "Why no persistent index trees".)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::codec::{decode_job, status_code, status_from_code};
use super::keys::{id_bytes, Id, JOB};
use super::overlay::Overlay;
use super::snapshot::Snapshot;
use crate::job::{Job, JobStatus};
use crate::store::{StoreError, StoreResult};

/// (255 − priority, created_at µs, id): claim order.
pub(super) type QueueKey = (u8, i64, Id);
/// (created_at µs, id): list order (reversed).
pub(super) type ListKey = (i64, Id);

/// Everything derived from the records. Rebuilt at open; changed only by `Change::commit`, after
/// the records are written.
#[derive(Default)]
pub(super) struct State {
    /// Claimable QUEUED jobs.
    pub(super) queue: BTreeSet<QueueKey>,
    /// QUEUED jobs with a `run_after`, by it; a claim moves the due ones to `queue`.
    pub(super) delayed: BTreeSet<(i64, QueueKey)>,
    /// PROCESSING jobs by lease end.
    pub(super) leases: BTreeSet<(i64, Id)>,
    /// The records of PROCESSING jobs (as stored), so that heartbeats and completions, the
    /// busiest changes, need no sled lookup. As many as there are running jobs.
    pub(super) running: HashMap<Id, sled::IVec>,
    /// Every job's creation time, by id: the first part of its record's key.
    pub(super) created: HashMap<Id, i64>,
    /// Every job, with what `list` filters on.
    pub(super) jobs: BTreeMap<ListKey, Entry>,
    /// Jobs per status, in `JobStatus::ALL` order.
    pub(super) counts: [u64; 5],
    /// The report types and counties of the list entries.
    pub(super) names: Names,
    /// Set when a change was only partly written: every later change is refused until the
    /// store is opened again (indexes rebuilt, the intent replayed).
    pub(super) broken: Option<Arc<str>>,
    /// [`SledStore::inject_write_failure`](super::SledStore::inject_write_failure): tests only.
    pub(super) injected_fault: Option<Arc<str>>,
    /// Committed writes on their way to sled.
    pub(super) overlay: Overlay,
}

/// A job's list entry: what `list` filters on.
#[derive(Clone, Copy)]
pub(super) struct Entry {
    pub(super) status: JobStatus,
    /// Interned in [`Names`].
    pub(super) report_type: u32,
    /// `Names::NONE` for no county.
    pub(super) county: u32,
}

/// Report types and counties, interned: a job's list entry holds two numbers, not two strings.
#[derive(Default)]
pub(super) struct Names {
    ids: HashMap<String, u32>,
}

impl Names {
    const NONE: u32 = u32::MAX;

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.ids.len()).expect("fewer than 4 billion names");
        self.ids.insert(name.to_owned(), id);
        id
    }

    /// The number of a name, if a job has it.
    pub(super) fn find(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
}

/// Where a record belongs in the indexes: what of a job they are derived from.
#[derive(Clone, Copy)]
pub(super) struct Placement {
    id: Id,
    pub(super) status: JobStatus,
    /// Its place in the claim queue.
    pub(super) queue: QueueKey,
    run_after: Option<i64>,
    lease_until: Option<i64>,
}

impl Placement {
    /// Where `job` belongs.
    pub(super) fn of(job: &Job) -> Placement {
        let id = id_bytes(&job.job_id);
        let created = job.created_at.timestamp_micros();
        Placement {
            id,
            status: job.status,
            queue: (255 - job.priority, created, id),
            run_after: job.run_after.map(|at| at.timestamp_micros()),
            lease_until: job.lease_until.map(|at| at.timestamp_micros()),
        }
    }

    fn list_key(&self) -> ListKey {
        (self.queue.1, self.id)
    }
}

/// A record written, as the indexes see it.
pub(super) struct Move {
    /// Where the record was (`None`: a new job).
    pub(super) old: Option<Placement>,
    /// Where it belongs now.
    pub(super) new: Placement,
    /// Report type and county of a new job, for its list entry.
    pub(super) names: Option<(String, Option<String>)>,
    /// The record as written.
    pub(super) record: sled::IVec,
}

impl State {
    /// What an index snapshot holds of these indexes (`snapshot.rs`).
    pub(super) fn snapshot(&self) -> Snapshot {
        let mut names = vec![String::new(); self.names.ids.len()];
        for (name, &id) in &self.names.ids {
            if let Some(slot) = names.get_mut(id as usize) {
                name.clone_into(slot);
            }
        }
        let mut running: Vec<_> = self
            .running
            .iter()
            .map(|(id, record)| (*id, record.to_vec()))
            .collect();
        running.sort_unstable();
        let mut created: Vec<_> = self.created.iter().map(|(id, at)| (*id, *at)).collect();
        created.sort_unstable();
        Snapshot {
            queue: self.queue.iter().copied().collect(),
            delayed: self.delayed.iter().copied().collect(),
            leases: self.leases.iter().copied().collect(),
            running,
            created,
            jobs: self
                .jobs
                .iter()
                .map(|(key, entry)| {
                    (
                        *key,
                        status_code(entry.status),
                        entry.report_type,
                        entry.county,
                    )
                })
                .collect(),
            counts: self.counts,
            names,
        }
    }

    /// The indexes a snapshot holds, checked for what the records would make of them: every
    /// status and name known, the counters those of the list entries.
    pub(super) fn from_snapshot(snapshot: Snapshot) -> Result<State, String> {
        let Snapshot {
            queue,
            delayed,
            leases,
            running,
            created,
            jobs,
            counts,
            names,
        } = snapshot;
        let mut state = State {
            queue: queue.into_iter().collect(),
            delayed: delayed.into_iter().collect(),
            leases: leases.into_iter().collect(),
            running: running
                .into_iter()
                .map(|(id, record)| (id, sled::IVec::from(record)))
                .collect(),
            created: created.into_iter().collect(),
            counts,
            ..State::default()
        };
        for (id, name) in names.into_iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| "too many names")?;
            if state.names.ids.insert(name, id).is_some() {
                return Err("a name is listed twice".into());
            }
        }
        let known = |name: u32| (name as usize) < state.names.ids.len();
        let mut tally = [0u64; 5];
        let mut entries = Vec::with_capacity(jobs.len());
        for (key, status, report_type, county) in jobs {
            let status = status_from_code(status).ok_or("an unknown status")?;
            if !known(report_type) || !(county == Names::NONE || known(county)) {
                return Err("a list entry names an unknown report type or county".into());
            }
            tally[status_index(status)] += 1;
            entries.push((
                key,
                Entry {
                    status,
                    report_type,
                    county,
                },
            ));
        }
        if tally != state.counts {
            return Err("its status counters disagree with its list entries".into());
        }
        state.jobs = entries.into_iter().collect();
        Ok(state)
    }

    /// The indexes of the records in `tree`.
    pub(super) fn rebuild(tree: &sled::Tree) -> StoreResult<State> {
        let mut state = State::default();
        let mut unreadable = 0;
        for entry in tree.scan_prefix([JOB]) {
            let (key, record) = entry.map_err(StoreError::Sled)?;
            match decode_job(&key, &record) {
                Ok(job) => state.apply(Move {
                    old: None,
                    new: Placement::of(&job),
                    names: Some((job.report_type, job.county)),
                    record,
                }),
                Err(error) => {
                    // One bad record must not keep every other job from running. Its key still
                    // names it, so that `get` reports it rather than "not found".
                    tracing::error!(%error, "skipping an unreadable job record");
                    unreadable += 1;
                    if let (Some(created), Some(id)) = (key.get(1..9), key.get(9..)) {
                        if let (Ok(created), Ok(id)) =
                            (<[u8; 8]>::try_from(created), Id::try_from(id))
                        {
                            let micros = (u64::from_be_bytes(created) ^ (1 << 63)) as i64;
                            state.created.insert(id, micros);
                        }
                    }
                }
            }
        }
        if unreadable > 0 {
            tracing::error!(
                unreadable,
                "job records that could not be read were left out of the queue"
            );
        }
        // Built one insert at a time, in key order, a B-tree's nodes end up a little over half
        // full; collected from sorted entries they are full.
        state.jobs = std::mem::take(&mut state.jobs).into_iter().collect();
        state.queue = std::mem::take(&mut state.queue).into_iter().collect();
        Ok(state)
    }

    /// Moves a record's index entries from where it was to where it belongs now.
    pub(super) fn apply(&mut self, change: Move) {
        let Move {
            old,
            new,
            names,
            record,
        } = change;
        if let Some(old) = old {
            match old.status {
                JobStatus::Queued => {
                    // Promotion moves a retry from `delayed` to `queue` without touching the
                    // record, so a QUEUED job leaves both.
                    self.queue.remove(&old.queue);
                    if let Some(at) = old.run_after {
                        self.delayed.remove(&(at, old.queue));
                    }
                }
                JobStatus::Processing => {
                    if let Some(until) = old.lease_until {
                        self.leases.remove(&(until, old.id));
                    }
                }
                _ => {}
            }
        }
        match new.status {
            JobStatus::Queued => match new.run_after {
                Some(at) => {
                    self.delayed.insert((at, new.queue));
                }
                None => {
                    self.queue.insert(new.queue);
                }
            },
            JobStatus::Processing => {
                if let Some(until) = new.lease_until {
                    self.leases.insert((until, new.id));
                }
            }
            _ => {}
        }
        if new.status == JobStatus::Processing {
            self.running.insert(new.id, record);
        } else if old.is_some_and(|old| old.status == JobStatus::Processing) {
            self.running.remove(&new.id);
        }
        if let Some((report_type, county)) = names {
            self.created.insert(new.id, new.queue.1);
            let entry = Entry {
                status: new.status,
                report_type: self.names.intern(&report_type),
                county: county
                    .as_deref()
                    .map_or(Names::NONE, |county| self.names.intern(county)),
            };
            self.jobs.insert(new.list_key(), entry);
        }
        let old_status = old.map(|old| old.status);
        if old_status != Some(new.status) {
            if let Some(status) = old_status {
                self.counts[status_index(status)] -= 1;
                if let Some(entry) = self.jobs.get_mut(&new.list_key()) {
                    entry.status = new.status;
                }
            }
            self.counts[status_index(new.status)] += 1;
        }
    }

    /// Moves retries whose `run_after` has come to the queue; returns how many.
    pub(super) fn promote_due(&mut self, now: DateTime<Utc>) -> usize {
        let now = now.timestamp_micros();
        let mut promoted = 0;
        while let Some(&(at, key)) = self.delayed.first() {
            if at > now {
                break;
            }
            self.delayed.pop_first();
            self.queue.insert(key);
            promoted += 1;
        }
        promoted
    }

    /// Drops a job from the claim, retry and lease indexes (after an entry disagreed with its
    /// record). Linear, but only ever on that path.
    pub(super) fn forget(&mut self, id: &Id) {
        self.queue.retain(|key| key.2 != *id);
        self.delayed.retain(|(_, key)| key.2 != *id);
        self.leases.retain(|(_, lease)| lease != id);
        self.running.remove(id);
    }
}

/// A status's place in `JobStatus::ALL` (and in `State::counts`).
fn status_index(status: JobStatus) -> usize {
    JobStatus::ALL
        .iter()
        .position(|s| *s == status)
        .expect("every status is in ALL")
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use crate::job::JobId;
    use crate::store::conformance::{at, new_job};
    use crate::store::sled::testing::open_at;

    use crate::store::{ListFilter, NoJoins, Outcome, Store};

    #[tokio::test]
    async fn indexes_are_rebuilt_from_the_records_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        let mut batch = Vec::new();
        for (priority, county) in [(1, "C1"), (9, "C2"), (5, "C1"), (9, "C1"), (0, "C3")] {
            let mut job = new_job("R", "S", Some(county));
            job.priority = priority;
            job.max_attempts = 3;
            batch.push(job);
        }
        store.enqueue(batch, None, at(0)).await.unwrap();
        let running = store
            .claim("w", 3, Duration::from_secs(10), at(1))
            .await
            .unwrap();
        // One retry waiting until at(50), one running with a lease until at(11), one done.
        store
            .complete(
                &running[0].job_id,
                running[0].version,
                Outcome::Failure {
                    error: "e".into(),
                    retry_at: Some(at(50)),
                },
                &[],
                at(2),
            )
            .await
            .unwrap();
        store
            .complete(
                &running[1].job_id,
                running[1].version,
                Outcome::Cancelled,
                &[],
                at(2),
            )
            .await
            .unwrap();
        let counts = store.counts().await.unwrap();
        let listed = store.list(ListFilter::default()).await.unwrap();
        let c1 = store
            .list(ListFilter {
                county: Some("C1".into()),
                ..ListFilter::default()
            })
            .await
            .unwrap();
        drop(store);

        let store = open_at(&path);
        assert_eq!(store.counts().await.unwrap(), counts);
        assert_eq!(store.list(ListFilter::default()).await.unwrap(), listed);
        let c1_again = store
            .list(ListFilter {
                county: Some("C1".into()),
                ..ListFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(c1_again, c1);
        // The queue order, the retry's wait and the lease all survived.
        let next = store
            .claim("w", 10, Duration::from_secs(100), at(20))
            .await
            .unwrap();
        assert_eq!(next.len(), 2, "the waiting retry was claimable early");
        assert!(next[0].priority >= next[1].priority);
        let expired = store.requeue_expired(at(30), &NoJoins).await.unwrap();
        assert_eq!(expired.requeued, vec![running[2].job_id.clone()]);
        let later = store
            .claim("w", 10, Duration::from_secs(100), at(50))
            .await
            .unwrap();
        let mut got: Vec<JobId> = later.iter().map(|job| job.job_id.clone()).collect();
        got.sort();
        let mut want = vec![running[0].job_id.clone(), running[2].job_id.clone()];
        want.sort();
        assert_eq!(got, want);
    }
}
