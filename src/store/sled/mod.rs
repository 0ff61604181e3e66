//! The embedded job store, on sled: the default store (`--db PATH`), for one process.
//!
//! # Architecture invariants
//!
//! Each is explained in the file of the code that keeps it.
//!
//! - **sled holds the truth; every index is derived** (`indexes.rs`): the claim queue, the
//!   retry and lease indexes, the list index and the status counters live in memory, rebuilt
//!   from the records when the store opens, or read from the snapshot a clean close left
//!   (`snapshot.rs`), which is used only for the commit round it names and deleted before the
//!   open writes.
//! - **One writer** (`change.rs`): every change runs under one mutex, so changes are
//!   serializable (two parents of one join completing at the same instant fire the child once).
//! - **Write-behind** (`overlay.rs`, `writer.rs`): a change commits into an in-memory overlay
//!   that every read looks at first; the flush thread moves it into sled and fsyncs.
//! - **All or nothing without sled batches** (`intent.rs`): a drain that must land whole first
//!   writes its intent, which opening the store finishes.
//! - **Durable before returning** (`flusher.rs`): a method that changes a job waits for the
//!   flush round after its change (group commit); claims and heartbeats are lazy.
//! - **A lost suffix of the log is detected** (`watermark.rs`, `open.rs`): every round is
//!   numbered, and a store whose log ends before the last durable round is refused at open.
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
//! completion). The price is memory for every job, and an open that must rebuild the indexes:
//! from the snapshot a clean close left (`snapshot.rs`), or by reading every record after a
//! crash (a few seconds per million jobs).
//!
//! # Memory per job
//!
//! The indexes take ~70–100 bytes per finished job (the id → creation time map ~33 B, the list
//! B-tree ~40–60 B; queued and running jobs add their queue or lease entry). Where the rest
//! goes, measured with a counting allocator (2026-12-02; COMPLETED jobs of 232-byte records,
//! sled cache capped at 0.1 MiB unless the row says; heap after `sled::open` alone, after a
//! scan of every record, after `SledStore::open` by a scan, and while written):
//!
//! | jobs | sled open | + scan | reopened by a scan | while written |
//! |------|-----------|--------|--------------------|---------------|
//! | 10k  | 6.5 MiB   | 365 B/job | 1,186 B/job    | 3,169 B/job   |
//! | 100k | 10.4 MiB  | 309 B/job | 494 B/job      | 423 B/job     |
//! | 400k, cap 100 MiB | 23.6 MiB | 374 B/job | 507 B/job | 483 B/job |
//! | 400k, cap 64 MiB | 23.7 MiB | 286 B/job | 426 B/job | 377 B/job |
//!
//! So sled costs ~6 MiB fixed plus ~43 B per job for its page table; the indexes ~100 B; and a
//! scan leaves ~300 B per job of sled's node pages resident, more than the record itself. The
//! cache cap does not bound them in practice: sled 0.34's LRU queues page accesses in 256
//! shards and looks at a shard only when 64 accesses have queued there, so a store of fewer
//! than ~16k page accesses since open evicts nothing, whatever `cache_capacity` says, and a
//! larger one evicts late. Two levers were taken (2026-12-03): the index snapshot, so that a
//! restarted store reads no record and holds none of those pages, and the result's SHA-256
//! stored as 32 bytes, not 64 hex digits (layout 4). `cargo bench --bench store` measures what
//! a user sees, realistic daily-report jobs in a fresh process each: with 200k COMPLETED jobs
//! and the default cache, 484–487 heap B/job (770–774 resident) once done, 264–266 (469–479)
//! restarted, where the code before gave 500–503 (820–842) and 653–669 (846–877). Past sled's
//! cache, which fills up to its cap, a job costs ~120 heap bytes (~140 resident): the indexes
//! and sled's page table. What would bound the rest is retention (finished jobs pruned after a
//! configured age, as River and Temporal do), which flowctl does not have yet.
//!
//! Why write-behind: with sled's inserts inside the writer's turn, that turn was the
//! bottleneck (2 cores, `cargo bench --bench store`: 35–53k jobs/s, the mutex held all the
//! time, sled's inserts half of it). Moved to the flush thread, and claims written with their
//! completions, the same bench gives 71–87k jobs/s, and dependent start latency fell from
//! ~75 µs to ~26 µs at p50 (`cargo bench --bench latency`).
//!
//! # Files
//!
//! - `store.rs`: [`SledStore`], [`SledConfig`] and the [`Store`](crate::store::Store) impl.
//! - `transitions.rs`: the change behind each mutating method (enqueue, claim, renew,
//!   complete, cancel, the lease sweep).
//! - `list.rs`: reads over many jobs (children, list pages and their cursor).
//! - `change.rs`: one change, reading through its own writes, and its commit.
//! - `indexes.rs`: the in-memory indexes, rebuilt at open.
//! - `snapshot.rs`: the indexes saved at a clean close, so that an open reads no record.
//! - `overlay.rs`: committed writes not yet in sled, and which of them are lazy.
//! - `writer.rs`: the flush thread's side: the overlay into sled, then fsync.
//! - `flusher.rs`: the flush thread and group commit: rounds, and who is woken.
//! - `intent.rs`: all-or-nothing changes: the intent and its replay at open.
//! - `keys.rs`: the key layout; `codec.rs`: the value encodings and the layout version.
//! - `open.rs`: opening, closing, damage checks, recovery and read-only copies.
//! - `watermark.rs`: the commit watermark.

mod change;
mod codec;
mod flusher;
mod indexes;
mod intent;
mod keys;
mod list;
mod open;
mod overlay;
mod snapshot;
mod store;
#[cfg(test)]
mod testing;
mod transitions;
mod watermark;
mod writer;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use codec::LAYOUT_VERSION;
pub use open::Recovered;
pub use store::{SledConfig, SledStore};
pub use watermark::WATERMARK_FILE;

/// Locks `mutex`, whether or not a thread panicked holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is `()` or plain counters: a panic elsewhere leaves nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
