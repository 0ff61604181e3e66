//! The dispatcher: claims ready jobs from the store, no more than the pool has free workers,
//! and runs them; sweeps expired leases; stops on shutdown (with a grace period) or when the
//! store stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::job::JobStatus;
use crate::metrics::Metrics;
use crate::store::StoreError;

use super::Engine;

/// The dispatcher: reads the store's ready jobs and its wake-ups, writes claims; sets
/// `stopping` when it ends.
impl Engine {
    /// The dispatcher: claims ready jobs and runs them on the pool until
    /// `shutdown` resolves (or, with `until_idle`, until no job is queued or
    /// running). On shutdown it stops claiming, gives running jobs the grace
    /// period, and leaves the rest to lease recovery. `shutdown` is heeded
    /// while the store fails too (between retries).
    ///
    /// Returns [`StoreError::Stopped`] as soon as the store stops accepting
    /// changes ([`Store::stopped`](crate::store::Store::stopped), e.g. a full disk): running jobs are
    /// abandoned at once (they cannot record anything) and the caller exits 2
    /// so that a supervisor restarts the process, which opens the store again.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send,
        until_idle: bool,
    ) -> Result<(), StoreError> {
        let permits = Arc::new(Semaphore::new(self.config.pool_size.max(1)));
        let mut wake = self.store.subscribe();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let sweep_every = (self.config.lease / 2).max(Duration::from_millis(100));
        let mut next_sweep = Instant::now();
        let mut store_backoff = Duration::from_millis(50);
        // Where workers hand their written results; ends once this and every worker's clone
        // are dropped, after recording what it holds.
        let (eager_tx, mut eager_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stage, stage_task) = self.start_stage(permits.clone(), eager_tx);
        // A dispatcher dropped unfinished (its caller gave up on it) takes the stage with it,
        // as it takes its workers (the JoinSet): nothing of this run goes on unwatched.
        let _stage_guard = AbortOnDrop(stage_task.abort_handle());
        tokio::pin!(shutdown);
        let stopped = loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "worker task panicked");
                }
            }
            if let Some(reason) = self.store.stopped() {
                break Some(StoreError::Stopped { reason });
            }
            if Instant::now() >= next_sweep {
                if let Err(e) = self.recover_leases().await {
                    Metrics::add(&self.metrics.store_errors, 1);
                    if e.is_stopped() {
                        break Some(e);
                    }
                    tracing::warn!(error = %e, "lease sweep failed; will retry");
                }
                next_sweep = Instant::now() + sweep_every;
            }
            let free = permits.available_permits();
            let mut claimed_full = false;
            if free > 0 {
                let want = free.min(self.config.max_jobs_per_poll.max(1));
                match self
                    .store
                    .claim(&self.config.worker_id, want, self.config.lease, Utc::now())
                    .await
                {
                    Ok(jobs) => {
                        store_backoff = Duration::from_millis(50);
                        claimed_full = jobs.len() == want;
                        for job in jobs {
                            let Ok(permit) = permits.clone().try_acquire_owned() else {
                                // Cannot happen: we claimed no more than the free permits.
                                tracing::error!(job = %job.job_id, "claimed without a free worker");
                                break;
                            };
                            let engine = self.clone();
                            let stage = stage.clone();
                            tasks.spawn(async move {
                                engine.work(job, None, stage).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) if e.is_stopped() => break Some(e),
                    Err(e) => {
                        // The store is unreachable: back off, never fail jobs for it.
                        Metrics::add(&self.metrics.store_errors, 1);
                        tracing::warn!(error = %e, "claim failed; retrying");
                        tokio::select! {
                            _ = &mut shutdown => break None,
                            _ = tokio::time::sleep(store_backoff) => {}
                        }
                        store_backoff = (store_backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            if claimed_full && permits.available_permits() > 0 {
                continue;
            }
            if until_idle && tasks.is_empty() && self.idle().await {
                // The stage may still be waiting for the disk with a completion the store
                // already shows: let it finish.
                drop(stage);
                if let Err(e) = stage_task.await {
                    tracing::error!(error = %e, "the durability stage panicked");
                }
                // A completion whose write failed leaves nothing queued or running either.
                return match self.store.stopped() {
                    Some(reason) => Err(StoreError::Stopped { reason }),
                    None => Ok(()),
                };
            }
            tokio::select! {
                _ = &mut shutdown => break None,
                _ = wake.changed() => {}
                _ = self.retry_due.notified() => {}
                _ = self.stage_settled.notified() => {}
                Some(eager) = eager_rx.recv() => {
                    // A job the durability stage claimed for a free slot with a completion.
                    let engine = self.clone();
                    let stage = stage.clone();
                    tasks.spawn(async move {
                        engine.work(eager.job, Some(eager.flush), stage).await;
                        drop(eager.permit);
                    });
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "worker task panicked");
                    }
                }
                _ = tokio::time::sleep(self.config.poll_interval.min(sweep_every)) => {}
            }
        };
        // Graceful shutdown: no more claims, by the dispatcher or by finishing workers; let
        // running jobs finish.
        self.stopping.store(true, Ordering::Relaxed);
        drop(stage);
        if let Some(error) = stopped {
            // Nothing a running job does can be recorded any more. Results in the durability
            // stage are dropped too: their temporary files are removed, and a file already
            // linked is removed by the job's next attempt after the restart.
            tracing::error!(error = %error, running = tasks.len(), "the job store stopped: abandoning running jobs");
            tasks.abort_all();
            stage_task.abort();
            while tasks.join_next().await.is_some() {}
            let _ = stage_task.await;
            return Err(error);
        }
        // Running jobs, then the stage with what they handed it, within the grace period.
        let grace_over = tokio::time::Instant::now() + self.config.grace;
        if !tasks.is_empty() {
            tracing::info!(running = tasks.len(), grace = ?self.config.grace, "shutting down: waiting for running jobs");
            let wait_all = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout_at(grace_over, wait_all).await.is_err() {
                tracing::warn!("grace period over: abandoning running jobs to lease recovery");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        }
        let stage_abort = stage_task.abort_handle();
        if tokio::time::timeout_at(grace_over, stage_task)
            .await
            .is_err()
        {
            tracing::warn!(
                "grace period over: abandoning results not yet durable to lease recovery"
            );
            stage_abort.abort();
        }
        Ok(())
    }

    /// No job queued or running in the store (a job whose result is in the durability stage
    /// is still PROCESSING).
    async fn idle(&self) -> bool {
        match self.store.counts().await {
            Ok(c) => {
                c.get(&JobStatus::Queued).copied().unwrap_or(0) == 0
                    && c.get(&JobStatus::Processing).copied().unwrap_or(0) == 0
            }
            Err(_) => false,
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
