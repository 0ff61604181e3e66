//! The job record as rows: the columns of `jobs` in one order ([`COLUMNS`]), a [`Job`] decoded
//! from them, and the read of one job by id.

use std::sync::LazyLock;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::Json;
use tokio_postgres::Row;

use super::errors::pg_error;
use crate::job::{Job, JobId, JobRequest, JobStatus};
use crate::store::{StoreError, StoreResult};

/// The columns of `jobs`, in the order [`decode_job`] reads them.
const COLUMNS: [&str; 26] = [
    "job_id",
    "status",
    "report_type",
    "user_role",
    "county_id",
    "subject",
    "parent_job_ids",
    "trigger_id",
    "request_data",
    "priority",
    "result_path",
    "rows_written",
    "result_sha256",
    "progress",
    "error",
    "attempt",
    "max_attempts",
    "run_after",
    "cancel_requested",
    "created_at",
    "started_at",
    "completed_at",
    "estimated_completion_time",
    "lease_owner",
    "lease_until",
    "version",
];

/// The job columns, each prefixed with `prefix` (`"j."`), in [`COLUMNS`] order.
pub(super) fn columns(prefix: &str) -> String {
    COLUMNS
        .iter()
        .map(|c| format!("{prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn decode_error(job_id: &str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: format!("jobs/{job_id}"),
        message: message.into(),
    }
}

/// The job whose columns start at `at` in `row`.
pub(super) fn decode_job(row: &Row, at: usize) -> StoreResult<Job> {
    let job_id: String = row.try_get(at).map_err(pg_error)?;
    let bad = |what: &str| decode_error(&job_id, format!("invalid {what}"));
    let get = |i: usize| at + i;
    macro_rules! col {
        ($i:expr) => {
            row.try_get(get($i))
                .map_err(|e| decode_error(&job_id, e.to_string()))?
        };
    }
    let status: String = col!(1);
    let parents: Vec<String> = col!(6);
    let Json(request): Json<JobRequest> = col!(8);
    let priority: i16 = col!(9);
    let rows_written: i64 = col!(11);
    let progress: i16 = col!(13);
    let attempt: i64 = col!(15);
    let max_attempts: i64 = col!(16);
    let version: i64 = col!(25);
    Ok(Job {
        job_id: job_id.parse().map_err(|_| bad("job id"))?,
        status: status.parse().map_err(|_| bad("status"))?,
        report_type: col!(2),
        role: col!(3),
        county: col!(4),
        subject: col!(5),
        parent_job_ids: parents
            .iter()
            .map(|id| id.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("parent job id"))?,
        trigger_id: col!(7),
        request,
        priority: u8::try_from(priority).map_err(|_| bad("priority"))?,
        result_path: col!(10),
        rows_written: u64::try_from(rows_written).map_err(|_| bad("rows_written"))?,
        result_sha256: col!(12),
        progress: u8::try_from(progress).map_err(|_| bad("progress"))?,
        error: col!(14),
        attempt: u32::try_from(attempt).map_err(|_| bad("attempt"))?,
        max_attempts: u32::try_from(max_attempts).map_err(|_| bad("max_attempts"))?,
        run_after: col!(17),
        cancel_requested: col!(18),
        created_at: col!(19),
        started_at: col!(20),
        completed_at: col!(21),
        estimated_completion: col!(22),
        lease_owner: col!(23),
        lease_until: col!(24),
        version: u64::try_from(version).map_err(|_| bad("version"))?,
    })
}

/// The jobs whose columns start at `at` in each of `rows`.
pub(super) fn decode_jobs(rows: &[Row], at: usize) -> StoreResult<Vec<Job>> {
    rows.iter().map(|row| decode_job(row, at)).collect()
}

/// A status as the `status` column holds it.
pub(super) fn status_text(status: JobStatus) -> &'static str {
    status.as_str()
}

/// One job by id (`$1`).
static SELECT_JOB: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {} FROM jobs WHERE job_id = $1", columns("")));

/// The job `job_id`, if there is one.
pub(super) async fn read_job(
    client: &impl GenericClient,
    job_id: &JobId,
) -> StoreResult<Option<Job>> {
    let statement = client.prepare_cached(&SELECT_JOB).await.map_err(pg_error)?;
    let row = client
        .query_opt(&statement, &[&job_id.as_str()])
        .await
        .map_err(pg_error)?;
    row.map(|row| decode_job(&row, 0)).transpose()
}
