//! `flowctl worker`: the dispatcher and its pool of workers only — no HTTP API, no scheduler —
//! for the extra machines that share a PostgreSQL store with a `serve`. Claims jobs as they are
//! queued anywhere (the store's NOTIFY wakes it), renews their leases, completes them and fires
//! their dependents, takes over jobs whose worker died, until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use super::{
    block_on, compiled_workflow, error, init_logging, start_engine, LogFormat, Started, StoreArgs,
    EXIT_OK,
};
use crate::workflow::Workflow;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The workflow: .flow files or directories (the same as the other processes').
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub includes: super::IncludeArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Override the workflow's worker pool size.
    #[arg(long)]
    pub workers: Option<u32>,
    /// Log format on stderr (the filter comes from FLOWCTL_LOG or RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

pub fn run(args: WorkerArgs) -> u8 {
    init_logging(args.log_format);
    let workflow = match compiled_workflow(&args.paths, &args.includes, false) {
        Ok(w) => w,
        Err(code) => return code,
    };
    block_on(work(Arc::new(workflow), args))
}

async fn work(workflow: Arc<Workflow>, args: WorkerArgs) -> u8 {
    let selection = args.store.selection();
    // A shared store takes back only expired leases here (jobs of machines
    // that died); the dispatcher keeps sweeping while it runs.
    let Started {
        engine,
        store,
        recovered,
    } = match start_engine(workflow, &selection, args.workers, None).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !store.is_shared() {
        tracing::warn!(
            "the embedded store is single-process: use --store postgres://… to add machines"
        );
    }
    let n = recovered.requeued.len() + recovered.finished.len();
    if n > 0 {
        tracing::warn!(
            requeued = recovered.requeued.len(),
            finished = recovered.finished.len(),
            "recovered jobs whose worker died"
        );
    }
    // Tests and scripts read this line.
    eprintln!(
        "worker {} running {} workers",
        engine.config.worker_id, engine.config.pool_size
    );
    match engine.run(super::run::shutdown_signal(), false).await {
        Ok(()) => {
            tracing::info!("stopped");
            EXIT_OK
        }
        Err(e) => error(format!("dispatcher stopped: {e}")),
    }
}
