//! Jobs: `GET /api/jobs` (the caller's, one page at a time), `GET /api/jobs/{id}`, `POST
//! /api/jobs/{id}/cancel` and `GET /api/jobs/{id}/result` (the streamed result file). A job
//! outside the caller's county answers `404` like a missing one ([`visible_job`]).

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{self, HeaderValue};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::errors::{clip, ErrorBody};
use super::file_body::FileBody;
use super::openapi::{AuthErrors, HeadErrors, InternalError, StoreErrors};
use super::{store_call, ApiPath, ApiQuery, AppError, AppState, Caller};
use crate::job::{Job, JobId, JobRequest, JobStatus};
use crate::store::{CancelOutcome, ListFilter};

/// A job id: what [`JobId`]'s parser accepts.
pub const JOB_ID_PATTERN: &str = "^JOB_[A-Z0-9]{8}$";
/// A list cursor, as both stores write and read it: `<created_at µs>.<job id>`.
pub const CURSOR_PATTERN: &str = r"^[+-]?[0-9]+\.JOB_[A-Z0-9]{8}$";

/// A job as the API shows it: no lease owner, no server paths, no version.
///
/// Every field but `childJobIds` is always sent, `null` when it has no value.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Job)]
pub struct JobView {
    #[schema(value_type = String)]
    pub job_id: JobId,
    pub status: JobStatus,
    pub report_type: String,
    pub role: String,
    /// `null`: all counties.
    #[serde(rename = "countyId")]
    #[schema(required = true)]
    pub county: Option<String>,
    pub subject: String,
    pub trigger_id: String,
    pub priority: u8,
    #[schema(minimum = 0, maximum = 100)]
    pub progress: u8,
    pub rows_written: u64,
    pub attempt: u32,
    pub max_attempts: u32,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub started_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub completed_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub estimated_completion_time: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub retry_after: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub error: Option<String>,
    #[schema(required = true)]
    pub result_sha256: Option<String>,
    /// Where to download the result, once COMPLETED.
    #[schema(required = true)]
    pub result_url: Option<String>,
    pub request: JobRequest,
    #[schema(value_type = Vec<String>)]
    pub parent_job_ids: Vec<JobId>,
    /// Only in `GET /api/jobs/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>, nullable = false)]
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

/// One page of `GET /api/jobs`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<JobView>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// [`JobStatus`] in the document: its names ([`JobStatus::as_str`]).
impl PartialSchema for JobStatus {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(JobStatus::ALL.map(JobStatus::as_str)))
            .into()
    }
}

impl ToSchema for JobStatus {}

// `JobRequest` as it is serialized: the type lives in `crate::job`, which knows nothing of
// HTTP, so its schema is stated here; a test compares these fields with a serialized request.
/// What the job was asked for.
#[derive(ToSchema)]
#[schema(as = JobRequest, rename_all = "camelCase")]
#[allow(dead_code)]
struct JobRequestSchema {
    #[schema(required = true)]
    chunk_size: Option<u32>,
    #[schema(required = true)]
    data_format: Option<String>,
    #[schema(required = true)]
    priority: Option<u8>,
    #[schema(required = true)]
    target_system: Option<String>,
    /// Resolved parameters, each value tagged with its type: `{"date": "2026-11-30"}`.
    params: std::collections::BTreeMap<String, serde_json::Value>,
    /// The period of data the run covers (`null`: the report reads no window).
    #[schema(required = true)]
    window: Option<WindowSchema>,
}

// `Window` as it is serialized (`crate::window`'s JSON shape).
/// The period of data a run covers: `[start, end)`.
#[derive(ToSchema)]
#[schema(as = Window, rename_all = "camelCase")]
#[allow(dead_code)]
pub(super) struct WindowSchema {
    start: chrono::DateTime<chrono::Utc>,
    /// Excluded.
    end: chrono::DateTime<chrono::Utc>,
    /// The IANA zone whose calendar the period follows and its local dates are read in.
    zone: String,
    #[schema(schema_with = window_kind_schema)]
    kind: String,
    /// A week's first day (`monday` … `sunday`); only for a week.
    #[schema(nullable = false)]
    week_starts: Option<String>,
    /// A short name for the period, as result paths use it: `2026-11-30`, `2026-W48`,
    /// `2026-11`, `2026-Q4`, `2026`, or `<start>-<end>` for a span.
    label: String,
}

fn window_kind_schema() -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["day", "week", "month", "quarter", "year", "span"]))
        .build()
}

impl PartialSchema for JobRequest {
    fn schema() -> RefOr<Schema> {
        JobRequestSchema::schema()
    }
}

impl ToSchema for JobRequest {}

/// The `{id}` of a job's routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct JobPath {
    /// An id of another form answers 404 like a missing job.
    #[param(pattern = "^JOB_[A-Z0-9]{8}$")]
    id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Case-insensitive; empty means any.
    #[param(value_type = JobStatus, required = false)]
    status: Option<String>,
    /// A report type of the workflow; empty means any.
    #[param(min_length = 1)]
    report_type: Option<String>,
    #[param(minimum = 1, maximum = 1000, default = 50)]
    limit: Option<usize>,
    /// `nextCursor` of the previous page: `<created_at µs>.<jobId>`.
    #[param(pattern = r"^[+-]?[0-9]+\.JOB_[A-Z0-9]{8}$")]
    cursor: Option<String>,
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

/// One job, with its parents and children
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "jobs",
    security(("bearerAuth" = [])),
    params(JobPath),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 400, description = "The path is not valid UTF-8.", body = ErrorBody),
        (status = 404, description = "No such job, or not the caller's county.", body = ErrorBody),
        AuthErrors,
        HeadErrors,
        InternalError,
        StoreErrors,
    )
)]
pub(super) async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
) -> Result<Json<JobView>, AppError> {
    let job = visible_job(&state, &caller, &id).await?;
    let children = store_call(|| state.engine.store.children(&job.job_id))
        .await?
        .into_iter()
        .map(|c| c.job_id)
        .collect();
    Ok(Json(JobView::new(job, Some(children))))
}

/// The caller's jobs (a role in `all_counties`: every county's), newest first, one page at a time
#[utoipa::path(
    get,
    path = "/api/jobs",
    tag = "jobs",
    security(("bearerAuth" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page; keep going while `nextCursor` is not null.", body = JobList),
        (status = 400, description = "Unknown status or report type, bad limit or cursor, unknown parameter.", body = ErrorBody),
        AuthErrors,
        HeadErrors,
        InternalError,
        StoreErrors,
    )
)]
pub(super) async fn list_jobs(
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

/// Cancel a job: QUEUED ends at once, PROCESSING stops at its next chunk
#[utoipa::path(
    post,
    path = "/api/jobs/{id}/cancel",
    tag = "jobs",
    security(("bearerAuth" = [])),
    params(JobPath),
    responses(
        (status = 200, description = "The job after the request: CANCELLED, or PROCESSING with cancelRequested.", body = JobView),
        (status = 400, description = "The path is not valid UTF-8.", body = ErrorBody),
        (status = 404, description = "No such job, or not the caller's county.", body = ErrorBody),
        (status = 409, description = "The job already finished.", body = ErrorBody),
        AuthErrors,
        HeadErrors,
        InternalError,
        StoreErrors,
    )
)]
pub(super) async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
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

/// Download the result file (streamed)
#[utoipa::path(
    get,
    path = "/api/jobs/{id}/result",
    tag = "jobs",
    security(("bearerAuth" = [])),
    params(JobPath),
    responses(
        (status = 200, description = "The result, masked for the job's role and filtered to its county.",
            headers(("ETag" = String, description = "SHA-256 of the file.")),
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "The path is not valid UTF-8.", body = ErrorBody),
        (status = 404, description = "No such job, not the caller's county, or the file is gone.", body = ErrorBody),
        (status = 409, description = "The job is not COMPLETED.", body = ErrorBody),
        AuthErrors,
        HeadErrors,
        InternalError,
        StoreErrors,
    )
)]
pub(super) async fn job_result(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{NewJob, Principal};
    use crate::server::openapi;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn keys(value: &Value) -> BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    fn names(list: &Value) -> BTreeSet<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    /// Each schema names exactly the fields its type sends, and requires those always sent.
    #[test]
    fn the_schemas_name_every_serialized_field() {
        let doc = openapi(&["R"]);
        let schemas = &doc["components"]["schemas"];
        let job = NewJob::new("R", Principal::system("ADMIN"), "t")
            .into_job("JOB_AAAAAAAA".parse().unwrap(), Utc::now());
        let view = serde_json::to_value(JobView::new(job.clone(), None)).unwrap();
        let shown = serde_json::to_value(JobView::new(job, Some(Vec::new()))).unwrap();
        assert_eq!(keys(&schemas["Job"]["properties"]), keys(&shown));
        assert_eq!(names(&schemas["Job"]["required"]), keys(&view));
        let request = serde_json::to_value(JobRequest::default()).unwrap();
        assert_eq!(keys(&schemas["JobRequest"]["properties"]), keys(&request));
        assert_eq!(names(&schemas["JobRequest"]["required"]), keys(&request));
        let list = serde_json::to_value(JobList {
            jobs: Vec::new(),
            next_cursor: None,
        })
        .unwrap();
        assert_eq!(keys(&schemas["JobList"]["properties"]), keys(&list));
        assert_eq!(names(&schemas["JobList"]["required"]), keys(&list));
        let statuses: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(schemas["JobStatus"]["enum"], serde_json::json!(statuses));
        // A job's own reportType stays open: it may predate the workflow's current reports.
        assert_eq!(schemas["Job"]["properties"]["reportType"].get("enum"), None);
    }

    /// The `#[param]` literals are the constants the handlers check.
    #[test]
    fn the_parameters_state_the_handlers_bounds() {
        let doc = openapi(&["R"]);
        let param = |path: &str, method: &str, name: &str| {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
                .clone()
        };
        let limit = &param("/api/jobs", "get", "limit")["schema"];
        assert_eq!(limit["minimum"], 1);
        assert_eq!(limit["maximum"], ListFilter::MAX_LIMIT);
        assert_eq!(limit["default"], ListFilter::DEFAULT_LIMIT);
        assert_eq!(
            param("/api/jobs", "get", "cursor")["schema"]["pattern"],
            CURSOR_PATTERN
        );
        assert_eq!(
            param("/api/jobs", "get", "reportType")["schema"]["enum"],
            serde_json::json!(["R"])
        );
        for (path, method) in [
            ("/api/jobs/{id}", "get"),
            ("/api/jobs/{id}/cancel", "post"),
            ("/api/jobs/{id}/result", "get"),
        ] {
            let id = param(path, method, "id");
            assert_eq!(id["in"], "path");
            assert_eq!(id["required"], true);
            assert_eq!(id["schema"]["pattern"], JOB_ID_PATTERN, "{path}");
        }
    }
}
