//! Operations: `/healthz` (liveness), `/readyz` (readiness: the store answers and accepts
//! changes) and `/metrics` (Prometheus).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::errors::{ErrorBody, STORE_STOPPED};
use super::openapi::HeadErrors;
use super::{AppError, AppState};

/// How long `/readyz` (and a `/metrics` scrape) waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `/healthz`'s answer: `{"status": "ok"}`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Alive {
    #[schema(inline)]
    status: AliveStatus,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum AliveStatus {
    Ok,
}

/// `/readyz`'s answer: `{"status": "ready"}`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Ready {
    #[schema(inline)]
    status: ReadyStatus,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum ReadyStatus {
    Ready,
}

/// Liveness: the process answers
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive.", body = inline(Alive)),
        HeadErrors,
    )
)]
pub(super) async fn healthz() -> Json<Alive> {
    Json(Alive {
        status: AliveStatus::Ok,
    })
}

/// Readiness: the job store answers
///
/// Ready when the store answers and accepts changes: a stopped store (a write or fsync failed,
/// e.g. a full disk) is 503 `store_stopped` until the process exits and is restarted.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = inline(Ready)),
        (status = 503, description = "`unavailable`: the store does not answer; `store_stopped`: it stopped accepting changes.", body = ErrorBody),
        HeadErrors,
    )
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, Response> {
    if let Some(reason) = state.engine.store.stopped() {
        let body = ErrorBody {
            code: STORE_STOPPED,
            message: format!("the job store stopped accepting changes: {reason}"),
            param: None,
        };
        return Err((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
    }
    match tokio::time::timeout(READY_TIMEOUT, state.engine.store.counts()).await {
        Ok(Ok(_)) => Ok(Json(Ready {
            status: ReadyStatus::Ready,
        })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the job store failed");
            Err(AppError::Unavailable("the job store is not reachable".into()).into_response())
        }
        Err(_) => {
            Err(AppError::Unavailable("the job store does not answer".into()).into_response())
        }
    }
}

/// Prometheus metrics: queue by status, completions, failures, durations, dependents, workers
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.", content_type = "text/plain", body = String),
        HeadErrors,
    )
)]
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
