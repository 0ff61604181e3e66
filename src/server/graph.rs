//! `GET /api/graph`: the workflow's dependency graph as JSON, DOT, Mermaid or text.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::errors::clip;
use super::{ApiQuery, AppError, AppState, Caller};
use crate::graph::GraphFormat;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GraphParams {
    format: Option<String>,
}

pub(super) async fn graph(
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
