//! flowctl: a workflow/DAG engine for scheduled and on-demand report jobs.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod ast;
pub mod auth;
pub mod backfill;
pub mod cli;
pub mod compiler;
pub mod cron_expr;
pub mod diagnostic;
pub mod env;
pub mod executor;
pub mod formatter;
pub mod graph;
pub mod job;
pub mod loader;
pub mod masking;
pub mod masking_key;
pub mod metrics;
pub mod params;
pub mod parser;
pub mod pipeline;
pub mod scheduler;
pub mod server;
pub mod source_check;
pub mod source_map;
pub mod status;
pub mod store;
pub mod window;
pub mod workflow;

/// Runs the command line with the process's arguments and returns its exit
/// status: 0 success, 1 a workflow, check or job failed, 2 usage or internal
/// error.
pub fn run() -> std::process::ExitCode {
    cli::run(std::env::args_os())
}
