//! The shared job store, on PostgreSQL (`--store postgres://…`): every flowctl process of every
//! machine points at one database and they share one queue. There is no consensus of our own:
//! PostgreSQL's transactions and row locks are the coordination.
//!
//! # Architecture invariants
//!
//! - **The database holds the truth; this process keeps nothing but a pool.** Any number of
//!   processes may open the same database. Every operation is one statement, or one
//!   transaction under READ COMMITTED, whose row locks make it correct against every other.
//! - **Every write to a job is a compare-and-swap on `version`** (`WHERE version = $expected`),
//!   so a stale worker (its lease was taken over) is refused: fencing. When nothing matched, the
//!   row is read again to tell [`Cas::Conflict`] from an illegal transition.
//! - **Claims never wait on each other**: `FOR UPDATE SKIP LOCKED`, in priority then age order,
//!   up to `max` jobs in one round trip.
//! - **A completion and the joins it feeds are one transaction.** Two parents finishing on two
//!   machines at the same instant are serialized on a row lock of their join state, and exactly
//!   one of them fires the child (`joins` tells how).
//! - **Wake-ups are `NOTIFY`s sent by the transaction that made work claimable** (a trigger on
//!   `jobs`), so they are delivered on commit, to every process; each process listens on a
//!   dedicated connection that reconnects with backoff. The process that wrote wakes its own
//!   dispatcher at once, without waiting for its notification (which it ignores).
//! - **Lost connections are errors, never job outcomes.** A store method returns
//!   [`StoreError::Unavailable`] (transient) and the caller retries with backoff; reads, and
//!   transactions PostgreSQL rolled back (deadlock, serialization failure), are retried here.
//!
//! # Where things are
//!
//! - `store`: [`PgStore`] (the pool, the wake counter, the background tasks) and its
//!   [`Store`] impl, which runs the operations below.
//! - `config`: [`PgConfig`] and the store URL ([`is_postgres_url`], [`redact_url`]).
//! - `migrations`: the schema (`migrations/NNNN_name.sql`) and how it is applied.
//! - `errors`: PostgreSQL errors as store errors, which of them are transient, and the retries.
//! - `rows`: the job columns, and a job decoded from a row.
//! - `cas`: why a compare-and-swap write matched nothing.
//! - `enqueue`, `claims`, `completions`, `joins`, `cancel`, `lease_sweep`, `list`: the
//!   operations, each with the statements it runs.
//! - `notify`: the LISTEN connection that hears other processes' work.
//!
//! [`Cas::Conflict`]: super::Cas::Conflict
//! [`StoreError::Unavailable`]: super::StoreError::Unavailable
//! [`Store`]: super::Store

/// The PostgreSQL database of the tests (`FLOWCTL_TEST_PG`), or the test returns early (it is
/// skipped) when there is none. For the unit tests of every file of this module.
#[cfg(test)]
macro_rules! database_or_skip {
    () => {
        match crate::store::pg_test_schema::database_url() {
            Some(url) => url,
            None => {
                println!("skipped: FLOWCTL_TEST_PG not set");
                return;
            }
        }
    };
}

mod cancel;
mod cas;
mod claims;
mod completions;
mod config;
#[cfg(test)]
mod differential;
mod enqueue;
mod errors;
mod joins;
mod lease_sweep;
mod list;
mod migrations;
mod notify;
mod rows;
mod store;

pub use config::{is_postgres_url, redact_url, PgConfig};
/// How PostgreSQL errors read and which are worth another try: the store's rules, which report
/// sources (`pipeline::postgres_source`) follow too.
pub(crate) use errors::{describe, is_transient};
pub use migrations::{latest_migration, Migration, MIGRATIONS};
pub use store::PgStore;
