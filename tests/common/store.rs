//! A store that fails when the test says so: a sled store behind a [`Faults`] policy that may
//! fail any call before it reaches the store (a database that is down) or after the store
//! applied it (a connection lost before the answer), as a PostgreSQL store would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowctl::job::{Job, JobId, JobStatus, NewJob};
use flowctl::store::{
    BoxFuture, CancelOutcome, Cas, Completion, Enqueued, Expired, JoinEdge, JoinRules, ListFilter,
    Outcome, Page, ProgressUpdate, SledStore, Store, StoreResult, UniqueKey,
};
use tokio::sync::watch;

/// A call of the [`Store`] trait (those that can fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Enqueue,
    Claim,
    Renew,
    Complete,
    Cancel,
    RequeueExpired,
    RequeueAllProcessing,
    Get,
    Children,
    List,
    Counts,
    LastFire,
    UniqueJobs,
}

/// When a [`FaultyStore`]'s calls fail. Both default to letting the call through.
pub trait Faults: Send + Sync {
    /// Before the inner store sees `call`: an error fails the call without reaching it.
    fn before(&self, call: Call) -> StoreResult<()> {
        let _ = call;
        Ok(())
    }

    /// After the inner store applied `call` (and succeeded): an error replaces its answer.
    fn after(&self, call: Call) -> StoreResult<()> {
        let _ = call;
        Ok(())
    }

    /// Whether the store says it stopped accepting changes ([`Store::stopped`]): `None` leaves
    /// it to the inner store.
    fn stopped(&self) -> Option<String> {
        None
    }
}

/// A sled store whose calls fail as its [`Faults`] say. The trait's provided methods
/// (`complete_and_claim`, `sync`, `is_shared`) keep their defaults; `stopped` asks the faults,
/// then the inner store.
pub struct FaultyStore {
    pub inner: SledStore,
    faults: Arc<dyn Faults>,
}

impl FaultyStore {
    pub fn new(inner: SledStore, faults: Arc<dyn Faults>) -> FaultyStore {
        FaultyStore { inner, faults }
    }

    fn gate<'a, T: Send + 'a>(
        &'a self,
        call: Call,
        op: BoxFuture<'a, StoreResult<T>>,
    ) -> BoxFuture<'a, StoreResult<T>> {
        Box::pin(async move {
            self.faults.before(call)?;
            let value = op.await?;
            self.faults.after(call)?;
            Ok(value)
        })
    }
}

impl Store for FaultyStore {
    fn enqueue(
        &self,
        batch: Vec<NewJob>,
        unique: Option<UniqueKey>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, StoreResult<Enqueued>> {
        self.gate(Call::Enqueue, self.inner.enqueue(batch, unique, now))
    }
    fn claim<'a>(
        &'a self,
        worker: &'a str,
        max: usize,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        self.gate(Call::Claim, self.inner.claim(worker, max, lease, now))
    }
    fn renew<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        lease_until: DateTime<Utc>,
        progress: Option<ProgressUpdate>,
    ) -> BoxFuture<'a, StoreResult<Cas<Job>>> {
        let op = self
            .inner
            .renew(job_id, expected_version, lease_until, progress);
        self.gate(Call::Renew, op)
    }
    fn complete<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &'a [JoinEdge],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Cas<Completion>>> {
        let op = self
            .inner
            .complete(job_id, expected_version, outcome, joins, now);
        self.gate(Call::Complete, op)
    }
    fn cancel<'a>(
        &'a self,
        job_id: &'a JobId,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<CancelOutcome>> {
        self.gate(Call::Cancel, self.inner.cancel(job_id, now))
    }
    fn requeue_expired<'a>(
        &'a self,
        now: DateTime<Utc>,
        joins: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>> {
        self.gate(Call::RequeueExpired, self.inner.requeue_expired(now, joins))
    }
    fn requeue_all_processing<'a>(
        &'a self,
        now: DateTime<Utc>,
        joins: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>> {
        let op = self.inner.requeue_all_processing(now, joins);
        self.gate(Call::RequeueAllProcessing, op)
    }
    fn get<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Option<Job>>> {
        self.gate(Call::Get, self.inner.get(job_id))
    }
    fn children<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        self.gate(Call::Children, self.inner.children(job_id))
    }
    fn list(&self, filter: ListFilter) -> BoxFuture<'_, StoreResult<Page>> {
        self.gate(Call::List, self.inner.list(filter))
    }
    fn counts(&self) -> BoxFuture<'_, StoreResult<BTreeMap<JobStatus, u64>>> {
        self.gate(Call::Counts, self.inner.counts())
    }
    fn unique_jobs<'a>(
        &'a self,
        unique: &'a UniqueKey,
    ) -> BoxFuture<'a, StoreResult<Option<Vec<JobId>>>> {
        self.gate(Call::UniqueJobs, self.inner.unique_jobs(unique))
    }
    fn last_fire<'a>(
        &'a self,
        schedule: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<DateTime<Utc>>>> {
        self.gate(Call::LastFire, self.inner.last_fire(schedule))
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.subscribe()
    }

    fn stopped(&self) -> Option<String> {
        self.faults.stopped().or_else(|| self.inner.stopped())
    }
}
