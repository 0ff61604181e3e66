//! Cancelling: a QUEUED job is CANCELLED at once; a PROCESSING one is marked
//! `cancel_requested`, for its worker to stop.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::cas::Stuck;
use super::errors::pg_error;
use super::rows::{columns, decode_job, read_job};
use super::store::PgStore;
use crate::job::{JobId, JobStatus};
use crate::store::{CancelOutcome, StoreResult};

/// Cancels job `$1` at `$2` if QUEUED, or asks for its cancellation if PROCESSING.
static CANCEL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET
             status = CASE WHEN status = 'QUEUED' THEN 'CANCELLED' ELSE status END,
             completed_at = CASE WHEN status = 'QUEUED' THEN $2 ELSE completed_at END,
             lease_owner = CASE WHEN status = 'QUEUED' THEN NULL ELSE lease_owner END,
             lease_until = CASE WHEN status = 'QUEUED' THEN NULL ELSE lease_until END,
             cancel_requested = (status = 'PROCESSING') OR cancel_requested,
             version = version + 1
         WHERE job_id = $1 AND (status = 'QUEUED' OR (status = 'PROCESSING' AND NOT cancel_requested))
         RETURNING {}",
        columns("")
    )
});

impl PgStore {
    /// The cancellation of `job_id`, told by the row it left (or found).
    pub(super) async fn cancel_job(
        &self,
        job_id: &JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<CancelOutcome> {
        let client = self.inner.client().await?;
        let statement = client.prepare_cached(&CANCEL).await.map_err(pg_error)?;
        let mut stuck = Stuck::default();
        loop {
            let row = client
                .query_opt(&statement, &[&job_id.as_str(), &now])
                .await
                .map_err(pg_error)?;
            if let Some(row) = row {
                let job = decode_job(&row, 0)?;
                return Ok(match job.status {
                    JobStatus::Cancelled => CancelOutcome::Cancelled(job),
                    _ => CancelOutcome::Requested(job),
                });
            }
            match read_job(&client, job_id).await? {
                None => return Ok(CancelOutcome::NotFound),
                Some(job) if job.status == JobStatus::Processing && job.cancel_requested => {
                    return Ok(CancelOutcome::Requested(job))
                }
                Some(job) if job.status.is_terminal() => {
                    return Ok(CancelOutcome::AlreadyFinished(job))
                }
                // It moved between the two statements: try again.
                Some(_) => stuck.check(job_id)?,
            }
        }
    }
}
