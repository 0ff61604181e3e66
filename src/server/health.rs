//! Operations: `/healthz` (liveness), `/readyz` (readiness: the store answers and accepts
//! changes) and `/metrics` (Prometheus).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{AppError, AppState};

/// How long `/readyz` (and a `/metrics` scrape) waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the store answers and accepts changes: a stopped store (a write or fsync failed,
/// e.g. a full disk) is 503 `store_stopped` until the process exits and is restarted.
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Response> {
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

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
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
