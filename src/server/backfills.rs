//! `POST /api/backfills`: the runs of every past fire of a schedule in a range (ADMIN only),
//! as `flowctl backfill` makes them ([`crate::backfill`]): under the scheduler's fire keys, so
//! a fire that exists is skipped and a repeated request creates nothing new. The server's
//! dispatcher runs the jobs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::errors::{clip, ErrorBody};
use super::openapi::{AuthErrors, HeadErrors, InternalError, StoreErrors};
use super::{ApiJson, AppError, AppState, Caller, MAX_KEY_LEN};
use crate::backfill::{self, BackfillError};

/// `POST /api/backfills`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackfillRequest {
    /// A schedule of the workflow.
    #[schema(min_length = 1, max_length = 255)]
    pub schedule: String,
    /// The first instant of the range (RFC 3339): fires at or after it.
    #[schema(format = DateTime, max_length = 64)]
    pub from: String,
    /// The end of the range, excluded (RFC 3339): fires before it; not after now.
    #[schema(format = DateTime, max_length = 64)]
    pub to: String,
    /// Plan only: count the fires and those that exist, create nothing (answered 200).
    #[serde(default)]
    #[schema(nullable = false)]
    pub dry_run: Option<bool>,
}

/// What a backfill did (or, dry, would do).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillResponse {
    pub schedule: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub dry_run: bool,
    /// Fires in the range.
    pub fires_planned: usize,
    /// Fires whose jobs this request created (0 for a dry run).
    pub fires_created: usize,
    /// Fires that existed (made by the scheduler or an earlier backfill): skipped.
    pub fires_existing: usize,
    /// Root jobs created; their dependents follow as they complete.
    pub jobs_created: usize,
}

/// Backfill a schedule's past fires (ADMIN only)
#[utoipa::path(
    post,
    path = "/api/backfills",
    tag = "reports",
    security(("bearerAuth" = [])),
    request_body = BackfillRequest,
    responses(
        (status = 200, description = "Dry run: the plan's counts; nothing created.", body = BackfillResponse),
        (status = 202, description = "The fires that did not exist were created (a repeated request creates nothing new); the server's workers run their jobs.", body = BackfillResponse),
        (status = 400, description = "Unknown schedule, a range that is empty, ends after now or holds too many fires, an instant that is not RFC 3339, an unknown field or malformed JSON.", body = ErrorBody),
        AuthErrors,
        HeadErrors,
        InternalError,
        StoreErrors,
    )
)]
pub(super) async fn backfill(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BackfillRequest>,
) -> Result<Response, AppError> {
    if !caller.admin {
        return Err(AppError::Forbidden("backfills are for ADMIN only".into()));
    }
    if body.schedule.chars().count() > MAX_KEY_LEN {
        return Err(AppError::InvalidRequest(format!(
            "schedule is longer than {MAX_KEY_LEN} characters"
        )));
    }
    let instant = |field: &str, text: &str| {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                AppError::InvalidRequest(format!(
                    "{field} {} is not an RFC 3339 instant (2025-01-01T00:00:00Z)",
                    clip(text)
                ))
            })
    };
    let (from, to) = (instant("from", &body.from)?, instant("to", &body.to)?);
    let engine = &state.engine;
    let refused = |e: BackfillError| match e {
        BackfillError::Store(e) => AppError::from(e),
        BackfillError::Task(e) => AppError::Internal(e),
        request => AppError::InvalidRequest(request.to_string()),
    };
    let schedule = backfill::schedule(&engine.workflow, &body.schedule).map_err(refused)?;
    let now = Utc::now();
    let fires = backfill::fire_times(schedule, from, to, now).map_err(refused)?;
    let dry_run = body.dry_run.unwrap_or(false);
    let summary = if dry_run {
        let plan = backfill::plan(&engine.workflow, engine.store.as_ref(), schedule, &fires)
            .await
            .map_err(refused)?;
        backfill::summarize(&plan)
    } else {
        // Fire keys make it safe to repeat: a retry after a failure resumes.
        backfill::run(engine, schedule, &fires, now, |_, _| {})
            .await
            .map_err(refused)?
    };
    tracing::info!(schedule = %schedule.name, subject = %caller.principal.subject, dry_run, created = summary.fires_created, existing = summary.fires_existing, "backfill");
    let answer = BackfillResponse {
        schedule: schedule.name.clone(),
        from,
        to,
        dry_run,
        fires_planned: summary.fires_planned,
        fires_created: summary.fires_created,
        fires_existing: summary.fires_existing,
        jobs_created: summary.jobs_created,
    };
    let status = if dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(answer)).into_response())
}
