//! `GET /api/graph`: the workflow's dependency graph as JSON, DOT, Mermaid or text.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa::IntoParams;

use super::errors::{clip, ErrorBody};
use super::openapi::{AuthErrors, HeadErrors};
use super::{ApiQuery, AppError, AppState, Caller};
use crate::graph::GraphFormat;

/// `format=`: its name, the graph it renders and the answer's content type; the first is the
/// default.
const FORMATS: [(&str, GraphFormat, &str); 4] = [
    ("json", GraphFormat::Json, "application/json"),
    ("dot", GraphFormat::Dot, "text/vnd.graphviz; charset=utf-8"),
    (
        "mermaid",
        GraphFormat::Mermaid,
        "text/vnd.mermaid; charset=utf-8",
    ),
    ("text", GraphFormat::Text, "text/plain; charset=utf-8"),
];

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct GraphParams {
    #[param(schema_with = format_schema)]
    format: Option<String>,
}

/// One of [`FORMATS`], `json` by default.
fn format_schema() -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(FORMATS.map(|(name, _, _)| name)))
        .default(Some(FORMATS[0].0.into()))
        .build()
}

/// The workflow's dependency graph
#[utoipa::path(
    get,
    path = "/api/graph",
    tag = "workflow",
    security(("bearerAuth" = [])),
    params(GraphParams),
    responses(
        (status = 200, description = "The graph.", content(
            (Object = "application/json"),
            (String = "text/vnd.graphviz"),
            (String = "text/vnd.mermaid"),
            (String = "text/plain"),
        )),
        (status = 400, description = "Unknown format.", body = ErrorBody),
        AuthErrors,
        HeadErrors,
    )
)]
pub(super) async fn graph(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(params): ApiQuery<GraphParams>,
) -> Result<Response, AppError> {
    let name = params.format.as_deref().unwrap_or(FORMATS[0].0);
    let Some((_, format, content_type)) = FORMATS.iter().find(|(n, _, _)| *n == name) else {
        return Err(AppError::InvalidRequest(format!(
            "format must be json, dot, mermaid or text, not {}",
            clip(name)
        )));
    };
    let body = crate::graph::render(&state.engine.workflow, *format);
    Ok(([(header::CONTENT_TYPE, *content_type)], body).into_response())
}
