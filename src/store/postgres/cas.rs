//! Why a compare-and-swap write matched nothing. Renew, complete and cancel are `UPDATE … WHERE
//! job_id = $id AND version = $expected AND status = …`; nothing matched means a conflict (or an
//! illegal transition), told by reading the row.

use super::errors::TRIES;
use crate::job::{Job, JobId, JobStatus};
use crate::store::{Cas, StoreError, StoreResult};

/// Why a CAS write to `job_id` at `expected` matched nothing: `Some(Conflict)`, an illegal
/// transition error, or `None` if the job is (again) as expected and the write should be tried
/// again.
pub(super) fn refused<T>(
    job_id: &JobId,
    expected: u64,
    current: Option<Job>,
    to: JobStatus,
) -> StoreResult<Option<Cas<T>>> {
    match current {
        None => Ok(Some(Cas::Conflict { current: None })),
        Some(job) if job.version != expected => Ok(Some(Cas::Conflict { current: Some(job) })),
        Some(job) if job.status != JobStatus::Processing => Err(StoreError::IllegalTransition {
            job: job_id.clone(),
            from: job.status,
            to,
        }),
        Some(_) => Ok(None),
    }
}

/// Counts the times a CAS write matched nothing although the job read back as expected (it
/// moved in between): a few are races, more is a bug, reported rather than looped on.
#[derive(Default)]
pub(super) struct Stuck(u32);

impl Stuck {
    /// One more miss of the write to `job_id`: an error once there were [`TRIES`].
    pub(super) fn check(&mut self, job_id: &JobId) -> StoreResult<()> {
        self.0 += 1;
        if self.0 < TRIES {
            return Ok(());
        }
        Err(StoreError::Postgres(format!(
            "a write to job {job_id} matched nothing {TRIES} times although the job was as \
             expected"
        )))
    }
}
