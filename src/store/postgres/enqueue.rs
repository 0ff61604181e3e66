//! Enqueueing: new QUEUED records under fresh ids, inserted with their parent links in one
//! statement; with a [`UniqueKey`], in one transaction with the key (and the schedule's fire
//! time), so that only the first enqueue with that key creates jobs.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::Json;

use super::errors::{pg_error, Failed};
use super::store::PgStore;
use crate::job::{Job, JobId, JobRequest, NewJob};
use crate::store::{store_time, Enqueued, StoreError, UniqueKey};

/// Inserts QUEUED jobs, one per element of the arrays `$1`–`$11` (parents as comma-separated
/// ids), created at `$12`, and their parent links.
static INSERT_JOBS: &str = r#"
WITH new_jobs AS (
    INSERT INTO jobs (job_id, status, report_type, user_role, county_id, subject, parent_job_ids,
                      trigger_id, request_data, priority, max_attempts, created_at,
                      estimated_completion_time)
    SELECT t.id, 'QUEUED', t.report_type, t.user_role, t.county_id, t.subject,
           CASE WHEN t.parents = '' THEN '{}'::text[] ELSE string_to_array(t.parents, ',') END,
           t.trigger_id, t.request, t.priority, t.max_attempts, $12, t.estimated
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::jsonb[], $9::int2[], $10::int8[], $11::timestamptz[])
         AS t(id, report_type, user_role, county_id, subject, parents, trigger_id, request,
              priority, max_attempts, estimated)
    RETURNING job_id, parent_job_ids
)
INSERT INTO job_parents (parent_id, child_id)
SELECT DISTINCT unnest(n.parent_job_ids), n.job_id FROM new_jobs n
ON CONFLICT DO NOTHING
"#;

/// New QUEUED records for `batch`, under fresh ids distinct among themselves (the database
/// refuses one that is taken: the caller draws them all again).
pub(super) fn new_records(batch: &[NewJob], now: DateTime<Utc>) -> Vec<Job> {
    let mut seen = HashSet::with_capacity(batch.len());
    batch
        .iter()
        .map(|new| {
            let job_id = loop {
                let id = JobId::generate();
                if seen.insert(id.clone()) {
                    break id;
                }
            };
            let mut new = new.clone();
            new.estimated_completion = new.estimated_completion.map(store_time);
            new.into_job(job_id, now)
        })
        .collect()
}

/// Inserts QUEUED `jobs` (all created at `now`) and their parent links, in one statement.
pub(super) async fn insert_jobs(
    client: &impl GenericClient,
    jobs: &[Job],
    now: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    let report_types: Vec<&str> = jobs.iter().map(|j| j.report_type.as_str()).collect();
    let roles: Vec<&str> = jobs.iter().map(|j| j.role.as_str()).collect();
    let counties: Vec<Option<&str>> = jobs.iter().map(|j| j.county.as_deref()).collect();
    let subjects: Vec<&str> = jobs.iter().map(|j| j.subject.as_str()).collect();
    let parents: Vec<String> = jobs
        .iter()
        .map(|j| {
            j.parent_job_ids
                .iter()
                .map(JobId::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let triggers: Vec<&str> = jobs.iter().map(|j| j.trigger_id.as_str()).collect();
    let requests: Vec<Json<&JobRequest>> = jobs.iter().map(|j| Json(&j.request)).collect();
    let priorities: Vec<i16> = jobs.iter().map(|j| i16::from(j.priority)).collect();
    let max_attempts: Vec<i64> = jobs.iter().map(|j| i64::from(j.max_attempts)).collect();
    let estimated: Vec<Option<DateTime<Utc>>> =
        jobs.iter().map(|j| j.estimated_completion).collect();
    let statement = client.prepare_cached(INSERT_JOBS).await?;
    client
        .execute(
            &statement,
            &[
                &ids,
                &report_types,
                &roles,
                &counties,
                &subjects,
                &parents,
                &triggers,
                &requests,
                &priorities,
                &max_attempts,
                &estimated,
                &now,
            ],
        )
        .await?;
    Ok(())
}

/// A unique key as its `unique_keys` row: (kind, part1, part2).
pub(super) fn unique_parts(unique: &UniqueKey) -> (&'static str, &str, String) {
    match unique {
        UniqueKey::Fire {
            schedule,
            fire_time,
        } => (
            "fire",
            schedule.as_str(),
            store_time(*fire_time).timestamp_micros().to_string(),
        ),
        UniqueKey::Idempotency { subject, key } => ("idem", subject.as_str(), key.clone()),
    }
}

impl PgStore {
    /// One try of an enqueue: [`Failed::Retry`] when a generated id was taken or PostgreSQL
    /// rolled the transaction back.
    pub(super) async fn enqueue_once(
        &self,
        batch: &[NewJob],
        unique: Option<&UniqueKey>,
        now: DateTime<Utc>,
    ) -> Result<Enqueued, Failed> {
        let mut client = self.inner.client().await?;
        let jobs = new_records(batch, now);
        let Some(unique) = unique else {
            // One statement: all or nothing without a transaction.
            insert_jobs(&client, &jobs, now).await?;
            return Ok(Enqueued::Created(jobs));
        };
        let (kind, part1, part2) = unique_parts(unique);
        let tx = client.transaction().await?;
        let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        let first = tx
            .query_opt(
                "INSERT INTO unique_keys (kind, part1, part2, job_ids, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
                &[&kind, &part1, &part2, &ids, &now],
            )
            .await?;
        if first.is_none() {
            // Taken by a committed enqueue (a concurrent one was waited for).
            let row = tx
                .query_one(
                    "SELECT job_ids FROM unique_keys WHERE kind = $1 AND part1 = $2 AND part2 = $3",
                    &[&kind, &part1, &part2],
                )
                .await?;
            let ids: Vec<String> = row.try_get(0).map_err(pg_error)?;
            let ids = ids
                .iter()
                .map(|id| id.parse())
                .collect::<Result<Vec<JobId>, _>>()
                .map_err(|_| StoreError::Corrupt {
                    key: format!("unique_keys/{unique}"),
                    message: "invalid job id".into(),
                })?;
            return Ok(Enqueued::Existing(ids));
        }
        insert_jobs(&tx, &jobs, now).await?;
        if let UniqueKey::Fire {
            schedule,
            fire_time,
        } = unique
        {
            tx.execute(
                "INSERT INTO schedule_fires AS f (schedule, last_fire) VALUES ($1, $2)
                 ON CONFLICT (schedule) DO UPDATE
                 SET last_fire = GREATEST(f.last_fire, EXCLUDED.last_fire)",
                &[schedule, &store_time(*fire_time)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Enqueued::Created(jobs))
    }
}
