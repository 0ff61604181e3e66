//! Connection handling and retries: PostgreSQL's errors as store errors, which of them are
//! transient (a lost connection, a transaction PostgreSQL rolled back), and the retries of
//! writes ([`retrying!`]) and of reads ([`PgStore::read`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::store::{Inner, PgStore};
use crate::store::{StoreError, StoreResult};

/// Tries of a transaction PostgreSQL rolled back (deadlock, serialization failure, job id
/// collision), and of a read that lost its connection.
pub(super) const TRIES: u32 = 5;

/// A PostgreSQL error as a store error: [`StoreError::Unavailable`] when it is transient.
pub(super) fn pg_error(error: tokio_postgres::Error) -> StoreError {
    let message = describe(&error);
    if is_transient(&error) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Postgres(message)
    }
}

/// A failure to get a pooled connection as a store error (transient unless PostgreSQL refused).
pub(super) fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Unavailable(format!("no database connection: {other}")),
    }
}

/// An error's message: PostgreSQL's own (severity, message, SQLSTATE) or the client's.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// A connection problem, or a transaction PostgreSQL aborted that could succeed if run again.
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") // connection exception
                || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                || code.starts_with("53") // insufficient resources (too many connections, …)
                || rolled_back_code(code)
        }
        None => std::error::Error::source(error)
            .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some()),
    }
}

/// Serialization failure or deadlock: PostgreSQL rolled the transaction back; run it again.
fn rolled_back_code(code: &str) -> bool {
    code == "40001" || code == "40P01"
}

/// A transaction that failed without effect and is worth running again at once: PostgreSQL
/// rolled it back, or a generated job id was taken.
fn retry_now(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => {
            rolled_back_code(db.code().code())
                || (*db.code() == SqlState::UNIQUE_VIOLATION
                    && db.constraint() == Some("jobs_pkey"))
        }
        None => false,
    }
}

/// What a failed try of a write tells: run it again at once, or give up with this error.
pub(super) enum Failed {
    Retry,
    Give(StoreError),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(error: tokio_postgres::Error) -> Failed {
        if retry_now(&error) {
            tracing::debug!(error = %describe(&error), "transaction rolled back; running it again");
            Failed::Retry
        } else {
            Failed::Give(pg_error(error))
        }
    }
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Failed {
        Failed::Give(error)
    }
}

/// Runs `attempt` (an expression of type `Result<_, Failed>`, evaluated once per try) until it
/// succeeds, gives up, or has been rolled back [`TRIES`] times.
macro_rules! retrying {
    ($what:literal, $attempt:expr) => {{
        use $crate::store::postgres::errors::{Failed, TRIES};
        let mut tries = 0;
        loop {
            tries += 1;
            match $attempt {
                Ok(value) => break Ok(value),
                Err(Failed::Give(error)) => break Err(error),
                Err(Failed::Retry) if tries < TRIES => {
                    ::tokio::time::sleep(::std::time::Duration::from_millis(2 << tries)).await;
                }
                Err(Failed::Retry) => {
                    break Err($crate::store::StoreError::Unavailable(format!(
                        "{} was rolled back {TRIES} times in a row (deadlocks or conflicts)",
                        $what
                    )))
                }
            }
        }
    }};
}
pub(super) use retrying;

/// A copy of an error of this store, for every caller of a failed batch.
pub(super) fn copy_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Postgres(other.to_string()),
    }
}

impl PgStore {
    /// Runs a read, again on a transient failure (it changes nothing).
    pub(super) async fn read<T, F, Fut>(&self, what: &str, read: F) -> StoreResult<T>
    where
        F: Fn(Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match read(Arc::clone(&self.inner)).await {
                Err(error) if error.is_transient() && tries < TRIES => {
                    tracing::debug!(%error, what, "read failed; trying again");
                    tokio::time::sleep(Duration::from_millis(20 << tries)).await;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::conformance::{at, new_job};
    use crate::store::pg_test_schema::TestSchema;
    use crate::store::{Enqueued, Store};

    /// Every connection of the store is killed: operations fail as transient errors or succeed
    /// after a retry, and wake-ups from other processes resume once the LISTEN connection is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_connections_are_transient_and_listening_resumes() {
        let base = database_or_skip!();
        let schema = TestSchema::create(&base, "t").await;
        let store = schema.open().await;
        let other = schema.open().await;
        let job = match store
            .enqueue(vec![new_job("R", "S", None)], None, at(0))
            .await
            .unwrap()
        {
            Enqueued::Created(mut jobs) => jobs.remove(0),
            Enqueued::Existing(_) => panic!(),
        };
        let admin = schema.client().await;
        let killed = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND application_name = $1",
                &[&schema.name()],
            )
            .await
            .unwrap();
        assert!(killed > 0);
        // Reads retry by themselves.
        assert_eq!(store.get(&job.job_id).await.unwrap().unwrap(), job);
        // Writes report a transient error or succeed; a retry succeeds.
        let mut claimed = Vec::new();
        for _ in 0..20 {
            match store.claim("w", 1, Duration::from_secs(30), at(1)).await {
                Ok(jobs) => {
                    claimed = jobs;
                    break;
                }
                Err(error) => {
                    assert!(error.is_transient(), "{error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert_eq!(claimed.len(), 1);
        // The listener reconnects (with backoff) and hears the other store again.
        let mut wake = store.subscribe();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            wake.borrow_and_update();
            other
                .enqueue(vec![new_job("R", "S", None)], None, at(2))
                .await
                .unwrap();
            if tokio::time::timeout(Duration::from_millis(500), wake.changed())
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never woken after reconnecting"
            );
        }
    }
}
