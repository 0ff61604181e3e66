//! The durability stage: results whose rows are written wait here for the disk, off the pool.
//!
//! A worker whose pipeline wrote every row hands the flushed temporary file, with what its
//! completion needs, to this stage ([`Stage::hand_off`]) and goes on to its next job at once:
//! its pool slot is not held while the disk syncs. The stage (one task per
//! [`Engine::run`](super::Engine::run)) takes everything queued — whatever arrived while the
//! last batch synced, up to [`MAX_BATCH`] — and finishes it together
//! ([`pipeline::commit_batch`]): the data of every file made durable (one `syncfs`, or parallel
//! `fdatasync`s: [`crate::pipeline::SyncMethod`]), each file linked into place, the touched
//! directories synced once; then the completions are recorded, all at once, so the store's
//! group commit shares their flushes, and the dependents fire as they always did (in the same
//! store step as their parent's completion). While one batch's completions reach the store the
//! next batch's files sync ([`MAX_COMPLETING`] batches at most).
//!
//! Invariants, at a crash anywhere:
//! - no partial file under a result's final name: a file is linked there only after its data
//!   is durable, and the temporary names of a dead process are swept at start;
//! - no COMPLETED record without its file: a completion is recorded only after its file's name
//!   is durable;
//! - no file that no completed record names, for good: a file linked but not recorded belongs
//!   to a job still PROCESSING, which recovery queues again, and that next attempt removes what
//!   its earlier attempts left (`results::leftover_results`); a job that recovery ends instead
//!   (no attempt left, or a cancel) has its attempts' files removed by the recovery itself
//!   (`Engine::discard_unrecorded_results`, at start and in the lease sweep); a completion that
//!   loses its CAS removes its file at once, as before;
//! - a stale attempt never replaces a result: linking never replaces a file, and paths are per
//!   attempt.
//!
//! While its result is here the job is still PROCESSING under this worker's lease, which is no
//! longer renewed: a batch is milliseconds, a lease tens of seconds; a disk stalled past the
//! lease makes the lease sweep queue the job again, and this completion then loses its CAS and
//! removes its file. A cancel request that arrives once the rows are written is too late: the
//! job completes (the completion retries at the version the request bumped, as it did before
//! this stage) — the work is done and its result kept, as for a cancel a moment after the
//! completion. A file the stage cannot make durable or put in place (an I/O error, a path
//! already taken) fails its attempt as the pipeline would have, with the report's retries.
//!
//! A dependent now starts after its parent's batch is durable instead of right after the
//! parent's own `fsync`s: see `benches/engine.rs` for the dependent-start latency this costs.
//!
//! Measured 2026-12-03 (`cargo bench --bench engine -- sled-2`, N = 20,000, the 2-core VM with
//! another engineer's builds beside it, load 4–9; runs alternating with the code before this
//! stage): sled pool 2 went from 1,199 and 840 jobs/s to 2,294 and 2,982; fsyncs per job
//! (strace) from 2.62 to 0.53–0.62 (results 2.00 → 0.19–0.22, sled 0.62 → 0.34–0.40: the
//! traced run is slow enough that batches are small, and a batch's concurrent completions take
//! more than one of sled's flush rounds); untraced flush rounds 0.71 → 0.06–0.07 per job.
//! Pool 8: 1,550 and 981 → 2,524 and 1,276 jobs/s, 2.57 → 0.27–0.40 fsyncs per job.
//!
//! The dependent start, measured as before the stage (from the parent's result durable, the
//! [`ExecEvent::Durable`](super::ExecEvent::Durable) event, to the child's start), on a quieter
//! machine later that day, alternating: sled pool 2 p50 77–100 µs, p99 163–945 µs, against
//! 62–69 µs and 216–243 µs before. The whole span from the parent's start to the child's (its
//! attempt, its result made durable, its completion, the child's claim) is unchanged: p50
//! 1.5–1.7 ms and 1.7–3.6 ms, against 1.3–1.7 ms before. In the same runs sled pool 2 went from
//! 861–1,451 to 1,918–3,618 jobs/s, CPU per job from 666–986 to 415–731 µs, pool 8 from 2,086
//! to 4,291, PostgreSQL pool 2 (N = 5,000) from 227 to 559.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::job::Job;
#[cfg(doc)]
use crate::pipeline::PipelineError;
use crate::pipeline::{self, Output, StagedResult};
use crate::store::{JoinRules, Outcome};

use super::attempt::Flush;
use super::{Engine, ExecEvent};

/// Results one batch finishes at most.
pub const MAX_BATCH: usize = 1024;

/// Results waiting for the stage at most; a worker handing off one more waits (backpressure:
/// each holds an open file).
const QUEUE: usize = 4 * MAX_BATCH;

/// Batches whose completions are being recorded while the next batch syncs, at most.
const MAX_COMPLETING: usize = 2;

/// A written result and what its completion needs.
pub(super) struct Handoff {
    pub job: Job,
    pub version: u64,
    pub output: Output,
    pub staged: StagedResult,
    pub started: Instant,
}

/// A job the stage claimed for a free slot with a completion (a dependent it just created, or
/// the next in the queue): the dispatcher runs it on that slot, after the completion's wait
/// for the disk.
pub(super) struct Eager {
    pub job: Job,
    pub flush: Flush,
    pub permit: OwnedSemaphorePermit,
}

/// Where workers hand their written results to the stage.
#[derive(Clone)]
pub(super) struct Stage {
    tx: mpsc::Sender<Handoff>,
}

impl Stage {
    /// Queues `handoff` for the next batch (waits while the queue is full). Returns it if the
    /// stage has ended (the engine is stopping abruptly): the caller drops it, which removes
    /// its temporary file.
    pub async fn hand_off(&self, handoff: Handoff) -> Result<(), Box<Handoff>> {
        self.tx
            .send(handoff)
            .await
            .map_err(|mpsc::error::SendError(h)| Box::new(h))
    }
}

/// The durability stage: makes results durable, then records their completions.
impl Engine {
    /// Starts the stage; it ends once every [`Stage`] is dropped and what it holds is recorded.
    ///
    /// A completion that may fire dependents is recorded with a claim when one of `permits`
    /// (the pool's slots) is free, and the job it claims goes to `eager` for the dispatcher to
    /// run on that slot: a dependent starts as soon as its parent's completion is in the
    /// store, as it does when a worker completes on its own slot.
    pub(super) fn start_stage(
        self: &Arc<Self>,
        permits: Arc<Semaphore>,
        eager: mpsc::UnboundedSender<Eager>,
    ) -> (Stage, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let slots = Slots { permits, eager };
        let task = tokio::spawn(self.clone().durability_stage(rx, slots));
        (Stage { tx }, task)
    }

    async fn durability_stage(self: Arc<Self>, mut rx: mpsc::Receiver<Handoff>, slots: Slots) {
        let slots = Arc::new(slots);
        let mut completing: JoinSet<()> = JoinSet::new();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            while let Some(done) = completing.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "recording a batch of completions panicked");
                }
            }
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                break;
            }
            let (items, staged): (Vec<_>, Vec<_>) = std::mem::take(&mut batch)
                .into_iter()
                .map(|h| {
                    (
                        Waiting {
                            job: h.job,
                            version: h.version,
                            output: h.output,
                            started: h.started,
                        },
                        h.staged,
                    )
                })
                .unzip();
            let method = self.config.result_sync;
            let count = staged.len();
            let committed =
                tokio::task::spawn_blocking(move || pipeline::commit_batch(staged, method)).await;
            let committed: Vec<Result<(), Failed>> = match committed {
                Ok(results) => results
                    .into_iter()
                    .map(|r| {
                        r.map_err(|e| Failed {
                            transient: e.is_transient(),
                            error: e.to_string(),
                        })
                    })
                    .collect(),
                // The staged files were dropped with the panicking thread: removed.
                Err(e) => (0..count)
                    .map(|_| {
                        Err(Failed {
                            transient: true,
                            error: format!("making the result durable failed: {e}"),
                        })
                    })
                    .collect(),
            };
            let (engine, slots) = (self.clone(), slots.clone());
            completing.spawn(async move { engine.record_batch(items, committed, &slots).await });
            while completing.len() > MAX_COMPLETING {
                if let Some(Err(e)) = completing.join_next().await {
                    tracing::error!(error = %e, "recording a batch of completions panicked");
                }
            }
        }
        while let Some(done) = completing.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "recording a batch of completions panicked");
            }
        }
    }

    /// Records a batch's completions, all at once (the store's group commit shares their
    /// flushes), then wakes the dispatcher, which may be waiting for the store to be idle.
    async fn record_batch(
        self: Arc<Self>,
        items: Vec<Waiting>,
        committed: Vec<Result<(), Failed>>,
        slots: &Slots,
    ) {
        let finishes = items.into_iter().zip(committed).map(|(item, committed)| {
            let outcome = match committed {
                Ok(()) => Outcome::Success {
                    result_path: item.output.path.to_string_lossy().into_owned(),
                    rows_written: item.output.rows_written,
                    sha256: item.output.sha256,
                },
                // As the pipeline's own errors: a path already taken fails the same way every
                // time, an I/O error may pass.
                Err(Failed { error, transient }) => Outcome::Failure {
                    retry_at: if transient {
                        self.backoff_for(&item.job)
                    } else {
                        None
                    },
                    error,
                },
            };
            let engine = self.clone();
            // A completion that may fire a dependent claims for a free slot, if there is one;
            // the others complete without a claim (the stage holds no slot of its own).
            let permit = if self.joins.joins_for(&item.job.report_type).is_empty() {
                None
            } else {
                slots.permits.clone().try_acquire_owned().ok()
            };
            async move {
                let claim = permit.is_some();
                if matches!(outcome, Outcome::Success { .. }) {
                    engine.emit(ExecEvent::Durable {
                        job_id: item.job.job_id.clone(),
                        report_type: item.job.report_type.clone(),
                        at: Instant::now(),
                    });
                }
                let next = engine
                    .finish(item.job, outcome, item.version, item.started, claim)
                    .await;
                if let (Some((job, flush)), Some(permit)) = (next, permit) {
                    if let Err(mpsc::error::SendError(lost)) =
                        slots.eager.send(Eager { job, flush, permit })
                    {
                        // The dispatcher has stopped: the claim is left to recovery, as a
                        // claim of a process that dies is.
                        tracing::warn!(job = %lost.job.job_id, "the engine is stopping: a job claimed for a free slot is left to recovery");
                    }
                }
            }
        });
        futures_util::future::join_all(finishes).await;
        self.stage_settled.notify_one();
    }
}

/// The pool's slots as the stage sees them: which are free, and where a job claimed for one
/// goes.
struct Slots {
    permits: Arc<Semaphore>,
    eager: mpsc::UnboundedSender<Eager>,
}

/// A result in the stage, its file taken out for the batch.
struct Waiting {
    job: Job,
    version: u64,
    output: Output,
    started: Instant,
}

/// Why a result could not be finished, as its job records it.
struct Failed {
    error: String,
    /// Whether another attempt may succeed ([`PipelineError::is_transient`]).
    transient: bool,
}
