//! The HTTP API (axum): report triggers, job status, listing, cancellation, result downloads,
//! the graph, health, readiness, Prometheus metrics and the OpenAPI document.
//!
//! **Architecture invariants:**
//! - **Every error is `{"code", "message"}` with a stable code** ([`AppError`]); internal
//!   details (store errors, paths, panics) are logged, never sent.
//! - **Who a job runs as comes from the verified token only** ([`Caller`]); the `role` and
//!   `countyId` a client puts in a body are accepted and ignored.
//! - **A job outside the caller's county answers exactly as a job that does not exist** (`404`).
//! - **The route table is the one list**: [`app`] registers [`route_list`], and the OpenAPI
//!   document must name every entry (a test checks it) and state the constraints the
//!   handlers enforce (another sends each bound and its neighbour).
//! - **Handlers reach the store through [`store_call`]**: a transient failure is retried
//!   briefly, then answered `503 store_unavailable` with `Retry-After`, never `500`. A retried
//!   enqueue always carries a unique key (the client's, scoped by principal, or the trigger's),
//!   so a retry never queues twice.
//! - **An idempotency key belongs to the whole principal** (sub, role, county); its job record
//!   is the first request's fingerprint, and another request under it is `422`.
//! - **No connection holds the server forever**: [`serve_with`] bounds the time to send a
//!   request head and the time idle, and caps the number of open connections
//!   ([`ServeConfig`]).

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncRead;

use crate::auth::AuthConfig;
use crate::executor::{Engine, JobRefused};
use crate::graph::GraphFormat;
use crate::job::{Job, JobId, JobRequest, JobStatus, Principal};
use crate::store::{CancelOutcome, Enqueued, ListFilter, StoreError, UniqueKey};
use crate::workflow::DataFormat;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Largest `chunkSize` a request may ask for (the workflow language's own bound).
pub const MAX_CHUNK_SIZE: u32 = 10_000_000;
/// Longest `idempotencyKey` and `targetSystem`, in characters.
pub const MAX_KEY_LEN: usize = 255;
/// How long `/readyz` waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Size of one chunk of a streamed result file.
const FILE_CHUNK: usize = 64 * 1024;

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

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An API error: a status, a stable `code` and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    /// 401: no token, or a token that does not verify.
    Unauthorized(String),
    /// 403: a valid token that may not do this.
    Forbidden(String),
    /// 404: no such job (or not the caller's), or no such route.
    NotFound(String),
    /// 405.
    MethodNotAllowed(String),
    /// 400: the request is malformed or out of range.
    InvalidRequest(String),
    /// 409: the job is not in a state that allows this.
    Conflict(String),
    /// 413.
    PayloadTooLarge(String),
    /// 431: request head over [`HEADER_LIMIT`].
    HeadersTooLarge(String),
    /// 415.
    UnsupportedMediaType(String),
    /// 422: an idempotency key this principal already used for another request.
    IdempotencyKeyReused(String),
    /// 422: the `Idempotency-Key` header and the body's `idempotencyKey` differ.
    IdempotencyKeyMismatch(String),
    /// 503: the store does not answer (readiness).
    Unavailable(String),
    /// 503 with `Retry-After`: the store failed transiently and kept failing through the
    /// retries ([`store_call`]).
    StoreUnavailable(String),
    /// 500: the detail is logged, never sent.
    Internal(String),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::IdempotencyKeyReused(_) | AppError::IdempotencyKeyMismatch(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AppError::Unavailable(_) | AppError::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::MethodNotAllowed(_) => "method_not_allowed",
            AppError::InvalidRequest(_) => "invalid_request",
            AppError::Conflict(_) => "conflict",
            AppError::PayloadTooLarge(_) => "payload_too_large",
            AppError::HeadersTooLarge(_) => "headers_too_large",
            AppError::UnsupportedMediaType(_) => "unsupported_media_type",
            AppError::IdempotencyKeyReused(_) => "idempotency_key_reused",
            AppError::IdempotencyKeyMismatch(_) => "idempotency_key_mismatch",
            AppError::Unavailable(_) => "unavailable",
            AppError::StoreUnavailable(_) => "store_unavailable",
            AppError::Internal(_) => "internal",
        }
    }

    /// Every code, for the OpenAPI document.
    pub const CODES: [&'static str; 14] = [
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "invalid_request",
        "conflict",
        "payload_too_large",
        "headers_too_large",
        "unsupported_media_type",
        "idempotency_key_reused",
        "idempotency_key_mismatch",
        "unavailable",
        "store_unavailable",
        "internal",
    ];

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        match self {
            AppError::Internal(_) => "internal error; see the server log",
            AppError::Unauthorized(m)
            | AppError::Forbidden(m)
            | AppError::NotFound(m)
            | AppError::MethodNotAllowed(m)
            | AppError::InvalidRequest(m)
            | AppError::Conflict(m)
            | AppError::PayloadTooLarge(m)
            | AppError::HeadersTooLarge(m)
            | AppError::UnsupportedMediaType(m)
            | AppError::IdempotencyKeyReused(m)
            | AppError::IdempotencyKeyMismatch(m)
            | AppError::Unavailable(m)
            | AppError::StoreUnavailable(m) => m,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let body = json!({ "code": self.code(), "message": self.message() });
        let mut response = (self.status(), Json(body)).into_response();
        match self {
            AppError::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            AppError::StoreUnavailable(_) => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(STORE_RETRY_AFTER_SECS),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> AppError {
        match e {
            StoreError::InvalidCursor(_) => AppError::InvalidRequest("invalid cursor".into()),
            // A stopped store does not come back by itself (the process exits 2 for its
            // supervisor); until then callers get 503, never a 500 that looks like a bug.
            e if e.is_transient() || e.is_stopped() => {
                tracing::warn!(error = %e, "the job store is unavailable");
                AppError::StoreUnavailable(STORE_UNAVAILABLE_MESSAGE.into())
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Store calls
// ---------------------------------------------------------------------------------------------

/// Pauses between the attempts of a store call that failed transiently (each ±25 %), as long
/// as [`STORE_RETRY_BUDGET`] allows.
const STORE_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(600),
];
/// How long a request keeps retrying a store that fails transiently before it answers 503
/// `store_unavailable`.
pub const STORE_RETRY_BUDGET: Duration = Duration::from_millis(1500);
/// The `Retry-After` (seconds) of a 503 `store_unavailable`.
pub const STORE_RETRY_AFTER_SECS: u64 = 2;
const STORE_UNAVAILABLE_MESSAGE: &str =
    "the job store is unavailable; retry after the time in Retry-After";

/// Runs one store operation for a request: a transient failure
/// ([`StoreError::is_transient`]) is retried with backoff within [`STORE_RETRY_BUDGET`], then
/// answered 503 `store_unavailable` with `Retry-After`; any other error is mapped once
/// ([`AppError::from`]). Every handler reaches the store through this, so none answers `500`
/// for a store that is only briefly away.
///
/// `op` must be safe to repeat: a transient failure may come after the store applied the
/// change (reads, `cancel`, and an `enqueue` with a unique key are).
pub async fn store_call<T, F, Fut>(mut op: F) -> Result<T, AppError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut delays = STORE_RETRY_DELAYS.iter();
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_transient() => {
                let delay = delays
                    .next()
                    .map(|d| d.mul_f64(rand::random_range(0.75..1.25)))
                    .filter(|d| started.elapsed() + *d <= STORE_RETRY_BUDGET);
                match delay {
                    Some(delay) => {
                        tracing::debug!(error = %e, ?delay, "the job store failed transiently; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

/// The request header that carries an idempotency key (the body's `idempotencyKey` too).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The store key of a client's idempotency key: scoped by the whole principal (subject, role,
/// county), so that one principal's key never names another's job. The principal is hashed
/// (length-prefixed, so no two principals share a text) into the key's subject part.
pub fn idempotency_unique_key(principal: &Principal, key: &str) -> UniqueKey {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"flowctl idempotency scope v1\0");
    for part in [
        Some(principal.subject.as_str()),
        Some(principal.role.as_str()),
        principal.county.as_deref(),
    ] {
        match part {
            Some(text) => {
                hash.update([1]);
                hash.update((text.len() as u64).to_be_bytes());
                hash.update(text.as_bytes());
            }
            None => hash.update([0]),
        }
    }
    UniqueKey::idempotency(format!("principal:{}", hex::encode(hash.finalize())), key)
}

/// The key of a request that names none: its own trigger, so that retrying the enqueue after
/// a transient store failure (which may have been applied) cannot queue the job twice.
fn trigger_unique_key(trigger: &str) -> UniqueKey {
    UniqueKey::idempotency("trigger", trigger)
}

/// The idempotency key of a request: the `Idempotency-Key` header or the body's
/// `idempotencyKey`; both may be given if they are equal.
fn idempotency_key(
    headers: &axum::http::HeaderMap,
    body: Option<String>,
) -> Result<Option<String>, AppError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| {
                    AppError::InvalidRequest(
                        "the Idempotency-Key header must be visible ASCII".into(),
                    )
                })?
                .to_string(),
        ),
        (Some(_), Some(_)) => {
            return Err(AppError::InvalidRequest(
                "send one Idempotency-Key header".into(),
            ))
        }
    };
    let key = match (header, body) {
        (Some(h), Some(b)) if h != b => {
            return Err(AppError::IdempotencyKeyMismatch(
                "the Idempotency-Key header and the body's idempotencyKey differ; send one, or the same in both".into(),
            ))
        }
        (Some(h), _) => Some(h),
        (None, b) => b,
    };
    if let Some(k) = &key {
        if k.is_empty() || k.chars().count() > MAX_KEY_LEN || k.chars().any(char::is_control) {
            return Err(AppError::InvalidRequest(format!(
                "idempotencyKey must be 1 to {MAX_KEY_LEN} characters without control characters"
            )));
        }
    }
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Extractors
// ---------------------------------------------------------------------------------------------

/// The verified caller: the principal jobs run as, from the bearer token.
///
/// `401` for a missing or invalid token, `403` for a role the workflow does not declare or a
/// token without `countyId` for a county-scoped role. A role in the workflow's `all_counties`
/// (`admin` here) sees every county and its jobs run for all of them (county `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see (and cancel) `job`.
    pub fn can_see(&self, job: &Job) -> bool {
        self.admin || (job.county.is_some() && job.county == self.principal.county)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let claims = state
            .auth
            .verify_header(header)
            .map_err(|e| AppError::Unauthorized(e.to_string()))?;
        if !state.engine.workflow.roles.contains(&claims.role) {
            return Err(AppError::Forbidden(format!(
                "role {} is not declared in the workflow",
                clip(&claims.role)
            )));
        }
        // The workflow's county rule (`Workflow::check_county`, the one every entry point
        // uses): a county-scoped role needs the token's `countyId`; a role in `all_counties`
        // sees every county and its jobs run for all of them.
        let workflow = &state.engine.workflow;
        workflow
            .check_county(&claims.role, claims.county_id.as_deref())
            .map_err(|e| AppError::Forbidden(format!("the token has no countyId claim: {e}")))?;
        let admin = workflow.sees_all_counties(&claims.role);
        let county = if admin { None } else { claims.county_id };
        Ok(Caller {
            principal: Principal {
                subject: claims.sub,
                role: claims.role,
                county,
            },
            admin,
        })
    }
}

/// `Json<T>` whose rejections are [`AppError`]s: `415` without a JSON content type, `413` over
/// [`BODY_LIMIT`], `400` for malformed JSON, wrong types and unknown fields.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType(
            "expected a JSON body with `Content-Type: application/json`".into(),
        ),
        JsonRejection::JsonSyntaxError(e) => {
            AppError::InvalidRequest(format!("malformed JSON: {}", serde_source(&e.body_text())))
        }
        JsonRejection::JsonDataError(e) => AppError::InvalidRequest(serde_source(&e.body_text())),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(
            format!("request body larger than {} KiB", BODY_LIMIT / 1024),
        ),
        other => AppError::InvalidRequest(format!(
            "cannot read the request body: {}",
            other.body_text()
        )),
    }
}

/// axum's message minus its generic prefix: serde's own words, with the field path.
fn serde_source(text: &str) -> String {
    text.split_once("target type: ")
        .map_or(text, |(_, rest)| rest)
        .to_string()
}

/// `Path<T>` whose rejection (e.g. `%ff`, not UTF-8) is a `400` [`AppError`].
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(AppError::InvalidRequest(format!(
                "invalid path: {}",
                clip(&rejection.body_text())
            ))),
        }
    }
}

/// `Query<T>` whose rejection is a `400` [`AppError`].
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> AppError {
    let text = rejection.body_text();
    let text = text
        .split_once("query string: ")
        .map_or(text.as_str(), |(_, rest)| rest);
    AppError::InvalidRequest(format!("invalid query: {text}"))
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// `POST /api/reports/generate`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerateRequest {
    pub report_type: String,
    #[serde(default)]
    pub data_format: Option<String>,
    #[serde(default)]
    pub chunk_size: Option<u32>,
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub target_system: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Sent by the seed's clients; accepted and never read: the token decides.
    #[serde(default)]
    #[allow(dead_code)]
    role: Option<IgnoredAny>,
    /// Sent by the seed's clients; accepted and never read: the token decides.
    #[serde(default, rename = "countyId")]
    #[allow(dead_code)]
    county_id: Option<IgnoredAny>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResponse {
    pub job_id: JobId,
    pub status: JobStatus,
    pub estimated_completion_time: Option<DateTime<Utc>>,
}

/// A job as the API shows it: no lease owner, no server paths, no version.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: JobId,
    pub status: JobStatus,
    pub report_type: String,
    pub role: String,
    #[serde(rename = "countyId")]
    pub county: Option<String>,
    pub subject: String,
    pub trigger_id: String,
    pub priority: u8,
    pub progress: u8,
    pub rows_written: u64,
    pub attempt: u32,
    pub max_attempts: u32,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub estimated_completion_time: Option<DateTime<Utc>>,
    pub retry_after: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub result_sha256: Option<String>,
    /// Where to download the result, once COMPLETED.
    pub result_url: Option<String>,
    pub request: JobRequest,
    pub parent_job_ids: Vec<JobId>,
    /// Only in `GET /api/jobs/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_job_ids: Option<Vec<JobId>>,
}

impl JobView {
    pub fn new(job: Job, children: Option<Vec<JobId>>) -> JobView {
        let result_url = (job.status == JobStatus::Completed)
            .then(|| format!("/api/jobs/{}/result", job.job_id));
        JobView {
            job_id: job.job_id,
            status: job.status,
            report_type: job.report_type,
            role: job.role,
            county: job.county,
            subject: job.subject,
            trigger_id: job.trigger_id,
            priority: job.priority,
            progress: job.progress,
            rows_written: job.rows_written,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            cancel_requested: job.cancel_requested,
            created_at: job.created_at,
            started_at: job.started_at,
            completed_at: job.completed_at,
            estimated_completion_time: job.estimated_completion,
            retry_after: job.run_after,
            error: job.error,
            result_sha256: job.result_sha256,
            result_url,
            request: job.request,
            parent_job_ids: job.parent_job_ids,
            child_job_ids: children,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<JobView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    report_type: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphParams {
    format: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

/// `(method, path, handler)`: the one list of routes.
fn routes() -> Vec<(&'static str, &'static str, MethodRouter<AppState>)> {
    vec![
        ("POST", "/api/reports/generate", post(generate)),
        ("GET", "/api/jobs", get(list_jobs)),
        ("GET", "/api/jobs/{id}", get(get_job)),
        ("POST", "/api/jobs/{id}/cancel", post(cancel_job)),
        ("GET", "/api/jobs/{id}/result", get(job_result)),
        ("GET", "/api/graph", get(graph)),
        ("GET", "/api/openapi.json", get(openapi_json)),
        ("GET", "/healthz", get(healthz)),
        ("GET", "/readyz", get(readyz)),
        ("GET", "/metrics", get(metrics)),
    ]
}

/// Every `(method, path)` the router serves, paths in OpenAPI's `{param}` syntax.
pub fn route_list() -> Vec<(&'static str, &'static str)> {
    routes().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The API as a router; serve it with [`serve`].
pub fn app(state: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// How [`serve`] treats connections. Slow or silent clients must not hold the server's file
/// descriptors: every connection is bounded in time, and their number is capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Time a connection has to send a whole request head, counted from when the server starts
    /// waiting for it (at connect, and after each response): partial headers, and silent
    /// connections, are closed after it.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed
    /// (kept-alive connections between requests). The header timer bounds waiting for a
    /// request too, so the shorter of the two applies to an idle connection.
    pub idle_timeout: Duration,
    /// Connections held open at most; beyond it the server stops accepting (new connections
    /// wait in the listen backlog) until one closes.
    pub max_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            max_connections: 512,
        }
    }
}

impl ServeConfig {
    /// The defaults overridden by [`crate::env::HTTP_HEADER_TIMEOUT`],
    /// [`crate::env::HTTP_IDLE_TIMEOUT`] and [`crate::env::HTTP_MAX_CONNECTIONS`] as `var`
    /// finds them. Errors name the variable.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<ServeConfig, String> {
        use crate::env::{HTTP_HEADER_TIMEOUT, HTTP_IDLE_TIMEOUT, HTTP_MAX_CONNECTIONS};
        let mut config = ServeConfig::default();
        let duration = |name: &str| -> Result<Option<Duration>, String> {
            var(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    crate::compiler::parse_duration(v.trim())
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            format!("{name}={v}: expected a duration such as 10s or 500ms")
                        })
                })
                .transpose()
        };
        if let Some(d) = duration(HTTP_HEADER_TIMEOUT)? {
            config.header_read_timeout = d;
        }
        if let Some(d) = duration(HTTP_IDLE_TIMEOUT)? {
            config.idle_timeout = d;
        }
        if let Some(v) = var(HTTP_MAX_CONNECTIONS).filter(|v| !v.trim().is_empty()) {
            config.max_connections = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| {
                    format!("{HTTP_MAX_CONNECTIONS}={v}: expected a whole number from 1 to 1000000")
                })?;
        }
        Ok(config)
    }
}

/// Request heads the socket's guard ([`head_limit`]) lets through to hyper, in bytes: heads
/// between [`HEADER_LIMIT`] and this get the JSON `431` from the `observe` middleware, larger
/// ones from the guard, which then closes the connection.
const GUARDED_HEADER_LIMIT: usize = 64 * 1024;
/// Largest request head (request line and header fields) the API accepts, in bytes.
pub const HEADER_LIMIT: usize = 16 * 1024;
/// Most header fields a request may have; beyond, the guard answers the JSON `431` and closes.
pub const MAX_HEADERS: usize = 100;
/// hyper's own limits, above the guard's so that hyper's bare `431` (no body) is never what a
/// client gets while the guard follows the connection's framing (see [`head_limit`]).
const HYPER_HEADER_LIMIT: usize = GUARDED_HEADER_LIMIT + 8 * 1024;
const HYPER_MAX_HEADERS: usize = 2 * MAX_HEADERS;

mod head_limit;

/// Serves `app(state)` on `listener` with [`ServeConfig::default`] until `shutdown` resolves,
/// then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, ServeConfig::default(), shutdown).await
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then stops accepting, closes
/// idle connections and lets requests in flight finish.
///
/// A hand-written accept loop over hyper's HTTP/1 connection (axum's `serve` has no timeouts
/// and no cap): a permit of a semaphore of [`ServeConfig::max_connections`] per connection,
/// hyper's header-read timer, and an idle watchdog per connection.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tokio::sync::{watch, Semaphore};

    let app = app(state);
    let max = config.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let (closing, _) = watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(HYPER_HEADER_LIMIT)
        .max_headers(HYPER_MAX_HEADERS)
        .keep_alive(true);
    let refusal = head_refusal().await;
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before accept:
                    // keep serving the connections we have, and try again shortly.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small JSON answers: send them now rather than wait for more to coalesce.
        let _ = tcp.set_nodelay(true);
        let tcp = head_limit::HeadLimit::new(
            tcp,
            head_limit::HeadLimits {
                bytes: GUARDED_HEADER_LIMIT,
                fields: MAX_HEADERS,
            },
            refusal.clone(),
        );
        tokio::spawn(serve_connection(
            tcp,
            app.clone(),
            builder.clone(),
            config.idle_timeout,
            closing.subscribe(),
            permit,
        ));
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection holds a permit until it ends.
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}

/// The whole response the socket's guard sends for a head over its limits: the API's JSON `431`.
async fn head_refusal() -> Bytes {
    let error = AppError::HeadersTooLarge(format!(
        "request head larger than {} KiB or with more than {MAX_HEADERS} header fields; \
         the connection is closed",
        GUARDED_HEADER_LIMIT / 1024
    ));
    let status = error.status();
    let body = axum::body::to_bytes(error.into_response().into_body(), BODY_LIMIT)
        .await
        .unwrap_or_default();
    head_limit::close_response(status, &body)
}

/// Activity of one connection, for its idle watchdog.
#[derive(Default)]
struct Activity {
    /// Milliseconds after `start` of the last byte read or written.
    last: std::sync::atomic::AtomicU64,
    /// Requests whose handler has not answered yet.
    in_flight: std::sync::atomic::AtomicUsize,
}

impl Activity {
    fn touch(&self, start: tokio::time::Instant) {
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self, start: tokio::time::Instant) -> tokio::time::Instant {
        start + Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn busy(&self) -> bool {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

/// One connection: hyper's HTTP/1 state machine, closed gracefully when the server stops or
/// when it idles longer than `idle_timeout`.
async fn serve_connection(
    tcp: head_limit::HeadLimit<tokio::net::TcpStream>,
    app: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    idle_timeout: Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let start = tokio::time::Instant::now();
    let activity = Arc::new(Activity::default());
    let io = hyper_util::rt::TokioIo::new(Watched {
        inner: tcp,
        activity: activity.clone(),
        start,
    });
    let tower = hyper_util::service::TowerToHyperService::new(app);
    let busy = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        let guard = InFlight::enter(busy.clone());
        let answer = hyper::service::Service::call(&tower, request);
        async move {
            let response = answer.await;
            drop(guard);
            response
        }
    });
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut closed = false;
    loop {
        let idle_deadline = activity.last(start) + idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = closing.changed(), if !closed => {
                if changed.is_err() || *closing.borrow() {
                    closed = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                if activity.busy() {
                    // A handler is working (no bytes move meanwhile): look again later.
                    activity.touch(start);
                } else if activity.last(start) + idle_timeout <= tokio::time::Instant::now() {
                    if closed {
                        // Closing, yet no byte moved for a whole idle timeout: a client that
                        // stopped reading its response. Dropping the connection closes it, so
                        // it cannot hold its slot under the cap forever.
                        tracing::debug!("dropping a connection whose client stopped reading");
                        return;
                    }
                    // Closes a connection waiting for a request; one whose response is still
                    // being written finishes it first.
                    tracing::debug!("closing an idle connection");
                    closed = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Counts a request in flight on its connection while alive.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: Arc<Activity>) -> InFlight {
        activity
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A socket that records when bytes last moved through it.
struct Watched {
    inner: head_limit::HeadLimit<tokio::net::TcpStream>,
    activity: Arc<Activity>,
    start: tokio::time::Instant,
}

impl Watched {
    fn touch(&self) {
        self.activity.touch(self.start);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        result
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Logs each request at debug level, refuses request heads over [`HEADER_LIMIT`], turns a handler panic into a `500` instead of a dropped connection, and
/// makes sure every error answer is JSON ([`json_error_body`]).
async fn observe(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let head_len = method.as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(0, |p| p.as_str().len())
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head_len > HEADER_LIMIT {
        return AppError::HeadersTooLarge(format!(
            "request head larger than {} KiB",
            HEADER_LIMIT / 1024
        ))
        .into_response();
    }
    let response = match CatchUnwind(Box::pin(next.run(request))).await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            AppError::Internal(format!("handler panicked: {what}")).into_response()
        }
    };
    let response = json_error_body(response).await;
    tracing::debug!(%method, path, status = response.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    response
}

/// An error answer that is not JSON (a rejection axum made itself) becomes `{"code",
/// "message"}` with the code of its status; JSON answers and successes pass unchanged.
async fn json_error_body(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|t| !t.trim().is_empty());
    let reason = status.canonical_reason().unwrap_or("error").to_string();
    let error = match status.as_u16() {
        400 => AppError::InvalidRequest(clip(&text.unwrap_or(reason))),
        401 => AppError::Unauthorized(clip(&text.unwrap_or(reason))),
        403 => AppError::Forbidden(clip(&text.unwrap_or(reason))),
        404 => AppError::NotFound(clip(&text.unwrap_or(reason))),
        405 => AppError::MethodNotAllowed(clip(&text.unwrap_or(reason))),
        409 => AppError::Conflict(clip(&text.unwrap_or(reason))),
        413 => AppError::PayloadTooLarge(clip(&text.unwrap_or(reason))),
        415 => AppError::UnsupportedMediaType(clip(&text.unwrap_or(reason))),
        431 => AppError::HeadersTooLarge(clip(&text.unwrap_or(reason))),
        503 => AppError::Unavailable(reason),
        s if s < 500 => AppError::InvalidRequest(clip(&text.unwrap_or(reason))),
        _ => AppError::Internal(text.unwrap_or(reason)),
    };
    let mut fixed = error.into_response();
    *fixed.status_mut() = status;
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let own: Vec<header::HeaderName> = fixed.headers().keys().cloned().collect();
    for (name, value) in parts.headers.iter() {
        if !own.contains(name) {
            fixed.headers_mut().append(name.clone(), value.clone());
        }
    }
    fixed
}

struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

async fn no_route(method: Method, uri: Uri) -> AppError {
    AppError::NotFound(format!("no route for {method} {}", clip(uri.path())))
}

async fn method_not_allowed(method: Method, uri: Uri) -> AppError {
    AppError::MethodNotAllowed(format!("{method} is not allowed on {}", clip(uri.path())))
}

/// Client-supplied text echoed in a message, cut to a sane length.
fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn generate(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<GenerateRequest>,
) -> Result<Response, AppError> {
    let workflow = &state.engine.workflow;
    let Some(report) = workflow.report(&body.report_type) else {
        let hint = crate::diagnostic::did_you_mean(
            &body.report_type,
            workflow.reports.iter().map(|r| r.name.as_str()),
        )
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default();
        return Err(AppError::InvalidRequest(format!(
            "unknown reportType {}{hint}",
            clip(&body.report_type)
        )));
    };
    if let Some(f) = &body.data_format {
        if DataFormat::from_name(f).is_none() {
            return Err(AppError::InvalidRequest(format!(
                "dataFormat must be csv or jsonl, not {}",
                clip(f)
            )));
        }
    }
    if let Some(n) = body.chunk_size {
        if !(1..=MAX_CHUNK_SIZE).contains(&n) {
            return Err(AppError::InvalidRequest(format!(
                "chunkSize must be between 1 and {MAX_CHUNK_SIZE}, not {n}"
            )));
        }
    }
    if let Some(t) = &body.target_system {
        if t.trim().is_empty() || t.chars().count() > MAX_KEY_LEN {
            return Err(AppError::InvalidRequest(format!(
                "targetSystem must be 1 to {MAX_KEY_LEN} characters, not only spaces"
            )));
        }
    }
    let idempotency_key = idempotency_key(&headers, body.idempotency_key)?;
    let request = JobRequest {
        chunk_size: body.chunk_size,
        data_format: body.data_format,
        priority: body.priority,
        target_system: body.target_system,
        params: BTreeMap::new(),
    };
    // `new_job` may count the source's rows (once per version of the file):
    // keep that IO off the async threads.
    let engine = state.engine.clone();
    let principal = caller.principal.clone();
    let report_type = report.name.clone();
    let trigger = format!("http:{:016x}", rand::random::<u64>());
    let unique = match &idempotency_key {
        Some(key) => idempotency_unique_key(&caller.principal, key),
        None => trigger_unique_key(&trigger),
    };
    let new_job = tokio::task::spawn_blocking(move || {
        engine.new_job(&report_type, principal, &trigger, request)
    })
    .await
    .map_err(|e| AppError::Internal(format!("estimating the job failed: {e}")))?
    .map_err(|e| match e {
        JobRefused::CountyRequired(e) => AppError::Forbidden(e.to_string()),
        JobRefused::UnknownReport(name) => {
            AppError::Internal(format!("report type {name} vanished"))
        }
    })?;
    let now = Utc::now();
    let store = &state.engine.store;
    let enqueued =
        store_call(|| store.enqueue(vec![new_job.clone()], Some(unique.clone()), now)).await?;
    let (job_id, status, estimated_completion_time) = match enqueued {
        Enqueued::Created(jobs) => {
            let job = jobs
                .into_iter()
                .next()
                .ok_or_else(|| AppError::Internal("enqueue returned no job".into()))?;
            tracing::info!(job = %job.job_id, report = %job.report_type, role = %job.role, county = %job.county.as_deref().unwrap_or("*"), subject = %job.subject, "job queued");
            (job.job_id, job.status, job.estimated_completion)
        }
        Enqueued::Existing(ids) => {
            let id = ids
                .into_iter()
                .next()
                .ok_or_else(|| AppError::Internal("idempotency key names no job".into()))?;
            let job = store_call(|| store.get(&id))
                .await?
                .ok_or_else(|| AppError::Internal(format!("idempotent job {id} is gone")))?;
            // The job record is the first request's fingerprint: the same key for another
            // request must not answer with the first one's job as if it were this one's; nor
            // may a key ever answer with another principal's job (fail closed).
            let principal = &caller.principal;
            let same_principal = job.subject == principal.subject
                && job.role == principal.role
                && job.county == principal.county;
            if !same_principal
                || job.report_type != new_job.report_type
                || job.request != new_job.request
            {
                return Err(AppError::IdempotencyKeyReused(
                    "this idempotency key was already used for a different request; use a new key for a new request".into(),
                ));
            }
            (job.job_id, job.status, job.estimated_completion)
        }
    };
    let location = HeaderValue::from_str(&format!("/api/jobs/{job_id}"))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let body = GenerateResponse {
        job_id,
        status,
        estimated_completion_time,
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// The job `id` if it exists and the caller may see it; `404` otherwise, the same either way.
async fn visible_job(state: &AppState, caller: &Caller, id: &str) -> Result<Job, AppError> {
    let not_found = || AppError::NotFound(format!("job {} not found", clip(id)));
    let job_id: JobId = id.parse().map_err(|_| not_found())?;
    match store_call(|| state.engine.store.get(&job_id)).await? {
        Some(job) if caller.can_see(&job) => Ok(job),
        _ => Err(not_found()),
    }
}

async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, AppError> {
    let job = visible_job(&state, &caller, &id).await?;
    let children = store_call(|| state.engine.store.children(&job.job_id))
        .await?
        .into_iter()
        .map(|c| c.job_id)
        .collect();
    Ok(Json(JobView::new(job, Some(children))))
}

async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<JobList>, AppError> {
    let status = match params.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(
            s.parse::<JobStatus>()
                .map_err(|e| AppError::InvalidRequest(e.to_string()))?,
        ),
        None => None,
    };
    let report_type = params.report_type.filter(|s| !s.is_empty());
    if let Some(t) = &report_type {
        if state.engine.workflow.report(t).is_none() {
            return Err(AppError::InvalidRequest(format!(
                "unknown reportType {}",
                clip(t)
            )));
        }
    }
    let limit = params.limit.unwrap_or(ListFilter::DEFAULT_LIMIT);
    if !(1..=ListFilter::MAX_LIMIT).contains(&limit) {
        return Err(AppError::InvalidRequest(format!(
            "limit must be between 1 and {}",
            ListFilter::MAX_LIMIT
        )));
    }
    let filter = ListFilter {
        status,
        report_type,
        // County-scoped callers always have a county (the extractor checks).
        county: if caller.admin {
            None
        } else {
            caller.principal.county.clone()
        },
        limit,
        cursor: params.cursor.filter(|c| !c.is_empty()),
    };
    let page = store_call(|| state.engine.store.list(filter.clone())).await?;
    let jobs = page
        .jobs
        .into_iter()
        .filter(|job| caller.can_see(job))
        .map(|job| JobView::new(job, None))
        .collect();
    Ok(Json(JobList {
        jobs,
        next_cursor: page.next_cursor,
    }))
}

async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, AppError> {
    let job = visible_job(&state, &caller, &id).await?;
    let now = Utc::now();
    match store_call(|| state.engine.store.cancel(&job.job_id, now)).await? {
        CancelOutcome::Cancelled(job) => {
            tracing::info!(job = %job.job_id, subject = %caller.principal.subject, "job cancelled");
            Ok(Json(JobView::new(job, None)))
        }
        CancelOutcome::Requested(job) => {
            tracing::info!(job = %job.job_id, subject = %caller.principal.subject, "cancel requested");
            Ok(Json(JobView::new(job, None)))
        }
        CancelOutcome::AlreadyFinished(job) => Err(AppError::Conflict(format!(
            "job {} is already {}",
            job.job_id, job.status
        ))),
        CancelOutcome::NotFound => Err(AppError::NotFound(format!("job {} not found", clip(&id)))),
    }
}

async fn job_result(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, AppError> {
    let job = visible_job(&state, &caller, &id).await?;
    if job.status != JobStatus::Completed {
        return Err(AppError::Conflict(format!(
            "job {} is {}; its result is available once it is COMPLETED",
            job.job_id, job.status
        )));
    }
    // A result is masked for the role its job ran as: another role may read it only if it
    // sees every field of the report in clear (no mask rule applies to it), so no role ever
    // reads a field its own rules mask.
    let sees_all_fields = state
        .engine
        .workflow
        .report(&job.report_type)
        .is_some_and(|r| !r.masks.iter().any(|m| m.applies_to(&caller.principal.role)));
    if job.role != caller.principal.role && !sees_all_fields {
        return Err(AppError::Forbidden(format!(
            "the result of job {} was masked for role {}, not {}",
            job.job_id, job.role, caller.principal.role
        )));
    }
    let path = job.result_path.as_deref().ok_or_else(|| {
        AppError::Internal(format!("completed job {} has no result path", job.job_id))
    })?;
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(job = %job.job_id, "result file missing");
            return Err(AppError::NotFound(format!(
                "the result of job {} is no longer available",
                job.job_id
            )));
        }
        Err(e) => return Err(AppError::Internal(format!("opening {path}: {e}"))),
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| AppError::Internal(format!("reading {path}: {e}")))?
        .len();
    let (content_type, extension) = if path.ends_with(".jsonl") {
        ("application/x-ndjson", "jsonl")
    } else {
        ("text/csv; charset=utf-8", "csv")
    };
    let mut response = Response::new(Body::new(FileBody::new(file, len)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}.{extension}\"",
        job.job_id
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(sha) = &job.result_sha256 {
        if let Ok(v) = HeaderValue::from_str(&format!("\"{sha}\"")) {
            headers.insert(header::ETAG, v);
        }
    }
    Ok(response)
}

async fn graph(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(params): ApiQuery<GraphParams>,
) -> Result<Response, AppError> {
    let (format, content_type) = match params.format.as_deref().unwrap_or("json") {
        "json" => (GraphFormat::Json, "application/json"),
        "dot" => (GraphFormat::Dot, "text/vnd.graphviz; charset=utf-8"),
        "mermaid" => (GraphFormat::Mermaid, "text/vnd.mermaid; charset=utf-8"),
        "text" => (GraphFormat::Text, "text/plain; charset=utf-8"),
        other => {
            return Err(AppError::InvalidRequest(format!(
                "format must be json, dot, mermaid or text, not {}",
                clip(other)
            )))
        }
    };
    let body = crate::graph::render(&state.engine.workflow, format);
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn openapi_json(State(state): State<AppState>) -> Response {
    let doc = state.openapi.get_or_init(|| {
        let names: Vec<&str> = state
            .engine
            .workflow
            .reports
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        Bytes::from(openapi(&names).to_string())
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response()
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the store answers and accepts changes: a stopped store (a write or fsync failed,
/// e.g. a full disk) is 503 `store_stopped` until the process exits and is restarted.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Response> {
    if let Some(reason) = state.engine.store.stopped() {
        let body = json!({
            "code": "store_stopped",
            "message": format!("the job store stopped accepting changes: {reason}"),
        });
        return Err((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
    }
    match tokio::time::timeout(READY_TIMEOUT, state.engine.store.counts()).await {
        Ok(Ok(_)) => Ok(Json(json!({ "status": "ready" }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the job store failed");
            Err(AppError::Unavailable("the job store is not reachable".into()).into_response())
        }
        Err(_) => {
            Err(AppError::Unavailable("the job store does not answer".into()).into_response())
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let (queue, up) = match tokio::time::timeout(READY_TIMEOUT, state.engine.store.counts()).await {
        Ok(Ok(counts)) => (
            counts
                .into_iter()
                .map(|(status, n)| (status.as_str().to_string(), n))
                .collect(),
            1,
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: store counts failed");
            (BTreeMap::new(), 0)
        }
        Err(_) => {
            tracing::warn!("metrics: store counts timed out");
            (BTreeMap::new(), 0)
        }
    };
    let mut text = state.engine.metrics.render(&queue);
    text.push_str(&format!(
        "# HELP flowctl_store_up Whether the job store answered this scrape.\n# TYPE flowctl_store_up gauge\nflowctl_store_up {up}\n"
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

/// A file streamed as a response body in [`FILE_CHUNK`]s, never read whole into memory.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Vec<u8>,
}

impl FileBody {
    fn new(file: tokio::fs::File, len: u64) -> FileBody {
        FileBody {
            file,
            remaining: len,
            buf: Vec::new(),
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.remaining.min(FILE_CHUNK as u64) as usize;
        if this.buf.len() != want {
            this.buf = vec![0; want];
        }
        let mut read = tokio::io::ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "result file shorter than announced",
                    ))));
                }
                let mut chunk = std::mem::take(&mut this.buf);
                chunk.truncate(n);
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(chunk)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAPI
// ---------------------------------------------------------------------------------------------

/// A job id: what [`JobId`]'s parser accepts.
pub const JOB_ID_PATTERN: &str = "^JOB_[A-Z0-9]{8}$";
/// A list cursor, as both stores write and read it: `<created_at µs>.<job id>`.
pub const CURSOR_PATTERN: &str = r"^[+-]?[0-9]+\.JOB_[A-Z0-9]{8}$";
/// An idempotency key: no control characters (`char::is_control`).
pub const IDEMPOTENCY_KEY_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]+$";
/// A target system: not only white space.
pub const TARGET_SYSTEM_PATTERN: &str = r"\S";

/// The OpenAPI 3 document of this API for a workflow with these report types (an empty list
/// leaves `reportType` an open string), served at `/api/openapi.json`. It states what the
/// handlers enforce: a test sends each documented bound and its neighbour.
pub fn openapi(report_types: &[&str]) -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
        })
    };
    let job_id = json!({
        "name": "id", "in": "path", "required": true,
        "description": "An id of another form answers 404 like a missing job.",
        "schema": { "type": "string", "pattern": JOB_ID_PATTERN }
    });
    let report_type = {
        let mut schema = json!({ "type": "string", "minLength": 1,
            "description": "A report type of the workflow." });
        if !report_types.is_empty() {
            schema["enum"] = json!(report_types);
        }
        schema
    };
    let idempotency_key = json!({ "type": "string", "minLength": 1, "maxLength": MAX_KEY_LEN,
        "pattern": IDEMPOTENCY_KEY_PATTERN });
    let store_errors = |mut responses: Value| {
        responses["503"] = json!({
            "description": "`store_unavailable`: the job store kept failing through ~1.5 s of retries; try again after `Retry-After` seconds.",
            "headers": { "Retry-After": { "schema": { "type": "integer", "minimum": 0 } } },
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
        });
        responses
    };
    let auth_errors = |mut responses: serde_json::Map<String, Value>| {
        responses.insert(
            "401".into(),
            error("Missing, malformed, expired or wrongly signed token, or a token without `sub`/`role`."),
        );
        responses.insert(
            "403".into(),
            error("Role not declared in the workflow, a token without `countyId` for a county-scoped role, or (result) a result masked for another role."),
        );
        responses.insert(
            "431".into(),
            error(&format!("Request head over {} KiB (beyond {} KiB, or over {MAX_HEADERS} header fields, the connection is then closed).", HEADER_LIMIT / 1024, GUARDED_HEADER_LIMIT / 1024)),
        );
        responses.insert(
            "500".into(),
            error("Internal error (details are logged, not sent)."),
        );
        Value::Object(responses)
    };
    let obj = |v: Value| match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let secured = json!([{ "bearerAuth": [] }]);
    let mut paths = serde_json::Map::new();
    paths.insert(
        "/api/reports/generate".into(),
        json!({ "post": {
                "summary": "Queue a report job run as the token's principal",
                "security": secured,
                "parameters": [{ "name": "Idempotency-Key", "in": "header", "required": false,
                    "description": "As the body's `idempotencyKey`; if both are sent they must be equal (else 422 `idempotency_key_mismatch`).",
                    "schema": idempotency_key }],
                "requestBody": { "required": true, "content": { "application/json": {
                    "schema": { "$ref": "#/components/schemas/GenerateRequest" } } } },
                "responses": store_errors(auth_errors(obj(json!({
                    "202": { "description": "Queued (or the job first created with this idempotency key by this principal).",
                        "headers": { "Location": { "schema": { "type": "string" } } },
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/GenerateResponse" } } } },
                    "400": error("Unknown report type, bad field type, unknown field, out-of-range value or malformed JSON."),
                    "413": error("Body larger than 64 KiB."),
                    "415": error("Content-Type is not application/json."),
                    "422": error("`idempotency_key_reused`: this principal used the key for a different request; `idempotency_key_mismatch`: the header and the body name different keys.")
                }))))
            }}),
    );
    paths.insert(
        "/api/jobs".into(),
        json!({ "get": {
                "summary": "The caller's jobs (a role in `all_counties`: every county's), newest first, one page at a time",
                "security": secured,
                "parameters": [
                    { "name": "status", "in": "query", "description": "Case-insensitive; empty means any.",
                        "schema": { "$ref": "#/components/schemas/JobStatus" } },
                    { "name": "reportType", "in": "query", "description": "Empty means any.", "schema": report_type },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": ListFilter::MAX_LIMIT, "default": ListFilter::DEFAULT_LIMIT } },
                    { "name": "cursor", "in": "query", "description": "`nextCursor` of the previous page: `<created_at µs>.<jobId>`.",
                        "schema": { "type": "string", "pattern": CURSOR_PATTERN } }
                ],
                "responses": store_errors(auth_errors(obj(json!({
                    "200": { "description": "A page; keep going while `nextCursor` is not null.",
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobList" } } } },
                    "400": error("Unknown status or report type, bad limit or cursor, unknown parameter.")
                }))))
            }}),
    );
    paths.insert(
        "/api/jobs/{id}".into(),
        json!({ "get": {
                "summary": "One job, with its parents and children",
                "security": secured,
                "parameters": [job_id],
                "responses": store_errors(auth_errors(obj(json!({
                    "200": { "description": "The job.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } },
                    "400": error("The path is not valid UTF-8."),
                    "404": error("No such job, or not the caller's county.")
                }))))
            }}),
    );
    paths.insert(
        "/api/jobs/{id}/cancel".into(),
        json!({ "post": {
                "summary": "Cancel a job: QUEUED ends at once, PROCESSING stops at its next chunk",
                "security": secured,
                "parameters": [job_id],
                "responses": store_errors(auth_errors(obj(json!({
                    "200": { "description": "The job after the request: CANCELLED, or PROCESSING with cancelRequested.",
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } },
                    "400": error("The path is not valid UTF-8."),
                    "404": error("No such job, or not the caller's county."),
                    "409": error("The job already finished.")
                }))))
            }}),
    );
    paths.insert(
        "/api/jobs/{id}/result".into(),
        json!({ "get": {
                "summary": "Download the result file (streamed)",
                "security": secured,
                "parameters": [job_id],
                "responses": store_errors(auth_errors(obj(json!({
                    "200": { "description": "The result, masked for the job's role and filtered to its county.",
                        "headers": { "ETag": { "description": "SHA-256 of the file.", "schema": { "type": "string" } } },
                        "content": {
                            "text/csv": { "schema": { "type": "string" } },
                            "application/x-ndjson": { "schema": { "type": "string" } }
                        } },
                    "400": error("The path is not valid UTF-8."),
                    "404": error("No such job, not the caller's county, or the file is gone."),
                    "409": error("The job is not COMPLETED.")
                }))))
            }}),
    );
    paths.insert(
        "/api/graph".into(),
        json!({ "get": {
                "summary": "The workflow's dependency graph",
                "security": secured,
                "parameters": [{ "name": "format", "in": "query",
                    "schema": { "type": "string", "enum": ["json", "dot", "mermaid", "text"], "default": "json" } }],
                "responses": auth_errors(obj(json!({
                    "200": { "description": "The graph.", "content": {
                        "application/json": { "schema": { "type": "object" } },
                        "text/vnd.graphviz": { "schema": { "type": "string" } },
                        "text/vnd.mermaid": { "schema": { "type": "string" } },
                        "text/plain": { "schema": { "type": "string" } }
                    } },
                    "400": error("Unknown format.")
                })))
            }}),
    );
    paths.insert(
        "/api/openapi.json".into(),
        json!({ "get": {
                "summary": "This document",
                "responses": { "200": { "description": "OpenAPI 3 document.", "content": { "application/json": { "schema": { "type": "object" } } } } }
            }}),
    );
    paths.insert(
        "/healthz".into(),
        json!({ "get": {
                "summary": "Liveness: the process answers",
                "responses": { "200": { "description": "Alive.", "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "status": { "type": "string", "enum": ["ok"] } } } } } } }
            }}),
    );
    paths.insert(
        "/readyz".into(),
        json!({ "get": {
                "summary": "Readiness: the job store answers",
                "responses": {
                    "200": { "description": "Ready.", "content": { "application/json": { "schema": {
                        "type": "object", "properties": { "status": { "type": "string", "enum": ["ready"] } } } } } },
                    "503": error("The store does not answer.")
                }
            }}),
    );
    paths.insert(
        "/metrics".into(),
        json!({ "get": {
                "summary": "Prometheus metrics: queue by status, completions, failures, durations, dependents, workers",
                "responses": { "200": { "description": "Prometheus text format 0.0.4.", "content": { "text/plain": { "schema": { "type": "string" } } } } }
            }}),
    );
    let components = json!({
        "securitySchemes": {
            "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "Claims: `sub`, `role` (declared in the workflow), `countyId` (required unless the role is in the workflow's `all_counties`), `exp` at most 24 h ahead (and after `iat`; `FLOWCTL_JWT_MAX_LIFETIME`); `nbf`, `iss` (one string, never a list), `aud` checked when configured." }
        },
        "schemas": {
            "Error": {
                "type": "object", "required": ["code", "message"],
                "properties": {
                    "code": { "type": "string", "enum": AppError::CODES },
                    "message": { "type": "string" }
                }
            },
            "JobStatus": { "type": "string", "enum": JobStatus::ALL.map(JobStatus::as_str) },
            "GenerateRequest": {
                "type": "object", "required": ["reportType"], "additionalProperties": false,
                "properties": {
                    "reportType": report_type,
                    "dataFormat": { "type": "string", "enum": ["csv", "jsonl"] },
                    "chunkSize": { "type": "integer", "minimum": 1, "maximum": MAX_CHUNK_SIZE },
                    "priority": { "type": "integer", "minimum": 0, "maximum": 255 },
                    "targetSystem": { "type": "string", "minLength": 1, "maxLength": MAX_KEY_LEN, "pattern": TARGET_SYSTEM_PATTERN },
                    "idempotencyKey": { "type": "string", "minLength": 1, "maxLength": MAX_KEY_LEN,
                        "pattern": IDEMPOTENCY_KEY_PATTERN,
                        "description": "The same key from the same principal (sub, role, county) with the same request returns the first job; with another request, 422." },
                    "role": { "description": "Accepted and ignored: the token's `role` decides." },
                    "countyId": { "description": "Accepted and ignored: the token's `countyId` decides." }
                }
            },
            "GenerateResponse": {
                "type": "object", "required": ["jobId", "status", "estimatedCompletionTime"],
                "properties": {
                    "jobId": { "type": "string" },
                    "status": { "$ref": "#/components/schemas/JobStatus" },
                    "estimatedCompletionTime": { "type": "string", "format": "date-time", "nullable": true }
                }
            },
            "JobRequest": {
                "type": "object",
                "properties": {
                    "chunkSize": { "type": "integer", "nullable": true },
                    "dataFormat": { "type": "string", "nullable": true },
                    "priority": { "type": "integer", "nullable": true },
                    "targetSystem": { "type": "string", "nullable": true },
                    "params": { "type": "object", "additionalProperties": { "type": "string" } }
                }
            },
            "Job": {
                "type": "object",
                "required": ["jobId", "status", "reportType", "role", "countyId", "subject", "triggerId", "priority",
                    "progress", "rowsWritten", "attempt", "maxAttempts", "cancelRequested", "createdAt",
                    "startedAt", "completedAt", "estimatedCompletionTime", "retryAfter", "error",
                    "resultSha256", "resultUrl", "request", "parentJobIds"],
                "properties": {
                    "jobId": { "type": "string" },
                    "status": { "$ref": "#/components/schemas/JobStatus" },
                    "reportType": { "type": "string" },
                    "role": { "type": "string" },
                    "countyId": { "type": "string", "nullable": true, "description": "null: all counties." },
                    "subject": { "type": "string" },
                    "triggerId": { "type": "string" },
                    "priority": { "type": "integer" },
                    "progress": { "type": "integer", "minimum": 0, "maximum": 100 },
                    "rowsWritten": { "type": "integer" },
                    "attempt": { "type": "integer" },
                    "maxAttempts": { "type": "integer" },
                    "cancelRequested": { "type": "boolean" },
                    "createdAt": { "type": "string", "format": "date-time" },
                    "startedAt": { "type": "string", "format": "date-time", "nullable": true },
                    "completedAt": { "type": "string", "format": "date-time", "nullable": true },
                    "estimatedCompletionTime": { "type": "string", "format": "date-time", "nullable": true },
                    "retryAfter": { "type": "string", "format": "date-time", "nullable": true },
                    "error": { "type": "string", "nullable": true },
                    "resultSha256": { "type": "string", "nullable": true },
                    "resultUrl": { "type": "string", "nullable": true },
                    "request": { "$ref": "#/components/schemas/JobRequest" },
                    "parentJobIds": { "type": "array", "items": { "type": "string" } },
                    "childJobIds": { "type": "array", "items": { "type": "string" },
                        "description": "Only in GET /api/jobs/{id}." }
                }
            },
            "JobList": {
                "type": "object", "required": ["jobs", "nextCursor"],
                "properties": {
                    "jobs": { "type": "array", "items": { "$ref": "#/components/schemas/Job" } },
                    "nextCursor": { "type": "string", "nullable": true }
                }
            }
        }
    });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "flowctl",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Report jobs: trigger, follow, cancel and download. Every error is `{\"code\", \"message\"}`."
        },
        "paths": paths,
        "components": components
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;

    #[test]
    fn every_route_is_documented_with_its_method() {
        let doc = openapi(&["DAILY_REPORT"]);
        for (method, path) in route_list() {
            let op = &doc["paths"][path][method.to_lowercase()];
            assert!(
                op.is_object(),
                "{method} {path} is not in the OpenAPI document"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(
            documented,
            route_list().len(),
            "the document names a route the router lacks"
        );
    }

    #[tokio::test]
    async fn plain_error_answers_become_json() {
        let plain = (
            StatusCode::BAD_REQUEST,
            [(header::ALLOW, "GET")],
            "Invalid URL",
        )
            .into_response();
        let fixed = json_error_body(plain).await;
        assert_eq!(fixed.status(), StatusCode::BAD_REQUEST);
        assert_eq!(fixed.headers()[header::ALLOW], "GET");
        assert!(fixed.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body = axum::body::to_bytes(fixed.into_body(), 4096).await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({ "code": "invalid_request", "message": "Invalid URL" })
        );
        // A bare 5xx says nothing of what it held.
        let panic = (StatusCode::BAD_GATEWAY, "upstream /secret/path").into_response();
        let body = axum::body::to_bytes(json_error_body(panic).await.into_body(), 4096)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "internal");
        assert!(!body.to_string().contains("secret"), "{body}");
        // JSON errors and successes pass unchanged.
        let ok = json_error_body((StatusCode::OK, "fine").into_response()).await;
        assert_eq!(
            ok.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn idempotency_scope_is_the_whole_principal() {
        let p = |sub: &str, role: &str, county: Option<&str>| Principal {
            subject: sub.into(),
            role: role.into(),
            county: county.map(str::to_string),
        };
        let keys: Vec<UniqueKey> = [
            p("alice", "CASE_WORKER", Some("C01")),
            p("alice", "CASE_WORKER", Some("C02")),
            p("alice", "SUPERVISOR", Some("C01")),
            p("alice", "CASE_WORKER", None),
            p("bob", "CASE_WORKER", Some("C01")),
            // No text concatenation makes two principals one.
            p("alice\u{0}CASE_WORKER", "", Some("C01")),
        ]
        .iter()
        .map(|principal| idempotency_unique_key(principal, "k"))
        .collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            idempotency_unique_key(&p("alice", "CASE_WORKER", Some("C01")), "k"),
            keys[0]
        );
    }

    #[test]
    fn serve_config_reads_its_variables() {
        use crate::env::{HTTP_HEADER_TIMEOUT, HTTP_IDLE_TIMEOUT, HTTP_MAX_CONNECTIONS};
        let with = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ServeConfig::from_lookup(move |name| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        assert_eq!(with(&[]).unwrap(), ServeConfig::default());
        let c = with(&[
            (HTTP_HEADER_TIMEOUT, "2s"),
            (HTTP_IDLE_TIMEOUT, "500ms"),
            (HTTP_MAX_CONNECTIONS, "64"),
        ])
        .unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.idle_timeout, Duration::from_millis(500));
        assert_eq!(c.max_connections, 64);
        for (name, value) in [
            (HTTP_HEADER_TIMEOUT, "0s"),
            (HTTP_IDLE_TIMEOUT, "soon"),
            (HTTP_MAX_CONNECTIONS, "0"),
        ] {
            let err = with(&[(name, value)]).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let e = AppError::Internal("sled: /var/lib/secret/db corrupt".into());
        assert_eq!(e.code(), "internal");
        assert!(!e.message().contains("secret"));
        let e: AppError = StoreError::NotFound("JOB_AAAAAAAA".parse().unwrap()).into();
        assert_eq!(e.code(), "internal");
    }

    #[test]
    fn visibility_is_by_county_and_admin_sees_all() {
        let caller = |role: &str, county: Option<&str>| Caller {
            principal: Principal {
                subject: "s".into(),
                role: role.into(),
                county: county.map(str::to_string),
            },
            admin: role == "ADMIN",
        };
        let mut job = NewJob::new("R", Principal::system("ADMIN"), "t")
            .into_job("JOB_AAAAAAAA".parse().unwrap(), Utc::now());
        assert!(!caller("CASE_WORKER", Some("C01")).can_see(&job));
        assert!(caller("ADMIN", None).can_see(&job));
        job.county = Some("C01".into());
        assert!(caller("CASE_WORKER", Some("C01")).can_see(&job));
        assert!(!caller("CASE_WORKER", Some("C02")).can_see(&job));
    }
}
