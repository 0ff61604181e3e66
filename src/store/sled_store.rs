//! The embedded job store, on sled: the default store (`--db PATH`), for one process.
//!
//! # Architecture invariants
//!
//! - **sled holds the truth; every index is derived.** sled stores the job records, join state,
//!   unique keys, fire times and the parent → child index. The claim queue, the retry and lease
//!   indexes, the newest-first list index and the status counters live in memory (`State`) and
//!   are rebuilt from the records when the store opens. They describe every committed change,
//!   written to sled yet or not; a crash loses them together with whatever had not reached
//!   disk, so they can never disagree with the records they are rebuilt from.
//! - **One writer.** Every change runs under one mutex, reading the records it needs and
//!   committing what it writes, then updating the indexes. sled holds an exclusive file lock,
//!   so this process is the only writer there is, and changes are serializable: two parents of
//!   one join completing at the same instant are two turns of this mutex, and exactly one of
//!   them fires the child.
//! - **Write-behind.** A change commits into the *overlay* (`Overlay`, in `State`): the newest
//!   committed value of each key not yet in sled. Every read looks there first. The flush
//!   thread drains it: it copies what is due, writes it to sled in key order, forgets what was
//!   not written again meanwhile, then fsyncs. sled's inserts (3–9 µs each, with leaf splits
//!   and node copies) thus run beside the writer's turn, not in it, and several changes to one
//!   key between two drains cost one insert.
//! - **All or nothing without sled batches.** A drain holding a change that must land whole (a
//!   completion and the children or join state it writes, an enqueue of several jobs, a unique
//!   key) first writes its *intent* (every key and value it is about to write) under one key,
//!   then its writes as single inserts. sled recovers a prefix of its log, so a key of the
//!   drain is on disk only if its intent is; opening the store writes the intent's keys again
//!   where they are missing or older (see `replay_intent`). The next such drain overwrites the
//!   intent. A drain of rewrites of existing jobs only (claims, completions without dependents,
//!   a lease sweep) needs none: each record is whole in its own insert, and none depends on
//!   another.
//! - **Durable before returning.** A method that changes a job waits for the flush round that
//!   started after its change committed: that round drains it and fsyncs. Callers that arrive
//!   while a round runs share the next one (group commit), and a round wakes only the callers
//!   it covers. A failed write or fsync stops the store: every later change and wait fails
//!   until it is opened again. Claims and heartbeats are *lazy* (`Write::Lazy`): they do not
//!   wait, and reach sled with the job's next durable write or after `LAZY_WRITE_DELAY`.
//!   Losing one to a crash only runs the job again, as recovery would anyway. Nor does
//!   `complete_and_claim` wait: its caller syncs while it runs the job it claimed.
//!
//! Why no sled batches or transactions: the first one in a process switches sled 0.34 to
//! its locking mode for good (a global reader-writer lock around every operation). A batch
//! takes it exclusively, and `Db::flush` holds it shared for its whole fsync: every batch
//! waited out an fsync, and with a writer queued every other operation did too. Dependent
//! start latency was ~90 µs of that wait at p50, with multi-millisecond tails. Batches also
//! write out the log buffer twice (`pin_log` rolls it before and after).
//!
//! Why no persistent index trees: inserting or removing an index key costs 5–9 µs (leaf splits
//! and merges at 16 entries), against ~3 µs to rewrite an existing record. Persistent queue,
//! lease and status indexes made ~12 structural writes per job, for about 5,000 jobs/s;
//! records alone make one insert and two rewrites per job (one, when the claim rides with the
//! completion). The price is an open that reads every record (a few seconds per million jobs)
//! and memory for every job: the indexes take ~70–100 bytes per finished job (the id → creation
//! time map ~33 B, the list B-tree ~40–60 B; queued and running jobs add their queue or lease
//! entry). Measured with a counting allocator (`cargo bench --bench store`, 50,000 COMPLETED
//! jobs) the whole store holds ~480–500 heap bytes per job, with sled's cache at its default
//! 64 MiB or at 0.1 MiB alike after a reopen (sled 0.34 keeps the pages a scan brought in, and
//! its per-page structures, beyond `cache_capacity`); with a small cache and no reopen, ~280 B.
//! So memory grows ~0.5 KB per job and is not bounded by the cache setting.
//!
//! Why write-behind: with sled's inserts inside the writer's turn, that turn was the
//! bottleneck (2 cores, `cargo bench --bench store`: 35–53k jobs/s, the mutex held all the
//! time, sled's inserts half of it). Moved to the flush thread, and claims written with their
//! completions, the same bench gives 71–87k jobs/s, and dependent start latency fell from
//! ~75 µs to ~26 µs at p50 (`cargo bench --bench latency`).
//!
//! # Layout (version [`LAYOUT_VERSION`])
//!
//! One sled tree, `flowctl`, and the intent's own, `flowctl-intent` (one key, `w`: the last
//! intent). In `flowctl` the first byte of a key says what it holds. Keys are big-endian so that
//! ranges sort; job ids are their 12 ASCII bytes. Values start with a format byte, then bincode
//! 2 (serde, standard config).
//!
//! | key                                                     | value                    |
//! |---------------------------------------------------------|--------------------------|
//! | `j` created_at (µs), job id                             | the job record           |
//! | `c` parent id, child id                                 | empty                    |
//! | `J` join id, role, county (each length-prefixed)        | [`JoinState`]            |
//! | `u` `f` schedule, fire time / `i` subject, key          | the job ids it created   |
//! | `f` schedule                                            | last fire time (µs, BE)  |
//! | `m` `layout`                                            | layout version (u32, BE) |
//! | `m` `commit`                                            | last commit round (u64, BE) |
//!
//! Beside sled's files (`conf`, `db`, `blobs/`, `snap.*`), the directory holds `flowctl.commit`,
//! the commit watermark (see `Watermark`), and `mask.key` (the masking key, `masking_key`).
//!
//! # Damage
//!
//! sled recovers the longest prefix of its log that reads back whole, and says nothing: a
//! flipped bit or a truncated file loses every change after it (completed jobs QUEUED again,
//! jobs gone), random bytes open as an empty store, and a directory of other files becomes a
//! new store among them. So every flush round that writes numbers itself, in sled (`mcommit`,
//! its last write) and, after sled's fsync, in the watermark file (fsynced once a second and on
//! close, not in every round: see `WATERMARK_SYNC_INTERVAL`). `open` refuses a store whose log ends before the
//! watermark's round ([`StoreError::Damaged`], "the changes of the last N rounds are missing"),
//! a watermark without sled's files or sled's files without it once they hold rounds, and a
//! directory of files that are not sled's ([`StoreError::NotAStore`]), before sled touches
//! anything. [`SledStore::recover`] (`flowctl store recover --accept-loss`) opens such a store
//! with what survived and moves the watermark back. sled truncates a damaged log when it opens
//! it (before the check can run: a refused writable open leaves the log as sled recovered it,
//! which loses nothing sled could still read), so [`SledStore::open_read_only`] (`jobs list`,
//! `jobs show`) opens a copy: a reading command changes no byte of the store, damaged or not.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::{
    store_time, BoxFuture, CancelOutcome, Cas, Completion, Enqueued, Event, Expired, JoinEdge,
    JoinError, JoinRules, JoinState, ListFilter, Outcome, Page, ProgressUpdate, Store, StoreError,
    StoreResult, UniqueKey,
};
use crate::job::{Job, JobId, JobRequest, JobStatus, NewJob};
use crate::status;

/// Version of the key layout and value encodings above. Bump it with any change to them.
pub const LAYOUT_VERSION: u32 = 2;
/// Layout 1 wrote all-or-nothing changes as sled batches and had no intent key; its data is
/// layout 2 as it stands, so opening it only rewrites the version.
const UPGRADABLE_LAYOUT: u32 = 1;
/// First byte of every value but the layout version and fire times.
const RECORD_FORMAT: u8 = 1;
/// Jobs changed per change by a lease sweep.
const SWEEP_CHUNK: usize = 1024;
/// Index entries a filtered `list` examines (in memory) before it returns a short page with a
/// cursor.
const LIST_SCAN_BUDGET: usize = 100_000;

const JOB: u8 = b'j';
const CHILD: u8 = b'c';
const JOIN: u8 = b'J';
const UNIQUE: u8 = b'u';
const FIRE: u8 = b'f';
const META_LAYOUT: &[u8] = b"mlayout";
/// The number of the last commit round written to sled (u64, BE; see [`Watermark`]).
const META_COMMIT: &[u8] = b"mcommit";
/// The tree that holds the intent of the last all-or-nothing change (see [`replay_intent`]).
/// Its own tree: an intent can be large (an enqueue of many jobs), and sled rewrites a whole
/// leaf every few changes to it; beside the newest job records it was rewritten with every
/// enqueue, several kilobytes of log per job.
const INTENT_TREE: &str = "flowctl-intent";
const INTENT: &[u8] = b"w";

/// How to open a [`SledStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SledConfig {
    /// A directory; created if missing.
    pub path: PathBuf,
    /// sled's page cache. Not a bound on memory: the store holds ~0.5 KB of heap per job
    /// whatever this is (see the module docs, "Why no persistent index trees").
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

/// What [`SledStore::recover`] found and accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The last commit round sled's log still holds.
    pub survived: u64,
    /// The last round the commit watermark said was durable (`None`: no readable watermark).
    pub durable: Option<u64>,
    /// Jobs the store holds now.
    pub jobs: u64,
}

/// How [`SledStore::open_with`] treats a store whose log lost committed rounds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Damage {
    Refuse,
    /// `flowctl store recover --accept-loss`: take what survived, and move the watermark back.
    Accept,
}

/// The embedded store. See the module docs.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
    /// Its key in [`OPEN_STORES`].
    registered: PathBuf,
    /// The indexes, the writes not yet in sled, and the writer's turn: every change holds this
    /// lock from its first read to its index update. Shared with the flush thread, which moves
    /// the writes into sled.
    state: Arc<Mutex<State>>,
    wake: watch::Sender<u64>,
    /// [`SledConfig::flush`].
    fsync: bool,
    /// Moves committed writes into sled and fsyncs them. `None` only once closing.
    flusher: Option<Flusher>,
    /// A copy opened by [`SledStore::open_read_only`], removed on close.
    copy: Option<PathBuf>,
}

impl SledStore {
    /// Opens (or creates) the store at `config.path` and rebuilds the indexes from its records.
    ///
    /// Fails with [`StoreError::Locked`] if another process, or another open store in this
    /// process, holds it; with [`StoreError::FormatVersion`] if it was written with another
    /// layout; with [`StoreError::NotAStore`] if the directory holds something else; with
    /// [`StoreError::Damaged`] if sled's log lost commit rounds that were durable (see
    /// [`SledStore::recover`]).
    pub fn open(config: SledConfig) -> StoreResult<SledStore> {
        Self::open_with(config, Damage::Refuse)
    }

    /// Opens the store for reading only, without writing a byte of it: sled writes when it
    /// opens (it truncates a damaged log, it may start a segment), and so do the layout
    /// upgrade and the replay of an interrupted change. So this checks the store's lock (as
    /// [`SledStore::open`] does: [`StoreError::Locked`] if another process holds it), copies
    /// the directory to a temporary one and opens the copy, with every check
    /// of `open`. The copy is removed on close. Costs a copy of the store: for the CLI's
    /// `jobs list` and `jobs show`, not for a service.
    pub fn open_read_only(path: impl Into<PathBuf>) -> StoreResult<SledStore> {
        let path = path.into();
        if matches!(lock(&OPEN_STORES).get(&canonical(&path)), Some(Held::Open)) {
            return Err(StoreError::Locked { path });
        }
        let copy = std::env::temp_dir().join(format!(
            "flowctl-read-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let copied = (|| {
            if inspect(&path)? == Found::Sled {
                if locked_by_another_process(&path.join("db")) {
                    return Err(StoreError::Locked { path: path.clone() });
                }
                copy_dir(&path, &copy)?;
            }
            Ok(())
        })();
        let opened = copied.and_then(|()| {
            Self::open(SledConfig {
                flush: false,
                ..SledConfig::new(&copy)
            })
        });
        match opened {
            Ok(mut store) => {
                store.copy = Some(copy);
                Ok(store)
            }
            Err(error) => {
                let _ = std::fs::remove_dir_all(&copy);
                Err(error.at(&copy, &path))
            }
        }
    }

    /// Opens a store that [`SledStore::open`] refuses as damaged, accepting the loss: the jobs
    /// and changes sled's log still holds are the store from now on (what the lost rounds did
    /// is gone: completed jobs may be QUEUED again and run again), and the commit watermark is
    /// set back to the last round that survived. A directory that is not a store is still
    /// refused.
    pub fn recover(path: impl Into<PathBuf>) -> StoreResult<Recovered> {
        let path = path.into();
        let durable = Watermark::read(&path).ok().flatten();
        let store = Self::open_with(SledConfig::new(&path), Damage::Accept)?;
        let survived = read_commit(&store.tree)?;
        let jobs = lock(&store.state).counts.iter().sum();
        Ok(Recovered {
            survived,
            durable,
            jobs,
        })
    }

    fn open_with(config: SledConfig, damage: Damage) -> StoreResult<SledStore> {
        inspect(&config.path)?;
        let mark = match (Watermark::read(&config.path), damage) {
            (Ok(mark), _) => mark,
            (Err(_), Damage::Accept) => None,
            (Err(error), Damage::Refuse) => return Err(error),
        };
        let sled_config = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity_bytes)
            .flush_every_ms(if config.flush { None } else { Some(500) });
        let db = open_db(&sled_config, &config.path)?;
        let tree = db.open_tree("flowctl").map_err(StoreError::Sled)?;
        let intents = db.open_tree(INTENT_TREE).map_err(StoreError::Sled)?;
        let survived = read_commit(&tree)?;
        let missing = match mark {
            Some(durable) if survived < durable => Some(format!(
                "sled's log ends at commit round {survived}, but round {durable} was durable: \
                 the changes of the last {} round(s) are missing (a truncated or corrupted log)",
                durable - survived
            )),
            Some(_) => None,
            None if survived > 0 => Some(format!(
                "its commit watermark ({WATERMARK_FILE}) is missing, though sled's log holds \
                 {survived} commit round(s)"
            )),
            // A store from before the watermark, or a new one (sled's files with no flowctl
            // data and layout are refused by `check_layout`).
            None => None,
        };
        if let Some(missing) = missing {
            if damage == Damage::Refuse {
                return Err(StoreError::Damaged {
                    path: config.path.clone(),
                    missing,
                });
            }
            tracing::warn!(%missing, "accepted the loss of a damaged job store");
        }
        let watermark = if mark != Some(survived) {
            Watermark::create(&config.path, survived)?
        } else {
            Watermark::open(&config.path, survived)?
        };
        check_layout(&tree)?;
        let replayed = replay_intent(&tree, &intents)?;
        if replayed > 0 {
            tracing::warn!(
                writes = replayed,
                "finished a change that a crash had interrupted"
            );
        }
        let state = Arc::new(Mutex::new(State::rebuild(&tree)?));
        let wake = watch::Sender::new(0);
        let flusher = {
            let writer = Writer {
                db: db.clone(),
                tree: tree.clone(),
                intents: intents.clone(),
                state: Arc::clone(&state),
                fsync: config.flush,
                wake: wake.clone(),
                watermark,
            };
            let mut writer = writer;
            Flusher::start(move |round| writer.write(round))
        };
        let registered = canonical(&config.path);
        lock(&OPEN_STORES).insert(registered.clone(), Held::Open);
        Ok(SledStore {
            db,
            tree,
            path: config.path,
            registered,
            state,
            wake,
            fsync: config.flush,
            flusher: Some(flusher),
            copy: None,
        })
    }

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
        self.flusher
            .as_ref()
            .map_or(0, |flusher| flusher.shared.flushes.load(Ordering::Relaxed))
    }

    /// Waits until every durable write applied so far is on disk (claims and heartbeats may
    /// follow later: see the module docs).
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
    fn change(&self) -> Change<'_> {
        Change {
            tree: &self.tree,
            state: lock(&self.state),
            writes: BTreeMap::new(),
            moves: Vec::new(),
            new_ids: HashSet::new(),
        }
    }

    fn read_job(&self, job_id: &JobId) -> StoreResult<Option<Job>> {
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
            log_join_errors(completion);
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

    fn enqueue_sync(
        &self,
        batch: Vec<NewJob>,
        unique: Option<&UniqueKey>,
        now: DateTime<Utc>,
    ) -> StoreResult<Enqueued> {
        let mut change = self.change();
        let unique_key = unique.map(unique_key);
        if let Some(key) = &unique_key {
            if let Some(bytes) = change.get(key)? {
                return Ok(Enqueued::Existing(decode_value(key, &bytes)?));
            }
        }
        let mut jobs = Vec::with_capacity(batch.len());
        for mut new in batch {
            new.estimated_completion = new.estimated_completion.map(store_time);
            jobs.push(change.insert_new(new, now)?);
        }
        if let Some(key) = unique_key {
            let ids: Vec<&JobId> = jobs.iter().map(|job| &job.job_id).collect();
            change.put(key, encode_value(&ids));
        }
        if let Some(UniqueKey::Fire {
            schedule,
            fire_time,
        }) = unique
        {
            let key = [&[FIRE][..], schedule.as_bytes()].concat();
            let fire_time = time_key(*fire_time);
            let newer = match change.get(&key)? {
                Some(old) => old.as_ref() < fire_time.as_slice(),
                None => true,
            };
            if newer {
                change.put(key, fire_time.to_vec());
            }
        }
        change.commit()?;
        Ok(Enqueued::Created(jobs))
    }

    /// Returns the claimed jobs, and whether due retries were moved to the queue.
    fn claim_sync(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<(Vec<Job>, bool)> {
        let lease_until = add(now, lease);
        let mut change = self.change();
        let promoted = change.state.promote_due(now) > 0;
        let candidates: Vec<QueueKey> = change.state.queue.iter().take(max).copied().collect();
        let mut claimed = Vec::with_capacity(candidates.len());
        for key in candidates {
            let Some(job) = change.indexed(&key.2, JobStatus::Queued) else {
                continue;
            };
            claimed.push(change.start(job, worker, lease_until, now));
        }
        change.commit()?;
        Ok((claimed, promoted))
    }

    fn renew_sync(
        &self,
        job_id: &JobId,
        expected_version: u64,
        lease_until: DateTime<Utc>,
        progress: Option<ProgressUpdate>,
    ) -> StoreResult<Cas<Job>> {
        let lease_until = store_time(lease_until);
        let mut change = self.change();
        let old = match change.job_at(job_id, expected_version)? {
            Ok(old) => old,
            Err(current) => return Ok(Cas::Conflict { current }),
        };
        if old.status != JobStatus::Processing {
            return Err(StoreError::IllegalTransition {
                job: job_id.clone(),
                from: old.status,
                to: JobStatus::Processing,
            });
        }
        let mut job = old;
        let old = Placement::of(&job);
        job.lease_until = Some(lease_until);
        if let Some(update) = progress {
            job.progress = update.progress.min(100);
            job.rows_written = update.rows_written;
            job.estimated_completion = update.estimated_completion.map(store_time);
        }
        job.version += 1;
        change.put_job(Some(old), &job, Write::Lazy);
        change.commit()?;
        Ok(Cas::Applied(job))
    }

    /// A completion and, with `claim_for` (worker, lease end), the claim of the next job for
    /// that worker, as one change.
    fn complete_sync(
        &self,
        job_id: &JobId,
        expected_version: u64,
        outcome: Outcome,
        joins: &[JoinEdge],
        now: DateTime<Utc>,
        claim_for: Option<(&str, DateTime<Utc>)>,
    ) -> StoreResult<(Cas<Completion>, Option<Job>)> {
        let mut change = self.change();
        let old = match change.job_at(job_id, expected_version)? {
            Ok(old) => old,
            Err(current) => return Ok((Cas::Conflict { current }, None)),
        };
        let mut job = old;
        let old = Placement::of(&job);
        let (to, retry_at) = match outcome {
            Outcome::Success {
                result_path,
                rows_written,
                sha256,
            } => {
                job.result_path = Some(result_path);
                job.rows_written = rows_written;
                job.result_sha256 = Some(sha256);
                job.progress = 100;
                (JobStatus::Completed, None)
            }
            Outcome::Failure { error, retry_at } => {
                job.error = Some(error);
                let retry = retry_at
                    .map(store_time)
                    .filter(|_| job.attempt < job.max_attempts && !job.cancel_requested);
                match retry {
                    Some(at) => (JobStatus::Queued, Some(at)),
                    None => (JobStatus::Failed, None),
                }
            }
            Outcome::Cancelled => (JobStatus::Cancelled, None),
        };
        if old.status != JobStatus::Processing {
            // Only a running attempt can end, whatever the outcome; a finished job is refused
            // its final status, not only the retry.
            let to = if to == JobStatus::Queued {
                JobStatus::Failed
            } else {
                to
            };
            return Err(StoreError::IllegalTransition {
                job: job_id.clone(),
                from: old.status,
                to,
            });
        }
        status::transition(old.status, to).map_err(|e| StoreError::illegal(job_id, e))?;
        if to == JobStatus::Queued {
            requeue(&mut job);
            // A retry already due goes straight to the queue.
            job.run_after = retry_at.filter(|at| *at > now);
        } else {
            finish(&mut job, to, now);
        }
        job.version += 1;
        change.put_job(Some(old), &job, Write::Durable);
        let (mut children_created, join_errors) = change.apply_joins(&job, joins, now)?;
        let claimed = match claim_for {
            Some((worker, lease_until)) => {
                change.claim_next(worker, lease_until, now, &mut children_created)
            }
            None => None,
        };
        change.commit()?;
        let completion = Completion {
            job,
            children_created,
            join_errors,
        };
        Ok((Cas::Applied(completion), claimed))
    }

    fn cancel_sync(&self, job_id: &JobId, now: DateTime<Utc>) -> StoreResult<CancelOutcome> {
        let mut change = self.change();
        let Some(old) = change.job(job_id)? else {
            return Ok(CancelOutcome::NotFound);
        };
        let mut job = old;
        let old = Placement::of(&job);
        match job.status {
            JobStatus::Queued => finish(&mut job, JobStatus::Cancelled, now),
            JobStatus::Processing if !job.cancel_requested => job.cancel_requested = true,
            JobStatus::Processing => return Ok(CancelOutcome::Requested(job)),
            _ => return Ok(CancelOutcome::AlreadyFinished(job)),
        }
        job.version += 1;
        change.put_job(Some(old), &job, Write::Durable);
        let outcome = match job.status {
            JobStatus::Cancelled => CancelOutcome::Cancelled(job),
            _ => CancelOutcome::Requested(job),
        };
        change.commit()?;
        Ok(outcome)
    }

    /// A lease sweep: every PROCESSING job whose lease ended before `before` (all of them with
    /// `None`), a chunk per change.
    fn requeue_sync(
        &self,
        now: DateTime<Utc>,
        before: Option<DateTime<Utc>>,
        rules: &dyn JoinRules,
    ) -> StoreResult<Expired> {
        let mut expired = Expired::default();
        loop {
            let mut change = self.change();
            let ended: Vec<Id> = match before {
                Some(before) => change
                    .state
                    .leases
                    .range(..(before.timestamp_micros(), [0; JobId::LEN]))
                    .take(SWEEP_CHUNK)
                    .map(|(_, id)| *id)
                    .collect(),
                None => change
                    .state
                    .leases
                    .iter()
                    .take(SWEEP_CHUNK)
                    .map(|(_, id)| *id)
                    .collect(),
            };
            if ended.is_empty() {
                return Ok(expired);
            }
            for id in &ended {
                let Some(mut job) = change.indexed(id, JobStatus::Processing) else {
                    continue;
                };
                let old = Placement::of(&job);
                let to = if job.cancel_requested {
                    JobStatus::Cancelled
                } else if super::recovers_after_lease_expiry(job.attempt, job.max_attempts) {
                    JobStatus::Queued
                } else {
                    JobStatus::Failed
                };
                status::transition(job.status, to)
                    .map_err(|e| StoreError::illegal(&job.job_id, e))?;
                if to == JobStatus::Queued {
                    requeue(&mut job);
                } else {
                    if to == JobStatus::Failed {
                        job.error = Some(super::lease_expiry_error(
                            job.lease_owner.as_deref(),
                            job.attempt,
                            job.max_attempts,
                        ));
                    }
                    finish(&mut job, to, now);
                }
                job.version += 1;
                change.put_job(Some(old), &job, Write::Durable);
                if to == JobStatus::Queued {
                    expired.requeued.push(job.job_id);
                } else {
                    let joins = rules.joins_for(&job.report_type);
                    let (children_created, join_errors) = change.apply_joins(&job, joins, now)?;
                    expired.finished.push(Completion {
                        job,
                        children_created,
                        join_errors,
                    });
                }
            }
            change.commit()?;
            // Every lease taken above has left the index (the job moved on, or the entry was
            // dropped), so this ends.
            if ended.len() < SWEEP_CHUNK {
                return Ok(expired);
            }
        }
    }

    fn children_sync(&self, job_id: &JobId) -> StoreResult<Vec<Job>> {
        let prefix = [&[CHILD][..], job_id.as_str().as_bytes()].concat();
        // Child index keys are only ever added: those still on their way to sled, then sled's.
        let mut keys: BTreeSet<sled::IVec> =
            lock(&self.state).overlay.with_prefix(&prefix).collect();
        for entry in self.tree.scan_prefix(&prefix) {
            keys.insert(entry.map_err(StoreError::Sled)?.0);
        }
        let mut children = Vec::new();
        for key in keys {
            let child_id = job_id_at(&key, prefix.len())?;
            if let Some(child) = self.read_job(&child_id)? {
                children.push(child);
            }
        }
        children.sort_by(|a, b| (a.created_at, &a.job_id).cmp(&(b.created_at, &b.job_id)));
        Ok(children)
    }

    fn list_sync(&self, filter: &ListFilter) -> StoreResult<Page> {
        let limit = filter.limit.clamp(1, ListFilter::MAX_LIMIT);
        let below = filter.cursor.as_deref().map(parse_cursor).transpose()?;
        let (found, next) = {
            let state = lock(&self.state);
            let report_type = match &filter.report_type {
                Some(name) => match state.names.find(name) {
                    Some(id) => Some(id),
                    None => return Ok(empty_page()),
                },
                None => None,
            };
            let county = match &filter.county {
                Some(name) => match state.names.find(name) {
                    Some(id) => Some(id),
                    None => return Ok(empty_page()),
                },
                None => None,
            };
            let mut found = Vec::with_capacity(limit);
            let mut next = None;
            let range = match below {
                Some(below) => state.jobs.range(..below),
                None => state.jobs.range(..),
            };
            for (examined, (position, entry)) in range.rev().enumerate() {
                if found.len() == limit || examined == LIST_SCAN_BUDGET {
                    // The page is full (or the budget spent) and more entries remain.
                    next = Some(found.last().copied().unwrap_or(*position));
                    if found.len() < limit {
                        // Resume at (and including) this unexamined entry.
                        next = Some(next_after(*position));
                    }
                    break;
                }
                let wanted = filter.status.is_none_or(|status| entry.status == status)
                    && report_type.is_none_or(|id| entry.report_type == id)
                    && county.is_none_or(|id| entry.county == id);
                if wanted {
                    found.push(*position);
                }
            }
            (found, next)
        };
        let mut jobs = Vec::with_capacity(found.len());
        for (_, id) in found {
            // Read after the lock: the job may have moved on since, so the filter is checked
            // again on the record.
            if let Some(job) = self.read_job(&job_id_from(&id)?)? {
                let wanted = filter.status.is_none_or(|status| job.status == status)
                    && filter
                        .report_type
                        .as_ref()
                        .is_none_or(|r| *r == job.report_type)
                    && filter
                        .county
                        .as_ref()
                        .is_none_or(|c| Some(c) == job.county.as_ref());
                if wanted {
                    jobs.push(job);
                }
            }
        }
        Ok(Page {
            jobs,
            next_cursor: next.map(|(micros, id)| cursor(micros, &id)),
        })
    }
}

fn empty_page() -> Page {
    Page {
        jobs: Vec::new(),
        next_cursor: None,
    }
}

/// The smallest position after `position`, as an exclusive upper bound that still includes it.
fn next_after((micros, id): ListKey) -> ListKey {
    let mut id = id;
    for byte in id.iter_mut().rev() {
        if *byte == u8::MAX {
            *byte = 0;
        } else {
            *byte += 1;
            return (micros, id);
        }
    }
    (micros + 1, id)
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Some(mut flusher) = self.flusher.take() {
            flusher.stop();
        }
        if let Err(error) = self.db.flush() {
            tracing::error!(path = %self.path.display(), %error, "flushing the job store on close failed");
        }
        // sled lets go of the file just after the handles below drop.
        lock(&OPEN_STORES).insert(self.registered.clone(), Held::ClosedAt(Instant::now()));
        if let Some(copy) = &self.copy {
            // sled's last handles let go of the files just after; unlinked, they go then.
            let _ = std::fs::remove_dir_all(copy);
        }
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
        expired.finished.iter().for_each(log_join_errors);
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

fn log_join_errors(completion: &Completion) {
    for error in &completion.join_errors {
        tracing::error!(
            job_id = %completion.job.job_id,
            join_id = %error.join_id,
            message = %error.message,
            "triggering a dependent job failed; the parent's outcome stands"
        );
    }
}

/// Clears what belongs to a finished attempt, for a job going back to QUEUED (due at once; the
/// caller sets `run_after` for a delayed retry).
fn requeue(job: &mut Job) {
    job.status = JobStatus::Queued;
    job.run_after = None;
    job.attempt += 1;
    job.progress = 0;
    job.rows_written = 0;
    job.started_at = None;
    job.lease_owner = None;
    job.lease_until = None;
}

/// Marks a job finished in status `to` (COMPLETED, FAILED or CANCELLED).
fn finish(job: &mut Job, to: JobStatus, now: DateTime<Utc>) {
    job.status = to;
    job.completed_at = Some(now);
    job.lease_owner = None;
    job.lease_until = None;
}

// ---------------------------------------------------------------------------------------------
// One change: reads through its own writes, then one commit
// ---------------------------------------------------------------------------------------------

/// One change: the writer's turn (the state lock) and its writes. Reads see the change's own
/// writes, then the overlay's, then sled's; `commit` hands the writes to the overlay and moves
/// the indexes.
struct Change<'s> {
    tree: &'s sled::Tree,
    state: MutexGuard<'s, State>,
    /// Each key's value, and whether it must be on disk before the change is reported durable.
    writes: BTreeMap<sled::IVec, (Option<sled::IVec>, Write)>,
    /// Every record written, in order, for the indexes.
    moves: Vec<Move>,
    /// Ids of the jobs this change creates.
    new_ids: HashSet<Id>,
}

/// A record written, as the indexes see it.
struct Move {
    old: Option<Placement>,
    new: Placement,
    /// Report type and county of a new job, for its list entry.
    names: Option<(String, Option<String>)>,
    record: sled::IVec,
}

impl Change<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<sled::IVec>> {
        if let Some((value, _)) = self.writes.get(key) {
            return Ok(value.clone());
        }
        if let Some(pending) = self.state.overlay.get(key) {
            return Ok(pending);
        }
        if let Some(record) = key
            .strip_prefix(&[JOB])
            .and_then(|rest| rest.get(8..))
            .and_then(|id| self.state.running.get(id))
        {
            return Ok(Some(record.clone()));
        }
        self.tree.get(key).map_err(StoreError::Sled)
    }

    fn put(&mut self, key: impl Into<sled::IVec>, value: Vec<u8>) {
        self.write(key.into(), Some(value.into()), Write::Durable);
    }

    fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.write(key.into(), None, Write::Durable);
    }

    /// A write is lazy only if every write of this change to its key is.
    fn write(&mut self, key: sled::IVec, value: Option<sled::IVec>, kind: Write) {
        let kind = match self.writes.get(&key) {
            Some((_, Write::Durable)) => Write::Durable,
            _ => kind,
        };
        self.writes.insert(key, (value, kind));
    }

    fn job(&self, job_id: &JobId) -> StoreResult<Option<Job>> {
        let id = id_bytes(job_id);
        let Some(created) = self.state.created.get(&id).copied() else {
            // Not a job, or one written by this change (which never reads those back).
            return Ok(None);
        };
        let key = job_key(created, &id);
        match self.get(&key)? {
            Some(bytes) => decode_job(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The job if it is at `expected_version`, else `Err(current)` for a CAS conflict.
    fn job_at(
        &self,
        job_id: &JobId,
        expected_version: u64,
    ) -> StoreResult<Result<Job, Option<Job>>> {
        match self.job(job_id)? {
            Some(job) if job.version == expected_version => Ok(Ok(job)),
            current => Ok(Err(current)),
        }
    }

    /// The record an index entry points to, if it is in `status` as the index says. An entry
    /// that disagrees (only possible through a bug or an unreadable record) is dropped, so
    /// that it cannot block the queue.
    fn indexed(&mut self, id: &Id, status: JobStatus) -> Option<Job> {
        let job = job_id_from(id).and_then(|job_id| self.job(&job_id));
        match job {
            Ok(Some(job)) if job.status == status => return Some(job),
            Ok(found) => tracing::error!(
                job_id = %String::from_utf8_lossy(id),
                found = ?found.map(|job| job.status),
                expected = %status,
                "an index entry disagreed with its job record; dropped it"
            ),
            Err(error) => tracing::error!(
                %error,
                "an indexed job record is unreadable; dropped it from the index"
            ),
        }
        self.state.forget(id);
        None
    }

    /// Writes `new`, whose record was at `old` in the indexes (`None`: a new job).
    fn put_job(&mut self, old: Option<Placement>, new: &Job, kind: Write) {
        let id = id_bytes(&new.job_id);
        let names = match old {
            Some(_) => None,
            None => {
                for parent in &new.parent_job_ids {
                    let key = [&[CHILD][..], parent.as_str().as_bytes(), &id].concat();
                    self.put(key, Vec::new());
                }
                Some((new.report_type.clone(), new.county.clone()))
            }
        };
        let record = sled::IVec::from(encode_job(new));
        let key = job_key(new.created_at.timestamp_micros(), &id);
        self.write(key.as_slice().into(), Some(record.clone()), kind);
        self.moves.push(Move {
            old,
            new: Placement::of(new),
            names,
            record,
        });
    }

    /// Inserts a new QUEUED job under a fresh id (drawn again on a collision).
    fn insert_new(&mut self, new: NewJob, now: DateTime<Utc>) -> StoreResult<Job> {
        let job_id = loop {
            let candidate = JobId::generate();
            let id = id_bytes(&candidate);
            if !self.state.created.contains_key(&id) && self.new_ids.insert(id) {
                break candidate;
            }
            tracing::debug!(job_id = %candidate, "job id collision; drawing again");
        };
        let job = new.into_job(job_id, now);
        self.put_job(None, &job, Write::Durable);
        Ok(job)
    }

    /// Claims `job` (QUEUED, as stored) for `worker`.
    fn start(
        &mut self,
        mut job: Job,
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Job {
        let old = Placement::of(&job);
        job.status = JobStatus::Processing;
        job.started_at = Some(now);
        job.lease_owner = Some(worker.to_owned());
        job.lease_until = Some(lease_until);
        job.version += 1;
        self.put_job(Some(old), &job, Write::Lazy);
        job
    }

    /// Claims for `worker` the job a claim of one would get: the head of the queue, or one of
    /// `fresh` (jobs this change created, not in the queue until it commits) if it comes
    /// first. A claimed fresh job is updated in place.
    fn claim_next(
        &mut self,
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
        fresh: &mut [Job],
    ) -> Option<Job> {
        self.state.promote_due(now);
        let head = self.state.queue.first().copied();
        let newest = fresh
            .iter()
            .enumerate()
            .filter(|(_, job)| job.status == JobStatus::Queued && job.run_after.is_none())
            .map(|(i, job)| (Placement::of(job).queue, i))
            .min();
        match (head, newest) {
            (head, Some((key, i))) if head.is_none_or(|head| key < head) => {
                let job = self.start(fresh[i].clone(), worker, lease_until, now);
                fresh[i] = job.clone();
                Some(job)
            }
            (Some(head), _) => {
                let job = self.indexed(&head.2, JobStatus::Queued)?;
                Some(self.start(job, worker, lease_until, now))
            }
            (None, _) => None,
        }
    }

    /// The join rule for `job`'s completion event (if it emits one): records the event for
    /// every edge that accepts it, and creates the children that fire.
    fn apply_joins(
        &mut self,
        job: &Job,
        joins: &[JoinEdge],
        now: DateTime<Utc>,
    ) -> StoreResult<(Vec<Job>, Vec<JoinError>)> {
        let mut children = Vec::new();
        let mut errors = Vec::new();
        let Some(event) = Event::of(job.status) else {
            return Ok((children, errors));
        };
        for (i, edge) in joins.iter().enumerate() {
            if !edge.accepts(job, event)
                || joins[..i].iter().any(|seen| seen.join_id == edge.join_id)
            {
                continue;
            }
            if let Err(message) = edge.validate() {
                errors.push(JoinError {
                    join_id: edge.join_id.clone(),
                    message,
                });
                continue;
            }
            let key = join_key(&edge.join_id, &job.role, job.county.as_deref());
            let stored = self.get(&key)?;
            let mut state = match &stored {
                None => JoinState::default(),
                Some(bytes) => decode_value(&key, bytes).unwrap_or_else(|error| {
                    errors.push(JoinError {
                        join_id: edge.join_id.clone(),
                        message: format!("pending events of this scope were lost: {error}"),
                    });
                    JoinState::default()
                }),
            };
            let fired = state.record(edge, job);
            // A state emptied by firing leaves no key behind.
            if !state.pending.is_empty() {
                self.put(key, encode_value(&state));
            } else if stored.is_some() {
                self.remove(key);
            }
            if let Some(parent_job_ids) = fired {
                let child = edge.child.instantiate(job, parent_job_ids);
                children.push(self.insert_new(child, now)?);
            }
        }
        Ok((children, errors))
    }

    /// Hands the writes to the overlay (the flush thread moves them into sled, behind an
    /// intent if this change must land all or nothing: see [`needs_intent`]), then moves the
    /// indexes.
    fn commit(mut self) -> StoreResult<()> {
        if let Some(failure) = &self.state.broken {
            return Err(broken(failure));
        }
        let writes = std::mem::take(&mut self.writes);
        let intent = needs_intent(writes.keys(), !self.new_ids.is_empty());
        let now = Instant::now();
        let state = &mut *self.state;
        state.overlay.intent |= intent;
        for (key, (value, kind)) in writes {
            state.overlay.put(key, value, kind, now);
        }
        for change in std::mem::take(&mut self.moves) {
            state.apply(change);
        }
        Ok(())
    }
}

/// Whether a write must be on disk before its change is reported durable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Write {
    Durable,
    /// A claim or a heartbeat: losing it to a crash only runs the job again (the store requeues
    /// what it finds PROCESSING at open anyway). It reaches sled with the job's next durable
    /// write, which replaces it, or after [`LAZY_WRITE_DELAY`]: a no-op job claimed and
    /// completed within that time costs one record write, not two.
    Lazy,
}

/// The longest a lazy write waits in the overlay.
const LAZY_WRITE_DELAY: Duration = Duration::from_millis(100);

/// Writes committed but not yet in sled: the newest value of each key, numbered in commit order
/// so that the flush thread can tell whether a key was written again while it copied it.
#[derive(Default)]
struct Overlay {
    writes: BTreeMap<sled::IVec, Pending>,
    /// Number of the last write.
    seq: u64,
    /// A change that must land all or nothing committed since the last drain.
    intent: bool,
}

struct Pending {
    seq: u64,
    value: Option<sled::IVec>,
    /// Set while every write to the key since the last drain was lazy: when the first was.
    lazy_since: Option<Instant>,
}

/// What one drain takes to sled: writes in key order, each with its number.
struct Drained {
    writes: Vec<(sled::IVec, Option<sled::IVec>, u64)>,
    intent: bool,
}

impl Overlay {
    fn get(&self, key: &[u8]) -> Option<Option<sled::IVec>> {
        self.writes.get(key).map(|pending| pending.value.clone())
    }

    fn put(&mut self, key: sled::IVec, value: Option<sled::IVec>, kind: Write, now: Instant) {
        self.seq += 1;
        let seq = self.seq;
        let lazy_since = match (kind, self.writes.get(&key)) {
            (Write::Durable, _) => None,
            (Write::Lazy, None) => Some(now),
            // Lazy after lazy keeps the older time; lazy after durable stays durable.
            (Write::Lazy, Some(pending)) => pending.lazy_since,
        };
        self.writes.insert(
            key,
            Pending {
                seq,
                value,
                lazy_since,
            },
        );
    }

    /// Keys starting with `prefix`.
    fn with_prefix<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = sled::IVec> + 'a {
        self.writes
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key.clone())
    }

    /// Copies what is due: every durable write, and lazy ones older than `lazy_before` (all of
    /// them with `None`).
    fn drain(&mut self, lazy_before: Option<Instant>) -> Drained {
        let due = |pending: &Pending| match (pending.lazy_since, lazy_before) {
            (None, _) | (Some(_), None) => true,
            (Some(since), Some(before)) => since <= before,
        };
        let writes = self
            .writes
            .iter()
            .filter(|(_, pending)| due(pending))
            .map(|(key, pending)| (key.clone(), pending.value.clone(), pending.seq))
            .collect();
        Drained {
            writes,
            intent: std::mem::take(&mut self.intent),
        }
    }

    /// Forgets drained writes that are in sled now, unless written again since.
    fn written(&mut self, drained: &Drained) {
        for (key, _, seq) in &drained.writes {
            if self
                .writes
                .get(key)
                .is_some_and(|pending| pending.seq == *seq)
            {
                self.writes.remove(key);
            }
        }
    }
}

/// The flush thread's side of the store: moves the overlay into sled, then fsyncs.
struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    intents: sled::Tree,
    state: Arc<Mutex<State>>,
    fsync: bool,
    /// The store's subscribers, woken when it stops so that a dispatcher notices at once.
    wake: watch::Sender<u64>,
    /// The last commit round made durable, beside sled (see [`Watermark`]).
    watermark: Watermark,
}

impl Writer {
    /// One round: returns whether it fsynced.
    fn write(&mut self, round: Round) -> Result<bool, String> {
        let lazy_before = match round {
            Round::Waited | Round::Tick => Instant::now().checked_sub(LAZY_WRITE_DELAY),
            Round::Final => None,
        };
        let (drained, fault) = {
            let mut state = lock(&self.state);
            if let Some(failure) = &state.broken {
                return Err(failure.to_string());
            }
            (
                state.overlay.drain(lazy_before),
                state.injected_fault.clone(),
            )
        };
        if drained.writes.is_empty() && round == Round::Tick {
            return Ok(false);
        }
        // Each round that writes with fsync numbers itself in sled, last, and in the
        // watermark once sled's fsync is done: at open, a log that ends before the watermark's
        // round lost durable changes.
        let numbered = self.fsync && !drained.writes.is_empty();
        let round_number = self.watermark.round + 1;
        let applied = match fault {
            Some(fault) if !drained.writes.is_empty() => Err(sled::Error::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                fault.to_string(),
            ))),
            _ => self.apply(&drained).and_then(|()| {
                if numbered {
                    self.tree
                        .insert(META_COMMIT, &round_number.to_be_bytes())
                        .map(drop)?;
                }
                Ok(())
            }),
        };
        if let Err(error) = applied {
            // Part of the drain may be in sled, and nothing says which: only the next open
            // (rebuilding the indexes, replaying the intent) can be trusted to agree with the
            // records. Refuse every later change until then.
            return Err(self.stop(format!("a change was only partly written ({error})")));
        }
        lock(&self.state).overlay.written(&drained);
        if self.fsync {
            if let Err(error) = self.db.flush() {
                // Nothing written since the last good fsync can be trusted to be on disk.
                return Err(self.stop(format!("fsync failed ({error})")));
            }
            if numbered {
                let sync = round == Round::Final;
                if let Err(error) = self.watermark.advance(round_number, sync) {
                    return Err(self.stop(format!("writing the commit watermark failed ({error})")));
                }
            }
        }
        Ok(self.fsync)
    }

    /// Stops the store: every later change fails with [`StoreError::Stopped`].
    fn stop(&self, failure: String) -> String {
        tracing::error!(%failure, "the job store stopped accepting changes; restart flowctl");
        lock(&self.state).broken = Some(failure.as_str().into());
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
        failure
    }

    fn apply(&self, drained: &Drained) -> sled::Result<()> {
        if drained.intent {
            let writes = drained
                .writes
                .iter()
                .map(|(key, value, _)| (key.as_ref(), value.as_deref()));
            self.intents.insert(INTENT, encode_intent(writes))?;
        }
        for (key, value, _) in &drained.writes {
            match value {
                Some(value) => self.tree.insert(key, value.clone()).map(drop)?,
                None => self.tree.remove(key).map(drop)?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// All-or-nothing changes without sled batches
// ---------------------------------------------------------------------------------------------

/// Whether a change must be written behind an intent: it creates a job and writes anything
/// else (the job and its parent's completion, its unique key, its siblings of one enqueue), or
/// it writes anything but job records (join state, unique keys, fire times and the child index
/// are written by no other kind of change, which [`replay_intent`] relies on). Rewrites of
/// existing jobs alone (a claim of many, a completion that claims the next job, a lease
/// sweep) are independent facts, each whole in one insert.
fn needs_intent<'a>(
    mut keys: impl ExactSizeIterator<Item = &'a sled::IVec>,
    creates_jobs: bool,
) -> bool {
    (creates_jobs && keys.len() > 1) || keys.any(|key| key.first() != Some(&JOB))
}

/// The intent: `[RECORD_FORMAT]`, then per write a key length (u32 BE), the key, and either
/// `0` (a removal) or `1`, a value length (u32 BE) and the value.
fn encode_intent<'a>(
    writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + Clone,
) -> Vec<u8> {
    let size: usize = writes
        .clone()
        .map(|(key, value)| 9 + key.len() + value.map_or(0, |v| v.len()))
        .sum();
    let mut out = Vec::with_capacity(1 + size);
    out.push(RECORD_FORMAT);
    for (key, value) in writes {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
    }
    out
}

type IntentWrite<'a> = (&'a [u8], Option<&'a [u8]>);

fn decode_intent(bytes: &[u8]) -> StoreResult<Vec<IntentWrite<'_>>> {
    let bad = |what: &str| corrupt(INTENT, format!("the pending change is unreadable: {what}"));
    let Some((&RECORD_FORMAT, mut rest)) = bytes.split_first() else {
        return Err(bad("unknown format"));
    };
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        *rest = tail;
        Some(head)
    }
    fn length(rest: &mut &[u8]) -> Option<usize> {
        let bytes = take(rest, 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?) as usize)
    }
    let mut writes = Vec::new();
    while !rest.is_empty() {
        let key = length(&mut rest)
            .and_then(|n| take(&mut rest, n))
            .ok_or_else(|| bad("a key is cut short"))?;
        let value = match take(&mut rest, 1) {
            Some([0]) => None,
            Some([1]) => Some(
                length(&mut rest)
                    .and_then(|n| take(&mut rest, n))
                    .ok_or_else(|| bad("a value is cut short"))?,
            ),
            _ => return Err(bad("a write is neither a put nor a removal")),
        };
        writes.push((key, value));
    }
    Ok(writes)
}

/// Finishes the last all-or-nothing change, if a crash interrupted it, and drops its intent.
///
/// sled recovers a prefix of its log, and a change writes its intent before any of its keys,
/// so a key the change wrote is on disk only if the intent is. Writing the intent's keys again
/// is therefore safe for every key only such changes write. A job record may have been
/// rewritten since by a claim or a completion (single inserts, no intent): it is written again
/// only if what is stored is older than the intent's version of it.
fn replay_intent(tree: &sled::Tree, intents: &sled::Tree) -> StoreResult<usize> {
    let Some(bytes) = intents.get(INTENT).map_err(StoreError::Sled)? else {
        return Ok(0);
    };
    let mut replayed = 0;
    for (key, value) in decode_intent(&bytes)? {
        let stored = tree.get(key).map_err(StoreError::Sled)?;
        let apply = match (key.first(), &stored, value) {
            (_, None, None) => false,
            (_, None, Some(_)) | (_, Some(_), None) => true,
            (Some(&JOB), Some(stored), Some(value)) => {
                match (decode_job(key, stored), decode_job(key, value)) {
                    (Ok(stored), Ok(intended)) => stored.version < intended.version,
                    (Err(error), _) | (_, Err(error)) => {
                        // Which one is newer cannot be told; the unreadable record is reported
                        // as such wherever it is read, as any other.
                        tracing::error!(%error, "left a job record of an interrupted change as it was");
                        false
                    }
                }
            }
            (_, Some(stored), Some(value)) => stored.as_ref() != value,
        };
        if apply {
            replayed += 1;
            match value {
                Some(value) => tree.insert(key, value).map(drop),
                None => tree.remove(key).map(drop),
            }
            .map_err(StoreError::Sled)?;
        }
    }
    intents.remove(INTENT).map_err(StoreError::Sled)?;
    tree.flush().map_err(StoreError::Sled)?;
    Ok(replayed)
}

fn broken(failure: &str) -> StoreError {
    StoreError::Stopped {
        reason: format!("{failure}; restart flowctl to recover it"),
    }
}

// ---------------------------------------------------------------------------------------------
// The indexes
// ---------------------------------------------------------------------------------------------

/// A job id as its 12 bytes.
type Id = [u8; JobId::LEN];
/// (255 − priority, created_at µs, id): claim order.
type QueueKey = (u8, i64, Id);
/// (created_at µs, id): list order (reversed).
type ListKey = (i64, Id);

/// Everything derived from the records. Rebuilt at open; changed only by `Change::commit`, after
/// the records are written.
#[derive(Default)]
struct State {
    /// Claimable QUEUED jobs.
    queue: BTreeSet<QueueKey>,
    /// QUEUED jobs with a `run_after`, by it; a claim moves the due ones to `queue`.
    delayed: BTreeSet<(i64, QueueKey)>,
    /// PROCESSING jobs by lease end.
    leases: BTreeSet<(i64, Id)>,
    /// The records of PROCESSING jobs (as stored), so that heartbeats and completions, the
    /// busiest changes, need no sled lookup. As many as there are running jobs.
    running: HashMap<Id, sled::IVec>,
    /// Every job's creation time, by id: the first part of its record's key.
    created: HashMap<Id, i64>,
    /// Every job, with what `list` filters on.
    jobs: BTreeMap<ListKey, Entry>,
    /// Jobs per status, in `JobStatus::ALL` order.
    counts: [u64; 5],
    names: Names,
    /// Set when a change was only partly written: every later change is refused until the
    /// store is opened again (indexes rebuilt, the intent replayed).
    broken: Option<Arc<str>>,
    /// [`SledStore::inject_write_failure`]: tests only.
    injected_fault: Option<Arc<str>>,
    /// Committed writes on their way to sled.
    overlay: Overlay,
}

#[derive(Clone, Copy)]
struct Entry {
    status: JobStatus,
    report_type: u32,
    /// `Names::NONE` for no county.
    county: u32,
}

/// Report types and counties, interned: a job's list entry holds two numbers, not two strings.
#[derive(Default)]
struct Names {
    ids: HashMap<String, u32>,
}

impl Names {
    const NONE: u32 = u32::MAX;

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.ids.len()).expect("fewer than 4 billion names");
        self.ids.insert(name.to_owned(), id);
        id
    }

    fn find(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
}

/// Where a record belongs in the indexes: what of a job they are derived from.
#[derive(Clone, Copy)]
struct Placement {
    id: Id,
    status: JobStatus,
    queue: QueueKey,
    run_after: Option<i64>,
    lease_until: Option<i64>,
}

impl Placement {
    fn of(job: &Job) -> Placement {
        let id = id_bytes(&job.job_id);
        let created = job.created_at.timestamp_micros();
        Placement {
            id,
            status: job.status,
            queue: (255 - job.priority, created, id),
            run_after: job.run_after.map(|at| at.timestamp_micros()),
            lease_until: job.lease_until.map(|at| at.timestamp_micros()),
        }
    }

    fn list_key(&self) -> ListKey {
        (self.queue.1, self.id)
    }
}

impl State {
    fn rebuild(tree: &sled::Tree) -> StoreResult<State> {
        let mut state = State::default();
        let mut unreadable = 0;
        for entry in tree.scan_prefix([JOB]) {
            let (key, record) = entry.map_err(StoreError::Sled)?;
            match decode_job(&key, &record) {
                Ok(job) => state.apply(Move {
                    old: None,
                    new: Placement::of(&job),
                    names: Some((job.report_type, job.county)),
                    record,
                }),
                Err(error) => {
                    // One bad record must not keep every other job from running. Its key still
                    // names it, so that `get` reports it rather than "not found".
                    tracing::error!(%error, "skipping an unreadable job record");
                    unreadable += 1;
                    if let (Some(created), Some(id)) = (key.get(1..9), key.get(9..)) {
                        if let (Ok(created), Ok(id)) =
                            (<[u8; 8]>::try_from(created), Id::try_from(id))
                        {
                            let micros = (u64::from_be_bytes(created) ^ (1 << 63)) as i64;
                            state.created.insert(id, micros);
                        }
                    }
                }
            }
        }
        if unreadable > 0 {
            tracing::error!(
                unreadable,
                "job records that could not be read were left out of the queue"
            );
        }
        // Built one insert at a time, in key order, a B-tree's nodes end up a little over half
        // full; collected from sorted entries they are full.
        state.jobs = std::mem::take(&mut state.jobs).into_iter().collect();
        state.queue = std::mem::take(&mut state.queue).into_iter().collect();
        Ok(state)
    }

    /// Moves a record's index entries from where it was to where it belongs now.
    fn apply(&mut self, change: Move) {
        let Move {
            old,
            new,
            names,
            record,
        } = change;
        if let Some(old) = old {
            match old.status {
                JobStatus::Queued => {
                    // Promotion moves a retry from `delayed` to `queue` without touching the
                    // record, so a QUEUED job leaves both.
                    self.queue.remove(&old.queue);
                    if let Some(at) = old.run_after {
                        self.delayed.remove(&(at, old.queue));
                    }
                }
                JobStatus::Processing => {
                    if let Some(until) = old.lease_until {
                        self.leases.remove(&(until, old.id));
                    }
                }
                _ => {}
            }
        }
        match new.status {
            JobStatus::Queued => match new.run_after {
                Some(at) => {
                    self.delayed.insert((at, new.queue));
                }
                None => {
                    self.queue.insert(new.queue);
                }
            },
            JobStatus::Processing => {
                if let Some(until) = new.lease_until {
                    self.leases.insert((until, new.id));
                }
            }
            _ => {}
        }
        if new.status == JobStatus::Processing {
            self.running.insert(new.id, record);
        } else if old.is_some_and(|old| old.status == JobStatus::Processing) {
            self.running.remove(&new.id);
        }
        if let Some((report_type, county)) = names {
            self.created.insert(new.id, new.queue.1);
            let entry = Entry {
                status: new.status,
                report_type: self.names.intern(&report_type),
                county: county
                    .as_deref()
                    .map_or(Names::NONE, |county| self.names.intern(county)),
            };
            self.jobs.insert(new.list_key(), entry);
        }
        let old_status = old.map(|old| old.status);
        if old_status != Some(new.status) {
            if let Some(status) = old_status {
                self.counts[status_index(status)] -= 1;
                if let Some(entry) = self.jobs.get_mut(&new.list_key()) {
                    entry.status = new.status;
                }
            }
            self.counts[status_index(new.status)] += 1;
        }
    }

    /// Moves retries whose `run_after` has come to the queue; returns how many.
    fn promote_due(&mut self, now: DateTime<Utc>) -> usize {
        let now = now.timestamp_micros();
        let mut promoted = 0;
        while let Some(&(at, key)) = self.delayed.first() {
            if at > now {
                break;
            }
            self.delayed.pop_first();
            self.queue.insert(key);
            promoted += 1;
        }
        promoted
    }

    /// Drops a job from the claim, retry and lease indexes (after an entry disagreed with its
    /// record). Linear, but only ever on that path.
    fn forget(&mut self, id: &Id) {
        self.queue.retain(|key| key.2 != *id);
        self.delayed.retain(|(_, key)| key.2 != *id);
        self.leases.retain(|(_, lease)| lease != id);
        self.running.remove(id);
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

fn id_bytes(job_id: &JobId) -> Id {
    job_id
        .as_str()
        .as_bytes()
        .try_into()
        .expect("a job id is 12 ASCII bytes")
}

fn job_id_from(id: &[u8]) -> StoreResult<JobId> {
    std::str::from_utf8(id)
        .ok()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| corrupt(id, "not a job id"))
}

/// The job id `at` bytes into `key`.
fn job_id_at(key: &[u8], at: usize) -> StoreResult<JobId> {
    match key.get(at..at + JobId::LEN) {
        Some(id) => job_id_from(id),
        None => Err(corrupt(key, "no job id where the layout puts one")),
    }
}

/// `j`, created_at, id: records sort by age, so that new jobs are appended and the jobs a
/// queue works on (the oldest queued, the recently claimed) share leaves. 21 bytes: sled keeps
/// it inline, with no allocation.
fn job_key(created_micros: i64, id: &Id) -> [u8; 1 + 8 + JobId::LEN] {
    let mut key = [JOB; 1 + 8 + JobId::LEN];
    key[1..9].copy_from_slice(&micros_key(created_micros));
    key[9..].copy_from_slice(id);
    key
}

/// Microseconds since the epoch, sign bit flipped, big-endian: sorts as the times do.
fn micros_key(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

/// Microseconds since the epoch, sign bit flipped, big-endian: sorts as the times do.
fn time_key(time: DateTime<Utc>) -> [u8; 8] {
    micros_key(time.timestamp_micros())
}

fn time_from_key(key: &[u8], bytes: &[u8]) -> StoreResult<DateTime<Utc>> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(key, "a time is not 8 bytes"))?;
    let micros = (u64::from_be_bytes(raw) ^ (1 << 63)) as i64;
    DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt(key, "a time is out of range"))
}

/// Status codes on disk. Fixed here, apart from the enum's order.
fn status_code(status: JobStatus) -> u8 {
    match status {
        JobStatus::Queued => 1,
        JobStatus::Processing => 2,
        JobStatus::Completed => 3,
        JobStatus::Failed => 4,
        JobStatus::Cancelled => 5,
    }
}

fn status_from_code(code: u8) -> Option<JobStatus> {
    JobStatus::ALL.into_iter().find(|s| status_code(*s) == code)
}

/// A status's place in `JobStatus::ALL` (and in `State::counts`).
fn status_index(status: JobStatus) -> usize {
    JobStatus::ALL
        .iter()
        .position(|s| *s == status)
        .expect("every status is in ALL")
}

fn push_part(key: &mut Vec<u8>, part: &[u8]) {
    // u32 length prefix: parts are names and keys, which can hold any character.
    key.extend_from_slice(&(part.len() as u32).to_be_bytes());
    key.extend_from_slice(part);
}

fn join_key(join_id: &str, role: &str, county: Option<&str>) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + join_id.len() + role.len());
    key.push(JOIN);
    push_part(&mut key, join_id.as_bytes());
    push_part(&mut key, role.as_bytes());
    match county {
        Some(county) => {
            key.push(1);
            push_part(&mut key, county.as_bytes());
        }
        None => key.push(0),
    }
    key
}

fn unique_key(unique: &UniqueKey) -> Vec<u8> {
    let mut key = vec![UNIQUE];
    match unique {
        UniqueKey::Fire {
            schedule,
            fire_time,
        } => {
            key.push(b'f');
            push_part(&mut key, schedule.as_bytes());
            key.extend_from_slice(&time_key(*fire_time));
        }
        UniqueKey::Idempotency { subject, key: idem } => {
            key.push(b'i');
            push_part(&mut key, subject.as_bytes());
            push_part(&mut key, idem.as_bytes());
        }
    }
    key
}

/// A list position as a cursor: `<created_at µs>.<job id>`, the first position not yet shown
/// being the one just below it.
fn cursor(micros: i64, id: &Id) -> String {
    format!("{micros}.{}", String::from_utf8_lossy(id))
}

fn parse_cursor(text: &str) -> StoreResult<ListKey> {
    let invalid = || StoreError::InvalidCursor(text.to_owned());
    let (micros, id) = text.split_once('.').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let id: JobId = id.parse().map_err(|_| invalid())?;
    Ok((micros, id_bytes(&id)))
}

fn add(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .map(store_time)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn corrupt(key: &[u8], message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: message.into(),
    }
}

fn encode_value<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Sized for a typical job record, so that encoding does not grow it.
    let mut bytes = Vec::with_capacity(256);
    bytes.push(RECORD_FORMAT);
    bincode::serde::encode_into_std_write(value, &mut bytes, bincode_config())
        .expect("encoding into a Vec cannot fail");
    bytes
}

fn decode_value<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> StoreResult<T> {
    match bytes.split_first() {
        Some((&RECORD_FORMAT, rest)) => {
            let (value, read) = bincode::serde::decode_from_slice(rest, bincode_config())
                .map_err(|error| corrupt(key, error.to_string()))?;
            if read != rest.len() {
                return Err(corrupt(key, "trailing bytes after the value"));
            }
            Ok(value)
        }
        Some((format, _)) => Err(corrupt(key, format!("unknown value format {format}"))),
        None => Err(corrupt(key, "empty value")),
    }
}

/// The job record as stored: its own type, so that the JSON shape of [`Job`] can change without
/// changing the disk format, and times are compact integers (microseconds).
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    job_id: Cow<'a, str>,
    status: u8,
    report_type: Cow<'a, str>,
    role: Cow<'a, str>,
    county: Option<Cow<'a, str>>,
    subject: Cow<'a, str>,
    parent_job_ids: Vec<Cow<'a, str>>,
    trigger_id: Cow<'a, str>,
    request: Cow<'a, JobRequest>,
    priority: u8,
    result_path: Option<Cow<'a, str>>,
    rows_written: u64,
    result_sha256: Option<Cow<'a, str>>,
    progress: u8,
    error: Option<Cow<'a, str>>,
    attempt: u32,
    max_attempts: u32,
    run_after: Option<i64>,
    cancel_requested: bool,
    created_at: i64,
    started_at: Option<i64>,
    completed_at: Option<i64>,
    estimated_completion: Option<i64>,
    lease_owner: Option<Cow<'a, str>>,
    lease_until: Option<i64>,
    version: u64,
}

fn encode_job(job: &Job) -> Vec<u8> {
    fn borrow(s: &Option<String>) -> Option<Cow<'_, str>> {
        s.as_deref().map(Cow::Borrowed)
    }
    let micros = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros());
    encode_value(&Record {
        job_id: Cow::Borrowed(job.job_id.as_str()),
        status: status_code(job.status),
        report_type: Cow::Borrowed(&job.report_type),
        role: Cow::Borrowed(&job.role),
        county: borrow(&job.county),
        subject: Cow::Borrowed(&job.subject),
        parent_job_ids: job
            .parent_job_ids
            .iter()
            .map(|id| Cow::Borrowed(id.as_str()))
            .collect(),
        trigger_id: Cow::Borrowed(&job.trigger_id),
        request: Cow::Borrowed(&job.request),
        priority: job.priority,
        result_path: borrow(&job.result_path),
        rows_written: job.rows_written,
        result_sha256: borrow(&job.result_sha256),
        progress: job.progress,
        error: borrow(&job.error),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        run_after: micros(job.run_after),
        cancel_requested: job.cancel_requested,
        created_at: job.created_at.timestamp_micros(),
        started_at: micros(job.started_at),
        completed_at: micros(job.completed_at),
        estimated_completion: micros(job.estimated_completion),
        lease_owner: borrow(&job.lease_owner),
        lease_until: micros(job.lease_until),
        version: job.version,
    })
}

fn decode_job(key: &[u8], bytes: &[u8]) -> StoreResult<Job> {
    let record: Record<'static> = decode_value(key, bytes)?;
    let bad = |what: &str| corrupt(key, format!("invalid {what}"));
    let time = |micros: i64| DateTime::from_timestamp_micros(micros).ok_or_else(|| bad("time"));
    let opt_time = |micros: Option<i64>| micros.map(time).transpose();
    let owned = |s: Option<Cow<'static, str>>| s.map(Cow::into_owned);
    Ok(Job {
        job_id: record.job_id.parse().map_err(|_| bad("job id"))?,
        status: status_from_code(record.status).ok_or_else(|| bad("status"))?,
        report_type: record.report_type.into_owned(),
        role: record.role.into_owned(),
        county: owned(record.county),
        subject: record.subject.into_owned(),
        parent_job_ids: record
            .parent_job_ids
            .iter()
            .map(|id| id.parse().map_err(|_| bad("parent job id")))
            .collect::<StoreResult<_>>()?,
        trigger_id: record.trigger_id.into_owned(),
        request: record.request.into_owned(),
        priority: record.priority,
        result_path: owned(record.result_path),
        rows_written: record.rows_written,
        result_sha256: owned(record.result_sha256),
        progress: record.progress,
        error: owned(record.error),
        attempt: record.attempt,
        max_attempts: record.max_attempts,
        run_after: opt_time(record.run_after)?,
        cancel_requested: record.cancel_requested,
        created_at: time(record.created_at)?,
        started_at: opt_time(record.started_at)?,
        completed_at: opt_time(record.completed_at)?,
        estimated_completion: opt_time(record.estimated_completion)?,
        lease_owner: owned(record.lease_owner),
        lease_until: opt_time(record.lease_until)?,
        version: record.version,
    })
}

// ---------------------------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------------------------

/// Stores this process has open, or has closed, by canonical path.
///
/// sled 0.34 releases its file lock a moment after the last handle drops, once its IO threads
/// let go of the file (sled issue #1289), so reopening a store this process just closed can
/// find it still locked. This process knows it closed it, so `open` waits for the lock then, for
/// up to [`REOPEN_WAIT`]. A store open in this process, or held by another process, is
/// [`StoreError::Locked`] at once.
static OPEN_STORES: Mutex<BTreeMap<PathBuf, Held>> = Mutex::new(BTreeMap::new());
const REOPEN_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
enum Held {
    Open,
    ClosedAt(Instant),
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

fn open_db(config: &sled::Config, path: &Path) -> StoreResult<sled::Db> {
    let held = lock(&OPEN_STORES).get(&canonical(path)).copied();
    let wait_until = match held {
        Some(Held::Open) => {
            return Err(StoreError::Locked {
                path: path.to_owned(),
            })
        }
        Some(Held::ClosedAt(closed)) => Some(closed + REOPEN_WAIT),
        None => None,
    };
    loop {
        match config.open().map_err(|error| open_error(error, path)) {
            Err(StoreError::Locked { .. })
                if wait_until.is_some_and(|until| Instant::now() < until) =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            result => return result,
        }
    }
}

fn open_error(error: sled::Error, path: &Path) -> StoreError {
    match error {
        // sled takes an exclusive file lock on open and reports a failure to get it only as
        // this message.
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: path.to_owned(),
            }
        }
        sled::Error::Io(io) => StoreError::Io(io),
        other => StoreError::Sled(other),
    }
}

// ---------------------------------------------------------------------------------------------
// The commit watermark: detecting a lost suffix of the log
// ---------------------------------------------------------------------------------------------

/// The watermark's file, beside sled's.
pub const WATERMARK_FILE: &str = "flowctl.commit";
const WATERMARK_MAGIC: &[u8; 8] = b"FLOWCTL\x01";
const WATERMARK_SLOT: usize = 32;

/// The number of the last commit round known durable, kept beside sled.
///
/// sled recovers the longest prefix of its log that reads back whole: a flipped bit or a
/// truncated segment loses everything after it, silently (completed jobs QUEUED again, jobs
/// gone). So every round of the group commit that writes numbers itself: it writes
/// `mcommit` = its number in sled, last, fsyncs sled, then writes the number here (fsynced
/// every [`WATERMARK_SYNC_INTERVAL`] and on close). At open, a log whose `mcommit` is below the
/// watermark lost durable rounds, and the store is refused ([`StoreError::Damaged`]) until
/// `flowctl store recover --accept-loss` takes what is left. The reverse (sled one round ahead,
/// a crash between the two fsyncs) is normal.
///
/// Two 32-byte slots (magic, round BE, the first 16 bytes of the SHA-256 of both); round `n` is
/// written to slot `n % 2`, so a torn write leaves the other, older one, which never raises a
/// false alarm. Stores opened without fsync ([`SledConfig::flush`] off) do not number rounds.
struct Watermark {
    file: std::fs::File,
    round: u64,
    /// When the file was last fsynced.
    synced: Instant,
}

/// How often the watermark is fsynced: written every round (a `pwrite` of 32 bytes), it is
/// fsynced at most this often, and on close. Its fdatasync takes ~3.8 ms against ~0.2 ms for
/// sled's flush of a round (`cargo bench --bench store`, "commit watermark", p50 on this
/// machine): in every round it would multiply the flush thread's time per round many times
/// over; once a second it takes 0.4% of it. What reaches the disk is never ahead of sled (it
/// is written after sled's flush), so the lag raises no false alarm; it only means that after a
/// power cut, damage to the last second of rounds goes undetected.
const WATERMARK_SYNC_INTERVAL: Duration = Duration::from_secs(1);

fn watermark_slot(round: u64) -> [u8; WATERMARK_SLOT] {
    use sha2::Digest;
    let mut slot = [0; WATERMARK_SLOT];
    slot[..8].copy_from_slice(WATERMARK_MAGIC);
    slot[8..16].copy_from_slice(&round.to_be_bytes());
    let sum = sha2::Sha256::digest(&slot[..16]);
    slot[16..].copy_from_slice(&sum[..16]);
    slot
}

impl Watermark {
    /// The round the file holds; `None` if there is no file.
    fn read(dir: &Path) -> StoreResult<Option<u64>> {
        let bytes = match std::fs::read(dir.join(WATERMARK_FILE)) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let round = bytes
            .chunks_exact(WATERMARK_SLOT)
            .filter_map(|slot| {
                let round = u64::from_be_bytes(slot[8..16].try_into().ok()?);
                (slot == watermark_slot(round)).then_some(round)
            })
            .max();
        match round {
            Some(round) => Ok(Some(round)),
            None => Err(StoreError::Damaged {
                path: dir.to_owned(),
                missing: format!("its commit watermark ({WATERMARK_FILE}) is unreadable"),
            }),
        }
    }

    /// Writes a new file holding `round`, durably (temporary file, fsync, rename, fsync of the
    /// directory).
    fn create(dir: &Path, round: u64) -> StoreResult<Watermark> {
        use std::io::Write;
        let path = dir.join(WATERMARK_FILE);
        let tmp = dir.join(format!("{WATERMARK_FILE}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&[watermark_slot(round), watermark_slot(round)].concat())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Watermark::open(dir, round)
    }

    fn open(dir: &Path, round: u64) -> StoreResult<Watermark> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(WATERMARK_FILE))?;
        Ok(Watermark {
            file,
            round,
            synced: Instant::now(),
        })
    }

    /// Records that round `round` is durable in sled; fsyncs the file if `sync` or if
    /// [`WATERMARK_SYNC_INTERVAL`] has passed.
    fn advance(&mut self, round: u64, sync: bool) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let offset = (round % 2) * WATERMARK_SLOT as u64;
        self.file.write_all_at(&watermark_slot(round), offset)?;
        if sync || self.synced.elapsed() >= WATERMARK_SYNC_INTERVAL {
            self.file.sync_data()?;
            self.synced = Instant::now();
        }
        self.round = round;
        Ok(())
    }
}

/// The last commit round sled's log holds (0: none).
fn read_commit(tree: &sled::Tree) -> StoreResult<u64> {
    match tree.get(META_COMMIT).map_err(StoreError::Sled)? {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt(META_COMMIT, "the commit round is not 8 bytes")),
    }
}

/// What a store's directory holds before it is opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Found {
    /// Nothing (missing or empty): a new store.
    New,
    /// sled's files.
    Sled,
}

/// Refuses a directory that is not a store: a file, or files that are not sled's (sled would
/// start a new store among them), or a watermark without sled's files (a store whose data is
/// gone).
fn inspect(path: &Path) -> StoreResult<Found> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Found::New),
        Err(_) if path.exists() && !path.is_dir() => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                found: "it is a file, not a directory".into(),
            })
        }
        Err(error) => return Err(error.into()),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        names.insert(entry?.file_name().to_string_lossy().into_owned());
    }
    if names.is_empty() {
        return Ok(Found::New);
    }
    if names.contains("conf") && names.contains("db") {
        return Ok(Found::Sled);
    }
    if names.contains(WATERMARK_FILE) {
        return Err(StoreError::Damaged {
            path: path.to_owned(),
            missing: "sled's files (conf, db) are missing".into(),
        });
    }
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    Err(StoreError::NotAStore {
        path: path.to_owned(),
        found: format!(
            "it holds other files ({}{}) and not sled's (conf, db)",
            shown.join(", "),
            if names.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        ),
    })
}

/// Whether another process holds sled's lock (an `flock` on `db`), as `/proc/locks` shows it:
/// taking the lock to find out would need `flock`, which std has only since Rust 1.89 (this
/// crate builds with 1.85). Where `/proc/locks` cannot be read, `false`.
fn locked_by_another_process(file: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(inode) = std::fs::metadata(file).map(|meta| meta.ino()) else {
        return false;
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    let me = std::process::id().to_string();
    // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`: pid, then major:minor:inode.
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let held = fields.iter().position(|f| *f == "FLOCK").and_then(|at| {
            let pid = fields.get(at + 3)?;
            let ino = fields
                .get(at + 4)?
                .rsplit(':')
                .next()?
                .parse::<u64>()
                .ok()?;
            Some(ino == inode && *pid != me)
        });
        held == Some(true)
    })
}

/// Copies a store's directory (not its masking key) for [`SledStore::open_read_only`], the
/// watermark first: copied while something writes, the copy's watermark is then no newer than
/// its log.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let watermark = from.join(WATERMARK_FILE);
    if watermark.exists() {
        std::fs::copy(&watermark, to.join(WATERMARK_FILE))?;
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_name() != "mask.key" && entry.file_name() != WATERMARK_FILE {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn check_layout(tree: &sled::Tree) -> StoreResult<()> {
    match tree.get(META_LAYOUT).map_err(StoreError::Sled)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| corrupt(META_LAYOUT, "the layout version is not 4 bytes"))?;
            if found == UPGRADABLE_LAYOUT {
                tree.insert(META_LAYOUT, &LAYOUT_VERSION.to_be_bytes())
                    .map_err(StoreError::Sled)?;
                tracing::info!(
                    from = found,
                    to = LAYOUT_VERSION,
                    "upgraded the job store's layout"
                );
            } else if found != LAYOUT_VERSION {
                return Err(StoreError::FormatVersion {
                    found,
                    expected: LAYOUT_VERSION,
                });
            }
            Ok(())
        }
        // Data without a layout version was written before versions existed.
        None if !tree.is_empty() => Err(StoreError::FormatVersion {
            found: 0,
            expected: LAYOUT_VERSION,
        }),
        None => {
            tree.insert(META_LAYOUT, &LAYOUT_VERSION.to_be_bytes())
                .map_err(StoreError::Sled)?;
            Ok(())
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is `()` or plain counters: a panic elsewhere leaves nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Group commit
// ---------------------------------------------------------------------------------------------

/// One thread that fsyncs on behalf of every waiting caller.
struct Flusher {
    shared: Arc<FlushShared>,
    thread: Option<JoinHandle<()>>,
}

struct FlushShared {
    /// Changes committed and counted so far; a change's number is its place in this sequence.
    committed: AtomicU64,
    flushes: AtomicU64,
    request: Mutex<FlushRequest>,
    wakeup: Condvar,
}

/// What a waiter is told: on disk, or the fsync's failure.
type Flushed = Result<(), Arc<str>>;

/// What the callers want and what the flusher has done, under one lock.
#[derive(Default)]
struct FlushRequest {
    /// The highest change number someone waits for.
    wanted: u64,
    /// Every change up to this number is on disk.
    upto: u64,
    /// Sticky: after a failed fsync nothing written since can be trusted to be on disk.
    failure: Option<Arc<str>>,
    /// Callers waiting, each for its change number. A flush wakes exactly the ones it covers:
    /// with hundreds of completions in flight, waking every waiter after every fsync (a
    /// broadcast) cost more than the writes.
    waiters: Vec<(u64, oneshot::Sender<Flushed>)>,
    stop: bool,
}

impl Flusher {
    /// `flush` writes (and fsyncs, returning `true`) everything applied before it was called
    /// that the round is for.
    fn start(flush: impl FnMut(Round) -> Result<bool, String> + Send + 'static) -> Flusher {
        let shared = Arc::new(FlushShared {
            committed: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            request: Mutex::new(FlushRequest::default()),
            wakeup: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("flowctl-store-flush".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || flush_loop(&shared, flush)
            })
            .expect("spawning the store's flush thread");
        Flusher {
            shared,
            thread: Some(thread),
        }
    }

    /// Waits until everything committed before this call is on disk.
    async fn wait(&self) -> StoreResult<()> {
        let shared = &self.shared;
        let change = shared.committed.fetch_add(1, Ordering::SeqCst) + 1;
        let receiver = {
            let mut request = lock(&shared.request);
            if let Some(message) = &request.failure {
                return Err(disk_failure(message));
            }
            if request.upto >= change {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            request.waiters.push((change, tx));
            if request.wanted < change {
                request.wanted = change;
                shared.wakeup.notify_one();
            }
            rx
        };
        let flushed = receiver
            .await
            .unwrap_or_else(|_| Err("the flush thread stopped".into()));
        flushed.map_err(|message| disk_failure(&message))
    }

    fn stop(&mut self) {
        lock(&self.shared.request).stop = true;
        self.shared.wakeup.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn disk_failure(message: &str) -> StoreError {
    StoreError::Stopped {
        reason: format!(
            "it could not write to disk ({message}); restart flowctl after fixing the disk"
        ),
    }
}

/// Why the flush thread runs a round.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Round {
    /// Someone waits for a change to be on disk.
    Waited,
    /// Nobody waits: writes that no one waits for (lazy ones, those of callers that never
    /// sync) still reach disk within [`LAZY_WRITE_DELAY`] or so.
    Tick,
    /// The store is closing: everything goes to disk.
    Final,
}

fn flush_loop(shared: &FlushShared, mut flush: impl FnMut(Round) -> Result<bool, String>) {
    loop {
        let round = {
            let mut request = lock(&shared.request);
            loop {
                if request.wanted > request.upto {
                    break Round::Waited;
                }
                if request.stop {
                    break Round::Final;
                }
                let (next, timeout) = shared
                    .wakeup
                    .wait_timeout(request, LAZY_WRITE_DELAY / 2)
                    .unwrap_or_else(PoisonError::into_inner);
                request = next;
                if timeout.timed_out() && request.wanted <= request.upto && !request.stop {
                    break Round::Tick;
                }
            }
        };
        // Every change numbered up to `target` was committed before it was numbered, so this
        // flush covers it; later ones wait for the next round.
        let target = shared.committed.load(Ordering::SeqCst);
        let result = flush(round);
        if round == Round::Final {
            if let Err(error) = result {
                tracing::error!(%error, "writing the job store on close failed");
            }
            return;
        }
        if result == Ok(true) {
            shared.flushes.fetch_add(1, Ordering::Relaxed);
        }
        if round == Round::Tick && result.is_ok() {
            continue;
        }
        let ready = {
            let mut request = lock(&shared.request);
            request.upto = target;
            if let Err(error) = &result {
                tracing::error!(%error, "flushing the job store failed");
                request.failure.get_or_insert_with(|| error.as_str().into());
            }
            let failure = request.failure.clone();
            let waiters = std::mem::take(&mut request.waiters);
            let (ready, waiting): (Vec<_>, Vec<_>) = waiters
                .into_iter()
                .partition(|(change, _)| *change <= target || failure.is_some());
            request.waiters = waiting;
            ready.into_iter().map(move |(_, tx)| (tx, failure.clone()))
        };
        // Woken outside the lock: their tasks may run at once on another thread.
        for (tx, failure) in ready {
            let _ = tx.send(failure.map_or(Ok(()), Err));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::{DateTime, TimeDelta, Utc};
    use proptest::prelude::*;
    use tempfile::TempDir;

    use super::{SledConfig, SledStore, LAYOUT_VERSION};
    use crate::job::{JobId, JobStatus, NewJob};
    use crate::store::conformance::{self, at, new_job};
    use crate::store::{Cas, Enqueued, ListFilter, NoJoins, Outcome, Store, StoreError};

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
        let source = include_str!("conformance.rs");
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

    /// sled itself, once the store that held `path` has let go of it.
    fn raw_sled(path: &std::path::Path) -> sled::Db {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match sled::open(path) {
                Ok(db) => return db,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(error) => panic!("{error}"),
            }
        }
    }

    /// The last all-or-nothing change's intent, as sled holds it.
    fn intent_of(store: &SledStore) -> Option<sled::IVec> {
        let intents = store.db.open_tree(super::INTENT_TREE).unwrap();
        intents.get(super::INTENT).unwrap()
    }

    fn open_at(path: &std::path::Path) -> SledStore {
        SledStore::open(SledConfig::new(path)).expect("open")
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

    #[test]
    fn a_second_open_in_this_process_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _first = open_at(&path);
        match SledStore::open(SledConfig::new(&path)) {
            Err(StoreError::Locked { path: locked }) => {
                assert_eq!(locked, path);
                let message = StoreError::Locked { path: locked }.to_string();
                assert!(message.contains("in use"), "{message}");
            }
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("opened a store twice"),
        }
    }

    const PROBE_ENV: &str = "FLOWCTL_STORE_LOCK_PROBE";

    /// Runs in a child process started by `a_second_process_is_locked_out`; does nothing
    /// otherwise.
    #[test]
    fn lock_probe_in_child_process() {
        if let Ok(path) = std::env::var(PROBE_ENV) {
            match SledStore::open(SledConfig::new(path)) {
                Err(StoreError::Locked { .. }) => println!("probe: locked"),
                Err(other) => println!("probe: other error: {other}"),
                Ok(_) => println!("probe: opened"),
            }
        }
    }

    #[test]
    fn a_second_process_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _held = open_at(&path);
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::sled_store::tests::lock_probe_in_child_process",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(PROBE_ENV, &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("probe: locked"), "child said: {stdout}");
    }

    #[test]
    fn another_layout_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(open_at(&path));
        {
            let db = raw_sled(&path);
            let tree = db.open_tree("flowctl").unwrap();
            tree.insert(super::META_LAYOUT, &99u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        match SledStore::open(SledConfig::new(&path)) {
            Err(StoreError::FormatVersion { found, expected }) => {
                assert_eq!((found, expected), (99, LAYOUT_VERSION));
            }
            Err(other) => panic!("expected FormatVersion, got {other}"),
            Ok(_) => panic!("opened a store of another layout"),
        }
    }

    #[tokio::test]
    async fn a_corrupt_record_is_reported_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        let jobs = conformance::created(
            store
                .enqueue(vec![new_job("R", "S", None); 2], None, at(0))
                .await
                .unwrap(),
        );
        let (bad, good) = (&jobs[0], &jobs[1]);
        let key = super::job_key(
            bad.created_at.timestamp_micros(),
            &super::id_bytes(&bad.job_id),
        );
        store
            .tree
            .insert(key, &[super::RECORD_FORMAT, 0xff, 0xff][..])
            .unwrap();
        assert!(matches!(
            store.get(&bad.job_id).await,
            Err(StoreError::Corrupt { .. })
        ));
        store.tree.insert(key, &[42u8][..]).unwrap();
        match store.get(&bad.job_id).await {
            Err(StoreError::Corrupt { key, message }) => {
                assert!(key.ends_with(bad.job_id.as_str()), "{key}");
                assert!(message.contains("format 42"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // A change to it fails the same way, and changes nothing.
        assert!(matches!(
            store.cancel(&bad.job_id, at(1)).await,
            Err(StoreError::Corrupt { .. })
        ));
        // It does not block the queue, now or after a restart.
        let claimed = store
            .claim("w", 5, Duration::from_secs(60), at(2))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].job_id, good.job_id);
        drop(store);
        let store = open_at(&path);
        assert_eq!(store.counts().await.unwrap()[&JobStatus::Processing], 1);
        assert!(matches!(
            store.get(&bad.job_id).await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn indexes_are_rebuilt_from_the_records_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        let mut batch = Vec::new();
        for (priority, county) in [(1, "C1"), (9, "C2"), (5, "C1"), (9, "C1"), (0, "C3")] {
            let mut job = new_job("R", "S", Some(county));
            job.priority = priority;
            job.max_attempts = 3;
            batch.push(job);
        }
        store.enqueue(batch, None, at(0)).await.unwrap();
        let running = store
            .claim("w", 3, Duration::from_secs(10), at(1))
            .await
            .unwrap();
        // One retry waiting until at(50), one running with a lease until at(11), one done.
        store
            .complete(
                &running[0].job_id,
                running[0].version,
                Outcome::Failure {
                    error: "e".into(),
                    retry_at: Some(at(50)),
                },
                &[],
                at(2),
            )
            .await
            .unwrap();
        store
            .complete(
                &running[1].job_id,
                running[1].version,
                Outcome::Cancelled,
                &[],
                at(2),
            )
            .await
            .unwrap();
        let counts = store.counts().await.unwrap();
        let listed = store.list(ListFilter::default()).await.unwrap();
        let c1 = store
            .list(ListFilter {
                county: Some("C1".into()),
                ..ListFilter::default()
            })
            .await
            .unwrap();
        drop(store);

        let store = open_at(&path);
        assert_eq!(store.counts().await.unwrap(), counts);
        assert_eq!(store.list(ListFilter::default()).await.unwrap(), listed);
        let c1_again = store
            .list(ListFilter {
                county: Some("C1".into()),
                ..ListFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(c1_again, c1);
        // The queue order, the retry's wait and the lease all survived.
        let next = store
            .claim("w", 10, Duration::from_secs(100), at(20))
            .await
            .unwrap();
        assert_eq!(next.len(), 2, "the waiting retry was claimable early");
        assert!(next[0].priority >= next[1].priority);
        let expired = store.requeue_expired(at(30), &NoJoins).await.unwrap();
        assert_eq!(expired.requeued, vec![running[2].job_id.clone()]);
        let later = store
            .claim("w", 10, Duration::from_secs(100), at(50))
            .await
            .unwrap();
        let mut got: Vec<JobId> = later.iter().map(|job| job.job_id.clone()).collect();
        got.sort();
        let mut want = vec![running[0].job_id.clone(), running[2].job_id.clone()];
        want.sort();
        assert_eq!(got, want);
    }

    /// The record encoding is part of the layout: a change to `Job`, `JobRequest` or `Record`
    /// that changes these bytes needs a new `LAYOUT_VERSION` and a migration.
    #[test]
    fn record_encoding_is_pinned() {
        let mut new = new_job("DAILY_REPORT", "SUPERVISOR", Some("C1"));
        new.request.chunk_size = Some(500);
        new.request.params.insert("k".into(), "v".into());
        new.parent_job_ids = vec!["JOB_PARENT01".parse().unwrap()];
        new.estimated_completion = Some(at(60));
        let mut job = new.into_job("JOB_ABCD1234".parse().unwrap(), at(0));
        job.status = JobStatus::Processing;
        job.lease_owner = Some("w".into());
        job.lease_until = Some(at(30));
        let bytes = super::encode_job(&job);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "010c4a4f425f4142434431323334020c4441494c595f5245504f52540a53555045525649\
             534f520102433105616c696365010c4a4f425f504152454e5430310b6d616e75616c3a74\
             65737401fbf40100000001016b017600000000000001010000fd00408e282d740d000000\
             01fd004eb52f2d740d0001017701fd00c7212c2d740d0001",
            "the on-disk record layout changed"
        );
        assert_eq!(super::decode_job(b"k", &bytes).unwrap(), job);
    }

    /// Eager dispatch really happens here (the conformance suite allows a store not to), in
    /// the completion's own write, and survives a reopen.
    #[tokio::test]
    async fn a_completion_claims_its_dependent() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_at(&dir.path().join("db"));
        let joins = vec![conformance::edge(
            "dep:C",
            &["P"],
            crate::workflow::Condition::OnSuccess,
            "C",
        )];
        store
            .enqueue(vec![new_job("P", "S", None)], None, at(0))
            .await
            .unwrap();
        let parent = store
            .claim("w", 1, Duration::from_secs(30), at(0))
            .await
            .unwrap()
            .remove(0);
        let (cas, claimed) = store
            .complete_and_claim(
                &parent.job_id,
                parent.version,
                conformance::success(),
                &joins,
                at(1),
                "w",
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let Cas::Applied(done) = cas else { panic!() };
        let child = claimed.expect("the dependent is claimed");
        assert_eq!(done.children_created, vec![child.clone()]);
        assert_eq!(child.status, JobStatus::Processing);
        assert_eq!(child.version, 2);
        store.sync().await.unwrap();
        assert_eq!(store.flushes(), 2, "enqueue and completion: one fsync each");
        drop(store);
        let store = open_at(&dir.path().join("db"));
        assert_eq!(store.get(&child.job_id).await.unwrap(), Some(child));
    }

    /// `job`'s record as `tree` holds it (not the overlay).
    fn stored_job(tree: &sled::Tree, job: &crate::job::Job) -> Option<crate::job::Job> {
        let key = super::job_key(
            job.created_at.timestamp_micros(),
            &super::id_bytes(&job.job_id),
        );
        let bytes = tree.get(key).unwrap()?;
        Some(super::decode_job(&key, &bytes).unwrap())
    }

    fn ivec(bytes: &[u8]) -> sled::IVec {
        sled::IVec::from(bytes)
    }

    /// A lazy write waits for its delay; a durable write to the same key takes it along, and
    /// a lazy write after a durable one is durable too (the durable value must not wait).
    #[test]
    fn lazy_writes_wait_and_ride_with_the_next_durable_write() {
        use super::{Overlay, Write};
        let t0 = std::time::Instant::now();
        let later = t0 + Duration::from_millis(1);
        let mut overlay = Overlay::default();
        overlay.put(ivec(b"ja"), Some(ivec(b"claimed")), Write::Lazy, t0);
        let drained = overlay.drain(t0.checked_sub(Duration::from_millis(1)));
        assert!(drained.writes.is_empty(), "not due yet");
        overlay.written(&drained);
        assert_eq!(overlay.get(b"ja"), Some(Some(ivec(b"claimed"))));
        // Due once its delay has passed, or when closing.
        assert_eq!(overlay.drain(Some(t0)).writes.len(), 1);
        assert_eq!(overlay.drain(None).writes.len(), 1);
        // A completion replaces it: one write, of the newest value.
        overlay.put(ivec(b"ja"), Some(ivec(b"completed")), Write::Durable, later);
        let drained = overlay.drain(Some(t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0)));
        let values: Vec<_> = drained
            .writes
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(values, vec![(ivec(b"ja"), Some(ivec(b"completed")))]);
        overlay.written(&drained);
        assert_eq!(overlay.get(b"ja"), None, "in sled now");
        // Created (durable), then claimed (lazy) before any drain: still due at once.
        overlay.put(ivec(b"jb"), Some(ivec(b"queued")), Write::Durable, later);
        overlay.put(ivec(b"jb"), Some(ivec(b"claimed")), Write::Lazy, later);
        let drained = overlay.drain(Some(t0));
        assert_eq!(drained.writes.len(), 1);
        assert_eq!(drained.writes[0].1, Some(ivec(b"claimed")));
    }

    /// A key written again while a drain copies it stays in the overlay with its new value
    /// (the next drain writes it); the intent flag goes with the drain that saw it.
    #[test]
    fn a_key_written_during_a_drain_is_kept_for_the_next() {
        use super::{Overlay, Write};
        let now = std::time::Instant::now();
        let mut overlay = Overlay::default();
        overlay.put(ivec(b"ja"), Some(ivec(b"1")), Write::Durable, now);
        overlay.put(ivec(b"jb"), Some(ivec(b"1")), Write::Durable, now);
        overlay.intent = true;
        let drained = overlay.drain(Some(now));
        assert!(drained.intent);
        assert!(!overlay.intent);
        overlay.put(ivec(b"jb"), Some(ivec(b"2")), Write::Durable, now);
        overlay.written(&drained);
        assert_eq!(overlay.get(b"ja"), None);
        assert_eq!(overlay.get(b"jb"), Some(Some(ivec(b"2"))));
        let next = overlay.drain(Some(now));
        assert_eq!(next.writes.len(), 1);
        assert!(!next.intent);
    }

    proptest! {
        /// For any interleaving of durable and lazy writes with drains (a drain copies, more
        /// writes may come, then it lands): every read sees the newest value; a drain carries
        /// every key written durably since that key last went to sled, with its newest value;
        /// and a final drain leaves sled equal to what was written.
        #[test]
        fn the_overlay_never_holds_back_a_durable_write_nor_loses_one(
            ops in proptest::collection::vec((0u8..4, 0u8..4, any::<u8>()), 1..120)
        ) {
            use super::{Overlay, Write};
            let base = std::time::Instant::now();
            let mut overlay = Overlay::default();
            let mut sled: BTreeMap<sled::IVec, sled::IVec> = BTreeMap::new();
            let mut model: BTreeMap<sled::IVec, sled::IVec> = BTreeMap::new();
            let mut owed: BTreeSet<sled::IVec> = BTreeSet::new();
            let mut in_flight: Option<super::Drained> = None;
            let land = |drained: super::Drained, overlay: &mut Overlay,
                        sled: &mut BTreeMap<sled::IVec, sled::IVec>| {
                for (key, value, _) in &drained.writes {
                    sled.insert(key.clone(), value.clone().expect("puts only"));
                }
                overlay.written(&drained);
            };
            for (step, (action, key, value)) in ops.into_iter().enumerate() {
                let now = base + Duration::from_millis(step as u64);
                let key = ivec(&[b'j', key]);
                match action {
                    0 | 1 => {
                        let kind = if action == 0 { Write::Durable } else { Write::Lazy };
                        overlay.put(key.clone(), Some(ivec(&[value])), kind, now);
                        model.insert(key.clone(), ivec(&[value]));
                        if kind == Write::Durable {
                            owed.insert(key);
                        }
                    }
                    2 => {
                        if let Some(drained) = in_flight.take() {
                            land(drained, &mut overlay, &mut sled);
                        }
                        let drained = overlay.drain(now.checked_sub(Duration::from_millis(3)));
                        for key in std::mem::take(&mut owed) {
                            let carried = drained.writes.iter().find(|(k, _, _)| *k == key);
                            prop_assert!(carried.is_some(), "durable write held back");
                            let carried = carried.and_then(|(_, v, _)| v.clone());
                            prop_assert_eq!(carried.as_ref(), model.get(&key));
                        }
                        in_flight = Some(drained);
                    }
                    _ => {
                        if let Some(drained) = in_flight.take() {
                            land(drained, &mut overlay, &mut sled);
                        }
                    }
                }
                for (key, value) in &model {
                    let seen = match overlay.get(key) {
                        Some(pending) => pending,
                        None => sled.get(key).cloned(),
                    };
                    prop_assert_eq!(seen.as_ref(), Some(value));
                }
            }
            if let Some(drained) = in_flight.take() {
                land(drained, &mut overlay, &mut sled);
            }
            let last = overlay.drain(None);
            land(last, &mut overlay, &mut sled);
            prop_assert!(overlay.writes.is_empty());
            prop_assert_eq!(sled, model);
        }
    }

    /// A claim is seen at once by every read, reaches sled within about `LAZY_WRITE_DELAY`
    /// without anyone waiting for it, and a completion soon after writes the record once.
    #[tokio::test]
    async fn claims_reach_disk_late_and_completions_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_at(&dir.path().join("db"));
        let jobs = conformance::created(
            store
                .enqueue(vec![new_job("R", "S", None); 2], None, at(0))
                .await
                .unwrap(),
        );
        assert_eq!(
            stored_job(&store.tree, &jobs[0]).unwrap().status,
            JobStatus::Queued
        );
        let started = std::time::Instant::now();
        let claimed = store
            .claim("w", 2, Duration::from_secs(30), at(1))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        let seen = store.get(&claimed[0].job_id).await.unwrap().unwrap();
        assert_eq!(seen.status, JobStatus::Processing);
        if started.elapsed() < super::LAZY_WRITE_DELAY {
            assert_eq!(
                stored_job(&store.tree, &claimed[0]).unwrap().status,
                JobStatus::Queued,
                "a claim is not written at once"
            );
        }
        // The completion is on disk when it returns, whatever became of the claim.
        let Cas::Applied(done) = store
            .complete(
                &claimed[0].job_id,
                claimed[0].version,
                Outcome::Cancelled,
                &[],
                at(2),
            )
            .await
            .unwrap()
        else {
            panic!("not applied")
        };
        assert_eq!(stored_job(&store.tree, &done.job), Some(done.job.clone()));
        // The other claim gets there on its own.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stored_job(&store.tree, &claimed[1]).unwrap().status != JobStatus::Processing {
            assert!(
                std::time::Instant::now() < deadline,
                "the claim never reached sled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            stored_job(&store.tree, &claimed[1]),
            Some(claimed[1].clone())
        );
    }

    /// Closing writes what is still on its way, lazy writes included.
    #[tokio::test]
    async fn closing_writes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        let claimed = conformance::start(&store, new_job("R", "S", None), at(1)).await;
        drop(store);
        let db = raw_sled(&path);
        let tree = db.open_tree("flowctl").unwrap();
        assert_eq!(stored_job(&tree, &claimed), Some(claimed));
    }

    /// Without fsync nobody waits for the flush thread: reads must find what it has not yet
    /// written, of every kind (records, the child index, fire times).
    #[tokio::test]
    async fn reads_see_writes_still_on_their_way() {
        let dir = tempfile::tempdir().unwrap();
        let config = SledConfig {
            flush: false,
            ..SledConfig::new(dir.path().join("db"))
        };
        let store = SledStore::open(config).unwrap();
        let joins = vec![conformance::edge(
            "dep:C",
            &["P"],
            crate::workflow::Condition::OnSuccess,
            "C",
        )];
        for round in 0..20 {
            let fire = at(round);
            let parent = conformance::created(
                store
                    .enqueue(
                        vec![new_job("P", "S", None)],
                        Some(crate::store::UniqueKey::fire("nightly", fire)),
                        fire,
                    )
                    .await
                    .unwrap(),
            )
            .remove(0);
            assert_eq!(store.last_fire("nightly").await.unwrap(), Some(fire));
            let claimed = store
                .claim("w", 1, Duration::from_secs(30), fire)
                .await
                .unwrap()
                .remove(0);
            assert_eq!(claimed.job_id, parent.job_id);
            let Cas::Applied(done) = store
                .complete(
                    &parent.job_id,
                    claimed.version,
                    conformance::success(),
                    &joins,
                    fire,
                )
                .await
                .unwrap()
            else {
                panic!("not applied")
            };
            assert_eq!(store.get(&parent.job_id).await.unwrap(), Some(done.job));
            assert_eq!(
                store.children(&parent.job_id).await.unwrap(),
                done.children_created
            );
            assert_eq!(done.children_created.len(), 1);
            let page = store.list(ListFilter::default()).await.unwrap();
            assert!(page.jobs.contains(&done.children_created[0]));
            let child = &done.children_created[0];
            let claimed = store
                .claim("w", 1, Duration::from_secs(30), fire)
                .await
                .unwrap()
                .remove(0);
            assert_eq!(claimed.job_id, child.job_id);
            store
                .complete(
                    &child.job_id,
                    claimed.version,
                    Outcome::Cancelled,
                    &[],
                    fire,
                )
                .await
                .unwrap();
        }
    }

    /// The bytes of every key of the store.
    /// Every key and value but the commit round's (bookkeeping of the flush thread).
    fn keys_and_values(tree: &sled::Tree) -> BTreeMap<Vec<u8>, Vec<u8>> {
        tree.iter()
            .map(|entry| entry.unwrap())
            .filter(|(key, _)| key.as_ref() != super::META_COMMIT)
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
            .collect()
    }

    /// A completion that creates a child, cut by a crash right after its intent: every other
    /// key it writes is put back as it was before. The next open finishes the change.
    #[tokio::test]
    async fn a_change_cut_short_by_a_crash_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let joins = vec![conformance::edge(
            "dep:C",
            &["P"],
            crate::workflow::Condition::OnSuccess,
            "C",
        )];
        let store = open_at(&path);
        let parent = conformance::start(&store, new_job("P", "S", None), at(0)).await;
        store.sync().await.unwrap();
        let before = keys_and_values(&store.tree);
        let Cas::Applied(done) = store
            .complete(
                &parent.job_id,
                parent.version,
                conformance::success(),
                &joins,
                at(1),
            )
            .await
            .unwrap()
        else {
            panic!("not applied")
        };
        let child = done.children_created[0].clone();
        let after = keys_and_values(&store.tree);
        assert!(intent_of(&store).is_some());
        drop(store);
        {
            // The crash: the intent is on disk, the change's own writes are not.
            let db = raw_sled(&path);
            let tree = db.open_tree("flowctl").unwrap();
            for (key, value) in &after {
                match before.get(key) {
                    Some(old) if old != value => tree.insert(key, old.as_slice()).map(drop),
                    Some(_) => Ok(()),
                    None => tree.remove(key).map(drop),
                }
                .unwrap();
            }
            assert_eq!(keys_and_values(&tree), before);
            // The round never finished, so its number reached neither sled nor the watermark.
            let round = super::read_commit(&tree).unwrap() - 1;
            tree.insert(super::META_COMMIT, &round.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
            super::Watermark::create(&path, round).unwrap();
        }
        let store = open_at(&path);
        assert!(intent_of(&store).is_none());
        assert_eq!(keys_and_values(&store.tree), after);
        assert_eq!(store.get(&parent.job_id).await.unwrap(), Some(done.job));
        assert_eq!(store.get(&child.job_id).await.unwrap(), Some(child.clone()));
        assert_eq!(
            store.children(&parent.job_id).await.unwrap(),
            vec![child.clone()]
        );
        let counts = store.counts().await.unwrap();
        assert_eq!(
            (counts[&JobStatus::Completed], counts[&JobStatus::Queued]),
            (1, 1)
        );
        // The child is claimable, once.
        let claimed = store
            .claim("w", 5, Duration::from_secs(30), at(2))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].job_id, child.job_id);
    }

    /// The last intent stays on disk after its change is whole, and later single-record
    /// changes to its jobs are not undone by it at the next open.
    #[tokio::test]
    async fn a_finished_change_is_not_replayed_over_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        let jobs = conformance::created(
            store
                .enqueue(vec![new_job("R", "S", None); 3], None, at(0))
                .await
                .unwrap(),
        );
        let intent = intent_of(&store).expect("an intent");
        // Claims and a completion: single inserts, no new intent.
        let claimed = store
            .claim("w", 2, Duration::from_secs(30), at(1))
            .await
            .unwrap();
        store
            .complete(
                &claimed[0].job_id,
                claimed[0].version,
                Outcome::Cancelled,
                &[],
                at(2),
            )
            .await
            .unwrap();
        assert_eq!(intent_of(&store), Some(intent));
        let mut expected = Vec::new();
        for job in &jobs {
            expected.push(store.get(&job.job_id).await.unwrap());
        }
        drop(store);
        let store = open_at(&path);
        for (job, expected) in jobs.iter().zip(expected) {
            assert_eq!(store.get(&job.job_id).await.unwrap(), expected);
        }
        let counts = store.counts().await.unwrap();
        assert_eq!(
            (
                counts[&JobStatus::Queued],
                counts[&JobStatus::Processing],
                counts[&JobStatus::Cancelled]
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn which_changes_need_an_intent() {
        let job = |n: u8| sled::IVec::from(vec![super::JOB, n]);
        let needs =
            |keys: &[sled::IVec], creates_jobs| super::needs_intent(keys.iter(), creates_jobs);
        // Rewrites of existing jobs: each whole on its own.
        assert!(!needs(&[job(1)], false));
        assert!(!needs(&[job(1), job(2), job(3)], false));
        // One new job alone is one insert.
        assert!(!needs(&[job(1)], true));
        // New jobs with anything else, and any other kind of key.
        assert!(needs(&[job(1), job(2)], true));
        let join = sled::IVec::from(&[super::JOIN, b'x'][..]);
        assert!(needs(std::slice::from_ref(&join), false));
        assert!(needs(&[job(1), join], false));
    }

    #[test]
    fn an_unreadable_intent_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            &[9u8][..],
            &[super::RECORD_FORMAT, 0, 0, 0][..],
            &[super::RECORD_FORMAT, 0, 0, 0, 1, b'j', 7][..],
            &[super::RECORD_FORMAT, 0, 0, 0, 1, b'j', 1, 0, 0, 0, 9, 1][..],
        ] {
            assert!(
                matches!(super::decode_intent(bytes), Err(StoreError::Corrupt { .. })),
                "{bytes:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn intents_decode_to_what_was_encoded(
            writes in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
                0..20,
            )
        ) {
            let writes: BTreeMap<sled::IVec, Option<sled::IVec>> = writes
                .into_iter()
                .map(|(k, v)| (k.into(), v.map(Into::into)))
                .collect();
            let bytes = super::encode_intent(
                writes.iter().map(|(k, v)| (k.as_ref(), v.as_deref())),
            );
            let decoded = super::decode_intent(&bytes).unwrap();
            let expected: Vec<(&[u8], Option<&[u8]>)> = writes
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_deref()))
                .collect();
            prop_assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn a_layout_1_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(open_at(&path));
        {
            let db = raw_sled(&path);
            let tree = db.open_tree("flowctl").unwrap();
            tree.insert(super::META_LAYOUT, &1u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let store = open_at(&path);
        assert_eq!(
            store.tree.get(super::META_LAYOUT).unwrap().as_deref(),
            Some(&LAYOUT_VERSION.to_be_bytes()[..])
        );
    }

    /// Callers that arrive while an fsync runs share the next one, and each is woken when its
    /// own change is on disk. The fsync here takes 20 ms, so that the sharing does not depend
    /// on how fast this machine's disk is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_fsyncs() {
        const WRITERS: usize = 400;
        let flusher = Arc::new(super::Flusher::start(|_| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(true)
        }));
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let flusher = Arc::clone(&flusher);
                tokio::spawn(async move { flusher.wait().await.unwrap() })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let flushes = flusher
            .shared
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed);
        // The first caller's fsync, then one for everyone who came during it, and a few more
        // on a machine slow enough to spawn 400 tasks across several fsyncs.
        let rounds = started.elapsed().as_millis() as u64 / 20 + 1;
        assert!(
            (1..=rounds).contains(&flushes) && flushes <= 20,
            "{flushes} fsyncs for {WRITERS} writes"
        );
    }

    /// A failed fsync fails the changes it covered and every one after it.
    #[tokio::test]
    async fn a_failed_fsync_fails_every_later_wait() {
        let mut calls = 0;
        let flusher = super::Flusher::start(move |round| {
            if round != super::Round::Waited {
                return Ok(false);
            }
            calls += 1;
            if calls == 2 {
                Err("no space left on device".into())
            } else {
                Ok(true)
            }
        });
        flusher.wait().await.unwrap();
        for _ in 0..2 {
            match flusher.wait().await {
                Err(error @ StoreError::Stopped { .. }) => {
                    assert!(error.to_string().contains("no space left"), "{error}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A job with no retries whose worker dies every time: queued again after each of its 3
    /// crash recoveries, FAILED when the 4th lease expires, and the error says so truly (it
    /// said "lease of worker … expired on attempt 3 of 1").
    #[tokio::test]
    async fn a_job_whose_worker_keeps_dying_fails_after_its_crash_recoveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_at(&dir.path().join("db"));
        let job = conformance::start(&store, new_job("R", "S", None), at(0)).await;
        assert_eq!(job.max_attempts, 1);
        let mut now = 0;
        let mut lost = 0;
        let failed = loop {
            now += 31;
            let expired = store.requeue_expired(at(now), &NoJoins).await.unwrap();
            lost += 1;
            if let Some(done) = expired.finished.first() {
                break done.job.clone();
            }
            assert_eq!(expired.requeued, vec![job.job_id.clone()], "loss {lost}");
            let claimed = store
                .claim("worker-1", 1, Duration::from_secs(30), at(now))
                .await
                .unwrap();
            assert_eq!(claimed[0].attempt, lost + 1);
        };
        assert_eq!(lost, 1 + crate::store::LEASE_RECOVERY_ALLOWANCE);
        assert_eq!(lost, 4, "the documented default: 3 crash recoveries");
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.attempt, 4);
        assert_eq!(
            failed.error.as_deref(),
            Some(
                "worker worker-1 lost its lease on attempt 4, the last allowed: 1 attempt(s) \
                 (the report's retries + 1) plus 3 crash recoveries"
            )
        );
    }

    /// A crash between sled's fsync and the watermark's leaves sled a round ahead: normal, not
    /// damage. A watermark ahead of sled is damage.
    #[tokio::test]
    async fn the_watermark_may_lag_sled_by_a_round_but_never_lead_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        for _ in 0..3 {
            store
                .enqueue(vec![new_job("R", "S", None)], None, at(0))
                .await
                .unwrap();
        }
        let round = super::read_commit(&store.tree).unwrap();
        assert!(round >= 3, "{round}");
        drop(store);
        super::Watermark::create(&path, round - 1).unwrap();
        let store = reopen(&path).expect("sled a round ahead opens");
        assert_eq!(super::read_commit(&store.tree).unwrap(), round);
        drop(store);
        super::Watermark::create(&path, round + 1).unwrap();
        match reopen(&path) {
            Err(StoreError::Damaged { missing, .. }) => {
                assert!(missing.contains("missing"), "{missing}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a store behind its watermark was opened"),
        }
        let recovered = SledStore::recover(&path).unwrap();
        assert_eq!(
            (recovered.survived, recovered.durable, recovered.jobs),
            (round, Some(round + 1), 3)
        );
        reopen(&path).expect("a recovered store opens");
    }

    fn reopen(path: &std::path::Path) -> Result<SledStore, StoreError> {
        SledStore::open(SledConfig::new(path))
    }

    #[test]
    fn list_cursor_round_trips() {
        let id: JobId = "JOB_ABCD1234".parse().unwrap();
        let micros = (at(5) + TimeDelta::microseconds(7)).timestamp_micros();
        let position = super::parse_cursor(&format!("{micros}.{id}")).unwrap();
        assert_eq!(position, (micros, super::id_bytes(&id)));
        assert_eq!(
            super::cursor(position.0, &position.1),
            format!("{micros}.{id}")
        );
        for bad in [
            "",
            "1",
            "x.JOB_ABCD1234",
            "1.JOB_abcd1234",
            "1.JOB_ABCD1234.2",
        ] {
            assert!(super::parse_cursor(bad).is_err(), "{bad}");
        }
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
