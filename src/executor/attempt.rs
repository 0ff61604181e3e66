//! One attempt of a claimed job: its pipeline spec, the pipeline on a blocking thread beside
//! the lease heartbeat (progress, cancellation, timeout), and the outcome it ends with.
//!
//! A database source's query gets its values here ([`bindings`]): the report's resolved
//! parameters from the job record, and the built-ins — the window's instants and local dates,
//! the principal's county and role, the job id and the trigger's kind. A PostgreSQL source's
//! connection URL is read from its environment variable when the attempt starts, so a changed
//! password takes effect at the next attempt; it is never logged or put in an error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::job::{Job, JobStatus};
use crate::metrics::Metrics;
use crate::params::ParamValue;
use crate::pipeline::{
    self, Bindings, Control, Observer, Output, PipelineError, PipelineSpec, Progress, SourceSpec,
    StagedResult,
};
use crate::store::{Cas, Outcome, ProgressUpdate};
use crate::workflow::{DataFormat, ReportType, Source, SourceKind};

use super::durability::{Handoff, Stage};
use super::results::{discard_result, leftover_results, result_file_name};
use super::{Engine, ExecEvent};

/// How an attempt's run ended.
enum Attempted {
    /// Every row is written to the staged result, which the durability stage finishes.
    Written(Output, StagedResult),
    /// It ended without a result to finish: failed, cancelled, timed out.
    Ended(Outcome),
}

/// How often a running job may write its progress to the store.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Attempts: read the workflow and the claimed job, write its progress and lease renewals to
/// the store, and hand the outcome to `Engine::finish` (in `completion`).
impl Engine {
    /// The job's pipeline spec (result path per attempt, masks for its role) and the report's
    /// timeout; an error when the job cannot run at all.
    pub(super) fn spec_for(&self, job: &Job) -> Result<(PipelineSpec, Option<Duration>), String> {
        let report = self
            .workflow
            .report(&job.report_type)
            .ok_or_else(|| format!("report type {} is not in the workflow", job.report_type))?;
        // The county rule, checked again here for every job however it was made (a dependent
        // with a fixed county-scoped role of an all-counties parent, a job queued by an older
        // version of the workflow): a job that may not run never reads a row.
        self.workflow
            .check_county(&job.role, job.county.as_deref())
            .map_err(|e| e.to_string())?;
        let source = self.workflow.source_of(report);
        let source_spec = source_spec(job, report, source)?;
        let format = match job.request.data_format.as_deref() {
            Some(f) => {
                DataFormat::from_name(f).ok_or_else(|| format!("unknown data format {f}"))?
            }
            None => report.format,
        };
        let chunk_size = job.request.chunk_size.unwrap_or(report.chunk_size).max(1) as usize;
        // A run over a window files its result under the window's label, so last Tuesday's
        // report is found by its date: `<results>/<REPORT>/2026-11-30/JOB_….csv`.
        let mut result_path = self.config.results_dir.join(&job.report_type);
        if let Some(window) = &job.request.window {
            result_path.push(window.label());
        }
        result_path.push(result_file_name(&job.job_id, job.attempt, format));
        Ok((
            PipelineSpec {
                source: source_spec,
                county_column: source.county_column.clone(),
                county: job.county.clone(),
                output_format: to_pipeline_format(format),
                chunk_size,
                masks: report.masks_for(&job.role),
                mask_columns: report.masks.iter().map(|m| m.field.clone()).collect(),
                hash_key: self.config.hash_key,
                result_path,
                rows_total: match source.kind {
                    SourceKind::File { .. } => self.row_counts.cached(source),
                    _ => None,
                },
            },
            report.timeout,
        ))
    }

    pub(super) fn backoff_for(&self, job: &Job) -> Option<DateTime<Utc>> {
        if job.attempt >= job.max_attempts {
            return None;
        }
        let base = self
            .workflow
            .report(&job.report_type)
            .map_or(Duration::from_secs(30), |r| r.backoff);
        let factor = 1u32 << (job.attempt.saturating_sub(1)).min(16);
        let delay = base.saturating_mul(factor).min(Duration::from_secs(3600));
        Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default())
    }

    /// A worker: runs a claimed job, then each job it claims for its slot afterwards (eager
    /// dispatch), on one slot of the pool. Written results go to the durability `stage`.
    /// `flush`: the wait for the completion that claimed `job`, if one did.
    pub(super) async fn work(self: Arc<Self>, job: Job, flush: Option<Flush>, stage: Stage) {
        let mut next = Some((job, flush));
        while let Some((job, flush)) = next {
            next = self.run_job(job, flush, &stage).await;
        }
    }

    /// One attempt of one claimed job, up to its rows written (then handed to the durability
    /// stage) or its completion (an attempt that ends without a result). `before` is the
    /// previous job's completion on its way to disk: awaited while this job runs, and before
    /// this one completes. Returns the next job for this slot, with its own wait for the disk:
    /// the one its completion claimed, or, after a hand-off, one claimed from the queue.
    async fn run_job(
        self: &Arc<Self>,
        job: Job,
        before: Option<Flush>,
        stage: &Stage,
    ) -> Option<(Job, Option<Flush>)> {
        Metrics::add(&self.metrics.workers_busy, 1);
        let started = Instant::now();
        tracing::info!(job = %job.job_id, report = %job.report_type, role = %job.role, attempt = job.attempt, "job started");
        self.emit(ExecEvent::Started {
            job: job.clone(),
            at: Instant::now(),
        });
        let run = async {
            match self.spec_for(&job) {
                Ok((spec, timeout)) => self.execute(&job, spec, timeout).await,
                Err(e) => Some((
                    Attempted::Ended(Outcome::Failure {
                        error: e,
                        retry_at: None,
                    }),
                    job.version,
                )),
            }
        };
        let before = async {
            if let Some(flush) = before {
                flush.await;
            }
        };
        let (attempted, ()) = tokio::join!(run, before);
        if attempted.is_some() {
            self.emit(ExecEvent::Completing {
                job_id: job.job_id.clone(),
                report_type: job.report_type.clone(),
                at: Instant::now(),
            });
        }
        let next = match attempted {
            Some((Attempted::Ended(outcome), version)) => self
                .finish(job, outcome, version, started, true)
                .await
                .map(|(job, flush)| (job, Some(flush))),
            Some((Attempted::Written(output, staged), version)) => {
                let handoff = Handoff {
                    job,
                    version,
                    output,
                    staged,
                    started,
                };
                if let Err(handoff) = stage.hand_off(handoff).await {
                    // The stage is gone (the engine is being torn down): the temporary file
                    // is removed with it and the job left to recovery, as for a crash.
                    tracing::warn!(job = %handoff.job.job_id, "the engine is stopping: result not recorded; recovery will run the job again");
                    None
                } else {
                    self.claim_for_slot().await.map(|job| (job, None))
                }
            }
            None => None,
        };
        self.metrics.workers_busy.fetch_sub(1, Ordering::Relaxed);
        next
    }

    /// A job for the slot this worker holds, claimed as the dispatcher would (none once the
    /// engine is stopping): after a hand-off the slot is free at once, and a worker that takes
    /// its own next job saves the dispatcher a wake-up and a round.
    async fn claim_for_slot(&self) -> Option<Job> {
        if self.stopping.load(Ordering::Relaxed) {
            return None;
        }
        match self
            .store
            .claim(&self.config.worker_id, 1, self.config.lease, Utc::now())
            .await
        {
            Ok(mut jobs) => jobs.pop(),
            Err(e) => {
                // The dispatcher claims again when it can.
                Metrics::add(&self.metrics.store_errors, 1);
                tracing::warn!(error = %e, "claim failed; the slot goes back to the dispatcher");
                None
            }
        }
    }

    /// Runs the pipeline next to the lease heartbeat. `None` means the lease
    /// was lost: another worker owns the job now and this one must not write.
    async fn execute(
        &self,
        job: &Job,
        spec: PipelineSpec,
        timeout: Option<Duration>,
    ) -> Option<(Attempted, u64)> {
        let shared = Arc::new(Shared::default());
        // An attempt abandoned by the dispatcher (a stopped store, the end of the grace
        // period) drops this future: the pipeline thread, which a drop cannot stop, then
        // ends at its next chunk instead of running on unrecorded.
        let _cancel_on_drop = CancelOnDrop(shared.clone());
        let observer_state = shared.clone();
        let run_started = Instant::now();
        let leftovers = leftover_results(job, &spec.result_path, spec.output_format);
        let job_id = job.job_id.clone();
        let mut handle = tokio::task::spawn_blocking(move || {
            // This attempt holds the job: what an earlier holder left (it died after writing
            // its result, before completing) is nobody's result.
            for path in leftovers {
                discard_result(&job_id, &path);
            }
            let mut observer = SharedObserver(observer_state);
            pipeline::run_staged(&spec, &mut observer)
        });
        let mut version = job.version;
        let deadline = timeout.map(|t| run_started + t);
        let renew_every = (self.config.lease / 3).max(Duration::from_millis(50));
        let mut last_renew = Instant::now();
        let mut written = (0u64, 0u64);
        let (mut lost, mut timed_out, mut cancelled) = (false, false, false);
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL.min(renew_every));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline_sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline_sleep);
        let result = loop {
            tokio::select! {
                r = &mut handle => break r,
                _ = &mut deadline_sleep, if !timed_out => {
                    // The pipeline stops at its next chunk boundary.
                    timed_out = true;
                    shared.cancel.store(true, Ordering::Relaxed);
                }
                _ = ticker.tick() => {
                    let read = shared.rows_read.load(Ordering::Relaxed);
                    let total = shared.rows_total.load(Ordering::Relaxed);
                    let rows_written = shared.rows_written.load(Ordering::Relaxed);
                    let progressed = (read, rows_written) != written;
                    if progressed {
                        // rows_total 0: not known (a database source).
                        let rows_total = if shared.total_known.load(Ordering::Relaxed) { total } else { 0 };
                        self.emit(ExecEvent::Progress { job_id: job.job_id.clone(), rows_read: read, rows_total });
                    }
                    if !(progressed || last_renew.elapsed() >= renew_every) || lost {
                        continue;
                    }
                    // A database query's size is known only at its end: no percentage and no
                    // time left until then (rows_written still moves).
                    let known = shared.total_known.load(Ordering::Relaxed);
                    let progress = if known {
                        (read * 100).checked_div(total).unwrap_or(0).min(100) as u8
                    } else {
                        0
                    };
                    let elapsed = run_started.elapsed().as_secs_f64();
                    let estimated_completion = (known && read > 0 && elapsed > 0.0).then(|| {
                        let remaining = total.saturating_sub(read) as f64 / (read as f64 / elapsed);
                        Utc::now() + chrono::Duration::milliseconds((remaining * 1000.0) as i64)
                    });
                    let update = ProgressUpdate { progress, rows_written, estimated_completion };
                    let lease_until = Utc::now() + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
                    match self.store.renew(&job.job_id, version, lease_until, Some(update)).await {
                        Ok(Cas::Applied(j)) => {
                            version = j.version;
                            last_renew = Instant::now();
                            written = (read, rows_written);
                            if j.cancel_requested && !cancelled {
                                cancelled = true;
                                shared.cancel.store(true, Ordering::Relaxed);
                            }
                        }
                        Ok(Cas::Conflict { current }) => match current {
                            Some(c) if c.status == JobStatus::Processing
                                && c.lease_owner.as_deref() == Some(&self.config.worker_id)
                                && c.attempt == job.attempt =>
                            {
                                // Our job, bumped by a cancel request.
                                version = c.version;
                                if c.cancel_requested {
                                    cancelled = true;
                                    shared.cancel.store(true, Ordering::Relaxed);
                                }
                            }
                            _ => {
                                tracing::warn!(job = %job.job_id, "lease lost; stopping without writing");
                                lost = true;
                                shared.cancel.store(true, Ordering::Relaxed);
                            }
                        },
                        Err(e) => {
                            Metrics::add(&self.metrics.store_errors, 1);
                            tracing::warn!(job = %job.job_id, error = %e, "lease renewal failed; will retry");
                        }
                    }
                }
            }
        };
        if lost {
            // The job is another attempt's now; a result this attempt wrote is nobody's
            // (dropped, its temporary file is removed; it never reached its final name).
            drop(result);
            return None;
        }
        let rows = shared.rows_read.load(Ordering::Relaxed);
        self.record_rate(&job.report_type, rows, run_started.elapsed());
        let outcome = match result {
            Ok(Ok((out, staged))) => return Some((Attempted::Written(out, staged), version)),
            Ok(Err(PipelineError::Cancelled)) if timed_out => Outcome::Failure {
                error: format!(
                    "timed out after {}",
                    crate::compiler::humanize(timeout.unwrap_or_default())
                ),
                retry_at: self.backoff_for(job),
            },
            Ok(Err(PipelineError::Cancelled)) => Outcome::Cancelled,
            // A permanent error (a missing source, bad data, a rule the data does not fit)
            // fails the same way on every attempt: the job fails at once.
            Ok(Err(e)) => Outcome::Failure {
                retry_at: if e.is_transient() {
                    self.backoff_for(job)
                } else {
                    None
                },
                error: e.to_string(),
            },
            Err(e) => Outcome::Failure {
                error: format!("worker crashed: {e}"),
                retry_at: self.backoff_for(job),
            },
        };
        Some((Attempted::Ended(outcome), version))
    }
}

/// The wait for a completion to be on disk.
pub(super) type Flush = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Counters shared between the blocking pipeline and the async heartbeat.
#[derive(Default)]
struct Shared {
    cancel: AtomicBool,
    total_known: AtomicBool,
    rows_read: AtomicU64,
    rows_total: AtomicU64,
    rows_written: AtomicU64,
}

/// Sets the pipeline's cancel flag when dropped.
struct CancelOnDrop(Arc<Shared>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel.store(true, Ordering::Relaxed);
    }
}

/// The pipeline's observer: publishes each chunk's progress to [`Shared`] and cancels when
/// its flag is set.
struct SharedObserver(Arc<Shared>);

impl Observer for SharedObserver {
    fn on_chunk(&mut self, p: &Progress) -> Control {
        self.0.rows_read.store(p.rows_read, Ordering::Relaxed);
        self.0.rows_total.store(p.rows_total, Ordering::Relaxed);
        self.0.total_known.store(p.total_known, Ordering::Relaxed);
        self.0.rows_written.store(p.rows_written, Ordering::Relaxed);
        if self.0.cancel.load(Ordering::Relaxed) {
            Control::Cancel
        } else {
            Control::Continue
        }
    }
}

/// Where the job's rows come from: the source's file, or its database with the report's query
/// and the job's bindings. Errors are permanent: the same job fails the same way again.
fn source_spec(job: &Job, report: &ReportType, source: &Source) -> Result<SourceSpec, String> {
    let query = || {
        report.query.as_ref().ok_or_else(|| {
            format!(
                "report {} reads database source `{}` but has no query",
                report.name, source.name
            )
        })
    };
    Ok(match &source.kind {
        SourceKind::File { path, format } => SourceSpec::File {
            path: path.clone(),
            format: to_pipeline_format(*format),
        },
        SourceKind::Sqlite { path } => SourceSpec::Sqlite {
            path: path.clone(),
            query: query()?.text.clone(),
            bindings: bindings(job, report)?,
        },
        SourceKind::Postgres { url_env } => {
            let query = query()?.text.clone();
            let bindings = bindings(job, report)?;
            // Read now, not when the workflow was loaded: a rotated password takes effect at
            // the next attempt. The value is never printed (it may hold a password).
            let url = match std::env::var(url_env) {
                Ok(url) if !url.trim().is_empty() => url,
                Ok(_) => return Err(format!(
                    "source `{}`: environment variable {url_env} is empty; it must hold the PostgreSQL connection URL",
                    source.name
                )),
                Err(std::env::VarError::NotPresent) => return Err(format!(
                    "source `{}`: environment variable {url_env} is not set; it must hold the PostgreSQL connection URL",
                    source.name
                )),
                Err(std::env::VarError::NotUnicode(_)) => return Err(format!(
                    "source `{}`: environment variable {url_env} is not valid UTF-8",
                    source.name
                )),
            };
            SourceSpec::Postgres {
                url,
                query,
                bindings,
                application_name: application_name(job),
            }
        }
    })
}

/// The `application_name` of a PostgreSQL source's connection: `flowctl <job> #<attempt>`, so
/// an operator (or a test) finds the attempt's session in `pg_stat_activity`. PostgreSQL keeps
/// 63 bytes of it; job ids are short ASCII.
pub fn application_name(job: &Job) -> String {
    format!("flowctl {} #{}", job.job_id, job.attempt.max(1))
}

/// The values of a database source's query for `job`: every declared parameter of `report`
/// (its resolved value from the job record, or NULL for an optional one left out) and the
/// built-ins ([`crate::params::BUILT_INS`]): `interval_start`/`interval_end` (instants) and
/// `interval_start_date`/`interval_end_date` (local dates in the window's zone, the end
/// exclusive) from the job's window, `county` (NULL for a job over every county), `role`,
/// `job_id` and `trigger` ([`trigger_kind`]).
///
/// A job without a window gets no window built-ins; a query that reads one then fails here,
/// with the reason, instead of binding NULL and quietly returning nothing.
pub fn bindings(job: &Job, report: &ReportType) -> Result<Bindings, String> {
    let mut b = Bindings::new();
    for param in &report.params {
        b.insert(
            param.name.clone(),
            job.request.params.get(&param.name).cloned(),
        );
    }
    let text = |s: &str| Some(ParamValue::String(s.to_string()));
    match &job.request.window {
        Some(w) => {
            b.insert(
                "interval_start".into(),
                Some(ParamValue::Timestamp(w.start)),
            );
            b.insert("interval_end".into(), Some(ParamValue::Timestamp(w.end)));
            b.insert(
                "interval_start_date".into(),
                Some(ParamValue::Date(w.start_date())),
            );
            b.insert(
                "interval_end_date".into(),
                Some(ParamValue::Date(w.end_date())),
            );
        }
        None => {
            if let Some(query) = report.query.as_ref().filter(|q| q.uses_window()) {
                let used: Vec<String> = query
                    .placeholders
                    .iter()
                    .filter(|p| p.starts_with("interval_"))
                    .map(|p| format!(":{p}"))
                    .collect();
                return Err(format!(
                    "report {}'s query reads the run's window ({}) but job {} has none: give the trigger a window, or the report or its schedule a `window`",
                    report.name,
                    used.join(", "),
                    job.job_id
                ));
            }
        }
    }
    b.insert("county".into(), job.county.as_deref().and_then(text));
    b.insert("role".into(), text(&job.role));
    b.insert("job_id".into(), text(job.job_id.as_str()));
    b.insert("trigger".into(), text(trigger_kind(job)));
    Ok(b)
}

/// The kind of trigger that made `job`, as the `trigger` built-in gives it: `dependency` for a
/// dependent (it carries its parent's trigger id, but a dependency made it), else from the
/// trigger id's prefix: `schedule` (`fire:`, the scheduler's and a backfill's fires),
/// `backfill` (`backfill:`), `http` (`http:`), `cli` (`run:`, `flowctl run`); any other
/// prefix as it is written.
pub fn trigger_kind(job: &Job) -> &str {
    if !job.parent_job_ids.is_empty() {
        return "dependency";
    }
    let prefix = job
        .trigger_id
        .split_once(':')
        .map_or(job.trigger_id.as_str(), |(p, _)| p);
    match prefix {
        "fire" => "schedule",
        "run" | "cli" => "cli",
        "dep" | "dependency" => "dependency",
        other => other,
    }
}

fn to_pipeline_format(f: DataFormat) -> pipeline::DataFormat {
    match f {
        DataFormat::Csv => pipeline::DataFormat::Csv,
        DataFormat::Jsonl => pipeline::DataFormat::Jsonl,
    }
}
