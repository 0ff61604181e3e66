//! The job store: the durable queue of jobs, their status changes, and the join rule that turns
//! completions into dependent jobs (DESIGN.md, "Status machine" and "Dependencies").
//!
//! [`Store`] is the one interface the scheduler, the dispatcher, the HTTP API and the CLI use;
//! `sled` is the embedded implementation (one process), `postgres` the shared one
//! (several processes and machines on one database), and `conformance` is the test suite every
//! implementation must pass.
//!
//! Architecture invariants:
//! - **Every status change is a compare-and-swap on `version`, checked by
//!   `status::transition`.** Losing a CAS is the value [`Cas::Conflict`], never an error.
//! - **A job's completion and the dependent jobs it creates are one atomic step**: two parents
//!   completing at the same instant create exactly one child.
//! - **A mutating method returns only once its change is durable** (unless the store was opened
//!   without flushing, for tests).
//! - **Callers pass the time** (`now`), so tests control the clock. Stores keep times to the
//!   microsecond.

pub mod conformance;
#[doc(hidden)]
pub mod pg_test_schema;
pub mod postgres;
pub mod sled;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::job::{Job, JobId, JobRequest, JobStatus, NewJob, Principal};
use crate::status::StatusError;

pub use self::sled::{SledConfig, SledStore};
pub use postgres::{PgConfig, PgStore};

/// A boxed future, so that [`Store`] stays usable as `Arc<dyn Store>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub type StoreResult<T> = Result<T, StoreError>;

/// Crash recoveries: attempts a job gets beyond its declared ones (`max_attempts`, the report's
/// retries + 1) for its worker dying (its lease expiring). A crash is not the job's failure, so
/// the job is queued again and finishes; a job that kills its worker every time still ends
/// FAILED once its attempt number reaches `max_attempts` + this.
///
/// Every attempt, however it ended, counts in the one `attempt` number (the job record keeps no
/// separate crash count): a failure is retried while `attempt < max_attempts`, a lease expiry
/// while `attempt < max_attempts + LEASE_RECOVERY_ALLOWANCE`. So a job with no retries survives
/// 3 crashes and fails on the 4th; a crash also uses up one of a report's retries (the failure
/// after it gets one retry fewer), while the total stays bounded by retries + 1 + 3.
pub const LEASE_RECOVERY_ALLOWANCE: u32 = 3;

/// Whether a job whose lease expired gets another attempt.
pub fn recovers_after_lease_expiry(attempt: u32, max_attempts: u32) -> bool {
    attempt < max_attempts.saturating_add(LEASE_RECOVERY_ALLOWANCE)
}

/// The error of a job failed because its lease expired with no attempt left: who lost it, on
/// which attempt, and the rule ([`LEASE_RECOVERY_ALLOWANCE`]).
pub fn lease_expiry_error(owner: Option<&str>, attempt: u32, max_attempts: u32) -> String {
    format!(
        "worker {} lost its lease on attempt {attempt}, the last allowed: {max_attempts} \
         attempt(s) (the report's retries + 1) plus {LEASE_RECOVERY_ALLOWANCE} crash recoveries",
        owner.unwrap_or("?"),
    )
}

/// The durable job store. Used as `Arc<dyn Store>`.
///
/// Methods that change state return once the change is on disk, except claims and heartbeats
/// ([`Store::claim`], [`Store::renew`]), which a store may make durable later (with the job's
/// next change, or shortly after): a claim lost to a crash leaves the job QUEUED, which is what
/// recovering it would do anyway. Every method that depends on the time takes `now`; stores
/// truncate every time they are given to the microsecond.
pub trait Store: Send + Sync + 'static {
    /// Inserts every job of `batch` as QUEUED (version 1, attempt 1), all or none, and wakes
    /// [`Store::subscribe`]rs.
    ///
    /// With a unique key the batch is inserted at most once ever: a later call with the same key
    /// inserts nothing and returns [`Enqueued::Existing`] with the first call's job ids. A
    /// [`UniqueKey::Fire`] also records its fire time for [`Store::last_fire`].
    fn enqueue(
        &self,
        batch: Vec<NewJob>,
        unique: Option<UniqueKey>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, StoreResult<Enqueued>>;

    /// Moves up to `max` claimable jobs QUEUED → PROCESSING for `worker`, highest priority first,
    /// then oldest first (ties by job id), with a lease until `now + lease`. Jobs whose
    /// `run_after` is after `now` are not claimable. Returns the claimed jobs with their new
    /// version, which the worker passes to [`Store::renew`] and [`Store::complete`].
    fn claim<'a>(
        &'a self,
        worker: &'a str,
        max: usize,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Vec<Job>>>;

    /// A lease heartbeat, optionally with progress. Returns the job with its new version; its
    /// `cancel_requested` tells the worker to stop at the next chunk.
    ///
    /// A cancel request bumps the version too, so a worker that gets [`Cas::Conflict`] should
    /// look at `current`: still PROCESSING under its own `lease_owner` with `cancel_requested`
    /// means "stop", and [`Outcome::Cancelled`] at `current.version` finishes the job.
    fn renew<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        lease_until: DateTime<Utc>,
        progress: Option<ProgressUpdate>,
    ) -> BoxFuture<'a, StoreResult<Cas<Job>>>;

    /// Finishes the attempt of a PROCESSING job:
    /// - `Success` → COMPLETED;
    /// - `Failure` with `retry_at`, attempts left and no cancel request → QUEUED with attempt + 1,
    ///   not claimable before `retry_at`; this is not a completion and emits nothing;
    /// - `Failure` otherwise → FAILED, the error kept;
    /// - `Cancelled` → CANCELLED, emitting nothing.
    ///
    /// In the same atomic step a final COMPLETED or FAILED applies the join rule to `joins` (the
    /// dependency edges whose parents include this job's report type; other edges are ignored)
    /// and creates the children that fire.
    fn complete<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &'a [JoinEdge],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Cas<Completion>>>;

    /// Eager dispatch: [`Store::complete`], then a claim of one job for `worker` (the job
    /// [`Store::claim`] would hand out now, often a dependent this completion just queued), so
    /// that a finishing worker goes straight on to it instead of waiting for the dispatcher to
    /// be woken and claim it (Temporal's eager dispatch, applied to dependents). The claim is
    /// only made when the completion applied.
    ///
    /// Unlike `complete`, this may return before the completion is durable: call
    /// [`Store::sync`] before reporting it. The default completes durably and claims nothing.
    #[allow(clippy::too_many_arguments)]
    fn complete_and_claim<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &'a [JoinEdge],
        now: DateTime<Utc>,
        worker: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, StoreResult<(Cas<Completion>, Option<Job>)>> {
        let _ = (worker, lease);
        Box::pin(async move {
            let cas = self
                .complete(job_id, expected_version, outcome, joins, now)
                .await?;
            Ok((cas, None))
        })
    }

    /// Waits until every change made through this store before the call is durable (claims and
    /// heartbeats aside: see the trait's docs). Stores whose writes are durable when they
    /// return keep the default, which returns at once.
    fn sync(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }

    /// A user's cancel: a QUEUED job is CANCELLED at once; a PROCESSING one gets
    /// `cancel_requested` (version + 1) and its worker stops at the next chunk. Repeating it
    /// changes nothing.
    fn cancel<'a>(
        &'a self,
        job_id: &'a JobId,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<CancelOutcome>>;

    /// Takes back every PROCESSING job whose lease ended before `now` (its worker died or
    /// stalled): QUEUED with attempt + 1 while attempts remain; FAILED once they are used up
    /// (a final failure, so `joins` apply); CANCELLED if a cancel was requested. The stale
    /// worker's later CAS fails.
    fn requeue_expired<'a>(
        &'a self,
        now: DateTime<Utc>,
        joins: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>>;

    /// As [`Store::requeue_expired`] for every PROCESSING job, whatever its lease: for a
    /// single-process store opened after a crash, when no worker can still be running.
    ///
    /// Stores shared by several processes ([`Store::is_shared`]) only take back expired leases:
    /// there, a PROCESSING job may belong to a live worker on another machine. This is then the
    /// same as [`Store::requeue_expired`], so a process may call it at start whatever the store.
    fn requeue_all_processing<'a>(
        &'a self,
        now: DateTime<Utc>,
        joins: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>>;

    fn get<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Option<Job>>>;

    /// The jobs that name `job_id` among their parents, oldest first.
    fn children<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Vec<Job>>>;

    /// Jobs newest first (ties by job id, descending), filtered, one page at a time. A page may
    /// hold fewer than `limit` jobs and still have a `next_cursor` when a filter had to skip many
    /// jobs: keep going until `next_cursor` is `None`.
    fn list(&self, filter: ListFilter) -> BoxFuture<'_, StoreResult<Page>>;

    /// The number of jobs in each status (every status present, zeros included). Kept as
    /// counters, not counted.
    fn counts(&self) -> BoxFuture<'_, StoreResult<BTreeMap<JobStatus, u64>>>;

    /// The ids of the jobs the enqueue with `unique` created, if one did (`None`: an enqueue
    /// with it would create its batch). A read: a backfill's dry run asks which fires exist.
    fn unique_jobs<'a>(
        &'a self,
        unique: &'a UniqueKey,
    ) -> BoxFuture<'a, StoreResult<Option<Vec<JobId>>>>;

    /// The latest fire time recorded by an [`Store::enqueue`] with a [`UniqueKey::Fire`] of this
    /// schedule.
    fn last_fire<'a>(
        &'a self,
        schedule: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<DateTime<Utc>>>>;

    /// A counter bumped whenever jobs may have become claimable (enqueue, retry, requeue, a
    /// child created), so a dispatcher waits on `changed()` instead of polling. Delayed retries
    /// become claimable by the clock alone: poll for those.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// Whether several processes may use this store at once (PostgreSQL), so that a PROCESSING
    /// job may be running elsewhere; `false` for a single-process store (sled).
    fn is_shared(&self) -> bool {
        false
    }

    /// Why the store has stopped accepting changes, if it has: a write or fsync failed (e.g. a
    /// full disk), and nothing written since can be trusted to be on disk, so every later change
    /// fails with [`StoreError::Stopped`] until the process opens the store again. Not a
    /// passing condition: a process should stop (exit 2 and let its supervisor restart it)
    /// rather than retry. Stores that never stop (PostgreSQL: a lost connection is
    /// [`StoreError::Unavailable`], retried) keep the default, `None`.
    fn stopped(&self) -> Option<String> {
        None
    }
}

/// What makes an enqueue happen at most once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UniqueKey {
    /// A schedule fire `(schedule, fire time)`; also recorded for [`Store::last_fire`].
    Fire {
        schedule: String,
        fire_time: DateTime<Utc>,
    },
    /// A client's idempotency key, scoped to the subject that sent it.
    Idempotency { subject: String, key: String },
}

impl UniqueKey {
    pub fn fire(schedule: impl Into<String>, fire_time: DateTime<Utc>) -> UniqueKey {
        UniqueKey::Fire {
            schedule: schedule.into(),
            fire_time: store_time(fire_time),
        }
    }

    pub fn idempotency(subject: impl Into<String>, key: impl Into<String>) -> UniqueKey {
        UniqueKey::Idempotency {
            subject: subject.into(),
            key: key.into(),
        }
    }
}

/// `fire:<schedule>:<rfc3339>` or `idem:<subject>:<key>`, for people. Stores key on the parts
/// (a subject may contain `:`), not on this text.
impl fmt::Display for UniqueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UniqueKey::Fire {
                schedule,
                fire_time,
            } => write!(f, "fire:{schedule}:{}", fire_time.to_rfc3339()),
            UniqueKey::Idempotency { subject, key } => write!(f, "idem:{subject}:{key}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// The jobs as inserted.
    Created(Vec<Job>),
    /// The unique key was used before: nothing was inserted; these are the first call's jobs.
    Existing(Vec<JobId>),
}

impl Enqueued {
    pub fn job_ids(&self) -> Vec<JobId> {
        match self {
            Enqueued::Created(jobs) => jobs.iter().map(|job| job.job_id.clone()).collect(),
            Enqueued::Existing(ids) => ids.clone(),
        }
    }
}

/// The result of a compare-and-swap on a job's version.
// Returned once per call, never stored in bulk: boxing the job would only cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cas<T> {
    Applied(T),
    /// The job is not at the expected version (another worker or a lease sweep got there
    /// first). `current` is the job as it is now, `None` if it does not exist.
    Conflict {
        current: Option<Job>,
    },
}

impl<T> Cas<T> {
    pub fn applied(self) -> Option<T> {
        match self {
            Cas::Applied(value) => Some(value),
            Cas::Conflict { .. } => None,
        }
    }

    pub fn is_applied(&self) -> bool {
        matches!(self, Cas::Applied(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressUpdate {
    /// 0–100; larger values are stored as 100.
    pub progress: u8,
    pub rows_written: u64,
    pub estimated_completion: Option<DateTime<Utc>>,
}

/// How an attempt ended, as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success {
        result_path: String,
        rows_written: u64,
        sha256: String,
    },
    /// `retry_at`: the worker's backoff decision; `None` means do not retry.
    Failure {
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The job after the change.
    pub job: Job,
    /// Dependent jobs created by the join rule in the same atomic step.
    pub children_created: Vec<Job>,
    /// Join edges that could not be applied (never changes the job's own outcome). Already
    /// logged; the caller counts them.
    pub join_errors: Vec<JoinError>,
}

impl Completion {
    /// Logs the join edges that could not be applied: every store does, once, when the
    /// completion is durable.
    pub(crate) fn log_join_errors(&self) {
        for error in &self.join_errors {
            tracing::error!(
                job_id = %self.job.job_id,
                join_id = %error.join_id,
                message = %error.message,
                "triggering a dependent job failed; the parent's outcome stands"
            );
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was QUEUED: CANCELLED at once.
    Cancelled(Job),
    /// It is PROCESSING: `cancel_requested` is set; the worker stops at its next chunk.
    Requested(Job),
    /// It had already finished; nothing changed.
    AlreadyFinished(Job),
    NotFound,
}

/// What a lease sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Jobs queued again for another attempt.
    pub requeued: Vec<JobId>,
    /// Jobs that ended instead: FAILED (no attempts left; joins applied) or CANCELLED (a cancel
    /// was requested).
    pub finished: Vec<Completion>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListFilter {
    pub status: Option<JobStatus>,
    pub report_type: Option<String>,
    pub county: Option<String>,
    /// Page size, 1..=[`ListFilter::MAX_LIMIT`] (values outside are clamped).
    pub limit: usize,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListFilter {
    pub const DEFAULT_LIMIT: usize = 50;
    pub const MAX_LIMIT: usize = 1000;
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            status: None,
            report_type: None,
            county: None,
            limit: Self::DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("job store (sled) failed: {0}")]
    Sled(::sled::Error),
    #[error("job store is corrupt at key {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("job {job} cannot go from {from} to {to}")]
    IllegalTransition {
        job: JobId,
        from: JobStatus,
        to: JobStatus,
    },
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error(
        "the job store at {} is in use by another flowctl (or another store in this process); \
         stop it first, or use --store postgres://… to share one queue between processes",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error(
        "the job store was written with on-disk format {found}, this flowctl reads format \
         {expected}"
    )]
    FormatVersion { found: u32, expected: u32 },
    #[error("invalid list cursor {0:?}")]
    InvalidCursor(String),
    /// The database cannot be reached, or dropped the connection. Worth retrying with backoff;
    /// a write that failed this way may or may not have been applied (a retried CAS tells).
    #[error("job store unavailable: {0}")]
    Unavailable(String),
    /// The database refused an operation (not a connection problem).
    #[error("job store (PostgreSQL) failed: {0}")]
    Postgres(String),
    /// The embedded store lost changes that were durable (sled's log is cut short or
    /// corrupted), or its files are not all there. Refused at open; `flowctl store recover
    /// --accept-loss` opens it with what is left.
    #[error("the job store at {} is damaged: {missing}", path.display())]
    Damaged { path: PathBuf, missing: String },
    /// The directory holds something else than an embedded store.
    #[error("{} is not a flowctl job store: {found}", path.display())]
    NotAStore { path: PathBuf, found: String },
    /// The store stopped accepting changes after a write or fsync failed ([`Store::stopped`]).
    /// Retrying does not help: only opening the store again (restarting the process) does.
    #[error("the job store stopped accepting changes: {reason}")]
    Stopped { reason: String },
}

impl StoreError {
    /// A passing condition (the database is unreachable): retry the operation with backoff
    /// rather than give up on it, and never fail a job for it.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// The store has stopped ([`StoreError::Stopped`]): stop the process, do not retry.
    pub fn is_stopped(&self) -> bool {
        matches!(self, StoreError::Stopped { .. })
    }

    /// The error with `to` for `from` wherever it names the store's directory (an error met on
    /// a copy of the store, reported for the original).
    pub(crate) fn at(self, from: &std::path::Path, to: &std::path::Path) -> StoreError {
        let moved = |path: PathBuf| if path == from { to.to_owned() } else { path };
        match self {
            StoreError::Damaged { path, missing } => StoreError::Damaged {
                path: moved(path),
                missing,
            },
            StoreError::NotAStore { path, found } => StoreError::NotAStore {
                path: moved(path),
                found,
            },
            StoreError::Locked { path } => StoreError::Locked { path: moved(path) },
            other => other,
        }
    }

    pub(crate) fn illegal(job: &JobId, error: StatusError) -> StoreError {
        let StatusError::Illegal { from, to } = error;
        StoreError::IllegalTransition {
            job: job.clone(),
            from,
            to,
        }
    }
}

/// Truncates a time to the microsecond, the precision every store keeps.
pub fn store_time(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time)
}

// ---------------------------------------------------------------------------------------------
// The join rule
// ---------------------------------------------------------------------------------------------

// The dependency condition and child-role rule are the workflow's own types:
// the store applies exactly what the compiler produced.
pub use crate::workflow::{Condition, RoleRule};

/// One dependency declaration, as the completing job's store sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinEdge {
    /// Stable id of the dependency declaration (e.g. `dep3:WEEKLY_DIGEST`); join state is kept
    /// per (join_id, scope), so changing it forgets pending events.
    pub join_id: String,
    /// All parent report types of this dependency, k ≥ 1, distinct.
    pub parents: Vec<String>,
    pub condition: Condition,
    /// Events from jobs of other roles are ignored.
    pub parent_roles: Option<Vec<String>>,
    pub child: ChildTemplate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildTemplate {
    pub report_type: String,
    pub role: RoleRule,
    pub priority: u8,
    pub max_attempts: u32,
    /// The child's request (the dependency's overrides, e.g. `chunk_size`, and the defaults of
    /// the child's own parameters); the completing job's parameters and window are laid over
    /// it ([`ChildTemplate::instantiate`]).
    pub request: JobRequest,
    /// How long the child is expected to run, for its estimated completion
    /// time when it is queued (the executor refines it while it runs).
    pub estimated_duration: Option<std::time::Duration>,
}

/// A completion event, as the join rule sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Success,
    Failure,
}

impl Event {
    /// The event a job in `status` emits: only COMPLETED and FAILED jobs emit one.
    pub fn of(status: JobStatus) -> Option<Event> {
        match status {
            JobStatus::Completed => Some(Event::Success),
            JobStatus::Failed => Some(Event::Failure),
            _ => None,
        }
    }
}

impl JoinEdge {
    /// Whether this edge takes `event` of `job`: it names the job's report type as a parent, its
    /// condition takes the event, and its role filter takes the job's role.
    pub fn accepts(&self, job: &Job, event: Event) -> bool {
        self.parents.contains(&job.report_type)
            && (event == Event::Success || self.condition == Condition::OnCompletion)
            && self
                .parent_roles
                .as_ref()
                .is_none_or(|roles| roles.contains(&job.role))
    }

    /// Checks what the compiler should already have checked; a store refuses a bad edge as a
    /// join error rather than corrupting join state.
    pub fn validate(&self) -> Result<(), String> {
        if self.join_id.is_empty() {
            return Err("join edge has an empty join_id".into());
        }
        if self.parents.is_empty() {
            return Err(format!("join {} has no parents", self.join_id));
        }
        for (i, parent) in self.parents.iter().enumerate() {
            if self.parents[..i].contains(parent) {
                return Err(format!("join {} names parent {parent} twice", self.join_id));
            }
        }
        Ok(())
    }
}

impl ChildTemplate {
    /// The child a join fires, in the scope of `completing` (the job whose event fired it).
    ///
    /// The child summarises exactly its parent's period: it gets `completing`'s window and
    /// parameters (over its own parameters' defaults). Of a join of several parents, that is
    /// the parent whose completion fired it, whose scope and trigger the child takes too; the
    /// parents of one fire share the fire's window, so any of them would give the same one.
    pub fn instantiate(&self, completing: &Job, parent_job_ids: Vec<JobId>) -> NewJob {
        let role = match &self.role {
            RoleRule::Inherit => completing.role.clone(),
            RoleRule::Fixed(role) => role.clone(),
        };
        let mut request = self.request.clone();
        request.params.extend(
            completing
                .request
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        request.window = completing.request.window.clone();
        NewJob {
            report_type: self.report_type.clone(),
            principal: Principal {
                subject: completing.subject.clone(),
                role,
                county: completing.county.clone(),
            },
            parent_job_ids,
            trigger_id: completing.trigger_id.clone(),
            request,
            priority: self.priority,
            max_attempts: self.max_attempts,
            estimated_completion: self.estimated_duration.and_then(|d| {
                let from = completing.completed_at?;
                Some(from + chrono::Duration::from_std(d).ok()?)
            }),
        }
    }
}

/// An edge the store could not apply. Logged by the store and returned for counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinError {
    pub join_id: String,
    pub message: String,
}

/// The unconsumed accepted events of one join in one scope: for each parent report type, how
/// many and the newest. Only the newest is ever used (it becomes the child's parent), so the
/// state stays this small however many events wait.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinState {
    pub pending: BTreeMap<String, Pending>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub newest: JobId,
    pub count: u64,
}

impl JoinState {
    /// Records `job`'s accepted event for `edge`. When every parent then has an event, consumes
    /// all of them and returns the newest job of each parent, in `edge.parents` order: the
    /// caller creates the child in the same atomic step, and stores the state (now empty).
    ///
    /// Events of report types that are no longer parents of the edge are dropped.
    pub fn record(&mut self, edge: &JoinEdge, job: &Job) -> Option<Vec<JobId>> {
        self.pending
            .retain(|report_type, _| edge.parents.contains(report_type));
        let pending = self
            .pending
            .entry(job.report_type.clone())
            .or_insert_with(|| Pending {
                newest: job.job_id.clone(),
                count: 0,
            });
        pending.newest = job.job_id.clone();
        pending.count += 1;
        if !edge
            .parents
            .iter()
            .all(|parent| self.pending.contains_key(parent))
        {
            return None;
        }
        let fired = edge
            .parents
            .iter()
            .filter_map(|parent| self.pending.remove(parent))
            .map(|pending| pending.newest)
            .collect();
        Some(fired)
    }
}

/// The dependency edges of a workflow, by parent report type: what a lease sweep needs to apply
/// the join rule to the jobs it fails.
pub trait JoinRules: Send + Sync {
    /// The edges whose parents include `report_type` (extra edges are ignored by the store).
    fn joins_for(&self, report_type: &str) -> &[JoinEdge];
}

/// No dependencies at all.
pub struct NoJoins;

impl JoinRules for NoJoins {
    fn joins_for(&self, _report_type: &str) -> &[JoinEdge] {
        &[]
    }
}

/// The same edges for every report type; the store keeps those that name it.
impl JoinRules for [JoinEdge] {
    fn joins_for(&self, _report_type: &str) -> &[JoinEdge] {
        self
    }
}

impl JoinRules for Vec<JoinEdge> {
    fn joins_for(&self, _report_type: &str) -> &[JoinEdge] {
        self
    }
}

impl JoinRules for BTreeMap<String, Vec<JoinEdge>> {
    fn joins_for(&self, report_type: &str) -> &[JoinEdge] {
        self.get(report_type).map_or(&[], Vec::as_slice)
    }
}

impl JoinRules for std::collections::HashMap<String, Vec<JoinEdge>> {
    fn joins_for(&self, report_type: &str) -> &[JoinEdge] {
        self.get(report_type).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_queued_with_an_estimated_completion() {
        let mut parent = NewJob::new("P", Principal::system("ADMIN"), "t")
            .into_job(JobId::generate(), conformance::t0());
        parent.completed_at = Some(conformance::t0());
        let template = ChildTemplate {
            report_type: "C".into(),
            role: RoleRule::Fixed("SUPERVISOR".into()),
            priority: 5,
            max_attempts: 2,
            request: JobRequest::default(),
            estimated_duration: Some(std::time::Duration::from_secs(3)),
        };
        let child = template.instantiate(&parent, vec![parent.job_id.clone()]);
        assert_eq!(
            child.estimated_completion,
            Some(conformance::t0() + chrono::Duration::seconds(3))
        );
        assert_eq!(child.principal.role, "SUPERVISOR");
        assert_eq!(child.trigger_id, "t");
        let unknown = ChildTemplate {
            estimated_duration: None,
            ..template
        };
        assert_eq!(
            unknown.instantiate(&parent, vec![]).estimated_completion,
            None
        );
    }
}
