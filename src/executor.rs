//! Runs ready jobs: a dispatcher that claims from the store and a bounded
//! pool of workers that run the report pipeline, renew their lease, observe
//! cancellation and timeouts, retry with backoff and complete the job (which
//! fires its dependents in the same store transaction).
//!
//! **Architecture invariant:** never more jobs run than `worker_pool_size`:
//! the dispatcher claims only as many jobs as it has free permits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::job::{Job, JobId, JobRequest, JobStatus, NewJob, Principal};
use crate::metrics::{Finish, Metrics};
use crate::pipeline::{self, Control, Observer, PipelineError, PipelineSpec, Progress};
use crate::store::{
    Cas, ChildTemplate, JoinEdge, JoinRules, Outcome, ProgressUpdate, Store, StoreError,
};
use crate::workflow::{CountyRequired, DataFormat, Source, Workflow};

/// How often a running job may write its progress to the store.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Rows per second assumed for estimates before a report type has run.
const DEFAULT_ROWS_PER_SEC: f64 = 500_000.0;

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Names this process in `lease_owner`.
    pub worker_id: String,
    pub pool_size: usize,
    pub max_jobs_per_poll: usize,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub dependencies_enabled: bool,
    pub results_dir: PathBuf,
    /// Key of the `hash` mask method.
    pub hash_key: [u8; 32],
    /// On shutdown, how long running jobs may take to finish before they are
    /// abandoned to lease recovery.
    pub grace: Duration,
}

impl ExecutorConfig {
    pub fn from_workflow(workflow: &Workflow, hash_key: [u8; 32]) -> ExecutorConfig {
        let c = &workflow.config;
        ExecutorConfig {
            worker_id: default_worker_id(),
            pool_size: c.worker_pool_size as usize,
            max_jobs_per_poll: c.max_jobs_per_poll as usize,
            poll_interval: c.poll_interval,
            lease: c.lease,
            dependencies_enabled: c.dependencies_enabled,
            results_dir: c.results_dir.clone(),
            hash_key,
            grace: Duration::from_secs(30),
        }
    }
}

/// `host:pid:random`, unique per process run.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}:{}:{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Why [`Engine::new_job`] made no job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRefused {
    #[error("unknown report type {0}")]
    UnknownReport(String),
    #[error(transparent)]
    CountyRequired(#[from] CountyRequired),
}

/// What the executor reports while it runs, for progress displays.
#[derive(Debug, Clone)]
pub enum ExecEvent {
    /// A worker began an attempt (`at`: when it did).
    Started {
        job: Job,
        at: Instant,
    },
    Progress {
        job_id: JobId,
        rows_read: u64,
        rows_total: u64,
    },
    Finished {
        job: Job,
        children: Vec<Job>,
    },
    /// The attempt failed and the job was queued again.
    Retrying {
        job: Job,
    },
    /// The worker is handing its outcome to the store (the job's work is
    /// done); `Finished` follows once the store has recorded it.
    Completing {
        job_id: JobId,
        report_type: String,
        at: Instant,
    },
}

/// Rows of each source, counted once per version of its file (size and
/// modification time), so estimating a job costs a `stat`, not a read.
#[derive(Default)]
struct RowCounts(Mutex<HashMap<PathBuf, (FileVersion, u64)>>);

type FileVersion = (u64, Option<std::time::SystemTime>);

fn file_version(source: &Source) -> Option<FileVersion> {
    let meta = std::fs::metadata(&source.path).ok()?;
    Some((meta.len(), meta.modified().ok()))
}

impl RowCounts {
    /// The source's rows, counted once per version of the file.
    fn get(&self, source: &Source) -> Option<u64> {
        let version = file_version(source)?;
        if let Some(rows) = self.lookup(source, version) {
            return Some(rows);
        }
        let rows = pipeline::count_rows(&source.path, source.format).ok()?;
        if let Ok(mut cache) = self.0.lock() {
            cache.insert(source.path.clone(), (version, rows));
        }
        Some(rows)
    }

    /// The count of the source's current version if it was counted already; never reads it
    /// (the pipeline counts a source it is not given a count for).
    fn cached(&self, source: &Source) -> Option<u64> {
        self.lookup(source, file_version(source)?)
    }

    fn lookup(&self, source: &Source, version: FileVersion) -> Option<u64> {
        let cache = self.0.lock().ok()?;
        cache
            .get(&source.path)
            .filter(|(counted, _)| *counted == version)
            .map(|&(_, rows)| rows)
    }
}

/// The dependency edges of the workflow, by parent report type, as the store
/// needs them.
pub struct Joins {
    by_parent: HashMap<String, Vec<JoinEdge>>,
}

impl Joins {
    /// `rows` counts a source's rows, for the children's estimated durations.
    pub fn from_workflow(workflow: &Workflow, rows: impl Fn(&Source) -> Option<u64>) -> Joins {
        let mut by_parent: HashMap<String, Vec<JoinEdge>> = HashMap::new();
        for dep in &workflow.dependencies {
            let Some(child) = workflow.report(&dep.child) else {
                continue;
            };
            let o = &dep.overrides;
            let edge = JoinEdge {
                join_id: dep.id.clone(),
                parents: dep.parents.clone(),
                condition: dep.condition,
                parent_roles: (!dep.parent_roles.is_empty()).then(|| dep.parent_roles.clone()),
                child: ChildTemplate {
                    report_type: dep.child.clone(),
                    role: dep.role.clone(),
                    priority: o.priority.unwrap_or(child.priority),
                    max_attempts: child.retries + 1,
                    request: JobRequest {
                        chunk_size: o.chunk_size,
                        data_format: o.format.map(|f| f.name().to_string()),
                        priority: o.priority,
                        target_system: o.target.clone(),
                        params: Default::default(),
                    },
                    // Rows of the child's source at the default rate; the
                    // executor refines the estimate while the child runs.
                    estimated_duration: rows(workflow.source_of(child))
                        .map(|rows| Duration::from_secs_f64(rows as f64 / DEFAULT_ROWS_PER_SEC)),
                },
            };
            for parent in &dep.parents {
                by_parent
                    .entry(parent.clone())
                    .or_default()
                    .push(edge.clone());
            }
        }
        Joins { by_parent }
    }

    pub fn none() -> Joins {
        Joins {
            by_parent: HashMap::new(),
        }
    }
}

impl JoinRules for Joins {
    fn joins_for(&self, report_type: &str) -> &[JoinEdge] {
        self.by_parent.get(report_type).map_or(&[], Vec::as_slice)
    }
}

/// Everything a running engine shares: workflow, store, joins, metrics.
pub struct Engine {
    pub workflow: Arc<Workflow>,
    pub store: Arc<dyn Store>,
    pub joins: Joins,
    pub config: ExecutorConfig,
    pub metrics: Arc<Metrics>,
    events: Option<mpsc::UnboundedSender<ExecEvent>>,
    /// Observed rows per second per report type (moving average).
    throughput: Mutex<HashMap<String, f64>>,
    /// Woken when a retry's backoff ends, so the dispatcher claims it then
    /// rather than at the next poll.
    retry_due: Arc<tokio::sync::Notify>,
    row_counts: RowCounts,
    /// Set when the dispatcher stops claiming: finishing workers stop taking jobs too.
    stopping: AtomicBool,
}

impl Engine {
    pub fn new(
        workflow: Arc<Workflow>,
        store: Arc<dyn Store>,
        config: ExecutorConfig,
        metrics: Arc<Metrics>,
    ) -> Engine {
        // Counting the children's sources here warms the cache that root
        // jobs' estimates use too: each file is read once per version.
        let row_counts = RowCounts::default();
        let joins = if config.dependencies_enabled {
            Joins::from_workflow(&workflow, |source| row_counts.get(source))
        } else {
            Joins::none()
        };
        Metrics::add(&metrics.workers, config.pool_size as u64);
        Engine {
            workflow,
            store,
            joins,
            config,
            metrics,
            events: None,
            throughput: Mutex::new(HashMap::new()),
            retry_due: Arc::new(tokio::sync::Notify::new()),
            row_counts,
            stopping: AtomicBool::new(false),
        }
    }

    /// Sends [`ExecEvent`]s to `tx` as jobs start, progress and finish.
    pub fn with_events(mut self, tx: mpsc::UnboundedSender<ExecEvent>) -> Engine {
        self.events = Some(tx);
        self
    }

    fn emit(&self, event: ExecEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    /// A root job for `report_type` run as `principal`, with the report's
    /// priority, attempts and an estimated completion time. Every entry point (CLI, API,
    /// schedule fires) makes its jobs here, so the county rule is decided here once.
    pub fn new_job(
        &self,
        report_type: &str,
        principal: Principal,
        trigger_id: &str,
        request: JobRequest,
    ) -> Result<NewJob, JobRefused> {
        let report = self
            .workflow
            .report(report_type)
            .ok_or_else(|| JobRefused::UnknownReport(report_type.to_string()))?;
        self.workflow
            .check_county(&principal.role, principal.county.as_deref())?;
        let priority = request.priority.unwrap_or(report.priority);
        Ok(NewJob {
            report_type: report_type.to_string(),
            principal,
            parent_job_ids: Vec::new(),
            trigger_id: trigger_id.to_string(),
            request,
            priority,
            max_attempts: report.retries + 1,
            estimated_completion: self.estimate(report_type, Utc::now()),
        })
    }

    /// Start time + rows to do / throughput observed for this report type.
    pub fn estimate(&self, report_type: &str, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let report = self.workflow.report(report_type)?;
        let source = self.workflow.source_of(report);
        let rows = self.row_counts.get(source)?;
        let rate = self.rate(report_type);
        let secs = rows as f64 / rate;
        Some(from + chrono::Duration::milliseconds((secs * 1000.0) as i64))
    }

    fn rate(&self, report_type: &str) -> f64 {
        self.throughput
            .lock()
            .ok()
            .and_then(|t| t.get(report_type).copied())
            .unwrap_or(DEFAULT_ROWS_PER_SEC)
    }

    fn record_rate(&self, report_type: &str, rows: u64, elapsed: Duration) {
        if rows == 0 || elapsed.is_zero() {
            return;
        }
        let observed = rows as f64 / elapsed.as_secs_f64();
        if let Ok(mut t) = self.throughput.lock() {
            let e = t.entry(report_type.to_string()).or_insert(observed);
            *e = 0.7 * *e + 0.3 * observed;
        }
    }

    /// Takes back jobs whose lease expired, counting them.
    pub async fn recover_leases(&self) -> Result<usize, StoreError> {
        let expired = self.store.requeue_expired(Utc::now(), &self.joins).await?;
        let n = expired.requeued.len() + expired.finished.len();
        Metrics::add(&self.metrics.lease_recoveries, n as u64);
        for c in &expired.finished {
            Metrics::add(
                &self.metrics.dependents_created,
                c.children_created.len() as u64,
            );
        }
        if n > 0 {
            tracing::warn!(
                requeued = expired.requeued.len(),
                finished = expired.finished.len(),
                "lease recovery"
            );
        }
        Ok(n)
    }

    /// The dispatcher: claims ready jobs and runs them on the pool until
    /// `shutdown` resolves (or, with `until_idle`, until no job is queued or
    /// running). On shutdown it stops claiming, gives running jobs the grace
    /// period, and leaves the rest to lease recovery. `shutdown` is heeded
    /// while the store fails too (between retries).
    ///
    /// Returns [`StoreError::Stopped`] as soon as the store stops accepting
    /// changes ([`Store::stopped`], e.g. a full disk): running jobs are
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
                            tasks.spawn(async move {
                                engine.work(job).await;
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
        if let Some(error) = stopped {
            // Nothing a running job does can be recorded any more.
            tracing::error!(error = %error, running = tasks.len(), "the job store stopped: abandoning running jobs");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            return Err(error);
        }
        if !tasks.is_empty() {
            tracing::info!(running = tasks.len(), grace = ?self.config.grace, "shutting down: waiting for running jobs");
            let wait_all = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(self.config.grace, wait_all)
                .await
                .is_err()
            {
                tracing::warn!("grace period over: abandoning running jobs to lease recovery");
                tasks.abort_all();
            }
        }
        Ok(())
    }

    /// No job queued or running in the store.
    async fn idle(&self) -> bool {
        match self.store.counts().await {
            Ok(c) => {
                c.get(&JobStatus::Queued).copied().unwrap_or(0) == 0
                    && c.get(&JobStatus::Processing).copied().unwrap_or(0) == 0
            }
            Err(_) => false,
        }
    }

    fn spec_for(&self, job: &Job) -> Result<(PipelineSpec, Option<Duration>), String> {
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
        let format = match job.request.data_format.as_deref() {
            Some(f) => {
                DataFormat::from_name(f).ok_or_else(|| format!("unknown data format {f}"))?
            }
            None => report.format,
        };
        let chunk_size = job.request.chunk_size.unwrap_or(report.chunk_size).max(1) as usize;
        let result_path = self
            .config
            .results_dir
            .join(&job.report_type)
            .join(result_file_name(&job.job_id, job.attempt, format));
        Ok((
            PipelineSpec {
                source_path: source.path.clone(),
                source_format: to_pipeline_format(source.format),
                county_column: source.county_column.clone(),
                county: job.county.clone(),
                output_format: to_pipeline_format(format),
                chunk_size,
                masks: report.masks_for(&job.role),
                mask_columns: report.masks.iter().map(|m| m.field.clone()).collect(),
                hash_key: self.config.hash_key,
                result_path,
                rows_total: self.row_counts.cached(source),
            },
            report.timeout,
        ))
    }

    fn backoff_for(&self, job: &Job) -> Option<DateTime<Utc>> {
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

    /// A worker: runs a claimed job, then each job its completions claim for it (eager
    /// dispatch), on one slot of the pool.
    async fn work(self: Arc<Self>, job: Job) {
        let mut next = Some((job, None));
        while let Some((job, flush)) = next {
            next = self.run_job(job, flush).await;
        }
    }

    /// One attempt of one claimed job, start to completion. `before` is the previous job's
    /// completion on its way to disk: awaited while this job runs, and before this one
    /// completes. Returns the job this completion claimed, with its own wait for the disk.
    async fn run_job(
        self: &Arc<Self>,
        job: Job,
        before: Option<Flush>,
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
                    Outcome::Failure {
                        error: e,
                        retry_at: None,
                    },
                    job.version,
                )),
            }
        };
        let before = async {
            if let Some(flush) = before {
                flush.await;
            }
        };
        let (outcome, ()) = tokio::join!(run, before);
        let next = match outcome {
            Some((outcome, version)) => self.finish(job, outcome, version, started).await,
            None => None,
        };
        self.metrics.workers_busy.fetch_sub(1, Ordering::Relaxed);
        next.map(|(job, flush)| (job, Some(flush)))
    }

    /// Runs the pipeline next to the lease heartbeat. `None` means the lease
    /// was lost: another worker owns the job now and this one must not write.
    async fn execute(
        &self,
        job: &Job,
        spec: PipelineSpec,
        timeout: Option<Duration>,
    ) -> Option<(Outcome, u64)> {
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
            pipeline::run(&spec, &mut observer)
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
                        self.emit(ExecEvent::Progress { job_id: job.job_id.clone(), rows_read: read, rows_total: total });
                    }
                    if !(progressed || last_renew.elapsed() >= renew_every) || lost {
                        continue;
                    }
                    let progress = (read * 100).checked_div(total).unwrap_or(0).min(100) as u8;
                    let elapsed = run_started.elapsed().as_secs_f64();
                    let estimated_completion = (read > 0 && elapsed > 0.0).then(|| {
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
            // The job is another attempt's now; a result this attempt finished is nobody's.
            if let Ok(Ok(out)) = &result {
                discard_result(&job.job_id, &out.path);
            }
            return None;
        }
        let rows = shared.rows_read.load(Ordering::Relaxed);
        self.record_rate(&job.report_type, rows, run_started.elapsed());
        let outcome = match result {
            Ok(Ok(out)) => Outcome::Success {
                result_path: out.path.to_string_lossy().into_owned(),
                rows_written: out.rows_written,
                sha256: out.sha256,
            },
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
        Some((outcome, version))
    }

    /// Writes the outcome with a CAS at the job's current version. A cancel
    /// request may bump the version between our last renewal and now: then
    /// we retry at the new version as long as the job is still ours.
    ///
    /// Unless the engine is stopping, the same store call claims this worker's next job
    /// ([`Store::complete_and_claim`]); it is returned with the wait for the completion to be
    /// durable, which runs beside it.
    async fn finish(
        self: &Arc<Self>,
        job: Job,
        outcome: Outcome,
        mut version: u64,
        started: Instant,
    ) -> Option<(Job, Flush)> {
        self.emit(ExecEvent::Completing {
            job_id: job.job_id.clone(),
            report_type: job.report_type.clone(),
            at: Instant::now(),
        });
        let joins = self.joins.joins_for(&job.report_type);
        let mut use_joins = true;
        let mut failures = 0;
        // A try that failed for want of the store may still have been applied.
        let mut interrupted = false;
        let mut unavailable_backoff = Duration::from_millis(50);
        while failures < 5 {
            let edges: &[JoinEdge] = if use_joins { joins } else { &[] };
            let completed = if self.stopping.load(Ordering::Relaxed) {
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
                            durable.await;
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

/// The wait for a completion to be on disk.
type Flush = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Counters shared between the blocking pipeline and the async heartbeat.
#[derive(Default)]
struct Shared {
    cancel: AtomicBool,
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

struct SharedObserver(Arc<Shared>);

impl Observer for SharedObserver {
    fn on_chunk(&mut self, p: &Progress) -> Control {
        self.0.rows_read.store(p.rows_read, Ordering::Relaxed);
        self.0.rows_total.store(p.rows_total, Ordering::Relaxed);
        self.0.rows_written.store(p.rows_written, Ordering::Relaxed);
        if self.0.cancel.load(Ordering::Relaxed) {
            Control::Cancel
        } else {
            Control::Continue
        }
    }
}

/// The result file of one attempt: `<job_id>.<ext>` for the first, `<job_id>.attempt-N.<ext>`
/// after. Each attempt writes its own path and the pipeline never replaces a file, so a worker
/// that lost its lease (paused past it, then resumed) cannot put its output over the result a
/// later attempt completed: the recorded path and SHA-256 always match the file.
pub fn result_file_name(job_id: &JobId, attempt: u32, format: DataFormat) -> String {
    match attempt {
        0 | 1 => format!("{job_id}.{}", format.extension()),
        n => format!("{job_id}.attempt-{n}.{}", format.extension()),
    }
}

/// The result paths of `job`'s attempts up to its current one, beside `result_path`: what
/// holders that are gone may have left. The current attempt's own path is among them because
/// a claim of the embedded store may be lost in a crash (claims are written lazily), so the
/// same attempt number can run again after a restart; its earlier holder was the process
/// that died, since one process holds an embedded store. A shared store's claims are durable,
/// so there an attempt number has one holder and its path is free.
fn leftover_results(job: &Job, result_path: &std::path::Path, format: DataFormat) -> Vec<PathBuf> {
    let dir = result_path.parent().unwrap_or(std::path::Path::new("."));
    (1..=job.attempt.max(1))
        .map(|attempt| dir.join(result_file_name(&job.job_id, attempt, format)))
        .collect()
}

/// Removes a result written by an attempt that no longer holds its job.
fn discard_result(job_id: &JobId, path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(job = %job_id, path = %path.display(), "removed the result of an attempt that lost its job")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(job = %job_id, path = %path.display(), error = %e, "cannot remove the result of an attempt that lost its job")
        }
    }
}

fn to_pipeline_format(f: DataFormat) -> pipeline::DataFormat {
    match f {
        DataFormat::Csv => pipeline::DataFormat::Csv,
        DataFormat::Jsonl => pipeline::DataFormat::Jsonl,
    }
}
