//! `flowctl worker`: the dispatcher and its pool of workers only — no HTTP API, no scheduler —
//! for the extra machines that share a PostgreSQL store with a `serve`. Claims jobs as they are
//! queued anywhere (the store's NOTIFY wakes it), renews their leases, completes them and fires
//! their dependents, takes over jobs whose worker died, until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;

use super::serve::LogFormat;
use super::{compile_and_report, error, open_store, StoreSelection, EXIT_FAILURE, EXIT_OK};
use crate::executor::{Engine, ExecutorConfig};
use crate::metrics::Metrics;
use crate::workflow::Workflow;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The workflow: .flow files or directories (the same as the other processes').
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The shared store, `postgres://…` (FLOWCTL_MASK_KEY is then required).
    #[arg(long, env = "FLOWCTL_STORE")]
    pub store: Option<String>,
    /// The embedded store's directory, when --store is not given (single process only).
    #[arg(long, default_value = ".flowctl/db", env = "FLOWCTL_DB")]
    pub db: PathBuf,
    /// Override the workflow's worker pool size.
    #[arg(long)]
    pub workers: Option<u32>,
    /// Log format on stderr (the filter comes from FLOWCTL_LOG or RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

pub fn run(args: WorkerArgs) -> u8 {
    init_logging(args.log_format);
    let compilation = match compile_and_report(&args.paths, false) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(workflow) = compilation.workflow else {
        return EXIT_FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return error(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(work(Arc::new(workflow), args))
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var(crate::env::LOG)
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

async fn work(workflow: Arc<Workflow>, args: WorkerArgs) -> u8 {
    let selection = StoreSelection::new(args.store.as_deref(), &args.db);
    let (store, hash_key) = match open_store(&selection).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !store.is_shared() {
        tracing::warn!(
            "the embedded store is single-process: use --store postgres://… to add machines"
        );
    }
    let mut config = ExecutorConfig::from_workflow(&workflow, hash_key);
    if let Some(w) = args.workers {
        config.pool_size = w.max(1) as usize;
    }
    super::run::sweep_temp_files(&config.results_dir);
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(Engine::new(workflow, store.clone(), config, metrics));

    // A shared store takes back only expired leases here (jobs of machines that died); the
    // dispatcher keeps sweeping while it runs.
    match store
        .requeue_all_processing(Utc::now(), &engine.joins)
        .await
    {
        Ok(expired) => {
            let n = expired.requeued.len() + expired.finished.len();
            if n > 0 {
                tracing::warn!(
                    requeued = expired.requeued.len(),
                    finished = expired.finished.len(),
                    "recovered jobs whose worker died"
                );
            }
        }
        Err(e) => return error(format!("cannot recover jobs: {e}")),
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
