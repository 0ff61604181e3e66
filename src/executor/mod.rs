//! Runs ready jobs: a dispatcher that claims from the store and a bounded
//! pool of workers that run the report pipeline, renew their lease, observe
//! cancellation and timeouts, retry with backoff and complete the job (which
//! fires its dependents in the same store transaction).
//!
//! **Architecture invariant:** never more jobs run than `worker_pool_size`:
//! the dispatcher claims only as many jobs as it has free permits.
//!
//! The files: `dispatcher` (claims and the pool), `attempt` (one attempt of a job: its
//! pipeline spec, the pipeline beside the lease heartbeat, retries' backoff), `completion`
//! (recording the outcome, which claims the worker's next job), `estimates` (row counts and
//! throughput), `joins` (the dependency edges the store fires) and `results` (result file
//! names and what a lost attempt leaves).

mod attempt;
mod completion;
mod dispatcher;
mod estimates;
mod joins;
mod results;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;

use crate::job::{Job, JobId, JobRequest, NewJob, Principal};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::workflow::{CountyRequired, Workflow};

use estimates::RowCounts;

pub use joins::Joins;
pub use results::result_file_name;

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

/// Making the engine, its events and its root jobs; lease recovery.
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
}
