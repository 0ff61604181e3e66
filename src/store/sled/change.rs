//! One change: the writer's turn (the state lock), reading through its own writes, and its
//! commit into the overlay and the indexes.
//!
//! **One writer.** Every change runs under one mutex, reading the records it needs and
//! committing what it writes, then updating the indexes. sled holds an exclusive file lock,
//! so this process is the only writer there is, and changes are serializable: two parents of
//! one join completing at the same instant are two turns of this mutex, and exactly one of
//! them fires the child.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::codec::{decode_job, decode_value, encode_job, encode_value};
use super::indexes::{Move, Placement, State};
use super::intent::needs_intent;
use super::keys::{id_bytes, job_id_from, job_key, join_key, Id, CHILD, JOB};
use super::lock;
use super::overlay::Write;
use super::writer::broken;
use crate::job::{Job, JobId, JobStatus, NewJob};
use crate::store::{Event, JoinEdge, JoinError, JoinState, StoreError, StoreResult};

/// One change: the writer's turn (the state lock) and its writes. Reads see the change's own
/// writes, then the overlay's, then sled's; `commit` hands the writes to the overlay and moves
/// the indexes.
pub(super) struct Change<'s> {
    tree: &'s sled::Tree,
    /// The writer's turn: the indexes and the overlay, locked.
    pub(super) state: MutexGuard<'s, State>,
    /// Each key's value, and whether it must be on disk before the change is reported durable.
    writes: BTreeMap<sled::IVec, (Option<sled::IVec>, Write)>,
    /// Every record written, in order, for the indexes.
    moves: Vec<Move>,
    /// Ids of the jobs this change creates.
    new_ids: HashSet<Id>,
}

impl<'s> Change<'s> {
    /// Takes the writer's turn (locks `state`) for a change to `tree`.
    pub(super) fn begin(tree: &'s sled::Tree, state: &'s Mutex<State>) -> Change<'s> {
        Change {
            tree,
            state: lock(state),
            writes: BTreeMap::new(),
            moves: Vec::new(),
            new_ids: HashSet::new(),
        }
    }

    /// A key's value as this change sees it.
    pub(super) fn get(&self, key: &[u8]) -> StoreResult<Option<sled::IVec>> {
        if let Some((value, _)) = self.writes.get(key) {
            return Ok(value.clone());
        }
        if let Some(pending) = self.state.overlay.get(key) {
            return Ok(pending);
        }
        if let Some(record) = key
            .strip_prefix(&[JOB])
            .and_then(|rest| rest.get(8..))
            .and_then(|id| self.state.running.get(id))
        {
            return Ok(Some(record.clone()));
        }
        self.tree.get(key).map_err(StoreError::Sled)
    }

    /// A durable write of `value` to `key`.
    pub(super) fn put(&mut self, key: impl Into<sled::IVec>, value: Vec<u8>) {
        self.write(key.into(), Some(value.into()), Write::Durable);
    }

    fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.write(key.into(), None, Write::Durable);
    }

    /// A write is lazy only if every write of this change to its key is.
    fn write(&mut self, key: sled::IVec, value: Option<sled::IVec>, kind: Write) {
        let kind = match self.writes.get(&key) {
            Some((_, Write::Durable)) => Write::Durable,
            _ => kind,
        };
        self.writes.insert(key, (value, kind));
    }

    /// A job, as this change sees it.
    pub(super) fn job(&self, job_id: &JobId) -> StoreResult<Option<Job>> {
        let id = id_bytes(job_id);
        let Some(created) = self.state.created.get(&id).copied() else {
            // Not a job, or one written by this change (which never reads those back).
            return Ok(None);
        };
        let key = job_key(created, &id);
        match self.get(&key)? {
            Some(bytes) => decode_job(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The job if it is at `expected_version`, else `Err(current)` for a CAS conflict.
    pub(super) fn job_at(
        &self,
        job_id: &JobId,
        expected_version: u64,
    ) -> StoreResult<Result<Job, Option<Job>>> {
        match self.job(job_id)? {
            Some(job) if job.version == expected_version => Ok(Ok(job)),
            current => Ok(Err(current)),
        }
    }

    /// The record an index entry points to, if it is in `status` as the index says. An entry
    /// that disagrees (only possible through a bug or an unreadable record) is dropped, so
    /// that it cannot block the queue.
    pub(super) fn indexed(&mut self, id: &Id, status: JobStatus) -> Option<Job> {
        let job = job_id_from(id).and_then(|job_id| self.job(&job_id));
        match job {
            Ok(Some(job)) if job.status == status => return Some(job),
            Ok(found) => tracing::error!(
                job_id = %String::from_utf8_lossy(id),
                found = ?found.map(|job| job.status),
                expected = %status,
                "an index entry disagreed with its job record; dropped it"
            ),
            Err(error) => tracing::error!(
                %error,
                "an indexed job record is unreadable; dropped it from the index"
            ),
        }
        self.state.forget(id);
        None
    }

    /// Writes `new`, whose record was at `old` in the indexes (`None`: a new job).
    pub(super) fn put_job(&mut self, old: Option<Placement>, new: &Job, kind: Write) {
        let id = id_bytes(&new.job_id);
        let names = match old {
            Some(_) => None,
            None => {
                for parent in &new.parent_job_ids {
                    let key = [&[CHILD][..], parent.as_str().as_bytes(), &id].concat();
                    self.put(key, Vec::new());
                }
                Some((new.report_type.clone(), new.county.clone()))
            }
        };
        let record = sled::IVec::from(encode_job(new));
        let key = job_key(new.created_at.timestamp_micros(), &id);
        self.write(key.as_slice().into(), Some(record.clone()), kind);
        self.moves.push(Move {
            old,
            new: Placement::of(new),
            names,
            record,
        });
    }

    /// Inserts a new QUEUED job under a fresh id (drawn again on a collision).
    pub(super) fn insert_new(&mut self, new: NewJob, now: DateTime<Utc>) -> StoreResult<Job> {
        let job_id = loop {
            let candidate = JobId::generate();
            let id = id_bytes(&candidate);
            if !self.state.created.contains_key(&id) && self.new_ids.insert(id) {
                break candidate;
            }
            tracing::debug!(job_id = %candidate, "job id collision; drawing again");
        };
        let job = new.into_job(job_id, now);
        self.put_job(None, &job, Write::Durable);
        Ok(job)
    }

    /// Claims `job` (QUEUED, as stored) for `worker`.
    pub(super) fn start(
        &mut self,
        mut job: Job,
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Job {
        let old = Placement::of(&job);
        job.status = JobStatus::Processing;
        job.started_at = Some(now);
        job.lease_owner = Some(worker.to_owned());
        job.lease_until = Some(lease_until);
        job.version += 1;
        self.put_job(Some(old), &job, Write::Lazy);
        job
    }

    /// Claims for `worker` the job a claim of one would get: the head of the queue, or one of
    /// `fresh` (jobs this change created, not in the queue until it commits) if it comes
    /// first. A claimed fresh job is updated in place.
    pub(super) fn claim_next(
        &mut self,
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
        fresh: &mut [Job],
    ) -> Option<Job> {
        self.state.promote_due(now);
        let head = self.state.queue.first().copied();
        let newest = fresh
            .iter()
            .enumerate()
            .filter(|(_, job)| job.status == JobStatus::Queued && job.run_after.is_none())
            .map(|(i, job)| (Placement::of(job).queue, i))
            .min();
        match (head, newest) {
            (head, Some((key, i))) if head.is_none_or(|head| key < head) => {
                let job = self.start(fresh[i].clone(), worker, lease_until, now);
                fresh[i] = job.clone();
                Some(job)
            }
            (Some(head), _) => {
                let job = self.indexed(&head.2, JobStatus::Queued)?;
                Some(self.start(job, worker, lease_until, now))
            }
            (None, _) => None,
        }
    }

    /// The join rule for `job`'s completion event (if it emits one): records the event for
    /// every edge that accepts it, and creates the children that fire.
    pub(super) fn apply_joins(
        &mut self,
        job: &Job,
        joins: &[JoinEdge],
        now: DateTime<Utc>,
    ) -> StoreResult<(Vec<Job>, Vec<JoinError>)> {
        let mut children = Vec::new();
        let mut errors = Vec::new();
        let Some(event) = Event::of(job.status) else {
            return Ok((children, errors));
        };
        for (i, edge) in joins.iter().enumerate() {
            if !edge.accepts(job, event)
                || joins[..i].iter().any(|seen| seen.join_id == edge.join_id)
            {
                continue;
            }
            if let Err(message) = edge.validate() {
                errors.push(JoinError {
                    join_id: edge.join_id.clone(),
                    message,
                });
                continue;
            }
            let key = join_key(&edge.join_id, &job.role, job.county.as_deref());
            let stored = self.get(&key)?;
            let mut state = match &stored {
                None => JoinState::default(),
                Some(bytes) => decode_value(&key, bytes).unwrap_or_else(|error| {
                    errors.push(JoinError {
                        join_id: edge.join_id.clone(),
                        message: format!("pending events of this scope were lost: {error}"),
                    });
                    JoinState::default()
                }),
            };
            let fired = state.record(edge, job);
            // A state emptied by firing leaves no key behind.
            if !state.pending.is_empty() {
                self.put(key, encode_value(&state));
            } else if stored.is_some() {
                self.remove(key);
            }
            if let Some(parent_job_ids) = fired {
                let child = edge.child.instantiate(job, parent_job_ids);
                children.push(self.insert_new(child, now)?);
            }
        }
        Ok((children, errors))
    }

    /// Hands the writes to the overlay (the flush thread moves them into sled, behind an
    /// intent if this change must land all or nothing: see [`needs_intent`]), then moves the
    /// indexes.
    pub(super) fn commit(mut self) -> StoreResult<()> {
        if let Some(failure) = &self.state.broken {
            return Err(broken(failure));
        }
        let writes = std::mem::take(&mut self.writes);
        let intent = needs_intent(writes.keys(), !self.new_ids.is_empty());
        let now = Instant::now();
        let state = &mut *self.state;
        state.overlay.intent |= intent;
        for (key, (value, kind)) in writes {
            state.overlay.put(key, value, kind, now);
        }
        for change in std::mem::take(&mut self.moves) {
            state.apply(change);
        }
        Ok(())
    }
}
