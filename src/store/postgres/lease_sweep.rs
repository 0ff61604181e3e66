//! The lease sweep: the jobs whose worker stopped renewing its lease are queued again, or
//! FAILED when no attempt is left (CANCELLED when their cancellation was asked).
//!
//! The sweep has the same shape as a claim (see `claims`), over `lease_until < $now`, `SKIP
//! LOCKED` (a job being completed right now is left to its worker), in chunks of
//! [`SWEEP_CHUNK`] per transaction, with the joins of the jobs it fails in the same transaction.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::errors::{retrying, Failed};
use super::joins::apply_joins;
use super::rows::{columns, decode_jobs};
use super::store::PgStore;
use crate::job::JobStatus;
use crate::store::{
    lease_expiry_error, store_time, Completion, Expired, JoinRules, StoreResult,
    LEASE_RECOVERY_ALLOWANCE,
};

/// Jobs changed per transaction by a lease sweep.
const SWEEP_CHUNK: i64 = 1024;

/// The error of a job the sweep fails, as the SQL expression of a `format()` pattern with the
/// lost lease's owner, attempt and `max_attempts` as its arguments 1 to 3: the text of
/// [`lease_expiry_error`], the sled store's too, with those three parts cut out (the allowance
/// is the constant [`LEASE_RECOVERY_ALLOWANCE`] in both, the sweep's `$2`).
static LEASE_EXPIRY_PATTERN: LazyLock<String> = LazyLock::new(|| {
    // Values that appear nowhere else in the text, replaced by the pattern's arguments.
    const OWNER: &str = "\u{1}owner\u{1}";
    const ATTEMPT: u32 = u32::MAX;
    const MAX_ATTEMPTS: u32 = u32::MAX - 1;
    let text = lease_expiry_error(Some(OWNER), ATTEMPT, MAX_ATTEMPTS);
    let pattern = text
        .replace('%', "%%")
        .replace('\'', "''")
        .replacen(OWNER, "%1$s", 1)
        .replacen(&ATTEMPT.to_string(), "%2$s", 1)
        .replacen(&MAX_ATTEMPTS.to_string(), "%3$s", 1);
    format!("'{pattern}'")
});

/// Takes back up to `$3` PROCESSING jobs whose lease ended before `$1`; `$2` is the lease
/// recovery allowance.
static SWEEP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs j SET
             status = CASE WHEN j.cancel_requested THEN 'CANCELLED'
                           WHEN j.attempt < j.max_attempts + $2 THEN 'QUEUED'
                           ELSE 'FAILED' END,
             error = CASE WHEN NOT j.cancel_requested AND j.attempt >= j.max_attempts + $2
                          THEN format({},
                                      coalesce(j.lease_owner, '?'), j.attempt, j.max_attempts)
                          ELSE j.error END,
             run_after = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                              THEN NULL ELSE j.run_after END,
             attempt = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                            THEN j.attempt + 1 ELSE j.attempt END,
             progress = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                             THEN 0 ELSE j.progress END,
             rows_written = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                                 THEN 0 ELSE j.rows_written END,
             started_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                               THEN NULL ELSE j.started_at END,
             completed_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts + $2
                                 THEN j.completed_at ELSE $1 END,
             lease_owner = NULL,
             lease_until = NULL,
             version = j.version + 1
         WHERE j.job_id = ANY(ARRAY(
             SELECT job_id FROM jobs
             WHERE status = 'PROCESSING' AND lease_until < $1
             ORDER BY lease_until
             LIMIT $3
             FOR UPDATE SKIP LOCKED))
         RETURNING {}",
        *LEASE_EXPIRY_PATTERN,
        columns("j.")
    )
});

impl PgStore {
    /// One chunk of a lease sweep, in one transaction: the expired jobs and their joins.
    async fn sweep_chunk(
        &self,
        now: DateTime<Utc>,
        rules: &dyn JoinRules,
    ) -> Result<(Expired, usize), Failed> {
        let mut client = self.inner.client().await?;
        let tx = client.transaction().await?;
        let statement = tx.prepare_cached(&SWEEP).await?;
        let allowance = i64::from(LEASE_RECOVERY_ALLOWANCE);
        let rows = tx
            .query(&statement, &[&now, &allowance, &SWEEP_CHUNK])
            .await?;
        let taken = rows.len();
        let mut jobs = decode_jobs(&rows, 0)?;
        jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        let mut expired = Expired::default();
        for job in jobs {
            if job.status == JobStatus::Queued {
                expired.requeued.push(job.job_id);
                continue;
            }
            let joins = rules.joins_for(&job.report_type);
            let (children_created, join_errors) = apply_joins(&tx, &job, joins, now).await?;
            expired.finished.push(Completion {
                job,
                children_created,
                join_errors,
            });
        }
        tx.commit().await?;
        Ok((expired, taken))
    }

    /// A whole sweep, chunk by chunk; wakes the dispatcher when it made work claimable.
    pub(super) async fn sweep(
        &self,
        now: DateTime<Utc>,
        rules: &dyn JoinRules,
    ) -> StoreResult<Expired> {
        let now = store_time(now);
        let mut expired = Expired::default();
        loop {
            let (chunk, taken) = retrying!("a lease sweep", self.sweep_chunk(now, rules).await)?;
            expired.requeued.extend(chunk.requeued);
            expired.finished.extend(chunk.finished);
            if taken < SWEEP_CHUNK as usize {
                break;
            }
        }
        expired
            .finished
            .iter()
            .for_each(Completion::log_join_errors);
        if !expired.requeued.is_empty()
            || expired
                .finished
                .iter()
                .any(|c| !c.children_created.is_empty())
        {
            self.wake();
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::LEASE_EXPIRY_PATTERN;
    use crate::job::JobStatus;
    use crate::store::conformance::{self, at, new_job};
    use crate::store::pg_test_schema::TestSchema;
    use crate::store::{lease_expiry_error, NoJoins, Store};

    /// The pattern is the literal the sweep's SQL had before it was derived from
    /// [`lease_expiry_error`], with positional arguments (it had `%s`, and the allowance as a
    /// fourth argument, `$2`).
    #[test]
    fn the_lease_expiry_pattern_is_the_sled_stores_text() {
        assert_eq!(
            *LEASE_EXPIRY_PATTERN,
            "'worker %1$s lost its lease on attempt %2$s, the last allowed: %3$s attempt(s) \
             (the report''s retries + 1) plus 3 crash recoveries'"
        );
    }

    /// A job with no retries whose worker dies every time fails with the same error as in the
    /// sled store (`a_job_whose_worker_keeps_dying_fails_after_its_crash_recoveries` there).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_expiry_failure_says_what_the_sled_store_says() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        let store = schema.open().await;
        let job = conformance::start(&store, new_job("R", "S", None), at(0)).await;
        let mut now = 0;
        let failed = loop {
            now += 31;
            let expired = store.requeue_expired(at(now), &NoJoins).await.unwrap();
            if let Some(done) = expired.finished.first() {
                break done.job.clone();
            }
            assert_eq!(expired.requeued, vec![job.job_id.clone()]);
            store
                .claim("worker-1", 1, Duration::from_secs(30), at(now))
                .await
                .unwrap();
        };
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.attempt, 4);
        assert_eq!(
            failed.error,
            Some(lease_expiry_error(Some("worker-1"), 4, 1))
        );
        // The sweep's expression for the error, with and without an owner (a lease not written
        // by flowctl), in PostgreSQL.
        let client = schema.client().await;
        let sql = format!(
            "SELECT format({}, coalesce($1::text, '?'), $2::int8, $3::int8)",
            *LEASE_EXPIRY_PATTERN
        );
        for owner in [Some("w"), None] {
            let row = client
                .query_one(&sql, &[&owner, &7i64, &2i64])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), lease_expiry_error(owner, 7, 2));
        }
    }
}
