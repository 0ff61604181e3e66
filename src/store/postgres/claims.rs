//! Claims and lease renewals.
//!
//! A claim is `UPDATE jobs SET status = 'PROCESSING', … WHERE job_id = ANY(ARRAY(SELECT job_id
//! FROM jobs WHERE status = 'QUEUED' AND (run_after IS NULL OR run_after <= $now) ORDER BY
//! priority DESC, created_at, job_id LIMIT $max FOR UPDATE SKIP LOCKED)) RETURNING …`: one round
//! trip for up to `max` jobs. `= ANY(ARRAY(…))` rather than `IN (…)` keeps the outer update on
//! primary-key lookups whatever the planner thinks of the subquery's size.
//!
//! A renewal extends the lease (and records progress) by a compare-and-swap on the version
//! (see `cas`).

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::cas::{refused, Stuck};
use super::errors::pg_error;
use super::rows::{columns, decode_job, decode_jobs, read_job};
use super::store::PgStore;
use crate::job::{Job, JobId, JobStatus};
use crate::store::{store_time, Cas, ProgressUpdate, StoreResult};

/// Takes up to `$4` claimable QUEUED jobs at `$1` for worker `$2`, leased until `$3`.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = 'PROCESSING', started_at = $1, lease_owner = $2,
                         lease_until = $3, version = version + 1
         WHERE job_id = ANY(ARRAY(
             SELECT job_id FROM jobs
             WHERE status = 'QUEUED' AND (run_after IS NULL OR run_after <= $1)
             ORDER BY priority DESC, created_at, job_id
             LIMIT $4
             FOR UPDATE SKIP LOCKED))
         RETURNING {}",
        columns("")
    )
});

/// Extends the lease of PROCESSING job `$1` at version `$2` to `$3`, with the progress
/// `$5`–`$7` when `$4`.
static RENEW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET lease_until = $3, version = version + 1,
                         progress = CASE WHEN $4 THEN $5 ELSE progress END,
                         rows_written = CASE WHEN $4 THEN $6 ELSE rows_written END,
                         estimated_completion_time =
                             CASE WHEN $4 THEN $7 ELSE estimated_completion_time END
         WHERE job_id = $1 AND version = $2 AND status = 'PROCESSING'
         RETURNING {}",
        columns("")
    )
});

/// `now` + `duration`, to the microsecond, saturating.
pub(super) fn add(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .map(store_time)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl PgStore {
    pub(super) async fn claim_jobs(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Job>> {
        let lease_until = add(now, lease);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let client = self.inner.client().await?;
        let statement = client.prepare_cached(&CLAIM).await.map_err(pg_error)?;
        let rows = client
            .query(&statement, &[&now, &worker, &lease_until, &limit])
            .await
            .map_err(pg_error)?;
        let mut jobs = decode_jobs(&rows, 0)?;
        jobs.sort_by(|a, b| {
            (std::cmp::Reverse(a.priority), a.created_at, &a.job_id).cmp(&(
                std::cmp::Reverse(b.priority),
                b.created_at,
                &b.job_id,
            ))
        });
        Ok(jobs)
    }

    pub(super) async fn renew_job(
        &self,
        job_id: &JobId,
        expected_version: u64,
        lease_until: DateTime<Utc>,
        progress: Option<ProgressUpdate>,
    ) -> StoreResult<Cas<Job>> {
        let lease_until = store_time(lease_until);
        let has_progress = progress.is_some();
        let percent = progress
            .as_ref()
            .map_or(0, |p| i16::from(p.progress.min(100)));
        let rows_written = progress
            .as_ref()
            .map_or(0, |p| i64::try_from(p.rows_written).unwrap_or(i64::MAX));
        let estimated = progress
            .as_ref()
            .and_then(|p| p.estimated_completion.map(store_time));
        let version = expected_version as i64;
        let client = self.inner.client().await?;
        let statement = client.prepare_cached(&RENEW).await.map_err(pg_error)?;
        let mut stuck = Stuck::default();
        loop {
            let row = client
                .query_opt(
                    &statement,
                    &[
                        &job_id.as_str(),
                        &version,
                        &lease_until,
                        &has_progress,
                        &percent,
                        &rows_written,
                        &estimated,
                    ],
                )
                .await
                .map_err(pg_error)?;
            if let Some(row) = row {
                return Ok(Cas::Applied(decode_job(&row, 0)?));
            }
            let current = read_job(&client, job_id).await?;
            if let Some(cas) = refused(job_id, expected_version, current, JobStatus::Processing)? {
                return Ok(cas);
            }
            stuck.check(job_id)?;
        }
    }
}
