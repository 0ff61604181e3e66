//! axum's extractors with [`AppError`] rejections, so that a malformed body, path or query is
//! answered with the API's JSON error rather than axum's plain text.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;

use super::errors::clip;
use super::{AppError, BODY_LIMIT};

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
