//! The engine in this process, as `flowctl` builds it: a workflow's own executor settings,
//! a fixed masking key, fresh metrics, on the store the test gives.

use std::sync::Arc;

use flowctl::executor::{Engine, ExecutorConfig};
use flowctl::metrics::Metrics;
use flowctl::store::Store;
use flowctl::workflow::Workflow;

/// The masking key of every test engine (`hash` masks are stable across tests).
pub const MASK_KEY: [u8; 32] = [7; 32];

/// The executor settings of `workflow` (pool size, poll interval, lease, ...), to change
/// before [`engine_with`].
pub fn config(workflow: &Workflow) -> ExecutorConfig {
    ExecutorConfig::from_workflow(workflow, MASK_KEY)
}

/// An engine running `workflow` on `store` with the workflow's own settings.
pub fn engine(workflow: Arc<Workflow>, store: Arc<dyn Store>) -> Engine {
    let config = config(&workflow);
    engine_with(workflow, store, config)
}

/// An engine running `workflow` on `store` with `config`.
pub fn engine_with(
    workflow: Arc<Workflow>,
    store: Arc<dyn Store>,
    config: ExecutorConfig,
) -> Engine {
    Engine::new(workflow, store, config, Arc::new(Metrics::new()))
}
