//! The OpenAPI document of the API, served at `/api/openapi.json`: it names every route and
//! states the constraints the handlers enforce (a test sends each bound and its neighbour).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::listen::HYPER_HEADER_LIMIT;
use super::{
    AppError, AppState, CURSOR_PATTERN, HEADER_LIMIT, IDEMPOTENCY_KEY_PATTERN, JOB_ID_PATTERN,
    MAX_CHUNK_SIZE, MAX_HEADERS, MAX_KEY_LEN, TARGET_SYSTEM_PATTERN,
};
use crate::job::JobStatus;
use crate::store::ListFilter;

pub(super) async fn openapi_json(State(state): State<AppState>) -> Response {
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
            error(&format!("Request head over {} KiB (beyond {} KiB, or over {MAX_HEADERS} header fields, the connection is closed with a bare 431).", HEADER_LIMIT / 1024, HYPER_HEADER_LIMIT / 1024)),
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
    use crate::server::route_list;

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
}
