//! `flowctl serve`: the long-running service. Compiles the workflow, opens the store, takes
//! back jobs an earlier process left running, and runs the dispatcher, the cron scheduler and
//! the HTTP API together until SIGTERM or Ctrl-C, then shuts all three down gracefully.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{
    block_on, compiled_workflow, error, init_logging, start_engine, LogFormat, Started, StoreArgs,
    EXIT_ERROR, EXIT_OK,
};
use crate::auth::AuthConfig;
use crate::server::{self, AppState, ServeConfig};
use crate::workflow::Workflow;

/// How long requests in flight (e.g. a large download) may take after shutdown begins.
const HTTP_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The workflow: .flow files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub includes: super::IncludeArgs,
    /// Address to listen on (port 0 picks a free port; the address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8080", env = "FLOWCTL_LISTEN")]
    pub listen: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Override the workflow's worker pool size.
    #[arg(long)]
    pub workers: Option<u32>,
    /// Log format on stderr (the filter comes from FLOWCTL_LOG or RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

pub fn run(args: ServeArgs) -> u8 {
    init_logging(args.log_format);
    // Refuse to start without a way to verify tokens: every API call would fail.
    let auth = match AuthConfig::from_env() {
        Ok(a) => Arc::new(a),
        Err(e) => return error(e),
    };
    let workflow = match compiled_workflow(&args.paths, &args.includes, false) {
        Ok(w) => w,
        Err(code) => return code,
    };
    block_on(serve_async(Arc::new(workflow), auth, args))
}

async fn serve_async(workflow: Arc<Workflow>, auth: Arc<AuthConfig>, args: ServeArgs) -> u8 {
    // Header-read and idle timeouts, connection cap: the `env::HTTP_*` variables.
    let http_config = match ServeConfig::from_lookup(|name| std::env::var(name).ok()) {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    let selection = args.store.selection();
    let Started {
        engine, recovered, ..
    } = match start_engine(workflow, &selection, args.workers, None).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let n = recovered.requeued.len() + recovered.finished.len();
    if n > 0 {
        tracing::warn!(
            requeued = recovered.requeued.len(),
            finished = recovered.finished.len(),
            "recovered jobs left running by a process that died"
        );
    }

    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => return error(format!("cannot listen on {}: {e}", args.listen)),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return error(format!("cannot read the listening address: {e}")),
    };
    // Tests and scripts read this line.
    eprintln!("listening on http://{addr}");
    tracing::info!(%addr, algorithm = ?auth.algorithm(), "serving");

    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    tokio::spawn({
        let stop = stop.clone();
        async move {
            super::run::shutdown_signal().await;
            let _ = stop.send(true);
            // A second Ctrl-C abandons running jobs to lease recovery.
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("aborting");
                std::process::exit(EXIT_ERROR as i32);
            }
        }
    });

    let state = AppState::new(engine.clone(), auth);
    let http = tokio::spawn(stopping_all(
        stop.clone(),
        server::serve_with(listener, state, http_config, until(stopped.clone())),
    ));
    let dispatcher = tokio::spawn(stopping_all(
        stop.clone(),
        engine.clone().run(until(stopped.clone()), false),
    ));
    let scheduler = tokio::spawn(stopping_all(
        stop.clone(),
        crate::scheduler::run(
            engine.clone(),
            crate::scheduler::SystemClock,
            until(stopped.clone()),
        ),
    ));

    let mut code = EXIT_OK;
    match dispatcher.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => code = error(format!("dispatcher stopped: {e}")),
        Err(e) => code = error(format!("dispatcher crashed: {e}")),
    }
    match scheduler.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => code = error(format!("scheduler stopped: {e}")),
        Err(e) => code = error(format!("scheduler crashed: {e}")),
    }
    // The HTTP server waits for requests in flight; a stuck download must not hold the
    // process forever.
    match tokio::time::timeout(HTTP_GRACE, http).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => code = error(format!("HTTP server stopped: {e}")),
        Ok(Err(e)) => code = error(format!("HTTP server crashed: {e}")),
        Err(_) => tracing::warn!("requests still in flight after the grace period: dropped"),
    }
    tracing::info!("stopped");
    code
}

/// Resolves once `stopped` turns true (or its sender is gone).
async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Runs `component`; if it fails or panics, the others are told to stop too (a component
/// that ends cleanly, e.g. a scheduler with nothing to schedule, leaves them running).
async fn stopping_all<E>(
    stop: Arc<watch::Sender<bool>>,
    component: impl Future<Output = Result<(), E>>,
) -> Result<(), E> {
    let guard = StopOnDrop(Some(stop));
    let out = component.await;
    if out.is_ok() {
        guard.disarm();
    }
    out
}

/// Sends the stop signal when dropped armed: on an error return or during a panic's unwind.
struct StopOnDrop(Option<Arc<watch::Sender<bool>>>);

impl StopOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(true);
        }
    }
}
