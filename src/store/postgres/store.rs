//! [`PgStore`]: the connection pool, the wake counter and the background tasks (the LISTEN
//! connection, the completion writers), and the [`Store`] impl, which runs the operations of the
//! sibling modules and the plain reads.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use super::completions::{write_completions, QueuedCompletion, COMPLETERS};
use super::config::PgConfig;
use super::errors::{pg_error, pool_error, retrying};
use super::migrations::{migrate_client, Migration};
use super::notify::listen;
use super::rows::{columns, decode_jobs, read_job};
use crate::job::{Job, JobId, JobStatus, NewJob};
use crate::store::{
    store_time, BoxFuture, CancelOutcome, Cas, Completion, Enqueued, Expired, JoinEdge, JoinRules,
    ListFilter, Outcome, Page, ProgressUpdate, Store, StoreError, StoreResult, UniqueKey,
};

/// The shared store. See the docs of the `postgres` module.
pub struct PgStore {
    pub(super) inner: Arc<Inner>,
    /// The queue of the completion writers (`completions`).
    pub(super) completer: mpsc::UnboundedSender<QueuedCompletion>,
    /// The LISTEN task and the completion writers; aborted on drop.
    tasks: Vec<JoinHandle<()>>,
}

/// What the store shares with its background tasks: the pool, and the counter that wakes the
/// dispatcher ([`Store::subscribe`]).
pub(super) struct Inner {
    pool: Pool,
    wake: watch::Sender<u64>,
}

impl PgStore {
    /// Connects, applies pending migrations, and starts listening for other processes' work.
    pub async fn open(config: PgConfig) -> StoreResult<PgStore> {
        let instance = format!("{:016x}", rand::random::<u64>());
        let pg_config = config.connection_config(&instance)?;
        let manager = Manager::from_config(
            pg_config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool_size = config.split_pool_size()?.1.unwrap_or(config.pool_size);
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Postgres(format!("cannot build the connection pool: {e}")))?;
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            migrate_client(&mut client).await?;
        }
        let inner = Arc::new(Inner {
            pool,
            wake: watch::Sender::new(0),
        });
        let (completer, queue) = mpsc::unbounded_channel();
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let mut tasks = vec![tokio::spawn(listen(
            pg_config,
            instance,
            Arc::downgrade(&inner),
        ))];
        for _ in 0..COMPLETERS {
            tasks.push(tokio::spawn(write_completions(
                Arc::clone(&inner),
                Arc::clone(&queue),
            )));
        }
        Ok(PgStore {
            inner,
            completer,
            tasks,
        })
    }

    /// Applies the migrations the database at `url` lacks; returns those applied (none when it
    /// is up to date).
    pub async fn migrate(url: &str) -> StoreResult<Vec<Migration>> {
        let config = PgConfig::new(url).connection_config("migrate")?;
        let (mut client, connection) = config.connect(NoTls).await.map_err(pg_error)?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let applied = migrate_client(&mut client).await;
        drop(client);
        let _ = driver.await;
        applied
    }

    /// Wakes this process's dispatcher: this store just made work claimable.
    pub(super) fn wake(&self) {
        self.inner.wake();
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Inner {
    /// Bumps the wake counter.
    pub(super) fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A pooled connection.
    pub(super) async fn client(&self) -> StoreResult<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// The children of job `$1`, oldest first.
static CHILDREN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM job_parents p JOIN jobs j ON j.job_id = p.child_id
         WHERE p.parent_id = $1 ORDER BY j.created_at, j.job_id",
        columns("j.")
    )
});

impl Store for PgStore {
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
            let now = store_time(now);
            let enqueued = retrying!(
                "an enqueue",
                self.enqueue_once(&batch, unique.as_ref(), now).await
            )?;
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
            self.claim_jobs(worker, max, lease, store_time(now)).await
        })
    }

    fn renew<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        lease_until: DateTime<Utc>,
        progress: Option<ProgressUpdate>,
    ) -> BoxFuture<'a, StoreResult<Cas<Job>>> {
        Box::pin(self.renew_job(job_id, expected_version, lease_until, progress))
    }

    fn complete<'a>(
        &'a self,
        job_id: &'a JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &'a [JoinEdge],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Cas<Completion>>> {
        Box::pin(self.complete_job(job_id, expected_version, outcome, joins, store_time(now)))
    }

    fn cancel<'a>(
        &'a self,
        job_id: &'a JobId,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<CancelOutcome>> {
        Box::pin(self.cancel_job(job_id, store_time(now)))
    }

    fn requeue_expired<'a>(
        &'a self,
        now: DateTime<Utc>,
        joins: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>> {
        Box::pin(self.sweep(now, joins))
    }

    /// Only expired leases: other processes may be running the rest (see the trait).
    fn requeue_all_processing<'a>(
        &'a self,
        now: DateTime<Utc>,
        joins: &'a dyn JoinRules,
    ) -> BoxFuture<'a, StoreResult<Expired>> {
        Box::pin(self.sweep(now, joins))
    }

    fn get<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Option<Job>>> {
        Box::pin(self.read("get", move |inner| async move {
            let client = inner.client().await?;
            read_job(&client, job_id).await
        }))
    }

    fn children<'a>(&'a self, job_id: &'a JobId) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        Box::pin(self.read("children", move |inner| async move {
            let client = inner.client().await?;
            let statement = client.prepare_cached(&CHILDREN).await.map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&job_id.as_str()])
                .await
                .map_err(pg_error)?;
            decode_jobs(&rows, 0)
        }))
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, StoreResult<Page>> {
        Box::pin(self.read("list", move |inner| Self::list_page(inner, filter.clone())))
    }

    fn counts(&self) -> BoxFuture<'_, StoreResult<BTreeMap<JobStatus, u64>>> {
        Box::pin(self.read("counts", |inner| async move {
            let client = inner.client().await?;
            let statement = client
                .prepare_cached("SELECT status, sum(n)::int8 FROM job_counts GROUP BY status")
                .await
                .map_err(pg_error)?;
            let rows = client.query(&statement, &[]).await.map_err(pg_error)?;
            let mut counts: BTreeMap<JobStatus, u64> =
                JobStatus::ALL.into_iter().map(|s| (s, 0)).collect();
            for row in &rows {
                let status: String = row.try_get(0).map_err(pg_error)?;
                let n: i64 = row.try_get(1).map_err(pg_error)?;
                if let Ok(status) = status.parse::<JobStatus>() {
                    counts.insert(status, u64::try_from(n).unwrap_or(0));
                }
            }
            Ok(counts)
        }))
    }

    fn unique_jobs<'a>(
        &'a self,
        unique: &'a UniqueKey,
    ) -> BoxFuture<'a, StoreResult<Option<Vec<JobId>>>> {
        Box::pin(self.read("unique_jobs", move |inner| async move {
            let (kind, part1, part2) = super::enqueue::unique_parts(unique);
            let client = inner.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT job_ids FROM unique_keys WHERE kind = $1 AND part1 = $2 AND part2 = $3",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&kind, &part1, &part2])
                .await
                .map_err(pg_error)?;
            let Some(row) = row else {
                return Ok(None);
            };
            let ids: Vec<String> = row.try_get(0).map_err(pg_error)?;
            ids.iter()
                .map(|id| id.parse())
                .collect::<Result<Vec<JobId>, _>>()
                .map(Some)
                .map_err(|_| StoreError::Corrupt {
                    key: format!("unique_keys/{unique}"),
                    message: "invalid job id".into(),
                })
        }))
    }

    fn last_fire<'a>(
        &'a self,
        schedule: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<DateTime<Utc>>>> {
        Box::pin(self.read("last_fire", move |inner| async move {
            let client = inner.client().await?;
            let statement = client
                .prepare_cached("SELECT last_fire FROM schedule_fires WHERE schedule = $1")
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&schedule])
                .await
                .map_err(pg_error)?;
            row.map(|row| row.try_get(0).map_err(pg_error)).transpose()
        }))
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    fn is_shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::job::JobStatus;
    use crate::store::conformance::{self, at, new_job};
    use crate::store::pg_test_schema::TestSchema;
    use crate::store::postgres::MIGRATIONS;
    use crate::store::{Cas, NoJoins, Outcome, Store};

    /// Fresh stores, each on a schema of its own, for the conformance scenarios.
    struct Stores {
        base: String,
        schemas: Mutex<Vec<TestSchema>>,
    }

    impl Stores {
        fn open(&self) -> Arc<dyn Store> {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    let schema = TestSchema::create(&self.base, "t").await;
                    let store = schema.open().await;
                    self.schemas.lock().unwrap().push(schema);
                    Arc::new(store) as Arc<dyn Store>
                })
            })
        }
    }

    macro_rules! conformance {
        ($($scenario:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let base = database_or_skip!();
                let stores = Stores { base, schemas: Mutex::new(Vec::new()) };
                conformance::$scenario(stores.open()).await;
            }
        )*};
    }

    conformance::with_scenarios!(conformance);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_persist_across_reopen_and_live_leases_are_kept() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        let store = schema.open().await;
        let before = conformance::before_reopen(&store, Duration::from_secs(60)).await;
        let running = &before.running;
        drop(store);

        let store = schema.open().await;
        conformance::same_after_reopen(&store, &before).await;
        // Another process may be running the PROCESSING job: a restart leaves its lease alone...
        assert!(store.is_shared());
        let expired = store.requeue_all_processing(at(3), &NoJoins).await.unwrap();
        assert_eq!(expired, Default::default());
        // ...until it expires.
        let expired = store
            .requeue_all_processing(at(62), &NoJoins)
            .await
            .unwrap();
        assert_eq!(expired.requeued, vec![running[1].job_id.clone()]);
        let claimed = store
            .claim("w2", 10, Duration::from_secs(60), at(63))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        let migrations = schema
            .client()
            .await
            .query("SELECT version FROM flowctl_migrations", &[])
            .await
            .unwrap();
        assert_eq!(migrations.len(), MIGRATIONS.len(), "migrated once");
    }

    /// Two processes on one database: a job one of them runs is not taken by the other while
    /// its lease lives; after, it is, and the first one's late writes are refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_share_one_queue() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        let a = schema.open().await;
        let b = schema.open().await;
        let mut b_wake = b.subscribe();
        b_wake.borrow_and_update();
        a.enqueue(vec![new_job("R", "S", None)], None, at(0))
            .await
            .unwrap();
        // B hears of A's job through NOTIFY.
        tokio::time::timeout(Duration::from_secs(5), b_wake.changed())
            .await
            .expect("B was not woken by A's enqueue")
            .unwrap();
        let mine = a
            .claim("a", 10, Duration::from_secs(30), at(1))
            .await
            .unwrap();
        assert_eq!(mine.len(), 1);
        assert!(b
            .claim("b", 10, Duration::from_secs(30), at(1))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            b.requeue_all_processing(at(2), &NoJoins).await.unwrap(),
            Default::default()
        );
        // A dies (its lease runs out); B takes the job over.
        let expired = b.requeue_expired(at(40), &NoJoins).await.unwrap();
        assert_eq!(expired.requeued, vec![mine[0].job_id.clone()]);
        let theirs = b
            .claim("b", 10, Duration::from_secs(30), at(41))
            .await
            .unwrap();
        assert_eq!(theirs.len(), 1);
        let late = a
            .complete(
                &mine[0].job_id,
                mine[0].version,
                Outcome::Cancelled,
                &[],
                at(42),
            )
            .await
            .unwrap();
        assert!(
            matches!(late, Cas::Conflict { current: Some(ref c) } if c.lease_owner.as_deref() == Some("b"))
        );
        let done = b
            .complete(
                &theirs[0].job_id,
                theirs[0].version,
                Outcome::Cancelled,
                &[],
                at(43),
            )
            .await
            .unwrap();
        assert!(done.is_applied());
        assert_eq!(a.counts().await.unwrap()[&JobStatus::Cancelled], 1);
    }
}
