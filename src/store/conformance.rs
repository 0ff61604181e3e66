//! The conformance suite every [`Store`] passes: one scenario per function, each on a fresh,
//! empty store, so the sled store and the PostgreSQL store are held to the same behaviour.
//!
//! Call [`run_all`] with a factory, or each scenario from its own test. Scenarios panic on a
//! failure, like any test. They need a multi-thread tokio runtime (the race scenarios spawn
//! tasks). Times are fixed (from [`t0`]), never the wall clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    CancelOutcome, Cas, ChildTemplate, Completion, Condition, Enqueued, JoinEdge, ListFilter,
    NoJoins, Outcome, ProgressUpdate, RoleRule, Store, StoreError, UniqueKey,
};
use crate::job::{Job, JobId, JobRequest, JobStatus, NewJob, Principal};

/// Calls `$callback!(scenario, ...)` with the name of every scenario: the
/// one list, from which `run_all` and each store's per-scenario tests are
/// generated, so a new scenario cannot be forgotten by one store.
macro_rules! with_scenarios {
    ($callback:ident) => {
        $callback!(
            enqueue_get_list_paginate,
            claim_order_priority_then_age,
            run_after_respected,
            cas_conflict_on_stale_version,
            illegal_transitions_refused,
            cancel_queued_processing_finished,
            requeue_expired_and_stale_worker,
            expired_lease_without_attempts_left_fails,
            requeue_all_processing,
            unique_key_at_most_once,
            join_single_parent,
            complete_and_claim_takes_what_claim_would,
            join_two_parents_both_orders,
            join_three_parents,
            join_on_completion_with_failed_parent,
            join_on_success_ignores_failed,
            join_uses_newest_event_of_each_parent,
            join_retry_emits_nothing,
            join_cancelled_emits_nothing,
            join_parent_role_filter,
            join_role_inherit_and_fixed,
            join_chain_of_three,
            join_scopes_kept_apart,
            join_bad_edge_never_changes_the_parent,
            children_index,
            counts_follow_every_change,
            subscribe_wakes_on_new_work,
            concurrent_claims_take_each_job_once,
            concurrent_parents_create_one_child,
            params_and_window_round_trip_and_pass_to_children,
        );
    };
}
#[cfg(test)]
pub(crate) use with_scenarios;

/// Every scenario, each on a store of its own.
pub async fn run_all(factory: &dyn Fn() -> Arc<dyn Store>) {
    macro_rules! call_each {
        ($($scenario:ident),* $(,)?) => {$(
            $scenario(factory()).await;
        )*};
    }
    with_scenarios!(call_each);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The suite's epoch: 2030-01-01T00:00:00Z.
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_893_456_000, 0).expect("valid time")
}

/// `t0` plus `seconds`.
pub fn at(seconds: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(seconds)
}

const LEASE: Duration = Duration::from_secs(30);

pub fn new_job(report_type: &str, role: &str, county: Option<&str>) -> NewJob {
    NewJob {
        report_type: report_type.into(),
        principal: Principal {
            subject: "alice".into(),
            role: role.into(),
            county: county.map(Into::into),
        },
        parent_job_ids: Vec::new(),
        trigger_id: "manual:test".into(),
        request: JobRequest::default(),
        priority: 0,
        max_attempts: 1,
        estimated_completion: None,
    }
}

pub fn created(enqueued: Enqueued) -> Vec<Job> {
    match enqueued {
        Enqueued::Created(jobs) => jobs,
        Enqueued::Existing(ids) => panic!("expected new jobs, got existing {ids:?}"),
    }
}

async fn enqueue_one(store: &dyn Store, job: NewJob, now: DateTime<Utc>) -> Job {
    let mut jobs = created(store.enqueue(vec![job], None, now).await.expect("enqueue"));
    assert_eq!(jobs.len(), 1);
    jobs.remove(0)
}

/// Claims every claimable job at `now`.
async fn claim_all(store: &dyn Store, now: DateTime<Utc>) -> Vec<Job> {
    store
        .claim("worker-1", 10_000, LEASE, now)
        .await
        .expect("claim")
}

/// Enqueues `job` and claims it. The store must hold no other claimable job of priority 255.
pub async fn start(store: &dyn Store, mut job: NewJob, now: DateTime<Utc>) -> Job {
    job.priority = 255;
    let queued = enqueue_one(store, job, now).await;
    let mut claimed = store.claim("worker-1", 1, LEASE, now).await.expect("claim");
    assert_eq!(claimed.len(), 1, "nothing claimed");
    let job = claimed.remove(0);
    assert_eq!(
        job.job_id, queued.job_id,
        "claimed another job than the one started"
    );
    job
}

pub fn success() -> Outcome {
    Outcome::Success {
        result_path: "/reports/out.csv".into(),
        rows_written: 42,
        sha256: "ab".repeat(32),
    }
}

fn failure(retry_at: Option<DateTime<Utc>>) -> Outcome {
    Outcome::Failure {
        error: "source unavailable".into(),
        retry_at,
    }
}

async fn finish(
    store: &dyn Store,
    job: &Job,
    outcome: Outcome,
    joins: &[JoinEdge],
    now: DateTime<Utc>,
) -> Completion {
    match store
        .complete(&job.job_id, job.version, outcome, joins, now)
        .await
        .expect("complete")
    {
        Cas::Applied(completion) => completion,
        Cas::Conflict { current } => {
            panic!("unexpected CAS conflict on {}: {current:?}", job.job_id)
        }
    }
}

async fn run(
    store: &dyn Store,
    job: NewJob,
    outcome: Outcome,
    joins: &[JoinEdge],
    now: DateTime<Utc>,
) -> Completion {
    let job = start(store, job, now).await;
    finish(store, &job, outcome, joins, now).await
}

async fn get(store: &dyn Store, job_id: &JobId) -> Job {
    store
        .get(job_id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{job_id} not found"))
}

/// What a store holds before a reopen test closes it: three jobs of two attempts, two of them
/// claimed with `lease`, the first of those cancelled.
pub struct BeforeReopen {
    /// Every job as stored.
    pub jobs: Vec<Job>,
    /// The two claimed jobs, as claimed.
    pub running: Vec<Job>,
    pub cancelled: Completion,
    pub counts: BTreeMap<JobStatus, u64>,
}

pub async fn before_reopen(store: &dyn Store, lease: Duration) -> BeforeReopen {
    let mut job = new_job("R", "S", Some("C1"));
    job.max_attempts = 2;
    let queued = created(
        store
            .enqueue(vec![job; 3], None, at(0))
            .await
            .expect("enqueue"),
    );
    let running = store.claim("w", 2, lease, at(1)).await.expect("claim");
    assert_eq!(running.len(), 2);
    let cancelled = finish(store, &running[0], Outcome::Cancelled, &[], at(2)).await;
    let mut jobs = Vec::new();
    for job in &queued {
        jobs.push(get(store, &job.job_id).await);
    }
    BeforeReopen {
        jobs,
        running,
        cancelled,
        counts: counts(store).await,
    }
}

/// After the reopen: every job and the counts as they were.
pub async fn same_after_reopen(store: &dyn Store, before: &BeforeReopen) {
    for job in &before.jobs {
        assert_eq!(&get(store, &job.job_id).await, job);
    }
    assert_eq!(counts(store).await, before.counts);
    assert_eq!(
        get(store, &before.cancelled.job.job_id).await,
        before.cancelled.job
    );
}

pub fn edge(join_id: &str, parents: &[&str], condition: Condition, child: &str) -> JoinEdge {
    JoinEdge {
        join_id: join_id.into(),
        parents: parents.iter().map(|p| (*p).to_owned()).collect(),
        condition,
        parent_roles: None,
        child: ChildTemplate {
            report_type: child.into(),
            role: RoleRule::Inherit,
            priority: 7,
            max_attempts: 3,
            request: JobRequest {
                chunk_size: Some(500),
                ..JobRequest::default()
            },
            estimated_duration: None,
        },
    }
}

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|job| job.job_id.clone()).collect()
}

async fn counts(store: &dyn Store) -> BTreeMap<JobStatus, u64> {
    store.counts().await.expect("counts")
}

fn expect_counts(
    queued: u64,
    processing: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
) -> BTreeMap<JobStatus, u64> {
    JobStatus::ALL
        .into_iter()
        .zip([queued, processing, completed, failed, cancelled])
        .collect()
}

async fn list_all(store: &dyn Store, mut filter: ListFilter) -> Vec<Job> {
    let mut jobs = Vec::new();
    loop {
        let page = store.list(filter.clone()).await.expect("list");
        assert!(page.jobs.len() <= filter.limit);
        jobs.extend(page.jobs);
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => return jobs,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records, claims, CAS
// ---------------------------------------------------------------------------------------------

pub async fn enqueue_get_list_paginate(store: Arc<dyn Store>) {
    let store = &*store;
    assert!(store.get(&JobId::generate()).await.unwrap().is_none());
    let mut all = Vec::new();
    for i in 0..7 {
        let county = if i % 2 == 0 { Some("C1") } else { Some("C2") };
        let report = if i < 4 {
            "DAILY_REPORT"
        } else {
            "DAILY_SUMMARY"
        };
        let mut job = new_job(report, "SUPERVISOR", county);
        job.request
            .params
            .insert("i".into(), crate::params::ParamValue::Integer(i));
        job.estimated_completion = Some(at(i + 100));
        // Nanoseconds are dropped: stores keep microseconds.
        let now = at(i) + TimeDelta::nanoseconds(1_234_567);
        let queued = enqueue_one(store, job, now).await;
        assert_eq!(queued.status, JobStatus::Queued);
        assert_eq!(queued.version, 1);
        assert_eq!(queued.attempt, 1);
        assert_eq!(queued.max_attempts, 1);
        assert_eq!(queued.created_at, at(i) + TimeDelta::microseconds(1234));
        assert_eq!(queued.role, "SUPERVISOR");
        assert_eq!(queued.subject, "alice");
        assert_eq!(queued.county.as_deref(), county);
        assert_eq!(queued.progress, 0);
        assert!(queued.started_at.is_none() && queued.lease_owner.is_none());
        assert_eq!(get(store, &queued.job_id).await, queued);
        all.push(queued);
    }
    let newest_first: Vec<JobId> = all.iter().rev().map(|job| job.job_id.clone()).collect();

    let first = store
        .list(ListFilter {
            limit: 3,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&first.jobs), newest_first[..3]);
    assert!(first.next_cursor.is_some());
    let paged = list_all(
        store,
        ListFilter {
            limit: 3,
            ..ListFilter::default()
        },
    )
    .await;
    assert_eq!(ids(&paged), newest_first);
    assert_eq!(paged, all.iter().rev().cloned().collect::<Vec<_>>());

    let summaries = list_all(
        store,
        ListFilter {
            report_type: Some("DAILY_SUMMARY".into()),
            limit: 2,
            ..ListFilter::default()
        },
    )
    .await;
    assert_eq!(ids(&summaries), newest_first[..3]);
    let c2 = list_all(
        store,
        ListFilter {
            county: Some("C2".into()),
            ..ListFilter::default()
        },
    )
    .await;
    assert_eq!(
        ids(&c2),
        [&all[5], &all[3], &all[1]].map(|j| j.job_id.clone())
    );

    // Claim the two oldest: the status filter follows, and the unfiltered list still merges
    // every status newest first.
    let claimed = store.claim("w", 2, LEASE, at(10)).await.unwrap();
    assert_eq!(ids(&claimed), ids(&all[..2]));
    let processing = list_all(
        store,
        ListFilter {
            status: Some(JobStatus::Processing),
            ..ListFilter::default()
        },
    )
    .await;
    assert_eq!(
        ids(&processing),
        [&all[1], &all[0]].map(|j| j.job_id.clone())
    );
    let queued = list_all(
        store,
        ListFilter {
            status: Some(JobStatus::Queued),
            limit: 1,
            ..ListFilter::default()
        },
    )
    .await;
    assert_eq!(ids(&queued), newest_first[..5]);
    let everything = list_all(
        store,
        ListFilter {
            limit: 2,
            ..ListFilter::default()
        },
    )
    .await;
    assert_eq!(ids(&everything), newest_first);
    let none = store
        .list(ListFilter {
            status: Some(JobStatus::Failed),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(none.jobs.is_empty() && none.next_cursor.is_none());

    let bad = store
        .list(ListFilter {
            cursor: Some("not-a-cursor".into()),
            ..ListFilter::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidCursor(_))), "{bad:?}");
}

pub async fn claim_order_priority_then_age(store: Arc<dyn Store>) {
    let store = &*store;
    let mut queued = Vec::new();
    for (i, priority) in [1u8, 5, 5, 3, 0].into_iter().enumerate() {
        let mut job = new_job("DAILY_REPORT", "SUPERVISOR", None);
        job.priority = priority;
        queued.push(enqueue_one(store, job, at(i as i64)).await);
    }
    let now = at(100);
    let first = store.claim("w1", 2, LEASE, now).await.unwrap();
    assert_eq!(ids(&first), ids(&[queued[1].clone(), queued[2].clone()]));
    for job in &first {
        assert_eq!(job.status, JobStatus::Processing);
        assert_eq!(job.version, 2);
        assert_eq!(job.started_at, Some(now));
        assert_eq!(job.lease_owner.as_deref(), Some("w1"));
        assert_eq!(job.lease_until, Some(now + TimeDelta::seconds(30)));
        assert_eq!(&get(store, &job.job_id).await, job);
    }
    let rest = store.claim("w2", 10, LEASE, now).await.unwrap();
    assert_eq!(
        ids(&rest),
        ids(&[queued[3].clone(), queued[0].clone(), queued[4].clone()])
    );
    assert!(store.claim("w3", 10, LEASE, now).await.unwrap().is_empty());
    assert!(store.claim("w3", 0, LEASE, now).await.unwrap().is_empty());
}

pub async fn run_after_respected(store: Arc<dyn Store>) {
    let store = &*store;
    let mut job = new_job("DAILY_REPORT", "SUPERVISOR", None);
    job.max_attempts = 3;
    let running = start(store, job, at(0)).await;
    let retried = finish(store, &running, failure(Some(at(60))), &[], at(1)).await;
    assert!(retried.children_created.is_empty());
    let job = retried.job;
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.attempt, 2);
    assert_eq!(job.version, running.version + 1);
    assert_eq!(job.run_after, Some(at(60)));
    assert_eq!(job.error.as_deref(), Some("source unavailable"));
    assert!(job.lease_owner.is_none() && job.lease_until.is_none() && job.completed_at.is_none());
    assert_eq!(get(store, &job.job_id).await, job);

    assert!(
        claim_all(store, at(30)).await.is_empty(),
        "claimed before run_after"
    );
    assert!(
        claim_all(store, at(59)).await.is_empty(),
        "claimed before run_after"
    );
    // A job without backoff, enqueued later, is not held up by the waiting retry.
    let other = enqueue_one(store, new_job("OTHER", "SUPERVISOR", None), at(2)).await;
    assert_eq!(ids(&claim_all(store, at(59)).await), vec![other.job_id]);
    let again = claim_all(store, at(60)).await;
    assert_eq!(ids(&again), vec![job.job_id.clone()]);
    assert_eq!(again[0].attempt, 2);

    // A retry already due is claimable at once; the last attempt fails for good.
    let retried = finish(store, &again[0], failure(Some(at(61))), &[], at(70)).await;
    assert_eq!(retried.job.status, JobStatus::Queued);
    assert_eq!(retried.job.run_after, None);
    let third = claim_all(store, at(70)).await;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].attempt, 3);
    let failed = finish(store, &third[0], failure(Some(at(80))), &[], at(71)).await;
    assert_eq!(failed.job.status, JobStatus::Failed);
    assert_eq!(failed.job.attempt, 3);
    assert_eq!(failed.job.completed_at, Some(at(71)));
    assert_eq!(failed.job.error.as_deref(), Some("source unavailable"));
    assert!(claim_all(store, at(1000)).await.is_empty());
}

pub async fn cas_conflict_on_stale_version(store: Arc<dyn Store>) {
    let store = &*store;
    let job = start(store, new_job("DAILY_REPORT", "SUPERVISOR", None), at(0)).await;
    let progress = ProgressUpdate {
        progress: 150,
        rows_written: 1000,
        estimated_completion: Some(at(90)),
    };
    let renewed = store
        .renew(&job.job_id, job.version, at(40), Some(progress))
        .await
        .unwrap()
        .applied()
        .expect("renew applies");
    assert_eq!(renewed.version, job.version + 1);
    assert_eq!(renewed.lease_until, Some(at(40)));
    assert_eq!(renewed.progress, 100, "progress is capped at 100");
    assert_eq!(renewed.rows_written, 1000);
    assert_eq!(renewed.estimated_completion, Some(at(90)));
    assert_eq!(get(store, &job.job_id).await, renewed);

    let stale = store
        .renew(&job.job_id, job.version, at(50), None)
        .await
        .unwrap();
    assert_eq!(
        stale,
        Cas::Conflict {
            current: Some(renewed.clone())
        }
    );
    let stale = store
        .complete(&job.job_id, job.version, success(), &[], at(1))
        .await
        .unwrap();
    assert_eq!(
        stale,
        Cas::Conflict {
            current: Some(renewed.clone())
        }
    );
    let missing = JobId::generate();
    assert_eq!(
        store.renew(&missing, 1, at(50), None).await.unwrap(),
        Cas::Conflict { current: None }
    );
    assert_eq!(
        store
            .complete(&missing, 1, success(), &[], at(1))
            .await
            .unwrap(),
        Cas::Conflict { current: None }
    );
    let done = finish(store, &renewed, success(), &[], at(2)).await.job;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.version, renewed.version + 1);
    assert_eq!(done.result_path.as_deref(), Some("/reports/out.csv"));
    assert_eq!(done.rows_written, 42);
    assert_eq!(done.result_sha256, Some("ab".repeat(32)));
    assert_eq!(done.progress, 100);
    assert_eq!(done.completed_at, Some(at(2)));
    assert!(done.lease_owner.is_none() && done.lease_until.is_none());
    assert_eq!(get(store, &job.job_id).await, done);
}

pub async fn illegal_transitions_refused(store: Arc<dyn Store>) {
    let store = &*store;
    let outcomes = || {
        [
            success(),
            failure(None),
            failure(Some(at(5))),
            Outcome::Cancelled,
        ]
    };
    let illegal = |result: Result<Cas<Completion>, StoreError>, from: JobStatus| match result {
        Err(StoreError::IllegalTransition { from: f, .. }) => assert_eq!(f, from),
        other => panic!("expected an illegal transition from {from}, got {other:?}"),
    };

    // QUEUED: nothing but a claim or a cancel.
    let queued = enqueue_one(store, new_job("R", "S", None), at(0)).await;
    for outcome in outcomes() {
        let result = store.complete(&queued.job_id, 1, outcome, &[], at(1)).await;
        illegal(result, JobStatus::Queued);
    }
    assert!(matches!(
        store.renew(&queued.job_id, 1, at(9), None).await,
        Err(StoreError::IllegalTransition {
            from: JobStatus::Queued,
            to: JobStatus::Processing,
            ..
        })
    ));
    assert_eq!(get(store, &queued.job_id).await, queued);
    store.cancel(&queued.job_id, at(1)).await.unwrap();

    // Every terminal status: nothing at all.
    let mut mk = vec![];
    mk.push(
        run(store, new_job("R", "S", None), success(), &[], at(2))
            .await
            .job,
    );
    mk.push(
        run(store, new_job("R", "S", None), failure(None), &[], at(3))
            .await
            .job,
    );
    mk.push(
        run(
            store,
            new_job("R", "S", None),
            Outcome::Cancelled,
            &[],
            at(4),
        )
        .await
        .job,
    );
    mk.push(get(store, &queued.job_id).await);
    for finished in mk {
        for outcome in outcomes() {
            let result = store
                .complete(&finished.job_id, finished.version, outcome, &[], at(10))
                .await;
            illegal(result, finished.status);
        }
        assert!(matches!(
            store
                .renew(&finished.job_id, finished.version, at(99), None)
                .await,
            Err(StoreError::IllegalTransition { .. })
        ));
        assert!(matches!(
            store.cancel(&finished.job_id, at(11)).await.unwrap(),
            CancelOutcome::AlreadyFinished(job) if job == finished
        ));
        assert_eq!(
            get(store, &finished.job_id).await,
            finished,
            "a refused change changed the job"
        );
    }
}

pub async fn cancel_queued_processing_finished(store: Arc<dyn Store>) {
    let store = &*store;
    assert_eq!(
        store.cancel(&JobId::generate(), at(0)).await.unwrap(),
        CancelOutcome::NotFound
    );

    let queued = enqueue_one(store, new_job("R", "S", None), at(0)).await;
    let CancelOutcome::Cancelled(cancelled) = store.cancel(&queued.job_id, at(1)).await.unwrap()
    else {
        panic!("a queued job is cancelled at once")
    };
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert_eq!(cancelled.version, 2);
    assert_eq!(cancelled.completed_at, Some(at(1)));
    assert_eq!(get(store, &queued.job_id).await, cancelled);
    assert!(
        claim_all(store, at(2)).await.is_empty(),
        "a cancelled job was claimed"
    );

    let mut job = new_job("R", "S", None);
    job.max_attempts = 5;
    let running = start(store, job, at(3)).await;
    let CancelOutcome::Requested(requested) = store.cancel(&running.job_id, at(4)).await.unwrap()
    else {
        panic!("a running job gets a cancel request")
    };
    assert_eq!(requested.status, JobStatus::Processing);
    assert!(requested.cancel_requested);
    assert_eq!(requested.version, running.version + 1);
    // Asking again changes nothing.
    assert_eq!(
        store.cancel(&running.job_id, at(5)).await.unwrap(),
        CancelOutcome::Requested(requested.clone())
    );
    // The worker learns of it from its next heartbeat...
    let Cas::Conflict {
        current: Some(current),
    } = store
        .renew(&running.job_id, running.version, at(60), None)
        .await
        .unwrap()
    else {
        panic!("the cancel request bumped the version")
    };
    assert!(current.cancel_requested);
    let renewed = store
        .renew(&running.job_id, current.version, at(60), None)
        .await
        .unwrap()
        .applied()
        .unwrap();
    assert!(renewed.cancel_requested);
    // ...and stops.
    let done = finish(store, &renewed, Outcome::Cancelled, &[], at(6)).await;
    assert_eq!(done.job.status, JobStatus::Cancelled);
    assert_eq!(done.job.completed_at, Some(at(6)));
    assert!(done.children_created.is_empty());
    assert!(matches!(
        store.cancel(&running.job_id, at(7)).await.unwrap(),
        CancelOutcome::AlreadyFinished(job) if job == done.job
    ));

    // A failure after a cancel request is not retried.
    let mut job = new_job("R", "S", None);
    job.max_attempts = 5;
    let running = start(store, job, at(8)).await;
    let CancelOutcome::Requested(requested) = store.cancel(&running.job_id, at(9)).await.unwrap()
    else {
        panic!()
    };
    let failed = finish(store, &requested, failure(Some(at(10))), &[], at(10)).await;
    assert_eq!(failed.job.status, JobStatus::Failed);
}

pub async fn requeue_expired_and_stale_worker(store: Arc<dyn Store>) {
    let store = &*store;
    let mut job = new_job("R", "S", None);
    job.max_attempts = 3;
    let stale = start(store, job, at(0)).await; // lease until at(30)
    assert_eq!(
        store
            .requeue_expired(at(29), &NoJoins)
            .await
            .unwrap()
            .requeued,
        vec![]
    );
    assert_eq!(
        store
            .requeue_expired(at(30), &NoJoins)
            .await
            .unwrap()
            .requeued,
        vec![]
    );
    let expired = store.requeue_expired(at(31), &NoJoins).await.unwrap();
    assert_eq!(expired.requeued, vec![stale.job_id.clone()]);
    assert!(expired.finished.is_empty());
    let requeued = get(store, &stale.job_id).await;
    assert_eq!(requeued.status, JobStatus::Queued);
    assert_eq!(requeued.attempt, 2);
    assert_eq!(requeued.version, stale.version + 1);
    assert!(requeued.lease_owner.is_none() && requeued.lease_until.is_none());
    assert!(store
        .requeue_expired(at(32), &NoJoins)
        .await
        .unwrap()
        .requeued
        .is_empty());

    // The stale worker can neither heartbeat nor finish.
    assert!(!store
        .renew(&stale.job_id, stale.version, at(90), None)
        .await
        .unwrap()
        .is_applied());
    assert!(!store
        .complete(&stale.job_id, stale.version, success(), &[], at(33))
        .await
        .unwrap()
        .is_applied());
    assert_eq!(get(store, &stale.job_id).await, requeued);

    // Another worker takes it; heartbeats keep it.
    let mut second = store.claim("worker-2", 1, LEASE, at(40)).await.unwrap();
    assert_eq!(ids(&second), vec![stale.job_id.clone()]);
    let second = second.remove(0);
    assert_eq!(
        (second.attempt, second.lease_owner.as_deref()),
        (2, Some("worker-2"))
    );
    let renewed = store
        .renew(&second.job_id, second.version, at(200), None)
        .await
        .unwrap()
        .applied()
        .unwrap();
    assert!(store
        .requeue_expired(at(100), &NoJoins)
        .await
        .unwrap()
        .requeued
        .is_empty());
    // A cancel requested of a job whose worker died ends it rather than running it again.
    store.cancel(&renewed.job_id, at(101)).await.unwrap();
    let expired = store.requeue_expired(at(201), &NoJoins).await.unwrap();
    assert!(expired.requeued.is_empty());
    assert_eq!(expired.finished.len(), 1);
    assert_eq!(expired.finished[0].job.status, JobStatus::Cancelled);
    assert_eq!(
        get(store, &renewed.job_id).await.status,
        JobStatus::Cancelled
    );
}

pub async fn expired_lease_without_attempts_left_fails(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge("dep:AFTER", &["R"], Condition::OnCompletion, "AFTER")];
    let job = start(store, new_job("R", "S", Some("C1")), at(0)).await;
    // A dead worker is not the job's failure: it is queued again, beyond its
    // retries, up to the allowance.
    let mut now = 0;
    for attempt in 1..=crate::store::LEASE_RECOVERY_ALLOWANCE {
        now += 31;
        let expired = store.requeue_expired(at(now), &joins).await.unwrap();
        assert_eq!(
            expired.requeued,
            vec![job.job_id.clone()],
            "attempt {attempt}"
        );
        assert!(expired.finished.is_empty());
        let claimed = store.claim("worker-2", 1, LEASE, at(now)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempt, attempt + 1);
    }
    now += 31;
    let expired = store.requeue_expired(at(now), &joins).await.unwrap();
    assert!(expired.requeued.is_empty());
    assert_eq!(expired.finished.len(), 1);
    let failed = &expired.finished[0];
    assert_eq!(failed.job.job_id, job.job_id);
    assert_eq!(failed.job.status, JobStatus::Failed);
    assert_eq!(
        failed.job.attempt,
        1 + crate::store::LEASE_RECOVERY_ALLOWANCE
    );
    assert!(failed.job.error.as_deref().unwrap().contains("lease"));
    // A final failure is a completion event like any other.
    assert_eq!(failed.children_created.len(), 1);
    assert_eq!(failed.children_created[0].report_type, "AFTER");
    assert_eq!(
        failed.children_created[0].parent_job_ids,
        vec![job.job_id.clone()]
    );
    assert_eq!(get(store, &job.job_id).await, failed.job);
}

pub async fn requeue_all_processing(store: Arc<dyn Store>) {
    let store = &*store;
    let mut job = new_job("R", "S", None);
    job.max_attempts = 2;
    let a = start(store, job.clone(), at(0)).await;
    let b = start(store, job, at(1)).await;
    let c = enqueue_one(store, new_job("R", "S", None), at(2)).await;
    // A single-process store takes back every PROCESSING job; a shared one only expired leases
    // (another machine may be running the others), so its sweep must come after them.
    let now = if store.is_shared() {
        let live = store.requeue_all_processing(at(3), &NoJoins).await.unwrap();
        assert_eq!(live, Default::default(), "a shared store took live leases");
        at(32)
    } else {
        at(3)
    };
    let expired = store.requeue_all_processing(now, &NoJoins).await.unwrap();
    let requeued: BTreeSet<JobId> = expired.requeued.into_iter().collect();
    assert_eq!(
        requeued,
        BTreeSet::from([a.job_id.clone(), b.job_id.clone()])
    );
    for id in [&a.job_id, &b.job_id] {
        let job = get(store, id).await;
        assert_eq!((job.status, job.attempt), (JobStatus::Queued, 2));
    }
    assert_eq!(get(store, &c.job_id).await, c, "a queued job is left alone");
    assert_eq!(counts(store).await, expect_counts(3, 0, 0, 0, 0));
}

pub async fn unique_key_at_most_once(store: Arc<dyn Store>) {
    let store = &*store;
    let fire = at(3600);
    let key = UniqueKey::fire("nightly", fire);
    assert_eq!(key.to_string(), "fire:nightly:2030-01-01T01:00:00+00:00");
    assert_eq!(store.unique_jobs(&key).await.unwrap(), None);
    let batch = vec![
        new_job("DAILY_REPORT", "SUPERVISOR", None),
        new_job("DAILY_REPORT", "CASE_WORKER", None),
    ];
    let first = created(
        store
            .enqueue(batch.clone(), Some(key.clone()), at(0))
            .await
            .unwrap(),
    );
    assert_eq!(first.len(), 2);
    assert_eq!(store.last_fire("nightly").await.unwrap(), Some(fire));
    // Again, even with another batch: nothing new, the first ids back.
    let again = store
        .enqueue(vec![new_job("OTHER", "X", None)], Some(key.clone()), at(5))
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Existing(ids(&first)));
    assert_eq!(counts(store).await[&JobStatus::Queued], 2);
    // A read of the key answers what an enqueue would.
    assert_eq!(store.unique_jobs(&key).await.unwrap(), Some(ids(&first)));
    assert_eq!(
        store
            .unique_jobs(&UniqueKey::fire("nightly", at(3601)))
            .await
            .unwrap(),
        None
    );

    // An older fire recorded later does not move last_fire back.
    store
        .enqueue(
            batch.clone(),
            Some(UniqueKey::fire("nightly", at(0))),
            at(6),
        )
        .await
        .unwrap();
    assert_eq!(store.last_fire("nightly").await.unwrap(), Some(fire));
    assert_eq!(store.last_fire("weekly").await.unwrap(), None);
    // A fire that creates no job is still recorded.
    store
        .enqueue(vec![], Some(UniqueKey::fire("weekly", at(7200))), at(7))
        .await
        .unwrap();
    assert_eq!(store.last_fire("weekly").await.unwrap(), Some(at(7200)));

    // Idempotency keys are per subject; the parts are kept apart, not joined into one string.
    let k1 = UniqueKey::idempotency("a:b", "c");
    let k2 = UniqueKey::idempotency("a", "b:c");
    let one = store
        .enqueue(batch.clone(), Some(k1.clone()), at(8))
        .await
        .unwrap();
    let two = store.enqueue(batch.clone(), Some(k2), at(8)).await.unwrap();
    assert!(matches!(one, Enqueued::Created(_)) && matches!(two, Enqueued::Created(_)));
    let one_again = store.enqueue(batch, Some(k1.clone()), at(9)).await.unwrap();
    assert_eq!(one_again, Enqueued::Existing(one.job_ids()));
    assert_eq!(store.unique_jobs(&k1).await.unwrap(), Some(one.job_ids()));
    // A fire that created no job exists too.
    assert_eq!(
        store
            .unique_jobs(&UniqueKey::fire("weekly", at(7200)))
            .await
            .unwrap(),
        Some(vec![])
    );
    assert_eq!(counts(store).await[&JobStatus::Queued], 8);
}

// ---------------------------------------------------------------------------------------------
// The join rule
// ---------------------------------------------------------------------------------------------

pub async fn join_single_parent(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge(
        "dep1:SUMMARY",
        &["DAILY_REPORT"],
        Condition::OnSuccess,
        "SUMMARY",
    )];
    let mut parent = new_job("DAILY_REPORT", "SUPERVISOR", Some("C1"));
    parent.trigger_id = "fire:nightly:2030-01-01T00:00:00+00:00".into();
    let done = run(store, parent, success(), &joins, at(0)).await;
    assert_eq!(done.job.status, JobStatus::Completed);
    assert_eq!(done.children_created.len(), 1);
    let child = &done.children_created[0];
    assert_eq!(child.report_type, "SUMMARY");
    assert_eq!(child.status, JobStatus::Queued);
    assert_eq!(child.version, 1);
    assert_eq!(child.parent_job_ids, vec![done.job.job_id.clone()]);
    assert_eq!(child.trigger_id, done.job.trigger_id);
    assert_eq!(child.role, "SUPERVISOR");
    assert_eq!(child.county.as_deref(), Some("C1"));
    assert_eq!(child.subject, "alice");
    assert_eq!(child.priority, 7);
    assert_eq!(child.max_attempts, 3);
    assert_eq!(child.request.chunk_size, Some(500));
    assert_eq!(child.created_at, at(0));
    assert_eq!(&get(store, &child.job_id).await, child);
    assert_eq!(
        store.children(&done.job.job_id).await.unwrap(),
        vec![child.clone()]
    );
    // The child is an ordinary queued job.
    assert_eq!(
        ids(&claim_all(store, at(1)).await),
        vec![child.job_id.clone()]
    );
}

/// A successful completion of `job` that claims the next job for `worker-2`.
async fn complete_claiming(
    store: &dyn Store,
    job: &Job,
    joins: &[JoinEdge],
    now: DateTime<Utc>,
) -> (Cas<Completion>, Option<Job>) {
    let completion = store.complete_and_claim(
        &job.job_id,
        job.version,
        success(),
        joins,
        now,
        "worker-2",
        LEASE,
    );
    completion.await.expect("complete and claim")
}

/// Eager dispatch: a store may claim, with a completion, the job `claim` would give next. It
/// may also claim nothing; whatever it claims is an ordinary claim.
pub async fn complete_and_claim_takes_what_claim_would(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge(
        "dep:SUMMARY",
        &["DAILY"],
        Condition::OnSuccess,
        "SUMMARY",
    )];
    let lease_until = at(0) + TimeDelta::from_std(LEASE).expect("lease fits");

    // The dependent this completion creates comes first: it is the one to claim.
    let parent = start(store, new_job("DAILY", "S", Some("C1")), at(0)).await;
    let (cas, claimed) = complete_claiming(store, &parent, &joins, at(0)).await;
    store.sync().await.expect("sync");
    let Cas::Applied(done) = cas else {
        panic!("unexpected conflict: {cas:?}")
    };
    assert_eq!(
        get(store, &parent.job_id).await.status,
        JobStatus::Completed
    );
    assert_eq!(done.children_created.len(), 1);
    let child = get(store, &done.children_created[0].job_id).await;
    match &claimed {
        Some(job) => {
            assert_eq!(job, &child);
            assert_eq!(job.job_id, done.children_created[0].job_id);
            assert_eq!(job.status, JobStatus::Processing);
            assert_eq!(job.lease_owner.as_deref(), Some("worker-2"));
            assert_eq!(job.lease_until, Some(lease_until));
            assert_eq!(job.started_at, Some(at(0)));
            assert_eq!(counts(store).await, expect_counts(0, 1, 1, 0, 0));
        }
        None => assert_eq!(child.status, JobStatus::Queued),
    }
    if claimed.is_none() {
        claim_all(store, at(0)).await;
    }

    // A queued job of higher priority than the dependent is claimed instead.
    let mut urgent = new_job("URGENT", "S", None);
    urgent.priority = 200;
    let urgent = enqueue_one(store, urgent, at(1)).await;
    let parent = start(store, new_job("DAILY", "S", Some("C2")), at(1)).await;
    let (cas, claimed) = complete_claiming(store, &parent, &joins, at(2)).await;
    store.sync().await.expect("sync");
    let Cas::Applied(done) = cas else {
        panic!("unexpected conflict: {cas:?}")
    };
    let child = get(store, &done.children_created[0].job_id).await;
    assert_eq!(child.status, JobStatus::Queued);
    if let Some(job) = &claimed {
        assert_eq!(job.job_id, urgent.job_id);
        assert_eq!(job, &get(store, &urgent.job_id).await);
        assert_eq!(job.status, JobStatus::Processing);
    }

    // A stale version changes nothing and claims nothing.
    let before = counts(store).await;
    let (cas, claimed) = complete_claiming(store, &parent, &joins, at(3)).await;
    assert!(matches!(cas, Cas::Conflict { .. }), "{cas:?}");
    assert_eq!(claimed, None);
    assert_eq!(counts(store).await, before);
}

pub async fn join_two_parents_both_orders(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge("dep:C", &["A", "B"], Condition::OnSuccess, "C")];
    for (county, order) in [("C1", ["A", "B"]), ("C2", ["B", "A"])] {
        let first = run(
            store,
            new_job(order[0], "S", Some(county)),
            success(),
            &joins,
            at(0),
        )
        .await;
        assert!(
            first.children_created.is_empty(),
            "fired with one parent of two"
        );
        let second = run(
            store,
            new_job(order[1], "S", Some(county)),
            success(),
            &joins,
            at(1),
        )
        .await;
        assert_eq!(second.children_created.len(), 1);
        let child = &second.children_created[0];
        let (a, b) = if order[0] == "A" {
            (&first, &second)
        } else {
            (&second, &first)
        };
        // Parents in the edge's order, whatever the completion order.
        assert_eq!(
            child.parent_job_ids,
            vec![a.job.job_id.clone(), b.job.job_id.clone()]
        );
        assert_eq!(child.trigger_id, second.job.trigger_id);
        assert_eq!(child.county.as_deref(), Some(county));
        // The events are consumed: one more A alone fires nothing.
        let more = run(
            store,
            new_job("A", "S", Some(county)),
            success(),
            &joins,
            at(2),
        )
        .await;
        assert!(more.children_created.is_empty());
    }
}

pub async fn join_three_parents(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge("dep:D", &["A", "B", "C"], Condition::OnSuccess, "D")];
    let c = run(store, new_job("C", "S", None), success(), &joins, at(0)).await;
    assert!(c.children_created.is_empty());
    let a = run(store, new_job("A", "S", None), success(), &joins, at(1)).await;
    assert!(a.children_created.is_empty());
    let b = run(store, new_job("B", "S", None), success(), &joins, at(2)).await;
    assert_eq!(b.children_created.len(), 1);
    assert_eq!(
        b.children_created[0].parent_job_ids,
        vec![a.job.job_id, b.job.job_id, c.job.job_id]
    );
}

pub async fn join_on_completion_with_failed_parent(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge("dep:C", &["A", "B"], Condition::OnCompletion, "C")];
    let a = run(store, new_job("A", "S", None), failure(None), &joins, at(0)).await;
    assert_eq!(a.job.status, JobStatus::Failed);
    assert!(a.children_created.is_empty());
    let b = run(store, new_job("B", "S", None), success(), &joins, at(1)).await;
    assert_eq!(b.children_created.len(), 1);
    assert_eq!(
        b.children_created[0].parent_job_ids,
        vec![a.job.job_id, b.job.job_id]
    );
}

pub async fn join_on_success_ignores_failed(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge("dep:C", &["A", "B"], Condition::OnSuccess, "C")];
    let failed = run(store, new_job("A", "S", None), failure(None), &joins, at(0)).await;
    assert!(failed.children_created.is_empty());
    let b = run(store, new_job("B", "S", None), success(), &joins, at(1)).await;
    assert!(
        b.children_created.is_empty(),
        "a failed parent counted as a success"
    );
    let a = run(store, new_job("A", "S", None), success(), &joins, at(2)).await;
    assert_eq!(a.children_created.len(), 1);
    assert_eq!(
        a.children_created[0].parent_job_ids,
        vec![a.job.job_id, b.job.job_id]
    );
    // k = 1 on success: a failure creates nothing at all.
    let single = vec![edge("dep:AFTER", &["A"], Condition::OnSuccess, "AFTER")];
    let failed = run(
        store,
        new_job("A", "S", None),
        failure(None),
        &single,
        at(3),
    )
    .await;
    assert!(failed.children_created.is_empty());
    assert!(store.children(&failed.job.job_id).await.unwrap().is_empty());
}

pub async fn join_uses_newest_event_of_each_parent(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge("dep:C", &["A", "B"], Condition::OnSuccess, "C")];
    let _a1 = run(store, new_job("A", "S", None), success(), &joins, at(0)).await;
    let a2 = run(store, new_job("A", "S", None), success(), &joins, at(1)).await;
    let b = run(store, new_job("B", "S", None), success(), &joins, at(2)).await;
    assert_eq!(
        b.children_created.len(),
        1,
        "several events of one parent fire one child"
    );
    assert_eq!(
        b.children_created[0].parent_job_ids,
        vec![a2.job.job_id, b.job.job_id]
    );
    // Every pending event was consumed, the older A's too.
    let b2 = run(store, new_job("B", "S", None), success(), &joins, at(3)).await;
    assert!(b2.children_created.is_empty());
}

pub async fn join_retry_emits_nothing(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge("dep:AFTER", &["A"], Condition::OnCompletion, "AFTER")];
    let mut job = new_job("A", "S", None);
    job.max_attempts = 2;
    let running = start(store, job, at(0)).await;
    let retry = finish(store, &running, failure(Some(at(1))), &joins, at(0)).await;
    assert_eq!(retry.job.status, JobStatus::Queued);
    assert!(
        retry.children_created.is_empty(),
        "a retried failure is not a completion"
    );
    let again = claim_all(store, at(1)).await;
    let done = finish(store, &again[0], success(), &joins, at(2)).await;
    assert_eq!(done.children_created.len(), 1);
}

pub async fn join_cancelled_emits_nothing(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge("dep:AFTER", &["A"], Condition::OnCompletion, "AFTER")];
    let running = start(store, new_job("A", "S", None), at(0)).await;
    let cancelled = finish(store, &running, Outcome::Cancelled, &joins, at(1)).await;
    assert_eq!(cancelled.job.status, JobStatus::Cancelled);
    assert!(cancelled.children_created.is_empty());
    assert_eq!(counts(store).await, expect_counts(0, 0, 0, 0, 1));
}

pub async fn join_parent_role_filter(store: Arc<dyn Store>) {
    let store = &*store;
    let mut filtered = edge("dep:AFTER", &["A"], Condition::OnSuccess, "AFTER");
    filtered.parent_roles = Some(vec!["SUPERVISOR".into()]);
    let joins = vec![filtered];
    let ignored = run(
        store,
        new_job("A", "CASE_WORKER", None),
        success(),
        &joins,
        at(0),
    )
    .await;
    assert!(ignored.children_created.is_empty());
    let taken = run(
        store,
        new_job("A", "SUPERVISOR", None),
        success(),
        &joins,
        at(1),
    )
    .await;
    assert_eq!(taken.children_created.len(), 1);
    assert_eq!(taken.children_created[0].role, "SUPERVISOR");

    // With k = 2, a filtered-out parent's event does not count toward the join either.
    let mut filtered = edge("dep:C", &["A", "B"], Condition::OnSuccess, "C");
    filtered.parent_roles = Some(vec!["CASE_WORKER".into()]);
    let joins = vec![filtered];
    run(
        store,
        new_job("A", "AUDITOR", None),
        success(),
        &joins,
        at(2),
    )
    .await;
    let b = run(
        store,
        new_job("B", "AUDITOR", None),
        success(),
        &joins,
        at(3),
    )
    .await;
    assert!(b.children_created.is_empty());
}

pub async fn join_role_inherit_and_fixed(store: Arc<dyn Store>) {
    let store = &*store;
    let inherit = edge("dep:INHERITED", &["A"], Condition::OnSuccess, "INHERITED");
    let mut fixed = edge("dep:FIXED", &["A"], Condition::OnSuccess, "FIXED");
    fixed.child.role = RoleRule::Fixed("AUDITOR".into());
    let done = run(
        store,
        new_job("A", "CASE_WORKER", Some("C9")),
        success(),
        &[inherit, fixed],
        at(0),
    )
    .await;
    let by_type: BTreeMap<&str, &Job> = done
        .children_created
        .iter()
        .map(|child| (child.report_type.as_str(), child))
        .collect();
    assert_eq!(by_type.len(), 2);
    assert_eq!(by_type["INHERITED"].role, "CASE_WORKER");
    assert_eq!(by_type["FIXED"].role, "AUDITOR");
    for child in by_type.values() {
        assert_eq!(child.county.as_deref(), Some("C9"));
        assert_eq!(child.subject, "alice");
    }
}

pub async fn join_chain_of_three(store: Arc<dyn Store>) {
    let store = &*store;
    let a_to_b = vec![edge("dep:B", &["A"], Condition::OnSuccess, "B")];
    let b_to_c = vec![edge("dep:C", &["B"], Condition::OnSuccess, "C")];
    let mut root = new_job("A", "S", Some("C1"));
    root.trigger_id = "manual:chain".into();
    let a = run(store, root, success(), &a_to_b, at(0)).await;
    let b_queued = &a.children_created[0];
    let b = claim_all(store, at(1)).await;
    assert_eq!(ids(&b), vec![b_queued.job_id.clone()]);
    let b = finish(store, &b[0], success(), &b_to_c, at(2)).await;
    assert_eq!(b.children_created.len(), 1);
    let c = &b.children_created[0];
    assert_eq!(c.report_type, "C");
    assert_eq!(c.parent_job_ids, vec![b.job.job_id.clone()]);
    assert_eq!(
        c.trigger_id, "manual:chain",
        "the whole cascade keeps its trigger"
    );
    let c = claim_all(store, at(3)).await;
    let c = finish(store, &c[0], success(), &[], at(4)).await;
    assert!(c.children_created.is_empty());
    assert_eq!(counts(store).await, expect_counts(0, 0, 3, 0, 0));
}

pub async fn join_scopes_kept_apart(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![edge("dep:C", &["A", "B"], Condition::OnSuccess, "C")];
    let a = run(
        store,
        new_job("A", "CASE_WORKER", Some("C1")),
        success(),
        &joins,
        at(0),
    )
    .await;
    for (role, county) in [
        ("SUPERVISOR", Some("C1")),
        ("CASE_WORKER", Some("C2")),
        ("CASE_WORKER", None),
    ] {
        let other = run(store, new_job("B", role, county), success(), &joins, at(1)).await;
        assert!(
            other.children_created.is_empty(),
            "{role}/{county:?} joined CASE_WORKER/C1"
        );
    }
    let b = run(
        store,
        new_job("B", "CASE_WORKER", Some("C1")),
        success(),
        &joins,
        at(2),
    )
    .await;
    assert_eq!(b.children_created.len(), 1);
    let child = &b.children_created[0];
    assert_eq!(child.parent_job_ids, vec![a.job.job_id, b.job.job_id]);
    assert_eq!(
        (child.role.as_str(), child.county.as_deref()),
        ("CASE_WORKER", Some("C1"))
    );
    // Two edges with the same parents keep separate state.
    let two = vec![
        edge("dep:X", &["A", "B"], Condition::OnSuccess, "X"),
        edge("dep:Y", &["A", "B"], Condition::OnSuccess, "Y"),
    ];
    run(store, new_job("A", "R", None), success(), &two, at(3)).await;
    let fired = run(store, new_job("B", "R", None), success(), &two, at(4)).await;
    let types: BTreeSet<&str> = fired
        .children_created
        .iter()
        .map(|c| c.report_type.as_str())
        .collect();
    assert_eq!(types, BTreeSet::from(["X", "Y"]));
}

pub async fn join_bad_edge_never_changes_the_parent(store: Arc<dyn Store>) {
    let store = &*store;
    let mut twice = edge("dep:BAD", &["A", "A"], Condition::OnSuccess, "BAD");
    twice.parents = vec!["A".into(), "A".into()];
    let good = edge("dep:GOOD", &["A"], Condition::OnSuccess, "GOOD");
    // The same declaration passed twice applies once.
    let done = run(
        store,
        new_job("A", "S", None),
        success(),
        &[twice, good.clone(), good],
        at(0),
    )
    .await;
    assert_eq!(done.job.status, JobStatus::Completed);
    assert_eq!(done.join_errors.len(), 1);
    assert_eq!(done.join_errors[0].join_id, "dep:BAD");
    assert_eq!(done.children_created.len(), 1);
    assert_eq!(done.children_created[0].report_type, "GOOD");
    // Edges that do not name this report type are ignored.
    let unrelated = vec![edge("dep:Z", &["OTHER"], Condition::OnCompletion, "Z")];
    let done = run(store, new_job("A", "S", None), success(), &unrelated, at(1)).await;
    assert!(done.children_created.is_empty() && done.join_errors.is_empty());
}

pub async fn children_index(store: Arc<dyn Store>) {
    let store = &*store;
    let joins = vec![
        edge("dep:X", &["A"], Condition::OnSuccess, "X"),
        edge("dep:Y", &["A"], Condition::OnSuccess, "Y"),
    ];
    let a = run(store, new_job("A", "S", None), success(), &joins, at(0)).await;
    let mut manual = new_job("MANUAL", "S", None);
    manual.parent_job_ids = vec![a.job.job_id.clone()];
    let manual = enqueue_one(store, manual, at(5)).await;
    let children = store.children(&a.job.job_id).await.unwrap();
    let mut expected = a.children_created.clone();
    expected.sort_by(|x, y| x.job_id.cmp(&y.job_id));
    expected.push(manual);
    assert_eq!(children, expected, "children oldest first");
    assert!(store
        .children(&children[0].job_id)
        .await
        .unwrap()
        .is_empty());
}

pub async fn counts_follow_every_change(store: Arc<dyn Store>) {
    let store = &*store;
    assert_eq!(counts(store).await, expect_counts(0, 0, 0, 0, 0));
    let mut job = new_job("R", "S", None);
    job.max_attempts = 2;
    store.enqueue(vec![job; 6], None, at(0)).await.unwrap();
    assert_eq!(counts(store).await, expect_counts(6, 0, 0, 0, 0));
    let running = store.claim("w", 5, LEASE, at(1)).await.unwrap();
    assert_eq!(counts(store).await, expect_counts(1, 5, 0, 0, 0));
    finish(store, &running[0], failure(Some(at(1))), &[], at(2)).await;
    assert_eq!(counts(store).await, expect_counts(2, 4, 0, 0, 0));
    finish(store, &running[1], success(), &[], at(2)).await;
    finish(store, &running[2], failure(None), &[], at(2)).await;
    store.cancel(&running[3].job_id, at(2)).await.unwrap();
    assert_eq!(counts(store).await, expect_counts(2, 2, 1, 1, 0));
    let queued = list_all(
        store,
        ListFilter {
            status: Some(JobStatus::Queued),
            ..ListFilter::default()
        },
    )
    .await;
    assert_eq!(queued.len(), 2);
    store.cancel(&queued[0].job_id, at(3)).await.unwrap();
    assert_eq!(counts(store).await, expect_counts(1, 2, 1, 1, 1));
    let joins = vec![edge("dep:AFTER", &["R"], Condition::OnSuccess, "AFTER")];
    finish(store, &running[4], success(), &joins, at(4)).await;
    assert_eq!(counts(store).await, expect_counts(2, 1, 2, 1, 1));
    // The cancel-requested job's lease runs out: it ends CANCELLED.
    store.requeue_expired(at(1000), &NoJoins).await.unwrap();
    assert_eq!(counts(store).await, expect_counts(2, 0, 2, 1, 2));
    let listed = list_all(store, ListFilter::default()).await;
    let mut by_status = expect_counts(0, 0, 0, 0, 0);
    for job in &listed {
        *by_status.get_mut(&job.status).unwrap() += 1;
    }
    assert_eq!(
        counts(store).await,
        by_status,
        "counters disagree with the jobs"
    );
}

pub async fn subscribe_wakes_on_new_work(store: Arc<dyn Store>) {
    let store = &*store;
    let mut rx = store.subscribe();
    rx.borrow_and_update();
    enqueue_one(store, new_job("A", "S", None), at(0)).await;
    assert!(rx.has_changed().unwrap(), "enqueue did not wake");
    rx.borrow_and_update();
    let running = claim_all(store, at(1)).await;
    let joins = vec![edge("dep:B", &["A"], Condition::OnSuccess, "B")];
    finish(store, &running[0], success(), &joins, at(2)).await;
    assert!(rx.has_changed().unwrap(), "a child created did not wake");
    rx.borrow_and_update();
    let running = claim_all(store, at(3)).await;
    store.requeue_expired(at(100), &NoJoins).await.unwrap();
    assert!(
        running.len() == 1 && rx.has_changed().unwrap(),
        "a requeue did not wake"
    );
    // A waiting dispatcher is woken, not polled.
    let waiter = {
        let mut rx = store.subscribe();
        rx.borrow_and_update();
        tokio::spawn(async move { rx.changed().await.is_ok() })
    };
    tokio::task::yield_now().await;
    enqueue_one(store, new_job("A", "S", None), at(4)).await;
    let woke = tokio::time::timeout(Duration::from_secs(5), waiter).await;
    assert!(
        matches!(woke, Ok(Ok(true))),
        "the waiting dispatcher was not woken"
    );
}

// ---------------------------------------------------------------------------------------------
// Races
// ---------------------------------------------------------------------------------------------

/// 8 claimers race for 10,000 jobs: each job is claimed exactly once, none is lost.
pub async fn concurrent_claims_take_each_job_once(store: Arc<dyn Store>) {
    const JOBS: usize = 10_000;
    let mut enqueued = BTreeSet::new();
    for chunk in 0..JOBS / 1000 {
        let batch = vec![new_job("R", "S", None); 1000];
        let jobs = created(store.enqueue(batch, None, at(chunk as i64)).await.unwrap());
        enqueued.extend(ids(&jobs));
    }
    assert_eq!(enqueued.len(), JOBS, "enqueue created duplicate ids");
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let claimers: Vec<_> = (0..8)
        .map(|worker| {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let name = format!("worker-{worker}");
                let mut mine = Vec::new();
                loop {
                    let got = store.claim(&name, 37, LEASE, at(100)).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    for job in got {
                        assert_eq!(job.lease_owner.as_deref(), Some(name.as_str()));
                        mine.push(job.job_id);
                    }
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.unwrap());
    }
    assert_eq!(claimed.len(), JOBS, "a job was claimed twice or lost");
    let unique: BTreeSet<JobId> = claimed.into_iter().collect();
    assert_eq!(unique, enqueued);
    assert_eq!(
        counts(&*store).await,
        expect_counts(0, JOBS as u64, 0, 0, 0)
    );
}

/// Two parents of one join complete at the same instant on two tasks, 1,000 times, each time in
/// a fresh scope: exactly one child every time.
pub async fn concurrent_parents_create_one_child(store: Arc<dyn Store>) {
    const ROUNDS: usize = 1000;
    let joins: Arc<[JoinEdge]> = vec![edge("dep:C", &["A", "B"], Condition::OnSuccess, "C")].into();
    for round in 0..ROUNDS {
        let county = format!("county-{round}");
        let batch = vec![
            new_job("A", "S", Some(&county)),
            new_job("B", "S", Some(&county)),
        ];
        store.enqueue(batch, None, at(0)).await.unwrap();
        let running = store.claim("w", 2, LEASE, at(1)).await.unwrap();
        assert_eq!(running.len(), 2);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let finishers: Vec<_> = running
            .into_iter()
            .map(|job| {
                let store = Arc::clone(&store);
                let joins = Arc::clone(&joins);
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    // Both tasks are on worker threads; release them together.
                    tokio::task::block_in_place(|| barrier.wait());
                    finish(&*store, &job, success(), &joins, at(2)).await
                })
            })
            .collect();
        let mut children = Vec::new();
        let mut parents = Vec::new();
        for finisher in finishers {
            let done = finisher.await.unwrap();
            parents.push(done.job.job_id.clone());
            children.extend(done.children_created);
        }
        assert_eq!(
            children.len(),
            1,
            "round {round}: {} children",
            children.len()
        );
        let mut got = children[0].parent_job_ids.clone();
        got.sort();
        parents.sort();
        assert_eq!(got, parents);
        // The child's own claim keeps the next round's queue clean.
        let child = store.claim("w", 10, LEASE, at(3)).await.unwrap();
        assert_eq!(ids(&child), ids(&children));
    }
    assert_eq!(counts(&*store).await[&JobStatus::Processing], ROUNDS as u64);
}

/// A request with every kind of parameter value and a window (a week that starts on Sunday, in
/// a zone with daylight saving).
pub fn full_request() -> JobRequest {
    use crate::params::ParamValue;
    let params = [
        (
            "a_string",
            ParamValue::String("Zürich'; DROP TABLE x; -- $1".into()),
        ),
        ("an_integer", ParamValue::Integer(i64::MIN)),
        (
            "a_decimal",
            ParamValue::Decimal("-12345678901234567890.50".into()),
        ),
        (
            "a_date",
            ParamValue::Date(chrono::NaiveDate::from_ymd_opt(2028, 2, 29).expect("a date")),
        ),
        (
            "a_timestamp",
            ParamValue::Timestamp(at(90) + TimeDelta::microseconds(123_456)),
        ),
        ("a_boolean", ParamValue::Boolean(false)),
    ];
    let window = crate::window::WindowSpec::Previous(crate::window::Period::Week {
        starts: chrono::Weekday::Sun,
    })
    .window_at(at(0), chrono_tz::America::Santiago)
    .expect("a window");
    JobRequest {
        chunk_size: Some(10),
        params: params
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        window: Some(window),
        ..JobRequest::default()
    }
}

pub async fn params_and_window_round_trip_and_pass_to_children(store: Arc<dyn Store>) {
    let store = &*store;
    let mut joins = vec![edge(
        "dep1:SUMMARY",
        &["DAILY_REPORT"],
        Condition::OnSuccess,
        "SUMMARY",
    )];
    // The child's own default, and one the parent's value replaces.
    joins[0].child.request.params = [
        ("child_only", crate::params::ParamValue::Integer(7)),
        ("a_boolean", crate::params::ParamValue::Boolean(true)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut parent = new_job("DAILY_REPORT", "SUPERVISOR", Some("C1"));
    parent.request = full_request();
    let queued = enqueue_one(store, parent.clone(), at(0)).await;
    assert_eq!(queued.request, parent.request);
    assert_eq!(get(store, &queued.job_id).await.request, parent.request);
    let listed = list_all(store, ListFilter::default()).await;
    assert_eq!(listed[0].request, parent.request);
    let claimed = claim_all(store, at(1)).await;
    assert_eq!(claimed[0].request, parent.request);
    let done = finish(store, &claimed[0], success(), &joins, at(2)).await;
    assert_eq!(done.job.request, parent.request);
    let child = &done.children_created[0];
    assert_eq!(child.request.window, parent.request.window);
    let mut want = parent.request.params.clone();
    want.insert("child_only".into(), crate::params::ParamValue::Integer(7));
    assert_eq!(child.request.params, want);
    assert_eq!(child.request.chunk_size, Some(500));
    assert_eq!(&get(store, &child.job_id).await, child);
    // An old record's shape: no parameters, no window.
    let plain = enqueue_one(store, new_job("R", "S", Some("C1")), at(3)).await;
    let plain = get(store, &plain.job_id).await;
    assert!(plain.request.params.is_empty() && plain.request.window.is_none());
}
