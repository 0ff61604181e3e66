//! Completing an attempt: its outcome recorded with a CAS at the job's version (fires the
//! dependents in the same store call, and claims the worker's next job), through store
//! outages, then counted in the metrics and reported as an event.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::job::{Job, JobStatus};
use crate::metrics::{Finish, Metrics};
use crate::store::{Cas, JoinEdge, JoinRules, Outcome};

use super::attempt::Flush;
use super::results::discard_result;
use super::{Engine, ExecEvent};

/// Completion: reads the outcome and the joins, writes the completion to the store, the
/// metrics and the events.
impl Engine {
    /// Writes the outcome with a CAS at the job's current version. A cancel
    /// request may bump the version between our last renewal and now: then
    /// we retry at the new version as long as the job is still ours.
    ///
    /// With `claim` (a worker completing on its slot) and unless the engine is stopping, the
    /// same store call claims this worker's next job
    /// ([`Store::complete_and_claim`](crate::store::Store::complete_and_claim)); it is returned
    /// with the wait for the completion to be durable, which runs beside it. Without (the
    /// durability stage, which holds no slot) the completion is durable when this returns.
    pub(super) async fn finish(
        self: &Arc<Self>,
        job: Job,
        outcome: Outcome,
        mut version: u64,
        started: Instant,
        claim: bool,
    ) -> Option<(Job, Flush)> {
        let joins = self.joins.joins_for(&job.report_type);
        let mut use_joins = true;
        let mut failures = 0;
        // A try that failed for want of the store may still have been applied.
        let mut interrupted = false;
        let mut unavailable_backoff = Duration::from_millis(50);
        while failures < 5 {
            let edges: &[JoinEdge] = if use_joins { joins } else { &[] };
            // `complete` is durable when it returns; `complete_and_claim` is not.
            let durable_on_return = !claim || self.stopping.load(Ordering::Relaxed);
            let completed = if durable_on_return {
                let completion =
                    self.store
                        .complete(&job.job_id, version, outcome.clone(), edges, Utc::now());
                completion.await.map(|cas| (cas, None))
            } else {
                let completion = self.store.complete_and_claim(
                    &job.job_id,
                    version,
                    outcome.clone(),
                    edges,
                    Utc::now(),
                    &self.config.worker_id,
                    self.config.lease,
                );
                completion.await
            };
            match completed {
                Ok((Cas::Applied(done), next)) => {
                    // Reported as every reader of the store sees it from now on; the slot
                    // is given up, or the claimed job started, once it is durable.
                    self.record_finish(
                        &done.job,
                        &done.children_created,
                        done.join_errors.len(),
                        started,
                    );
                    let engine = self.clone();
                    let job_id = done.job.job_id;
                    let durable = async move {
                        if let Err(e) = engine.store.sync().await {
                            Metrics::add(&engine.metrics.store_errors, 1);
                            tracing::error!(job = %job_id, error = %e, "the job's completion may not be on disk");
                        }
                    };
                    match next {
                        Some(next) => return Some((next, Box::pin(durable))),
                        None => {
                            if !durable_on_return {
                                durable.await;
                            }
                            return None;
                        }
                    }
                }
                Ok((Cas::Conflict { current: Some(c) }, _))
                    if c.status == JobStatus::Processing
                        && c.lease_owner.as_deref() == Some(&self.config.worker_id)
                        && c.attempt == job.attempt =>
                {
                    failures += 1;
                    version = c.version;
                }
                Ok((Cas::Conflict { current: Some(c) }, _))
                    if interrupted && c.attempt == job.attempt && c.status.is_terminal() =>
                {
                    // An earlier try reached the store before the connection was lost.
                    tracing::info!(job = %job.job_id, "completion recorded by an earlier try");
                    self.record_finish(&c, &[], 0, started);
                    return None;
                }
                Ok((Cas::Conflict { .. }, _)) => {
                    tracing::warn!(job = %job.job_id, "job changed hands before completion; result discarded");
                    if let Outcome::Success { result_path, .. } = &outcome {
                        discard_result(&job.job_id, std::path::Path::new(result_path));
                    }
                    return None;
                }
                Err(e) if e.is_transient() => {
                    // The store is unreachable (e.g. a lost database connection): keep the
                    // outcome and its dependents, and try again with backoff for as long as it
                    // takes. Never give up on the outcome, never complete without the joins.
                    Metrics::add(&self.metrics.store_errors, 1);
                    tracing::warn!(job = %job.job_id, error = %e, retry_in = ?unavailable_backoff, "store unavailable while completing; retrying");
                    interrupted = true;
                    tokio::time::sleep(unavailable_backoff).await;
                    unavailable_backoff = (unavailable_backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) if e.is_stopped() => {
                    // Nothing can be recorded any more; the dispatcher stops the process.
                    tracing::error!(job = %job.job_id, error = %e, "the job store stopped: the completion is not recorded");
                    return None;
                }
                Err(e) if use_joins && !joins.is_empty() => {
                    // Triggering dependents must never change the parent's
                    // outcome: count the error and complete without joins.
                    failures += 1;
                    Metrics::add(&self.metrics.join_errors, 1);
                    tracing::error!(job = %job.job_id, error = %e, "triggering dependents failed; completing the job without them");
                    use_joins = false;
                }
                Err(e) => {
                    failures += 1;
                    Metrics::add(&self.metrics.store_errors, 1);
                    tracing::warn!(job = %job.job_id, error = %e, "completion failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::error!(job = %job.job_id, "could not record completion; lease recovery will run it again");
        None
    }

    fn record_finish(&self, job: &Job, children: &[Job], join_errors: usize, started: Instant) {
        let elapsed = started.elapsed();
        Metrics::add(&self.metrics.dependents_created, children.len() as u64);
        Metrics::add(&self.metrics.join_errors, join_errors as u64);
        match job.status {
            JobStatus::Completed => {
                self.metrics
                    .job_finished(&job.report_type, Finish::Completed, elapsed);
                tracing::info!(job = %job.job_id, report = %job.report_type, rows = job.rows_written, children = children.len(), "job completed");
            }
            JobStatus::Failed => {
                self.metrics
                    .job_finished(&job.report_type, Finish::Failed, elapsed);
                let error = job.error.as_deref().unwrap_or("unknown error");
                self.metrics.failure_reason(error);
                tracing::warn!(job = %job.job_id, report = %job.report_type, error, "job failed");
            }
            JobStatus::Cancelled => {
                self.metrics
                    .job_finished(&job.report_type, Finish::Cancelled, elapsed);
                tracing::info!(job = %job.job_id, "job cancelled");
            }
            JobStatus::Queued => {
                Metrics::add(&self.metrics.retries, 1);
                if let Some(at) = job.run_after {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    let due = self.retry_due.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        due.notify_one();
                    });
                }
                tracing::warn!(job = %job.job_id, attempt = job.attempt, error = job.error.as_deref().unwrap_or(""), "job failed; retry queued");
                self.emit(ExecEvent::Retrying { job: job.clone() });
                return;
            }
            JobStatus::Processing => {}
        }
        self.emit(ExecEvent::Finished {
            job: job.clone(),
            children: children.to_vec(),
        });
    }
}
