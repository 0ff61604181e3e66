//! PostgreSQL tests: the database of `FLOWCTL_TEST_PG` (each test in a schema of its own, see
//! `flowctl::store::pg_test_schema`), or a skip where it is not set.

use flowctl::store::pg_test_schema::TestSchema;

/// The base URL from `FLOWCTL_TEST_PG`; without it, prints `skipped: FLOWCTL_TEST_PG not set`
/// and returns from the test (which passes).
macro_rules! database_or_skip {
    () => {
        match flowctl::store::pg_test_schema::database_url() {
            Some(url) => url,
            None => {
                println!("skipped: FLOWCTL_TEST_PG not set");
                return;
            }
        }
    };
}
pub(crate) use database_or_skip;

/// Kills every connection to the test database whose `application_name` is `application`
/// (the processes under test name theirs after the schema; the test's own do not), as a
/// database restart or a network cut would; returns how many.
pub async fn terminate_connections(schema: &TestSchema, application: &str) -> u64 {
    schema
        .client()
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND application_name = $1",
            &[&application],
        )
        .await
        .expect("terminate backends")
}
