//! Differential: random operation sequences (joins, retries, cancels, stale writers, lease
//! expiry, reopening) on the sled store and on this one must leave the same jobs.

use std::collections::HashMap;
use std::time::Duration;

use crate::job::{JobId, JobStatus};
use crate::store::conformance::{self, at, new_job};
use crate::store::pg_test_schema::{database_url, TestSchema};
use crate::store::{Cas, Completion, Condition, Enqueued, JoinEdge, Outcome, PgStore, Store};

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        report: usize,
        county: bool,
        priority: u8,
        max_attempts: u32,
    },
    ClaimAll,
    Succeed(usize),
    Fail(usize, Option<i64>),
    Cancelled(usize),
    Renew(usize),
    Cancel(usize),
    Stale(usize),
    Expire(i64),
    Reopen,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..3usize, any::<bool>(), 0..3u8, 1..3u32).prop_map(|(report, county, priority, max_attempts)| {
            Op::Enqueue { report, county, priority, max_attempts }
        }),
        3 => Just(Op::ClaimAll),
        3 => any::<usize>().prop_map(Op::Succeed),
        2 => (any::<usize>(), proptest::option::of(-1..4i64)).prop_map(|(p, r)| Op::Fail(p, r)),
        1 => any::<usize>().prop_map(Op::Cancelled),
        1 => any::<usize>().prop_map(Op::Renew),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Stale),
        1 => (0..40i64).prop_map(Op::Expire),
        1 => Just(Op::Reopen),
    ]
}

/// A job with its ids replaced by their index in creation order, which the two stores share.
fn normalized(job: &crate::job::Job, index: &HashMap<JobId, usize>) -> String {
    let mut job = job.clone();
    let parents: Vec<usize> = job.parent_job_ids.iter().map(|id| index[id]).collect();
    job.job_id = "JOB_00000000".parse().unwrap();
    job.parent_job_ids.clear();
    if job.status != JobStatus::Queued {
        // The sled store keeps a claimed retry's old `run_after`; it means nothing then.
        job.run_after = None;
    }
    format!("{job:?} parents {parents:?}")
}

struct Pair {
    sled_path: std::path::PathBuf,
    sled: Option<crate::store::SledStore>,
    pg: Option<PgStore>,
    schema: TestSchema,
    /// Job ids in creation order, per store.
    ids: (Vec<JobId>, Vec<JobId>),
    index: (HashMap<JobId, usize>, HashMap<JobId, usize>),
    now: i64,
}

impl Pair {
    fn stores(&self) -> (&dyn Store, &dyn Store) {
        (self.sled.as_ref().unwrap(), self.pg.as_ref().unwrap())
    }

    fn created(&mut self, sled: Vec<crate::job::Job>, pg: Vec<crate::job::Job>) {
        assert_eq!(sled.len(), pg.len(), "created jobs");
        for (a, b) in sled.into_iter().zip(pg) {
            self.index.0.insert(a.job_id.clone(), self.ids.0.len());
            self.index.1.insert(b.job_id.clone(), self.ids.1.len());
            self.ids.0.push(a.job_id);
            self.ids.1.push(b.job_id);
        }
    }

    /// The index of a job in `status` (any with `None`), chosen by `pick`.
    async fn pick(&self, pick: usize, status: Option<JobStatus>) -> Option<usize> {
        let (sled, _) = self.stores();
        let mut found = Vec::new();
        for (i, id) in self.ids.0.iter().enumerate() {
            let job = sled.get(id).await.unwrap().unwrap();
            if status.is_none_or(|s| job.status == s) {
                found.push(i);
            }
        }
        (!found.is_empty()).then(|| found[pick % found.len()])
    }

    async fn complete(&mut self, i: usize, outcome: Outcome, stale: bool, joins: &[JoinEdge]) {
        let now = at(self.now);
        let (sled, pg) = self.stores();
        let (a, b) = (&self.ids.0[i], &self.ids.1[i]);
        let va = sled.get(a).await.unwrap().unwrap().version - u64::from(stale);
        let vb = pg.get(b).await.unwrap().unwrap().version - u64::from(stale);
        let ra = sled.complete(a, va, outcome.clone(), joins, now).await;
        let rb = pg.complete(b, vb, outcome, joins, now).await;
        match (ra, rb) {
            (Ok(Cas::Applied(x)), Ok(Cas::Applied(y))) => {
                self.created(x.children_created, y.children_created)
            }
            (Ok(Cas::Conflict { .. }), Ok(Cas::Conflict { .. })) => {}
            (Err(x), Err(y)) => assert_eq!(
                x.to_string().split(' ').next(),
                y.to_string().split(' ').next()
            ),
            (x, y) => panic!("sled: {x:?}\npostgres: {y:?}"),
        }
    }

    async fn step(&mut self, op: &Op, joins: &[JoinEdge]) {
        self.now += 1;
        let now = at(self.now);
        let lease = Duration::from_secs(10);
        match op {
            Op::Enqueue {
                report,
                county,
                priority,
                max_attempts,
            } => {
                let mut job = new_job(["A", "B", "C"][*report], "S", county.then_some("X"));
                job.priority = *priority;
                job.max_attempts = *max_attempts;
                let (sled, pg) = self.stores();
                let x = sled.enqueue(vec![job.clone()], None, now).await.unwrap();
                let y = pg.enqueue(vec![job], None, now).await.unwrap();
                match (x, y) {
                    (Enqueued::Created(x), Enqueued::Created(y)) => self.created(x, y),
                    other => panic!("{other:?}"),
                }
            }
            Op::ClaimAll => {
                let (sled, pg) = self.stores();
                let x = sled.claim("w", 10_000, lease, now).await.unwrap();
                let y = pg.claim("w", 10_000, lease, now).await.unwrap();
                let mut x: Vec<usize> = x.iter().map(|j| self.index.0[&j.job_id]).collect();
                let mut y: Vec<usize> = y.iter().map(|j| self.index.1[&j.job_id]).collect();
                x.sort_unstable();
                y.sort_unstable();
                assert_eq!(x, y, "claimed");
            }
            Op::Succeed(pick) | Op::Fail(pick, _) | Op::Cancelled(pick) => {
                let Some(i) = self.pick(*pick, Some(JobStatus::Processing)).await else {
                    return;
                };
                let outcome = match op {
                    Op::Succeed(_) => Outcome::Success {
                        result_path: "p".into(),
                        rows_written: 3,
                        sha256: "h".into(),
                    },
                    Op::Fail(_, retry) => Outcome::Failure {
                        error: "boom".into(),
                        retry_at: retry.map(|s| at(self.now + s)),
                    },
                    _ => Outcome::Cancelled,
                };
                self.complete(i, outcome, false, joins).await;
            }
            Op::Stale(pick) => {
                let Some(i) = self.pick(*pick, None).await else {
                    return;
                };
                self.complete(i, Outcome::Cancelled, true, joins).await;
            }
            Op::Renew(pick) => {
                let Some(i) = self.pick(*pick, Some(JobStatus::Processing)).await else {
                    return;
                };
                let (sled, pg) = self.stores();
                let until = at(self.now + 10);
                for (store, id) in [(sled, &self.ids.0[i]), (pg, &self.ids.1[i])] {
                    let version = store.get(id).await.unwrap().unwrap().version;
                    assert!(store
                        .renew(id, version, until, None)
                        .await
                        .unwrap()
                        .is_applied());
                }
            }
            Op::Cancel(pick) => {
                let Some(i) = self.pick(*pick, None).await else {
                    return;
                };
                let (sled, pg) = self.stores();
                sled.cancel(&self.ids.0[i], now).await.unwrap();
                pg.cancel(&self.ids.1[i], now).await.unwrap();
            }
            Op::Expire(advance) => {
                self.now += advance;
                let now = at(self.now);
                let joins = joins.to_vec();
                let (sled, pg) = self.stores();
                let x = sled.requeue_expired(now, &joins).await.unwrap();
                let y = pg.requeue_expired(now, &joins).await.unwrap();
                let requeued = |ids: &[JobId], index: &HashMap<JobId, usize>| {
                    let mut r: Vec<usize> = ids.iter().map(|id| index[id]).collect();
                    r.sort_unstable();
                    r
                };
                assert_eq!(
                    requeued(&x.requeued, &self.index.0),
                    requeued(&y.requeued, &self.index.1),
                    "requeued"
                );
                // Children in the order of their parents' indexes.
                let children = |finished: Vec<Completion>, index: &HashMap<JobId, usize>| {
                    let mut f: Vec<(usize, Vec<crate::job::Job>)> = finished
                        .into_iter()
                        .map(|c| (index[&c.job.job_id], c.children_created))
                        .collect();
                    f.sort_by_key(|(i, _)| *i);
                    f.into_iter().flat_map(|(_, c)| c).collect::<Vec<_>>()
                };
                let x = children(x.finished, &self.index.0);
                let y = children(y.finished, &self.index.1);
                self.created(x, y);
            }
            Op::Reopen => {
                drop(self.sled.take());
                drop(self.pg.take());
                self.sled = Some(
                    crate::store::SledStore::open(crate::store::SledConfig::new(&self.sled_path))
                        .unwrap(),
                );
                self.pg = Some(self.schema.open().await);
            }
        }
    }

    async fn check(&self) {
        let (sled, pg) = self.stores();
        for (a, b) in self.ids.0.iter().zip(&self.ids.1) {
            let x = sled.get(a).await.unwrap().unwrap();
            let y = pg.get(b).await.unwrap().unwrap();
            assert_eq!(normalized(&x, &self.index.0), normalized(&y, &self.index.1));
        }
        assert_eq!(
            sled.counts().await.unwrap(),
            pg.counts().await.unwrap(),
            "counts"
        );
    }
}

#[test]
fn random_operations_match_the_sled_store() {
    use proptest::prelude::*;
    let Some(base) = database_url() else {
        println!("skipped: FLOWCTL_TEST_PG not set");
        return;
    };
    let joins = vec![
        conformance::edge("dep:C", &["A", "B"], Condition::OnSuccess, "C"),
        conformance::edge("dep:D", &["C"], Condition::OnCompletion, "D"),
    ];
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..60))| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let sled_path = dir.path().join("db");
            let schema = TestSchema::create(&base, "t").await;
            let mut pair = Pair {
                sled: Some(
                    crate::store::SledStore::open(crate::store::SledConfig::new(&sled_path))
                        .unwrap(),
                ),
                pg: Some(schema.open().await),
                schema,
                sled_path,
                ids: Default::default(),
                index: Default::default(),
                now: 0,
            };
            for op in &ops {
                pair.step(op, &joins).await;
                pair.check().await;
            }
            drop(pair.pg.take());
        });
    });
}
