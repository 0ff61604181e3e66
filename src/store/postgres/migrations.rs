//! The schema: versioned migrations, embedded in the binary and applied at open.
//!
//! # Schema (migration 1)
//!
//! Created by flowctl itself: versioned migrations are embedded in the binary ([`MIGRATIONS`]),
//! recorded in `flowctl_migrations`, and applied in one transaction under an advisory lock, so
//! that processes starting together do not race. Every object lives in the first schema of the
//! connection's `search_path` (`?options=-csearch_path%3Dflowctl` picks one).
//!
//! | table | holds |
//! |---|---|
//! | `jobs` | the job record: the seed's `report_jobs` columns plus DESIGN.md's |
//! | `job_parents` | (parent, child): the index behind [`Store::children`] |
//! | `join_state` | (join id, role, county) → pending events per parent (JSON [`JoinState`]) |
//! | `unique_keys` | (kind, part, part) → the job ids of the first enqueue with that key |
//! | `schedule_fires` | schedule → latest recorded fire time, for [`Store::last_fire`] |
//! | `job_counts` | (status, shard) → count, kept by triggers, for [`Store::counts`] |
//!
//! Indexes on `jobs`: the claim order `(priority DESC, created_at, job_id) WHERE status =
//! 'QUEUED'`, leases `(lease_until) WHERE lease_until IS NOT NULL` (exactly the PROCESSING jobs;
//! a predicate on the status instead lets the planner answer a completion's "these ids, if
//! PROCESSING" by scanning every running job, 100× slower once the statement's plan is cached),
//! and the list order `(created_at, job_id)`. Partial indexes cost a write only for the rows they
//! hold. `job_id` is `COLLATE "C"`, so ties sort byte-wise as in the sled store. Times are
//! `timestamptz`, which keeps microseconds, as [`store_time`] does.
//!
//! Status counters: a statement-level trigger adds each statement's status changes to one row
//! per (status, shard), the shard drawn from the transaction id, so concurrent transactions
//! rarely touch the same counter row. The same triggers send the `NOTIFY` when a statement leaves
//! a job QUEUED.
//!
//! A migration is recorded by its version and name only (no checksum of its text): a database
//! is up to date when `flowctl_migrations` holds every version. The SQL of each lives in
//! `migrations/NNNN_name.sql`, embedded with `include_str!`; the test
//! `the_embedded_migrations_are_the_shipped_ones` pins each one's text, so that a database
//! migrated by an older flowctl has exactly the schema this one expects.
//!
//! [`Store::children`]: crate::store::Store::children
//! [`Store::last_fire`]: crate::store::Store::last_fire
//! [`Store::counts`]: crate::store::Store::counts
//! [`JoinState`]: crate::store::JoinState
//! [`store_time`]: crate::store::store_time

use std::collections::HashSet;

use super::errors::pg_error;
use crate::store::{StoreError, StoreResult};

/// One schema change, applied once per database (schema) and recorded in `flowctl_migrations`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. Never edit one that has shipped: add the next.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "jobs, parents, joins, unique keys, schedule fires, status counters",
    sql: include_str!("migrations/0001_initial_schema.sql"),
}];

/// The newest schema version this flowctl knows.
pub fn latest_migration() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies missing migrations on `client`, under a transaction-scoped advisory lock.
pub(super) async fn migrate_client(
    client: &mut tokio_postgres::Client,
) -> StoreResult<Vec<Migration>> {
    let tx = client.transaction().await.map_err(pg_error)?;
    let schema: Option<String> = tx
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if schema.is_none() {
        return Err(StoreError::Postgres(
            "no schema to create the tables in: the first schema of search_path does not exist \
             (CREATE SCHEMA it first)"
                .into(),
        ));
    }
    tx.query(
        "SELECT pg_advisory_xact_lock(hashtext('flowctl migrate ' || current_schema()))",
        &[],
    )
    .await
    .map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS flowctl_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg_error)?;
    let applied: HashSet<i32> = tx
        .query("SELECT version FROM flowctl_migrations", &[])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let latest = latest_migration();
    if let Some(&found) = applied.iter().max() {
        if found > latest {
            return Err(StoreError::FormatVersion {
                found: found as u32,
                expected: latest as u32,
            });
        }
    }
    let mut done = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        tx.batch_execute(migration.sql).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO flowctl_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(pg_error)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        done.push(*migration);
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::MIGRATIONS;
    use crate::store::pg_test_schema::TestSchema;
    use crate::store::{PgConfig, PgStore, Store};

    /// Every shipped migration's version, name and the SHA-256 of its SQL text. A database
    /// records only the version and the name, so these must never change: the text of
    /// migration 1 hashes as the `MIGRATION_1` constant did before it moved into its `.sql`
    /// file.
    #[test]
    fn the_embedded_migrations_are_the_shipped_ones() {
        let shipped: Vec<(i32, &str, String)> = MIGRATIONS
            .iter()
            .map(|m| (m.version, m.name, hex::encode(Sha256::digest(m.sql))))
            .collect();
        assert_eq!(
            shipped,
            vec![(
                1,
                "jobs, parents, joins, unique keys, schedule fires, status counters",
                "8b4a601c6343559023244133737d75388fd6926dc476ea08a40a4b56b532b8b4".to_owned()
            )]
        );
        assert_eq!(super::latest_migration(), 1);
    }

    /// A schema migrated as flowctl did before its migrations moved into `.sql` files (the same
    /// text, recorded the same way) is up to date for this one, and opens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_migrated_by_an_older_flowctl_is_accepted() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        let client = schema.client().await;
        client
            .batch_execute(
                "CREATE TABLE flowctl_migrations (
                     version    integer PRIMARY KEY,
                     name       text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await
            .unwrap();
        client.batch_execute(MIGRATIONS[0].sql).await.unwrap();
        client
            .execute(
                "INSERT INTO flowctl_migrations (version, name) VALUES (1, $1)",
                &[&"jobs, parents, joins, unique keys, schedule fires, status counters"],
            )
            .await
            .unwrap();
        assert!(PgStore::migrate(&schema.url()).await.unwrap().is_empty());
        let store = PgStore::open(PgConfig::new(schema.url())).await.unwrap();
        assert!(store
            .get(&"JOB_ABCD1234".parse().unwrap())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_starting_together_migrate_once() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        let url = schema.url();
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PgStore::open(PgConfig::new(url)).await })
            })
            .collect();
        for open in opens {
            open.await.unwrap().expect("open");
        }
        assert!(PgStore::migrate(&url).await.unwrap().is_empty());
        let rows = schema
            .client()
            .await
            .query("SELECT version FROM flowctl_migrations", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), MIGRATIONS.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newer_schema_is_refused() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        drop(schema.open().await);
        schema
            .client()
            .await
            .execute(
                "INSERT INTO flowctl_migrations (version, name) VALUES (999, 'future')",
                &[],
            )
            .await
            .unwrap();
        match PgStore::open(PgConfig::new(schema.url())).await {
            Err(crate::store::StoreError::FormatVersion { found, .. }) => assert_eq!(found, 999),
            Err(other) => panic!("expected FormatVersion, got {other}"),
            Ok(_) => panic!("opened a newer schema"),
        }
    }
}
