//! A PostgreSQL schema of its own for one test or benchmark, in the database named by
//! `FLOWCTL_TEST_PG`, so that many run in parallel on one database. Dropped with everything in
//! it when the value is dropped. Shared by the unit tests, `tests/postgres.rs` and
//! `benches/postgres.rs`, like [`super::conformance`].

use tokio_postgres::{Client, NoTls};

use super::{PgConfig, PgStore};

/// `FLOWCTL_TEST_PG`, when it is set and not blank.
pub fn database_url() -> Option<String> {
    std::env::var("FLOWCTL_TEST_PG")
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// A connection to `url`, driven on the current runtime.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("FLOWCTL_TEST_PG accepts connections");
    tokio::spawn(connection);
    client
}

pub struct TestSchema {
    base: String,
    name: String,
}

impl TestSchema {
    /// Creates a schema named `prefix` + a random suffix in the database at `base`.
    pub async fn create(base: &str, prefix: &str) -> TestSchema {
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        connect(base)
            .await
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create the test schema");
        TestSchema {
            base: base.to_owned(),
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL with this schema first in the search path, for connections named `application`.
    pub fn url_as(&self, application: &str) -> String {
        let separator = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-csearch_path%3D{}&application_name={application}",
            self.base, self.name
        )
    }

    /// The URL for the code under test: its connections carry the schema's name as their
    /// application name, which tells them apart from other tests' (and lets a test kill them).
    pub fn url(&self) -> String {
        self.url_as(&self.name)
    }

    /// A store on this schema.
    pub async fn open(&self) -> PgStore {
        PgStore::open(PgConfig::new(self.url()))
            .await
            .expect("open the store")
    }

    /// A connection of the test itself, under another application name than the code under
    /// test's.
    pub async fn client(&self) -> Client {
        connect(&self.url_as("flowctl_test")).await
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        // A runtime of its own: this may run inside (or after) the test's.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&base, NoTls)
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .map_err(std::io::Error::other)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {dropped:?}", self.name);
        }
    }
}
