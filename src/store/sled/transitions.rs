//! The change behind each mutating [`Store`](crate::store::Store) method, made in the writer's
//! turn: enqueue, claim, renew, complete (with the claim of the next job), cancel, and the
//! lease sweep. The `Store` impl (`store.rs`) waits for them to be durable.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::codec::{decode_value, encode_value};
use super::indexes::{Placement, QueueKey};
use super::keys::{time_key, unique_key, Id, FIRE};
use super::overlay::Write;
use super::store::SledStore;
use crate::job::{Job, JobId, JobStatus, NewJob};
use crate::status;
use crate::store::{
    store_time, CancelOutcome, Cas, Completion, Enqueued, Expired, JoinEdge, JoinRules, Outcome,
    ProgressUpdate, StoreError, StoreResult, UniqueKey,
};

/// Jobs changed per change by a lease sweep.
const SWEEP_CHUNK: usize = 1024;

impl SledStore {
    /// An enqueue: `batch` as new QUEUED jobs, unless `unique` names jobs created before.
    pub(super) fn enqueue_sync(
        &self,
        batch: Vec<NewJob>,
        unique: Option<&UniqueKey>,
        now: DateTime<Utc>,
    ) -> StoreResult<Enqueued> {
        let mut change = self.change();
        let unique_key = unique.map(unique_key);
        if let Some(key) = &unique_key {
            if let Some(bytes) = change.get(key)? {
                return Ok(Enqueued::Existing(decode_value(key, &bytes)?));
            }
        }
        let mut jobs = Vec::with_capacity(batch.len());
        for mut new in batch {
            new.estimated_completion = new.estimated_completion.map(store_time);
            jobs.push(change.insert_new(new, now)?);
        }
        if let Some(key) = unique_key {
            let ids: Vec<&JobId> = jobs.iter().map(|job| &job.job_id).collect();
            change.put(key, encode_value(&ids));
        }
        if let Some(UniqueKey::Fire {
            schedule,
            fire_time,
        }) = unique
        {
            let key = [&[FIRE][..], schedule.as_bytes()].concat();
            let fire_time = time_key(*fire_time);
            let newer = match change.get(&key)? {
                Some(old) => old.as_ref() < fire_time.as_slice(),
                None => true,
            };
            if newer {
                change.put(key, fire_time.to_vec());
            }
        }
        change.commit()?;
        Ok(Enqueued::Created(jobs))
    }

    /// Returns the claimed jobs, and whether due retries were moved to the queue.
    pub(super) fn claim_sync(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<(Vec<Job>, bool)> {
        let lease_until = add(now, lease);
        let mut change = self.change();
        let promoted = change.state.promote_due(now) > 0;
        let candidates: Vec<QueueKey> = change.state.queue.iter().take(max).copied().collect();
        let mut claimed = Vec::with_capacity(candidates.len());
        for key in candidates {
            let Some(job) = change.indexed(&key.2, JobStatus::Queued) else {
                continue;
            };
            claimed.push(change.start(job, worker, lease_until, now));
        }
        change.commit()?;
        Ok((claimed, promoted))
    }

    /// A heartbeat: the lease extended (and the progress updated, if given), lazily.
    pub(super) fn renew_sync(
        &self,
        job_id: &JobId,
        expected_version: u64,
        lease_until: DateTime<Utc>,
        progress: Option<ProgressUpdate>,
    ) -> StoreResult<Cas<Job>> {
        let lease_until = store_time(lease_until);
        let mut change = self.change();
        let old = match change.job_at(job_id, expected_version)? {
            Ok(old) => old,
            Err(current) => return Ok(Cas::Conflict { current }),
        };
        if old.status != JobStatus::Processing {
            return Err(StoreError::IllegalTransition {
                job: job_id.clone(),
                from: old.status,
                to: JobStatus::Processing,
            });
        }
        let mut job = old;
        let old = Placement::of(&job);
        job.lease_until = Some(lease_until);
        if let Some(update) = progress {
            job.progress = update.progress.min(100);
            job.rows_written = update.rows_written;
            job.estimated_completion = update.estimated_completion.map(store_time);
        }
        job.version += 1;
        change.put_job(Some(old), &job, Write::Lazy);
        change.commit()?;
        Ok(Cas::Applied(job))
    }

    /// A completion and, with `claim_for` (worker, lease end), the claim of the next job for
    /// that worker, as one change.
    pub(super) fn complete_sync(
        &self,
        job_id: &JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &[JoinEdge],
        now: DateTime<Utc>,
        claim_for: Option<(&str, DateTime<Utc>)>,
    ) -> StoreResult<(Cas<Completion>, Option<Job>)> {
        let mut change = self.change();
        let old = match change.job_at(job_id, expected_version)? {
            Ok(old) => old,
            Err(current) => return Ok((Cas::Conflict { current }, None)),
        };
        let mut job = old;
        let old = Placement::of(&job);
        let (to, retry_at) = match outcome {
            Outcome::Success {
                result_path,
                rows_written,
                sha256,
            } => {
                job.result_path = Some(result_path);
                job.rows_written = rows_written;
                job.result_sha256 = Some(sha256);
                job.progress = 100;
                (JobStatus::Completed, None)
            }
            Outcome::Failure { error, retry_at } => {
                job.error = Some(error);
                let retry = retry_at
                    .map(store_time)
                    .filter(|_| job.attempt < job.max_attempts && !job.cancel_requested);
                match retry {
                    Some(at) => (JobStatus::Queued, Some(at)),
                    None => (JobStatus::Failed, None),
                }
            }
            Outcome::Cancelled => (JobStatus::Cancelled, None),
        };
        if old.status != JobStatus::Processing {
            // Only a running attempt can end, whatever the outcome; a finished job is refused
            // its final status, not only the retry.
            let to = if to == JobStatus::Queued {
                JobStatus::Failed
            } else {
                to
            };
            return Err(StoreError::IllegalTransition {
                job: job_id.clone(),
                from: old.status,
                to,
            });
        }
        status::transition(old.status, to).map_err(|e| StoreError::illegal(job_id, e))?;
        if to == JobStatus::Queued {
            requeue(&mut job);
            // A retry already due goes straight to the queue.
            job.run_after = retry_at.filter(|at| *at > now);
        } else {
            finish(&mut job, to, now);
        }
        job.version += 1;
        change.put_job(Some(old), &job, Write::Durable);
        let (mut children_created, join_errors) = change.apply_joins(&job, joins, now)?;
        let claimed = match claim_for {
            Some((worker, lease_until)) => {
                change.claim_next(worker, lease_until, now, &mut children_created)
            }
            None => None,
        };
        change.commit()?;
        let completion = Completion {
            job,
            children_created,
            join_errors,
        };
        Ok((Cas::Applied(completion), claimed))
    }

    /// A cancellation: a QUEUED job ends CANCELLED, a running one is asked to stop.
    pub(super) fn cancel_sync(
        &self,
        job_id: &JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<CancelOutcome> {
        let mut change = self.change();
        let Some(old) = change.job(job_id)? else {
            return Ok(CancelOutcome::NotFound);
        };
        let mut job = old;
        let old = Placement::of(&job);
        match job.status {
            JobStatus::Queued => finish(&mut job, JobStatus::Cancelled, now),
            JobStatus::Processing if !job.cancel_requested => job.cancel_requested = true,
            JobStatus::Processing => return Ok(CancelOutcome::Requested(job)),
            _ => return Ok(CancelOutcome::AlreadyFinished(job)),
        }
        job.version += 1;
        change.put_job(Some(old), &job, Write::Durable);
        let outcome = match job.status {
            JobStatus::Cancelled => CancelOutcome::Cancelled(job),
            _ => CancelOutcome::Requested(job),
        };
        change.commit()?;
        Ok(outcome)
    }

    /// A lease sweep: every PROCESSING job whose lease ended before `before` (all of them with
    /// `None`), a chunk per change.
    pub(super) fn requeue_sync(
        &self,
        now: DateTime<Utc>,
        before: Option<DateTime<Utc>>,
        rules: &dyn JoinRules,
    ) -> StoreResult<Expired> {
        let mut expired = Expired::default();
        loop {
            let mut change = self.change();
            let ended: Vec<Id> = match before {
                Some(before) => change
                    .state
                    .leases
                    .range(..(before.timestamp_micros(), [0; JobId::LEN]))
                    .take(SWEEP_CHUNK)
                    .map(|(_, id)| *id)
                    .collect(),
                None => change
                    .state
                    .leases
                    .iter()
                    .take(SWEEP_CHUNK)
                    .map(|(_, id)| *id)
                    .collect(),
            };
            if ended.is_empty() {
                return Ok(expired);
            }
            for id in &ended {
                let Some(mut job) = change.indexed(id, JobStatus::Processing) else {
                    continue;
                };
                let old = Placement::of(&job);
                let to = if job.cancel_requested {
                    JobStatus::Cancelled
                } else if crate::store::recovers_after_lease_expiry(job.attempt, job.max_attempts) {
                    JobStatus::Queued
                } else {
                    JobStatus::Failed
                };
                status::transition(job.status, to)
                    .map_err(|e| StoreError::illegal(&job.job_id, e))?;
                if to == JobStatus::Queued {
                    requeue(&mut job);
                } else {
                    if to == JobStatus::Failed {
                        job.error = Some(crate::store::lease_expiry_error(
                            job.lease_owner.as_deref(),
                            job.attempt,
                            job.max_attempts,
                        ));
                    }
                    finish(&mut job, to, now);
                }
                job.version += 1;
                change.put_job(Some(old), &job, Write::Durable);
                if to == JobStatus::Queued {
                    expired.requeued.push(job.job_id);
                } else {
                    let joins = rules.joins_for(&job.report_type);
                    let (children_created, join_errors) = change.apply_joins(&job, joins, now)?;
                    expired.finished.push(Completion {
                        job,
                        children_created,
                        join_errors,
                    });
                }
            }
            change.commit()?;
            // Every lease taken above has left the index (the job moved on, or the entry was
            // dropped), so this ends.
            if ended.len() < SWEEP_CHUNK {
                return Ok(expired);
            }
        }
    }
}

/// Clears what belongs to a finished attempt, for a job going back to QUEUED (due at once; the
/// caller sets `run_after` for a delayed retry).
fn requeue(job: &mut Job) {
    job.status = JobStatus::Queued;
    job.run_after = None;
    job.attempt += 1;
    job.progress = 0;
    job.rows_written = 0;
    job.started_at = None;
    job.lease_owner = None;
    job.lease_until = None;
}

/// Marks a job finished in status `to` (COMPLETED, FAILED or CANCELLED).
fn finish(job: &mut Job, to: JobStatus, now: DateTime<Utc>) {
    job.status = to;
    job.completed_at = Some(now);
    job.lease_owner = None;
    job.lease_until = None;
}

/// `now` + `duration`, in store time (the latest time there is, if that overflows).
pub(super) fn add(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .map(store_time)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use crate::job::JobStatus;
    use crate::store::conformance::{self, at, new_job};
    use crate::store::sled::testing::open_at;

    use crate::store::{Cas, NoJoins, Store};

    /// Eager dispatch really happens here (the conformance suite allows a store not to), in
    /// the completion's own write, and survives a reopen.
    #[tokio::test]
    async fn a_completion_claims_its_dependent() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_at(&dir.path().join("db"));
        let joins = vec![conformance::edge(
            "dep:C",
            &["P"],
            crate::workflow::Condition::OnSuccess,
            "C",
        )];
        store
            .enqueue(vec![new_job("P", "S", None)], None, at(0))
            .await
            .unwrap();
        let parent = store
            .claim("w", 1, Duration::from_secs(30), at(0))
            .await
            .unwrap()
            .remove(0);
        let (cas, claimed) = store
            .complete_and_claim(
                &parent.job_id,
                parent.version,
                conformance::success(),
                &joins,
                at(1),
                "w",
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let Cas::Applied(done) = cas else { panic!() };
        let child = claimed.expect("the dependent is claimed");
        assert_eq!(done.children_created, vec![child.clone()]);
        assert_eq!(child.status, JobStatus::Processing);
        assert_eq!(child.version, 2);
        store.sync().await.unwrap();
        assert_eq!(store.flushes(), 2, "enqueue and completion: one fsync each");
        drop(store);
        let store = open_at(&dir.path().join("db"));
        assert_eq!(store.get(&child.job_id).await.unwrap(), Some(child));
    }

    /// A job with no retries whose worker dies every time: queued again after each of its 3
    /// crash recoveries, FAILED when the 4th lease expires, and the error says so truly (it
    /// said "lease of worker … expired on attempt 3 of 1").
    #[tokio::test]
    async fn a_job_whose_worker_keeps_dying_fails_after_its_crash_recoveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_at(&dir.path().join("db"));
        let job = conformance::start(&store, new_job("R", "S", None), at(0)).await;
        assert_eq!(job.max_attempts, 1);
        let mut now = 0;
        let mut lost = 0;
        let failed = loop {
            now += 31;
            let expired = store.requeue_expired(at(now), &NoJoins).await.unwrap();
            lost += 1;
            if let Some(done) = expired.finished.first() {
                break done.job.clone();
            }
            assert_eq!(expired.requeued, vec![job.job_id.clone()], "loss {lost}");
            let claimed = store
                .claim("worker-1", 1, Duration::from_secs(30), at(now))
                .await
                .unwrap();
            assert_eq!(claimed[0].attempt, lost + 1);
        };
        assert_eq!(lost, 1 + crate::store::LEASE_RECOVERY_ALLOWANCE);
        assert_eq!(lost, 4, "the documented default: 3 crash recoveries");
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.attempt, 4);
        assert_eq!(
            failed.error.as_deref(),
            Some(
                "worker worker-1 lost its lease on attempt 4, the last allowed: 1 attempt(s) \
                 (the report's retries + 1) plus 3 crash recoveries"
            )
        );
    }
}
