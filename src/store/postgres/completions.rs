//! Completions: one CAS statement for a batch of finished attempts; with joins, in one
//! transaction with the join update and the children.
//!
//! # Throughput
//!
//! Completions without joins (no dependency edge names the job's report type, or it was
//! cancelled) are batched: concurrent [`Store::complete`] calls are gathered by a few background
//! tasks and written with one `UPDATE … FROM unnest(…)` and one commit, group-commit style. Under
//! load a batch holds whatever arrived while the previous one was being written; alone, a
//! completion waits for nobody.
//!
//! [`Store::complete`]: crate::store::Store::complete

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio::sync::{mpsc, oneshot};

use super::cas::{refused, Stuck};
use super::errors::{copy_error, pg_error, retrying, Failed};
use super::joins::apply_joins;
use super::rows::{columns, decode_job, read_job};
use super::store::{Inner, PgStore};
use crate::job::{Job, JobId, JobStatus};
use crate::store::{store_time, Cas, Completion, JoinEdge, Outcome, StoreError, StoreResult};

/// Completions written by one batch statement.
const MAX_COMPLETE_BATCH: usize = 1024;
/// Background tasks writing completion batches (batches in flight at once).
pub(super) const COMPLETERS: usize = 2;

/// Finishes the attempts of a batch of PROCESSING jobs, each at its expected version. Returns
/// the index in the batch and the job of every one that applied.
static COMPLETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH input AS (
             SELECT * FROM unnest($1::int4[], $2::text[], $3::int8[], $4::text[], $5::text[],
                                  $6::int8[], $7::text[], $8::text[], $9::timestamptz[],
                                  $10::timestamptz[])
                 AS i(idx, job_id, version, kind, result_path, rows_written, sha256, error,
                      retry_at, now)
         ), target AS (
             SELECT i.*, (i.kind = 'F' AND i.retry_at IS NOT NULL AND j.attempt < j.max_attempts
                          AND NOT j.cancel_requested) AS retry
             FROM input i JOIN jobs j ON j.job_id = i.job_id
         )
         UPDATE jobs j SET
             status = CASE WHEN t.kind = 'S' THEN 'COMPLETED' WHEN t.kind = 'C' THEN 'CANCELLED'
                           WHEN t.retry THEN 'QUEUED' ELSE 'FAILED' END,
             result_path = CASE WHEN t.kind = 'S' THEN t.result_path ELSE j.result_path END,
             rows_written = CASE WHEN t.kind = 'S' THEN t.rows_written WHEN t.retry THEN 0
                                 ELSE j.rows_written END,
             result_sha256 = CASE WHEN t.kind = 'S' THEN t.sha256 ELSE j.result_sha256 END,
             progress = CASE WHEN t.kind = 'S' THEN 100 WHEN t.retry THEN 0 ELSE j.progress END,
             error = CASE WHEN t.kind = 'F' THEN t.error ELSE j.error END,
             attempt = CASE WHEN t.retry THEN j.attempt + 1 ELSE j.attempt END,
             run_after = CASE WHEN NOT t.retry THEN j.run_after
                              WHEN t.retry_at > t.now THEN t.retry_at END,
             started_at = CASE WHEN t.retry THEN NULL ELSE j.started_at END,
             completed_at = CASE WHEN t.retry THEN j.completed_at ELSE t.now END,
             lease_owner = NULL,
             lease_until = NULL,
             version = j.version + 1
         FROM target t
         WHERE j.job_id = t.job_id AND j.version = t.version AND j.status = 'PROCESSING'
         RETURNING t.idx, {}",
        columns("j.")
    )
});

/// One completion as the batch statement takes it.
struct CompletionInput<'a> {
    job_id: &'a JobId,
    version: u64,
    outcome: &'a Outcome,
    now: DateTime<Utc>,
}

/// Runs the completion statement for `inputs`; returns the applied jobs by input index.
async fn complete_rows(
    client: &impl GenericClient,
    inputs: &[CompletionInput<'_>],
) -> Result<Vec<(usize, Job)>, Failed> {
    let n = inputs.len();
    let mut idx = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut paths: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut rows: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut shas: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut retry_ats: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut nows = Vec::with_capacity(n);
    for (i, input) in inputs.iter().enumerate() {
        idx.push(i as i32);
        ids.push(input.job_id.as_str());
        versions.push(input.version as i64);
        nows.push(input.now);
        match input.outcome {
            Outcome::Success {
                result_path,
                rows_written,
                sha256,
            } => {
                kinds.push("S");
                paths.push(Some(result_path.as_str()));
                rows.push(Some(i64::try_from(*rows_written).unwrap_or(i64::MAX)));
                shas.push(Some(sha256.as_str()));
                errors.push(None);
                retry_ats.push(None);
            }
            Outcome::Failure { error, retry_at } => {
                kinds.push("F");
                paths.push(None);
                rows.push(None);
                shas.push(None);
                errors.push(Some(error.as_str()));
                retry_ats.push(retry_at.map(store_time));
            }
            Outcome::Cancelled => {
                kinds.push("C");
                paths.push(None);
                rows.push(None);
                shas.push(None);
                errors.push(None);
                retry_ats.push(None);
            }
        }
    }
    let statement = client.prepare_cached(&COMPLETE).await?;
    let returned = client
        .query(
            &statement,
            &[
                &idx, &ids, &versions, &kinds, &paths, &rows, &shas, &errors, &retry_ats, &nows,
            ],
        )
        .await?;
    let mut applied = Vec::with_capacity(returned.len());
    for row in &returned {
        let i: i32 = row.try_get(0).map_err(pg_error)?;
        applied.push((i as usize, decode_job(row, 1)?));
    }
    Ok(applied)
}

/// The status an outcome would have taken a job to, for an illegal-transition error.
fn outcome_status(outcome: &Outcome) -> JobStatus {
    match outcome {
        Outcome::Success { .. } => JobStatus::Completed,
        Outcome::Failure { .. } => JobStatus::Failed,
        Outcome::Cancelled => JobStatus::Cancelled,
    }
}

impl PgStore {
    /// A completion that feeds joins: one transaction with the join update and the children.
    async fn complete_with_joins(
        &self,
        job_id: &JobId,
        expected_version: u64,
        outcome: &Outcome,
        joins: &[JoinEdge],
        now: DateTime<Utc>,
    ) -> Result<Option<Completion>, Failed> {
        let mut client = self.inner.client().await?;
        let tx = client.transaction().await?;
        let input = CompletionInput {
            job_id,
            version: expected_version,
            outcome,
            now,
        };
        let Some((_, job)) = complete_rows(&tx, &[input]).await?.pop() else {
            return Ok(None);
        };
        let (children_created, join_errors) = apply_joins(&tx, &job, joins, now).await?;
        tx.commit().await?;
        Ok(Some(Completion {
            job,
            children_created,
            join_errors,
        }))
    }

    /// A completion: batched without joins (or when cancelled), else in a transaction with
    /// them; a CAS miss is told by reading the job.
    pub(super) async fn complete_job(
        &self,
        job_id: &JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &[JoinEdge],
        now: DateTime<Utc>,
    ) -> StoreResult<Cas<Completion>> {
        let to = outcome_status(&outcome);
        let mut stuck = Stuck::default();
        loop {
            let completion = if joins.is_empty() || outcome == Outcome::Cancelled {
                self.complete_batched(job_id, expected_version, &outcome, now)
                    .await?
            } else {
                retrying!(
                    "a completion",
                    self.complete_with_joins(job_id, expected_version, &outcome, joins, now)
                        .await
                )?
            };
            if let Some(completion) = completion {
                completion.log_join_errors();
                if completion.job.status == JobStatus::Queued
                    || !completion.children_created.is_empty()
                {
                    self.wake();
                }
                return Ok(Cas::Applied(completion));
            }
            let client = self.inner.client().await?;
            let current = read_job(&client, job_id).await?;
            if let Some(cas) = refused(job_id, expected_version, current, to)? {
                return Ok(cas);
            }
            stuck.check(job_id)?;
        }
    }

    /// Hands the completion to the batch writers and waits for its turn.
    async fn complete_batched(
        &self,
        job_id: &JobId,
        expected_version: u64,
        outcome: &Outcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Completion>> {
        let (reply, answer) = oneshot::channel();
        let queued = QueuedCompletion {
            job_id: job_id.clone(),
            version: expected_version,
            outcome: outcome.clone(),
            now,
            reply,
        };
        let stopped = || StoreError::Unavailable("the completion writer stopped".into());
        self.completer.send(queued).map_err(|_| stopped())?;
        let job = answer.await.map_err(|_| stopped())??;
        Ok(job.map(|job| Completion {
            job,
            children_created: Vec::new(),
            join_errors: Vec::new(),
        }))
    }
}

/// A completion waiting for a batch.
pub(super) struct QueuedCompletion {
    job_id: JobId,
    version: u64,
    outcome: Outcome,
    now: DateTime<Utc>,
    /// The job if the completion applied, `None` if its CAS matched nothing.
    reply: oneshot::Sender<StoreResult<Option<Job>>>,
}

/// Writes queued completions in batches: takes whatever is waiting (up to
/// [`MAX_COMPLETE_BATCH`]), writes it with one statement, answers each caller.
pub(super) async fn write_completions(
    inner: Arc<Inner>,
    queue: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<QueuedCompletion>>>,
) {
    let mut batch = Vec::new();
    loop {
        {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
            while batch.len() < MAX_COMPLETE_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
        }
        let result = retrying!("a completion batch", write_batch(&inner, &batch).await);
        match result {
            Ok(mut applied) => {
                for (i, queued) in batch.drain(..).enumerate() {
                    let _ = queued.reply.send(Ok(applied.remove(&i)));
                }
            }
            Err(error) => {
                for queued in batch.drain(..) {
                    let _ = queued.reply.send(Err(copy_error(&error)));
                }
            }
        }
    }
}

async fn write_batch(
    inner: &Inner,
    batch: &[QueuedCompletion],
) -> Result<HashMap<usize, Job>, Failed> {
    let client = inner.client().await?;
    let inputs: Vec<CompletionInput<'_>> = batch
        .iter()
        .map(|q| CompletionInput {
            job_id: &q.job_id,
            version: q.version,
            outcome: &q.outcome,
            now: q.now,
        })
        .collect();
    Ok(complete_rows(&client, &inputs).await?.into_iter().collect())
}
