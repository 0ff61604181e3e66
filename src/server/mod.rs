//! The HTTP API (axum): report triggers, job status, listing, cancellation, result downloads,
//! the graph, health, readiness, Prometheus metrics and the OpenAPI document.
//!
//! **Architecture invariants:**
//! - **Every error is `{"code", "message"}` with a stable code** ([`AppError`]); internal
//!   details (store errors, paths, panics) are logged, never sent.
//! - **Who a job runs as comes from the verified token only** ([`Caller`]); the `role` and
//!   `countyId` a client puts in a body are accepted and ignored.
//! - **A job outside the caller's county answers exactly as a job that does not exist** (`404`).
//! - **The route table is the one list** ([`api`]): each entry registers a handler under the
//!   method and path of its `#[utoipa::path]` and adds that operation to the OpenAPI document,
//!   so the document names every route ([`route_list`] is read from it); the document states
//!   the constraints the handlers enforce (a test sends each bound and its neighbour) and
//!   every status each operation answers (another provokes each one).
//! - **Handlers reach the store through [`store_call`]**: a transient failure is retried
//!   briefly, then answered `503 store_unavailable` with `Retry-After`, never `500`. A retried
//!   enqueue always carries a unique key (the client's, scoped by principal, or the trigger's),
//!   so a retry never queues twice.
//! - **An idempotency key belongs to the whole principal** (sub, role, county); its job record
//!   is the first request's fingerprint, and another request under it is `422`.
//! - **No connection holds the server forever**: [`serve_with`] bounds the time to send a
//!   request head and the time idle, and caps the number of open connections
//!   ([`ServeConfig`]).
//!
//! One file per resource or concern: [`errors`] (the error shape and its safety net),
//! [`caller`] (the token's principal), [`extract`] (body, path and query rejections),
//! [`store_call`] (retries), [`idempotency`], [`reports`], [`backfills`], [`jobs`] (and [`file_body`], the
//! streamed result), [`graph`], [`health`], [`openapi`], [`middleware`] and [`listen`] (the
//! accept loop).

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AuthConfig;
use crate::executor::Engine;

mod backfills;
mod caller;
mod errors;
mod extract;
mod file_body;
mod graph;
mod head_limit;
mod health;
mod idempotency;
mod jobs;
mod listen;
mod middleware;
mod openapi;
mod reports;
mod store_call;

pub use backfills::{BackfillRequest, BackfillResponse};
pub use caller::Caller;
pub use errors::AppError;
pub use extract::{ApiJson, ApiPath, ApiQuery};
pub use idempotency::{idempotency_unique_key, IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_PATTERN};
pub use jobs::{JobList, JobView, CURSOR_PATTERN, JOB_ID_PATTERN};
pub use listen::{serve, serve_with, ServeConfig, HEADER_LIMIT, MAX_HEADERS};
pub use openapi::{openapi, workflow_openapi};
pub use reports::{
    GenerateRequest, GenerateResponse, MAX_CHUNK_SIZE, MAX_KEY_LEN, TARGET_SYSTEM_PATTERN,
};
pub use store_call::{store_call, STORE_RETRY_AFTER_SECS, STORE_RETRY_BUDGET};

use errors::clip;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Arc<AuthConfig>,
    /// The OpenAPI document of this workflow, made at its first request.
    openapi: Arc<OnceLock<Bytes>>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, auth: Arc<AuthConfig>) -> AppState {
        AppState {
            engine,
            auth,
            openapi: Arc::default(),
        }
    }
}

/// The one list of routes: each handler is served at the method and path of its
/// `#[utoipa::path]`, and its operation is added to the OpenAPI document ([`openapi()`]).
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(reports::generate))
        .routes(routes!(backfills::backfill))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::job_result))
        .routes(routes!(graph::graph))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
}

/// Every `(method, path)` the router serves, paths in OpenAPI's `{param}` syntax: the
/// operations of [`api`]'s document.
pub fn route_list() -> Vec<(&'static str, &'static str)> {
    static ROUTES: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();
    ROUTES
        .get_or_init(|| {
            let doc = api().into_openapi();
            let mut routes = Vec::new();
            for (path, item) in &doc.paths.paths {
                // Made once per process: the paths live as long as it.
                let path: &'static str = path.clone().leak();
                routes.extend(openapi::operations(item).map(|(method, _)| (method, path)));
            }
            routes
        })
        .clone()
}

/// The API as a router; serve it with [`serve`].
pub fn app(state: AppState) -> Router {
    let (router, _) = api().split_for_parts();
    router
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> AppError {
    AppError::NotFound(format!("no route for {method} {}", clip(uri.path())))
}

async fn method_not_allowed(method: Method, uri: Uri) -> AppError {
    AppError::MethodNotAllowed(format!("{method} is not allowed on {}", clip(uri.path())))
}
