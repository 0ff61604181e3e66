//! Backfill: the runs of every past fire of a schedule in a range, each with its own window,
//! created exactly as the scheduler creates a fire's jobs ([`crate::scheduler::fire_jobs`])
//! under the same unique fire key ([`UniqueKey::fire`]).
//!
//! That key is what makes a backfill safe to repeat and to resume: a fire the scheduler (or an
//! earlier backfill) already made answers [`Enqueued::Existing`] and creates nothing, so
//! running a backfill twice creates nothing new, and a backfill cut short by a crash is resumed
//! by running it again. Each fire is one atomic enqueue: a fire's jobs exist all or none.
//!
//! Fires are enqueued [`BATCH`] at a time, concurrently, so their writes share the store's
//! group commits; the jobs of later fires are created a microsecond later each, so the queue
//! (priority, then age) runs the oldest period first. A range is `[from, to)`, in the past
//! (the scheduler makes the fires to come), of at most [`MAX_FIRES`] fires.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::executor::Engine;
use crate::job::{JobId, JobRequest};
use crate::scheduler::{fire_jobs, fire_trigger_id, fire_window};
use crate::store::{Enqueued, Store, StoreError, UniqueKey};
use crate::window::Window;
use crate::workflow::{Schedule, Workflow};

/// Fires enqueued at once (their writes share group commits).
pub const BATCH: usize = 64;
/// Most fires one backfill covers: a larger range is backfilled in parts.
pub const MAX_FIRES: usize = 100_000;

/// Why a backfill cannot be planned or made.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("unknown schedule {name}{hint}")]
    UnknownSchedule { name: String, hint: String },
    #[error("the range is empty: {from} is not before {to}")]
    EmptyRange {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    #[error(
        "the range ends at {to}, after now: a backfill covers past fires (the scheduler makes \
         the fires to come)"
    )]
    InTheFuture { to: DateTime<Utc> },
    #[error(
        "schedule {schedule} fires more than {MAX_FIRES} times in the range: backfill it in parts"
    )]
    TooManyFires { schedule: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An enqueue task panicked or was cancelled (the fires enqueued before it stand).
    #[error("a backfill task failed: {0}")]
    Task(String),
}

impl BackfillError {
    /// Whether the request (not the store) is at fault.
    pub fn is_request(&self) -> bool {
        !matches!(self, BackfillError::Store(_) | BackfillError::Task(_))
    }
}

/// One fire of a backfill's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFire {
    pub at: DateTime<Utc>,
    /// The distinct windows its jobs cover ([`fire_window`]: one, unless the schedule gives
    /// none and its reports' defaults differ); empty when none reads a window.
    pub windows: Vec<Window>,
    /// The jobs the fire already created (by the scheduler or an earlier backfill), if it did.
    pub existing: Option<Vec<JobId>>,
}

impl PlannedFire {
    /// The windows' labels, `, `-joined; `-` when none.
    pub fn window_labels(&self) -> String {
        if self.windows.is_empty() {
            return "-".into();
        }
        let labels: Vec<String> = self.windows.iter().map(Window::label).collect();
        labels.join(", ")
    }
}

/// What a backfill did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Fires in the range.
    pub fires_planned: usize,
    /// Fires this backfill created the jobs of.
    pub fires_created: usize,
    /// Fires that existed already (skipped).
    pub fires_existing: usize,
    /// Root jobs created (their dependents follow as they complete).
    pub jobs_created: usize,
    /// The ids of the jobs created, oldest fire first.
    #[serde(skip)]
    pub job_ids: Vec<JobId>,
}

/// The schedule named `name`, or a refusal with a did-you-mean.
pub fn schedule<'a>(workflow: &'a Workflow, name: &str) -> Result<&'a Schedule, BackfillError> {
    workflow
        .schedules
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            let names = workflow.schedules.iter().map(|s| s.name.as_str());
            let hint = crate::diagnostic::did_you_mean(name, names)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_else(|| {
                    let names: Vec<&str> =
                        workflow.schedules.iter().map(|s| s.name.as_str()).collect();
                    format!("; the workflow has {}", names.join(", "))
                });
            BackfillError::UnknownSchedule {
                name: crate::diagnostic::bounded(name.to_string()),
                hint,
            }
        })
}

/// The fire times of `schedule` in `[from, to)`, oldest first; `to` must not be after `now`.
pub fn fire_times(
    schedule: &Schedule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, BackfillError> {
    if from >= to {
        return Err(BackfillError::EmptyRange { from, to });
    }
    if to > now {
        return Err(BackfillError::InTheFuture { to });
    }
    // Fires fall on whole seconds: after `from` less a nanosecond is at or after `from`.
    let after = from - TimeDelta::nanoseconds(1);
    let mut fires = Vec::new();
    for at in schedule.cron.fires_after(schedule.zone, after) {
        if at >= to {
            break;
        }
        if fires.len() == MAX_FIRES {
            return Err(BackfillError::TooManyFires {
                schedule: schedule.name.clone(),
            });
        }
        fires.push(at);
    }
    Ok(fires)
}

/// The distinct windows the jobs of the fire of `schedule` at `at` cover.
pub fn fire_windows(workflow: &Workflow, schedule: &Schedule, at: DateTime<Utc>) -> Vec<Window> {
    let mut windows: Vec<Window> = Vec::new();
    for report in schedule.reports.iter().filter_map(|r| workflow.report(r)) {
        if let Ok(Some(w)) = fire_window(schedule, report, at) {
            if !windows.contains(&w) {
                windows.push(w);
            }
        }
    }
    windows
}

/// The plan of a backfill: each fire, its windows, whether it exists. Reads only.
pub async fn plan(
    workflow: &Workflow,
    store: &dyn Store,
    schedule: &Schedule,
    fires: &[DateTime<Utc>],
) -> Result<Vec<PlannedFire>, BackfillError> {
    let mut plan = Vec::with_capacity(fires.len());
    for &at in fires {
        let existing = store
            .unique_jobs(&UniqueKey::fire(&schedule.name, at))
            .await?;
        plan.push(PlannedFire {
            at,
            windows: fire_windows(workflow, schedule, at),
            existing,
        });
    }
    Ok(plan)
}

/// A dry run's summary of `plan`.
pub fn summarize(plan: &[PlannedFire]) -> Summary {
    let existing = plan.iter().filter(|f| f.existing.is_some()).count();
    Summary {
        fires_planned: plan.len(),
        fires_existing: existing,
        ..Summary::default()
    }
}

/// Creates the jobs of every fire of `fires` that does not exist yet, [`BATCH`] fires at a
/// time; `progress(done, total)` after each batch. Repeating it creates nothing new; after a
/// crash, running it again creates what is missing.
pub async fn run(
    engine: &Engine,
    schedule: &Schedule,
    fires: &[DateTime<Utc>],
    now: DateTime<Utc>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Summary, BackfillError> {
    let mut summary = Summary {
        fires_planned: fires.len(),
        ..Summary::default()
    };
    let mut created: BTreeMap<usize, Vec<JobId>> = BTreeMap::new();
    for (batch_index, batch) in fires.chunks(BATCH).enumerate() {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, &at) in batch.iter().enumerate() {
            let index = batch_index * BATCH + i;
            let trigger = fire_trigger_id(&schedule.name, at);
            let jobs = fire_jobs(engine, schedule, &trigger, &JobRequest::default(), at);
            let store = engine.store.clone();
            let key = UniqueKey::fire(&schedule.name, at);
            // A microsecond per fire: the oldest period is the oldest job, run first.
            let created_at = now + TimeDelta::microseconds(index as i64);
            tasks.spawn(async move { (index, store.enqueue(jobs, Some(key), created_at).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            let (index, result) = joined.map_err(|e| BackfillError::Task(e.to_string()))?;
            match result? {
                Enqueued::Created(jobs) => {
                    summary.fires_created += 1;
                    summary.jobs_created += jobs.len();
                    created.insert(index, jobs.into_iter().map(|j| j.job_id).collect());
                }
                Enqueued::Existing(_) => summary.fires_existing += 1,
            }
        }
        progress(
            (batch_index * BATCH + batch.len()).min(fires.len()),
            fires.len(),
        );
    }
    summary.job_ids = created.into_values().flatten().collect();
    if summary.fires_created > 0 {
        tracing::info!(
            schedule = %schedule.name,
            fires = summary.fires_created,
            jobs = summary.jobs_created,
            existing = summary.fires_existing,
            "backfilled"
        );
    }
    Ok(summary)
}
