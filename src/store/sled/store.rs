//! [`SledStore`], how to open it ([`SledConfig`]), and its [`Store`] impl: each method takes the
//! writer's turn for its change (`transitions.rs`), then waits for it to be durable and wakes
//! the dispatchers it concerns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::change::Change;
use super::codec::{decode_job, decode_value};
use super::flusher::Flusher;
use super::indexes::State;
use super::keys::{id_bytes, job_key, time_from_key, unique_key, FIRE};
use super::lock;
use super::transitions::add;
use super::writer::broken;
use crate::job::{Job, JobId, JobStatus, NewJob};
use crate::store::{
    store_time, BoxFuture, CancelOutcome, Cas, Completion, Enqueued, Expired, JoinEdge, JoinRules,
    ListFilter, Outcome, Page, ProgressUpdate, Store, StoreError, StoreResult, UniqueKey,
};

/// How to open a [`SledStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SledConfig {
    /// A directory; created if missing.
    pub path: PathBuf,
    /// sled's page cache. Not a bound on memory: the store holds ~0.5 KB of heap per job
    /// whatever this is (see [`crate::store::sled`], "Why no persistent index trees").
    pub cache_capacity_bytes: u64,
    /// Wait for fsync before a mutating method returns (group commit). Turn off only for tests
    /// and throwaway stores: sled then flushes every 500 ms, and on close, and rounds are not
    /// numbered in the commit watermark (a lost suffix is not detected).
    pub flush: bool,
}

impl SledConfig {
    pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

    pub fn new(path: impl Into<PathBuf>) -> SledConfig {
        SledConfig {
            path: path.into(),
            cache_capacity_bytes: Self::DEFAULT_CACHE_CAPACITY_BYTES,
            flush: true,
        }
    }
}

/// The embedded store. See [`crate::store::sled`].
pub struct SledStore {
    /// sled's database, flushed on close.
    pub(super) db: sled::Db,
    /// The `flowctl` tree (see `keys.rs`).
    pub(super) tree: sled::Tree,
    /// The store's directory, as given.
    pub(super) path: PathBuf,
    /// Its key in `OPEN_STORES` (`open.rs`).
    pub(super) registered: PathBuf,
    /// The indexes, the writes not yet in sled, and the writer's turn: every change holds this
    /// lock from its first read to its index update. Shared with the flush thread, which moves
    /// the writes into sled.
    pub(super) state: Arc<Mutex<State>>,
    /// The subscribers' wake-up counter ([`Store::subscribe`]).
    pub(super) wake: watch::Sender<u64>,
    /// [`SledConfig::flush`].
    pub(super) fsync: bool,
    /// Moves committed writes into sled and fsyncs them. `None` only once closing.
    pub(super) flusher: Option<Flusher>,
    /// A copy opened by [`SledStore::open_read_only`], removed on close.
    pub(super) copy: Option<PathBuf>,
}

impl SledStore {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fault for tests: from now on every write the flush thread makes to sled fails with
    /// `error` (e.g. "No space left on device"), as a full disk makes it fail, and the store
    /// stops as it then does ([`Store::stopped`]). flowctl itself never calls this.
    #[doc(hidden)]
    pub fn inject_write_failure(&self, error: &str) {
        lock(&self.state).injected_fault = Some(error.into());
    }

    /// How many fsyncs the group commit has done: compare with the number of changes to see
    /// how many share one.
    pub fn flushes(&self) -> u64 {
        self.flusher.as_ref().map_or(0, Flusher::flushes)
    }

    /// Waits until every durable write applied so far is on disk (claims and heartbeats may
    /// follow later: see `flusher.rs`).
    async fn durable(&self) -> StoreResult<()> {
        match &self.flusher {
            Some(flusher) if self.fsync => flusher.wait().await,
            _ => Ok(()),
        }
    }

    fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Takes the writer's turn.
    pub(super) fn change(&self) -> Change<'_> {
        Change::begin(&self.tree, &self.state)
    }

    /// A job: as last committed, whether or not it has reached sled yet.
    pub(super) fn read_job(&self, job_id: &JobId) -> StoreResult<Option<Job>> {
        let id = id_bytes(job_id);
        let Some(created) = lock(&self.state).created.get(&id).copied() else {
            return Ok(None);
        };
        let key = job_key(created, &id);
        self.read(&key)?
            .map(|bytes| decode_job(&key, &bytes))
            .transpose()
    }

    /// A key's value: as last committed, whether or not it has reached sled yet.
    fn read(&self, key: &[u8]) -> StoreResult<Option<sled::IVec>> {
        if let Some(pending) = lock(&self.state).overlay.get(key) {
            return Ok(pending);
        }
        self.tree.get(key).map_err(StoreError::Sled)
    }

    /// A completion (claiming the next job for `claim_for`'s worker, if given), before its
    /// fsync. Dispatchers are woken when something is left to claim: a dependent may then start
    /// while its parent's completion is being flushed. If the process dies first, both vanish
    /// together (sled recovers the log in order), and the parent runs again.
    fn complete_and_wake(
        &self,
        job_id: &JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &[JoinEdge],
        now: DateTime<Utc>,
        claim_for: Option<(&str, Duration)>,
    ) -> StoreResult<(Cas<Completion>, Option<Job>)> {
        let now = store_time(now);
        let claim_for = claim_for.map(|(worker, lease)| (worker, add(now, lease)));
        let (cas, claimed) =
            self.complete_sync(job_id, expected_version, outcome, joins, now, claim_for)?;
        if let Cas::Applied(completion) = &cas {
            completion.log_join_errors();
            // Only what this change made claimable needs a dispatcher: what was queued before
            // woke them when it was queued, and a slot this completion frees wakes its own.
            // (Waking on every completion cost 5% of the store's CPU under load.)
            let claimable = |job: &Job| job.status == JobStatus::Queued && job.run_after.is_none();
            if claimable(&completion.job) || completion.children_created.iter().any(claimable) {
                self.wake();
            }
        }
        Ok((cas, claimed))
    }
}

impl Store for SledStore {
    fn enqueue(
        &self,
        batch: Vec<NewJob>,
        unique: Option<UniqueKey>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, StoreResult<Enqueued>> {
        Box::pin(async move {
            if batch.is_empty() && unique.is_none() {
                return Ok(Enqueued::Created(Vec::new()));
            }
            let enqueued = self.enqueue_sync(batch, unique.as_ref(), store_time(now))?;
            // Existing jobs too: the first call may still be waiting for its fsync, and a
            // caller told "already done" must be able to rely on it.
            self.durable().await?;
            if matches!(&enqueued, Enqueued::Created(jobs) if !jobs.is_empty()) {
                self.wake();
            }
            Ok(enqueued)
        })
    }

    fn claim<'a>(
        &'a self,
        worker: &'a str,
        max: usize,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        Box::pin(async move {
            if max == 0 {
                return Ok(Vec::new());
            }
            let (claimed, promoted) = self.claim_sync(worker, max, lease, store_time(now))?;
            if promoted {
                // Other dispatchers may find the rest.
                self.wake();
            }
            // A claim is lazy (not awaited, written with the job's completion or a little
            // later): if the process dies first, the job is simply QUEUED again after
            // recovery, which is what lease recovery would do anyway. This keeps fsync off
            // the dispatch path, and a short job's record written once instead of twice.
            Ok(claimed)
        })
    }

    fn renew<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        lease_until: DateTime<Utc>,
        progress: Option<ProgressUpdate>,
    ) -> BoxFuture<'a, StoreResult<Cas<Job>>> {
        Box::pin(async move {
            // Heartbeats and progress need not be on disk: after a crash the
            // single-process store requeues every PROCESSING job whatever its
            // lease says, and progress is advisory.
            let cas = self.renew_sync(job_id, expected_version, lease_until, progress)?;
            Ok(cas)
        })
    }

    fn complete<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &'a [JoinEdge],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Cas<Completion>>> {
        Box::pin(async move {
            let (cas, _) =
                self.complete_and_wake(job_id, expected_version, outcome, joins, now, None)?;
            if matches!(cas, Cas::Applied(_)) {
                self.durable().await?;
            }
            Ok(cas)
        })
    }

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
        // Not awaited to disk: the caller syncs before it gives up the completion's slot; the
        // claim needs no more than any claim does.
        let claim_for = Some((worker, lease));
        Box::pin(async move {
            self.complete_and_wake(job_id, expected_version, outcome, joins, now, claim_for)
        })
    }

    fn sync(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.durable())
    }

    fn cancel<'a>(
        &'a self,
        job_id: &'a JobId,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<CancelOutcome>> {
        Box::pin(async move {
            let outcome = self.cancel_sync(job_id, store_time(now))?;
            if outcome != CancelOutcome::NotFound {
                // Unchanged outcomes too: what they report may still be waiting for its fsync.
                self.durable().await?;
            }
            Ok(outcome)
        })
    }

    fn requeue_expired<'a>(
        &'a self,
        now: DateTime<Utc>,
        joins: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>> {
        Box::pin(async move {
            let now = store_time(now);
            let expired = self.requeue_sync(now, Some(now), joins)?;
            self.after_sweep(&expired).await?;
            Ok(expired)
        })
    }

    fn requeue_all_processing<'a>(
        &'a self,
        now: DateTime<Utc>,
        joins: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>> {
        Box::pin(async move {
            let expired = self.requeue_sync(store_time(now), None, joins)?;
            self.after_sweep(&expired).await?;
            Ok(expired)
        })
    }

    fn get<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Option<Job>>> {
        Box::pin(async move { self.read_job(job_id) })
    }

    fn children<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        Box::pin(async move { self.children_sync(job_id) })
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, StoreResult<Page>> {
        Box::pin(async move { self.list_sync(&filter) })
    }

    fn counts(&self) -> BoxFuture<'_, StoreResult<BTreeMap<JobStatus, u64>>> {
        Box::pin(async move {
            let counts = lock(&self.state).counts;
            Ok(JobStatus::ALL.into_iter().zip(counts).collect())
        })
    }

    fn unique_jobs<'a>(
        &'a self,
        unique: &'a UniqueKey,
    ) -> BoxFuture<'a, StoreResult<Option<Vec<JobId>>>> {
        Box::pin(async move {
            let key = unique_key(unique);
            self.read(&key)?
                .map(|bytes| decode_value(&key, &bytes))
                .transpose()
        })
    }

    fn last_fire<'a>(
        &'a self,
        schedule: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<DateTime<Utc>>>> {
        Box::pin(async move {
            let key = [&[FIRE][..], schedule.as_bytes()].concat();
            match self.read(&key)? {
                Some(bytes) => Ok(Some(time_from_key(&key, &bytes)?)),
                None => Ok(None),
            }
        })
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    fn stopped(&self) -> Option<String> {
        let state = lock(&self.state);
        match state.broken.as_deref().map(broken) {
            Some(StoreError::Stopped { reason }) => Some(reason),
            _ => None,
        }
    }
}

impl SledStore {
    async fn after_sweep(&self, expired: &Expired) -> StoreResult<()> {
        if expired.requeued.is_empty() && expired.finished.is_empty() {
            return Ok(());
        }
        expired
            .finished
            .iter()
            .for_each(Completion::log_join_errors);
        self.durable().await?;
        if !expired.requeued.is_empty()
            || expired
                .finished
                .iter()
                .any(|c| !c.children_created.is_empty())
        {
            self.wake();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::{DateTime, TimeDelta, Utc};
    use proptest::prelude::*;
    use tempfile::TempDir;

    use super::{SledConfig, SledStore};
    use crate::job::{JobId, JobStatus, NewJob};
    use crate::store::conformance::{self, at, new_job};
    use crate::store::sled::testing::open_at;
    use crate::store::{Cas, Enqueued, ListFilter, NoJoins, Outcome, Store};

    /// Fresh stores in temporary directories that live as long as the test.
    struct Stores {
        dirs: std::sync::Mutex<Vec<TempDir>>,
    }

    impl Stores {
        fn new() -> Stores {
            Stores {
                dirs: std::sync::Mutex::new(Vec::new()),
            }
        }

        fn open(&self) -> Arc<dyn Store> {
            let dir = tempfile::tempdir().expect("temporary directory");
            let store = SledStore::open(SledConfig::new(dir.path().join("db"))).expect("open");
            self.dirs.lock().unwrap().push(dir);
            Arc::new(store)
        }
    }

    macro_rules! conformance {
        ($($scenario:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let stores = Stores::new();
                conformance::$scenario(stores.open()).await;
            }
        )*};
    }

    conformance::with_scenarios!(conformance);

    /// `run_all` is what another store's tests call; it must stay in step with the list above.
    #[test]
    fn the_scenario_list_names_every_scenario() {
        let source = include_str!("../conformance.rs");
        // A scenario takes a fresh store; helpers take `&dyn Store`.
        let scenarios = source
            .lines()
            .filter(|line| {
                line.starts_with("pub async fn ") && line.contains("(store: Arc<dyn Store>)")
            })
            .count();
        let listed = {
            let start = source.find("$callback!(\n").expect("the scenario list");
            let end = source[start..].find(");").expect("its end") + start;
            source[start..end].matches(',').count()
        };
        assert_eq!(listed, scenarios, "with_scenarios! misses a scenario");
    }

    #[tokio::test]
    async fn jobs_persist_and_processing_jobs_are_requeued_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        let before = conformance::before_reopen(&store, Duration::from_secs(3600)).await;
        let running = &before.running;
        drop(store);

        let store = open_at(&path);
        conformance::same_after_reopen(&store, &before).await;
        // Nothing can still run the PROCESSING job after a restart: it goes back to the queue.
        let expired = store.requeue_all_processing(at(3), &NoJoins).await.unwrap();
        assert_eq!(expired.requeued, vec![running[1].job_id.clone()]);
        let requeued = store.get(&running[1].job_id).await.unwrap().unwrap();
        assert_eq!((requeued.status, requeued.attempt), (JobStatus::Queued, 2));
        // And the queue order survived: the oldest (by id among equals) first.
        let claimed = store
            .claim("w2", 10, Duration::from_secs(60), at(4))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
    }

    // -----------------------------------------------------------------------------------------
    // Model-based: random operation sequences, restarts included, against an in-memory model.
    // -----------------------------------------------------------------------------------------

    const MODEL_LEASE_SECONDS: i64 = 10;

    #[derive(Clone, Debug)]
    enum Op {
        Enqueue {
            n: usize,
            priority: u8,
            max_attempts: u32,
        },
        Claim {
            max: usize,
        },
        Succeed {
            pick: usize,
        },
        Fail {
            pick: usize,
            retry_in: Option<i64>,
        },
        Renew {
            pick: usize,
        },
        Cancel {
            pick: usize,
        },
        Stale {
            pick: usize,
        },
        ExpireLeases {
            advance: i64,
        },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1..4usize, 0..3u8, 1..4u32)
                .prop_map(|(n, priority, max_attempts)| Op::Enqueue { n, priority, max_attempts }),
            3 => (0..4usize).prop_map(|max| Op::Claim { max }),
            2 => any::<usize>().prop_map(|pick| Op::Succeed { pick }),
            2 => (any::<usize>(), proptest::option::of(-1..4i64))
                .prop_map(|(pick, retry_in)| Op::Fail { pick, retry_in }),
            1 => any::<usize>().prop_map(|pick| Op::Renew { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Stale { pick }),
            1 => (0..25i64).prop_map(|advance| Op::ExpireLeases { advance }),
            1 => Just(Op::Reopen),
        ]
    }

    /// What the model knows of a job.
    #[derive(Clone, Debug, PartialEq)]
    struct Model {
        status: JobStatus,
        version: u64,
        attempt: u32,
        max_attempts: u32,
        priority: u8,
        created_at: DateTime<Utc>,
        run_after: Option<DateTime<Utc>>,
        lease_until: Option<DateTime<Utc>>,
        cancel_requested: bool,
    }

    struct Harness {
        path: std::path::PathBuf,
        store: Option<SledStore>,
        jobs: BTreeMap<JobId, Model>,
        now: DateTime<Utc>,
    }

    impl Harness {
        fn store(&self) -> &SledStore {
            self.store.as_ref().expect("open")
        }

        fn pick(&self, pick: usize, status: Option<JobStatus>) -> Option<JobId> {
            let ids: Vec<&JobId> = self
                .jobs
                .iter()
                .filter(|(_, job)| status.is_none_or(|s| job.status == s))
                .map(|(id, _)| id)
                .collect();
            (!ids.is_empty()).then(|| ids[pick % ids.len()].clone())
        }

        /// The claim order the model expects: due QUEUED jobs, priority desc, age, id.
        fn claimable(&self) -> Vec<JobId> {
            let mut due: Vec<(&JobId, &Model)> = self
                .jobs
                .iter()
                .filter(|(_, job)| {
                    job.status == JobStatus::Queued && job.run_after.is_none_or(|at| at <= self.now)
                })
                .collect();
            due.sort_by_key(|(id, job)| {
                (
                    std::cmp::Reverse(job.priority),
                    job.created_at,
                    (*id).clone(),
                )
            });
            due.into_iter().map(|(id, _)| id.clone()).collect()
        }

        fn expire(job: &mut Model) {
            job.version += 1;
            job.lease_until = None;
            if job.cancel_requested {
                job.status = JobStatus::Cancelled;
            } else if crate::store::recovers_after_lease_expiry(job.attempt, job.max_attempts) {
                job.status = JobStatus::Queued;
                job.attempt += 1;
                job.run_after = None;
            } else {
                job.status = JobStatus::Failed;
            }
        }

        async fn step(&mut self, op: &Op) {
            self.now += TimeDelta::seconds(1);
            let now = self.now;
            let lease = Duration::from_secs(MODEL_LEASE_SECONDS as u64);
            match op {
                Op::Enqueue {
                    n,
                    priority,
                    max_attempts,
                } => {
                    let mut job = new_job("R", "S", None);
                    job.priority = *priority;
                    job.max_attempts = *max_attempts;
                    let batch: Vec<NewJob> = vec![job; *n];
                    let Enqueued::Created(jobs) =
                        self.store().enqueue(batch, None, now).await.unwrap()
                    else {
                        panic!("no unique key, yet Existing")
                    };
                    for job in jobs {
                        self.jobs.insert(
                            job.job_id,
                            Model {
                                status: JobStatus::Queued,
                                version: 1,
                                attempt: 1,
                                max_attempts: *max_attempts,
                                priority: *priority,
                                created_at: now,
                                run_after: None,
                                lease_until: None,
                                cancel_requested: false,
                            },
                        );
                    }
                }
                Op::Claim { max } => {
                    let expected: Vec<JobId> = self.claimable().into_iter().take(*max).collect();
                    let claimed = self.store().claim("w", *max, lease, now).await.unwrap();
                    let got: Vec<JobId> = claimed.iter().map(|job| job.job_id.clone()).collect();
                    assert_eq!(got, expected, "claim order");
                    for id in got {
                        let job = self.jobs.get_mut(&id).unwrap();
                        job.status = JobStatus::Processing;
                        job.version += 1;
                        job.lease_until = Some(now + TimeDelta::seconds(MODEL_LEASE_SECONDS));
                    }
                }
                Op::Succeed { pick } | Op::Fail { pick, .. } => {
                    let Some(id) = self.pick(*pick, Some(JobStatus::Processing)) else {
                        return;
                    };
                    let version = self.jobs[&id].version;
                    let outcome = match op {
                        Op::Fail { retry_in, .. } => Outcome::Failure {
                            error: "boom".into(),
                            retry_at: retry_in.map(|s| now + TimeDelta::seconds(s)),
                        },
                        _ => Outcome::Success {
                            result_path: "p".into(),
                            rows_written: 1,
                            sha256: "h".into(),
                        },
                    };
                    let cas = self
                        .store()
                        .complete(&id, version, outcome, &[], now)
                        .await
                        .unwrap();
                    assert!(cas.is_applied(), "{cas:?}");
                    let job = self.jobs.get_mut(&id).unwrap();
                    job.version += 1;
                    job.lease_until = None;
                    match op {
                        Op::Fail {
                            retry_in: Some(s), ..
                        } if job.attempt < job.max_attempts && !job.cancel_requested => {
                            job.status = JobStatus::Queued;
                            job.attempt += 1;
                            job.run_after = (*s > 0).then(|| now + TimeDelta::seconds(*s));
                        }
                        Op::Fail { .. } => job.status = JobStatus::Failed,
                        _ => job.status = JobStatus::Completed,
                    }
                }
                Op::Renew { pick } => {
                    let Some(id) = self.pick(*pick, Some(JobStatus::Processing)) else {
                        return;
                    };
                    let version = self.jobs[&id].version;
                    let until = now + TimeDelta::seconds(MODEL_LEASE_SECONDS);
                    let cas = self.store().renew(&id, version, until, None).await.unwrap();
                    assert!(cas.is_applied(), "{cas:?}");
                    let job = self.jobs.get_mut(&id).unwrap();
                    job.version += 1;
                    job.lease_until = Some(until);
                }
                Op::Cancel { pick } => {
                    let Some(id) = self.pick(*pick, None) else {
                        return;
                    };
                    self.store().cancel(&id, now).await.unwrap();
                    let job = self.jobs.get_mut(&id).unwrap();
                    match job.status {
                        JobStatus::Queued => {
                            job.status = JobStatus::Cancelled;
                            job.version += 1;
                        }
                        JobStatus::Processing if !job.cancel_requested => {
                            job.cancel_requested = true;
                            job.version += 1;
                        }
                        _ => {}
                    }
                }
                Op::Stale { pick } => {
                    let Some(id) = self.pick(*pick, None) else {
                        return;
                    };
                    let stale = self.jobs[&id].version - 1;
                    let outcome = Outcome::Success {
                        result_path: "p".into(),
                        rows_written: 1,
                        sha256: "h".into(),
                    };
                    let cas = self
                        .store()
                        .complete(&id, stale, outcome, &[], now)
                        .await
                        .unwrap();
                    assert!(matches!(cas, Cas::Conflict { current: Some(_) }), "{cas:?}");
                }
                Op::ExpireLeases { advance } => {
                    self.now += TimeDelta::seconds(*advance);
                    let now = self.now;
                    let expired = self.store().requeue_expired(now, &NoJoins).await.unwrap();
                    let mut expected = Vec::new();
                    for (id, job) in &mut self.jobs {
                        if job.status == JobStatus::Processing
                            && job.lease_until.is_some_and(|until| until < now)
                        {
                            Self::expire(job);
                            expected.push(id.clone());
                        }
                    }
                    let mut got: Vec<JobId> = expired.requeued.clone();
                    got.extend(expired.finished.iter().map(|c| c.job.job_id.clone()));
                    got.sort();
                    assert_eq!(got, expected, "expired leases");
                }
                Op::Reopen => {
                    drop(self.store.take());
                    self.store = Some(SledStore::open(SledConfig::new(&self.path)).unwrap());
                }
            }
        }

        async fn check(&self) {
            let store = self.store();
            for (id, model) in &self.jobs {
                let job = store.get(id).await.unwrap().expect("job lost");
                let seen = Model {
                    status: job.status,
                    version: job.version,
                    attempt: job.attempt,
                    max_attempts: job.max_attempts,
                    priority: job.priority,
                    created_at: job.created_at,
                    run_after: if job.status == JobStatus::Queued {
                        job.run_after
                    } else {
                        model.run_after
                    },
                    lease_until: job.lease_until,
                    cancel_requested: job.cancel_requested,
                };
                assert_eq!(&seen, model, "job {id}");
            }
            let mut counts: BTreeMap<JobStatus, u64> =
                JobStatus::ALL.iter().map(|s| (*s, 0)).collect();
            for job in self.jobs.values() {
                *counts.get_mut(&job.status).unwrap() += 1;
            }
            assert_eq!(store.counts().await.unwrap(), counts, "counts");
            let page = store
                .list(ListFilter {
                    limit: ListFilter::MAX_LIMIT,
                    ..ListFilter::default()
                })
                .await
                .unwrap();
            assert_eq!(page.jobs.len(), self.jobs.len(), "list");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 48,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_operations_match_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("db");
                let mut harness = Harness {
                    store: Some(SledStore::open(SledConfig::new(&path)).unwrap()),
                    path,
                    jobs: BTreeMap::new(),
                    now: at(0),
                };
                for op in &ops {
                    harness.step(op).await;
                    harness.check().await;
                }
            });
        }
    }
}
