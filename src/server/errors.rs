//! The API's errors: every error answer is `{"code", "message"}` with a stable code
//! ([`AppError`]); internal details (store errors, paths, panics) are logged, never sent. Error
//! answers that axum or hyper made themselves are rewritten to that shape on their way out
//! ([`json_error_body`]).

use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa::ToSchema;

use super::store_call::{STORE_RETRY_AFTER_SECS, STORE_UNAVAILABLE_MESSAGE};
use crate::store::StoreError;

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
    /// 431: request head over [`HEADER_LIMIT`](super::HEADER_LIMIT).
    HeadersTooLarge(String),
    /// 415.
    UnsupportedMediaType(String),
    /// 422: an idempotency key this principal already used for another request.
    IdempotencyKeyReused(String),
    /// 422: the `Idempotency-Key` header and the body's `idempotencyKey` differ.
    IdempotencyKeyMismatch(String),
    /// 422: a report parameter given is unknown, missing or ill-typed; `param` names it
    /// (cut to a short excerpt).
    Param {
        code: &'static str,
        param: String,
        message: String,
    },
    /// 422: the window given cannot be made (`invalid_window`), or the report needs one and
    /// none was given or declared (`window_required`).
    Window { code: &'static str, message: String },
    /// 503: the store does not answer (readiness).
    Unavailable(String),
    /// 503 with `Retry-After`: the store failed transiently and kept failing through the
    /// retries ([`store_call`](super::store_call)).
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
            AppError::IdempotencyKeyReused(_)
            | AppError::IdempotencyKeyMismatch(_)
            | AppError::Param { .. }
            | AppError::Window { .. } => StatusCode::UNPROCESSABLE_ENTITY,
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
            AppError::Param { code, .. } | AppError::Window { code, .. } => code,
            AppError::Unavailable(_) => "unavailable",
            AppError::StoreUnavailable(_) => "store_unavailable",
            AppError::Internal(_) => "internal",
        }
    }

    /// Every code, for the OpenAPI document (with [`STORE_STOPPED`]).
    pub const CODES: [&'static str; 19] = [
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
        "unknown_param",
        "missing_param",
        "invalid_param",
        "invalid_window",
        "window_required",
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
            | AppError::StoreUnavailable(m)
            | AppError::Param { message: m, .. }
            | AppError::Window { message: m, .. } => m,
        }
    }

    /// The parameter an error is about, if any.
    pub fn param(&self) -> Option<&str> {
        match self {
            AppError::Param { param, .. } => Some(param),
            _ => None,
        }
    }
}

/// The code of `/readyz`'s `503` once the store stopped accepting changes (not an [`AppError`]:
/// no other answer has it).
pub(super) const STORE_STOPPED: &str = "store_stopped";

/// The body of every error answer: `{"code", "message"}`, and `param` for a parameter's.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub(super) struct ErrorBody {
    #[schema(schema_with = error_code_schema)]
    pub(super) code: &'static str,
    pub(super) message: String,
    /// The report parameter refused (`unknown_param`, `missing_param`, `invalid_param`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(super) param: Option<String>,
}

/// Every code an error answer can carry: [`AppError::CODES`] and [`STORE_STOPPED`].
fn error_code_schema() -> utoipa::openapi::Object {
    let codes = AppError::CODES.iter().chain([&STORE_STOPPED]);
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(codes.copied()))
        .build()
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let body = ErrorBody {
            code: self.code(),
            message: self.message().to_string(),
            param: self.param().map(str::to_string),
        };
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

/// An error answer that is not JSON (a rejection axum made itself) becomes `{"code",
/// "message"}` with the code of its status; JSON answers and successes pass unchanged. The
/// safety net of [`observe`](super::middleware::observe), run on every answer.
pub(super) async fn json_error_body(response: Response) -> Response {
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

/// Client-supplied text echoed in a message, cut to a sane length.
pub(super) fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
    fn internal_errors_do_not_leak() {
        let e = AppError::Internal("sled: /var/lib/secret/db corrupt".into());
        assert_eq!(e.code(), "internal");
        assert!(!e.message().contains("secret"));
        let e: AppError = StoreError::NotFound("JOB_AAAAAAAA".parse().unwrap()).into();
        assert_eq!(e.code(), "internal");
    }
}
