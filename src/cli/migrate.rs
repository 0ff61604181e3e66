//! `flowctl migrate`: creates or upgrades the PostgreSQL store's schema and says what it did.
//! Every command that opens the store migrates it too; this one does only that, for a
//! deployment step that runs before the processes start.

use super::{error, EXIT_OK};
use crate::store::postgres::{is_postgres_url, latest_migration, redact_url, PgStore};

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The PostgreSQL store, `postgres://user@host:port/database` (libpq-style parameters such
    /// as `?options=-csearch_path%3Dflowctl` pick the schema).
    #[arg(long, env = "FLOWCTL_STORE")]
    pub store: String,
}

pub fn run(args: MigrateArgs) -> u8 {
    if !is_postgres_url(&args.store) {
        return error(
            "flowctl migrate needs --store postgres://… (the embedded store needs no migration)",
        );
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return error(format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(PgStore::migrate(&args.store)) {
        Ok(applied) if applied.is_empty() => {
            outln!("the schema is up to date (version {})", latest_migration());
            EXIT_OK
        }
        Ok(applied) => {
            for m in &applied {
                outln!("applied migration {}: {}", m.version, m.name);
            }
            EXIT_OK
        }
        Err(e) => error(format!(
            "cannot migrate the store at {}: {e}",
            redact_url(&args.store)
        )),
    }
}
