//! `POST /api/reports/generate`: queue a report job run as the token's principal.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa::ToSchema;

use super::errors::{clip, ErrorBody};
use super::idempotency::{idempotency_key, idempotency_unique_key, trigger_unique_key};
use super::openapi::{AuthErrors, HeadErrors, InternalError, StoreErrors};
use super::{store_call, ApiJson, AppError, AppState, Caller};
use crate::executor::{JobRefused, Trigger, WindowRequest};
use crate::job::{JobId, JobRequest, JobStatus};
use crate::params::Given;
use crate::store::Enqueued;
use crate::workflow::DataFormat;

/// Largest `chunkSize` a request may ask for (the workflow language's own bound).
pub const MAX_CHUNK_SIZE: u32 = 10_000_000;
/// Longest `idempotencyKey` and `targetSystem`, in characters.
pub const MAX_KEY_LEN: usize = 255;
/// A target system: not only white space.
pub const TARGET_SYSTEM_PATTERN: &str = r"\S";

// The bounds in `#[schema]` are MAX_CHUNK_SIZE, MAX_KEY_LEN, TARGET_SYSTEM_PATTERN and
// IDEMPOTENCY_KEY_PATTERN: the attributes take only literals, and a test compares them.
/// `POST /api/reports/generate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerateRequest {
    #[schema(schema_with = report_type_schema)]
    pub report_type: String,
    #[serde(default)]
    #[schema(schema_with = data_format_schema)]
    pub data_format: Option<String>,
    #[serde(default)]
    #[schema(nullable = false, minimum = 1, maximum = 10000000)]
    pub chunk_size: Option<u32>,
    #[serde(default)]
    #[schema(nullable = false, minimum = 0, maximum = 255)]
    pub priority: Option<u8>,
    #[serde(default)]
    #[schema(nullable = false, min_length = 1, max_length = 255, pattern = r"\S")]
    pub target_system: Option<String>,
    /// The same key from the same principal (sub, role, county) with the same request returns the first job; with another request, 422.
    #[serde(default)]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub idempotency_key: Option<String>,
    // Sent by the seed's clients; accepted and never read: the token decides.
    /// Values of the report's declared parameters, by name: a string, or a number or boolean
    /// where the type is one (the document's `ReportParams.<reportType>` lists each report's).
    /// Omitted ones get their default; a required one must be given.
    #[serde(default)]
    #[schema(value_type = Option<Object>, nullable = false)]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    #[schema(nullable = false)]
    pub window: Option<WindowBody>,
    /// Accepted and ignored: the token's `role` decides.
    #[serde(default)]
    #[allow(dead_code)]
    #[schema(value_type = Option<serde_json::Value>)]
    role: Option<IgnoredAny>,
    // Sent by the seed's clients; accepted and never read: the token decides.
    /// Accepted and ignored: the token's `countyId` decides.
    #[serde(default, rename = "countyId")]
    #[allow(dead_code)]
    #[schema(value_type = Option<serde_json::Value>)]
    county_id: Option<IgnoredAny>,
}

/// The period of data the job covers: a named `period`, or a `start` and an `end`. Without it
/// the job covers the report's default window at the time of the request (if it declares one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowBody {
    /// A calendar period: a day `2026-11-30`, an ISO week `2026-W48`, a month `2026-11`, a
    /// quarter `2026-Q4` or a year `2026`, read in `zone`. Not with `start`/`end`.
    #[serde(default)]
    #[schema(nullable = false, max_length = 16, example = "2026-11-30")]
    pub period: Option<String>,
    /// The first instant of the window (RFC 3339, with an offset); with `end`.
    #[serde(default)]
    #[schema(nullable = false, max_length = 64, format = DateTime)]
    pub start: Option<String>,
    /// The instant the window ends, excluded (RFC 3339); after `start`.
    #[serde(default)]
    #[schema(nullable = false, max_length = 64, format = DateTime)]
    pub end: Option<String>,
    /// The IANA zone the period's days and the window's local dates are read in; default the
    /// report's `zone`.
    #[serde(default)]
    #[schema(nullable = false, max_length = 64, example = "Europe/Berlin")]
    pub zone: Option<String>,
}

/// Longest text of a window field (period, instant, zone), in bytes.
pub const MAX_WINDOW_TEXT: usize = 64;

impl WindowBody {
    /// The window this names, as the engine takes it.
    pub fn request(self) -> Result<WindowRequest, AppError> {
        let invalid = |message: String| AppError::Window {
            code: "invalid_window",
            message,
        };
        for (field, value) in [
            ("period", &self.period),
            ("start", &self.start),
            ("end", &self.end),
            ("zone", &self.zone),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_WINDOW_TEXT) {
                return Err(invalid(format!(
                    "window.{field} is longer than {MAX_WINDOW_TEXT} bytes"
                )));
            }
        }
        let instant = |field: &str, text: &str| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    invalid(format!(
                        "window.{field} {} is not an RFC 3339 instant (2026-11-30T00:00:00Z)",
                        clip(text)
                    ))
                })
        };
        match (self.period, self.start, self.end) {
            (Some(name), None, None) => Ok(WindowRequest::Period {
                name,
                zone: self.zone,
            }),
            (None, Some(start), Some(end)) => Ok(WindowRequest::Span {
                start: instant("start", &start)?,
                end: instant("end", &end)?,
                zone: self.zone,
            }),
            (Some(_), _, _) => Err(invalid(
                "give window.period or window.start and window.end, not both".into(),
            )),
            (None, _, _) => Err(invalid(
                "give window.period, or both window.start and window.end".into(),
            )),
        }
    }
}

/// The API's answer to a job the engine refused.
impl From<JobRefused> for AppError {
    fn from(e: JobRefused) -> AppError {
        match e {
            JobRefused::CountyRequired(e) => AppError::Forbidden(e.to_string()),
            JobRefused::UnknownReport(name) => {
                AppError::Internal(format!("report type {name} vanished"))
            }
            JobRefused::Param(e) => AppError::Param {
                code: e.code,
                param: clip(&e.param),
                message: e.to_string(),
            },
            e @ (JobRefused::Window(_) | JobRefused::WindowRequired { .. }) => AppError::Window {
                code: e.code(),
                message: e.to_string(),
            },
        }
    }
}

/// A report type of the workflow (the document served lists them: `openapi::list_report_types`).
fn report_type_schema() -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .description(Some("A report type of the workflow."))
        .build()
}

/// One of [`DataFormat::NAMES`].
fn data_format_schema() -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(DataFormat::NAMES))
        .build()
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResponse {
    #[schema(value_type = String)]
    pub job_id: JobId,
    pub status: JobStatus,
    #[schema(required = true)]
    pub estimated_completion_time: Option<DateTime<Utc>>,
}

/// Queue a report job run as the token's principal
#[utoipa::path(
    post,
    path = "/api/reports/generate",
    tag = "reports",
    security(("bearerAuth" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$",
            description = "As the body's `idempotencyKey`; if both are sent they must be equal (else 422 `idempotency_key_mismatch`)."),
    ),
    request_body = GenerateRequest,
    responses(
        (status = 202, description = "Queued (or the job first created with this idempotency key by this principal).",
            body = GenerateResponse, headers(("Location" = String))),
        (status = 400, description = "Unknown report type, bad field type, unknown field, out-of-range value or malformed JSON.", body = ErrorBody),
        (status = 413, description = format!("Body larger than {} KiB.", super::BODY_LIMIT / 1024), body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json.", body = ErrorBody),
        (status = 422, description = "`unknown_param`, `missing_param`, `invalid_param`: a parameter (named in `param`) the report does not declare, a required one not given, or a value that does not fit its type; `invalid_window`: a window that cannot be made (not a period, an end not after its start, an unknown zone); `window_required`: the report reads its window and neither the request nor the report gives one; `idempotency_key_reused`: this principal used the key for a different request (other parameters or window included); `idempotency_key_mismatch`: the header and the body name different keys.", body = ErrorBody),
        AuthErrors,
        HeadErrors,
        InternalError,
        StoreErrors,
    )
)]
pub(super) async fn generate(
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
    // The trigger's time: the default window's reference and the job's creation time.
    let now = Utc::now();
    let given_window = body.window.is_some();
    let trigger_input = Trigger {
        params: body
            .params
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name, Given::Json(value)))
            .collect(),
        window: body.window.map(WindowBody::request).transpose()?,
        at: Some(now),
    };
    let request = JobRequest {
        chunk_size: body.chunk_size,
        data_format: body.data_format,
        priority: body.priority,
        target_system: body.target_system,
        params: BTreeMap::new(),
        window: None,
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
        engine.new_job_for(&report_type, principal, &trigger, request, &trigger_input)
    })
    .await
    .map_err(|e| AppError::Internal(format!("estimating the job failed: {e}")))??;
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
            // The parameters and the window are part of the request. A request that gives no
            // window asks for the report's default as of the first request (its job's
            // creation): a retry the next day means that job, not the next day's period.
            let mut asked = new_job.request.clone();
            if !given_window {
                let first = Trigger {
                    at: Some(job.created_at),
                    ..Trigger::default()
                };
                asked.window = crate::executor::decide_window(report, &first, job.created_at)?;
            }
            if !same_principal || job.report_type != new_job.report_type || job.request != asked {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{openapi, IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_PATTERN};
    use serde_json::{json, Value};

    /// The `#[schema]` literals are the constants the handler checks.
    #[test]
    fn the_schema_states_the_handlers_bounds() {
        let doc = openapi(&[]);
        let props = &doc["components"]["schemas"]["GenerateRequest"]["properties"];
        assert_eq!(props["chunkSize"]["minimum"], 1);
        assert_eq!(props["chunkSize"]["maximum"], MAX_CHUNK_SIZE);
        assert_eq!(props["priority"]["maximum"], u8::MAX);
        assert_eq!(props["dataFormat"]["enum"], json!(DataFormat::NAMES));
        for (field, pattern) in [
            ("targetSystem", TARGET_SYSTEM_PATTERN),
            ("idempotencyKey", IDEMPOTENCY_KEY_PATTERN),
        ] {
            assert_eq!(props[field]["minLength"], 1, "{field}");
            assert_eq!(props[field]["maxLength"], MAX_KEY_LEN, "{field}");
            assert_eq!(props[field]["pattern"], pattern, "{field}");
        }
        let header = doc["paths"]["/api/reports/generate"]["post"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["in"] == "header")
            .unwrap()
            .clone();
        assert_eq!(
            header["name"].as_str().unwrap().to_lowercase(),
            IDEMPOTENCY_KEY_HEADER
        );
        let mut body_key = props["idempotencyKey"].clone();
        body_key.as_object_mut().unwrap().remove("description");
        assert_eq!(header["schema"], body_key);
        // An empty workflow list leaves reportType open.
        assert_eq!(props["reportType"].get("enum"), None::<&Value>);
    }
}
