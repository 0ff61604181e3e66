//! Listing, newest first, in pages with a cursor. A filtered list examines at most
//! [`LIST_SCAN_BUDGET`] rows per page, so that a rare filter cannot scan the whole table: the
//! page may then be short, with a cursor to go on below what was examined.

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};

use super::errors::pg_error;
use super::rows::{columns, decode_jobs, status_text};
use super::store::{Inner, PgStore};
use crate::job::JobId;
use crate::store::{ListFilter, Page, StoreError, StoreResult};

/// Rows a filtered `list` examines before it returns a short page with a cursor.
const LIST_SCAN_BUDGET: i64 = 20_000;

/// `$1`/`$2`: the cursor position (exclusive) or NULL; `$3`: scan budget; `$4`–`$6`: status,
/// report type, county filters or NULL; `$7`: rows wanted.
static LIST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM (
             SELECT * FROM jobs
             WHERE $1::timestamptz IS NULL OR (created_at, job_id) < ($1, $2::text)
             ORDER BY created_at DESC, job_id DESC
             LIMIT $3
         ) s
         WHERE ($4::text IS NULL OR s.status = $4) AND ($5::text IS NULL OR s.report_type = $5)
           AND ($6::text IS NULL OR s.county_id = $6)
         ORDER BY s.created_at DESC, s.job_id DESC
         LIMIT $7",
        columns("s.")
    )
});

/// [`LIST`] from the newest job: the same parameters, with `$1` and `$2` NULL.
static LIST_FROM_START: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM (
             SELECT * FROM jobs
             ORDER BY created_at DESC, job_id DESC
             LIMIT $3
         ) s
         WHERE ($1::timestamptz IS NULL AND $2::text IS NULL)
           AND ($4::text IS NULL OR s.status = $4) AND ($5::text IS NULL OR s.report_type = $5)
           AND ($6::text IS NULL OR s.county_id = $6)
         ORDER BY s.created_at DESC, s.job_id DESC
         LIMIT $7",
        columns("s.")
    )
});

/// The last row a budgeted list scan examined and the one after it, if any.
const LIST_SCAN_END: &str = "SELECT created_at, job_id FROM jobs
     WHERE $1::timestamptz IS NULL OR (created_at, job_id) < ($1, $2::text)
     ORDER BY created_at DESC, job_id DESC
     OFFSET $3 LIMIT 2";

impl PgStore {
    /// One page of `filter`.
    pub(super) async fn list_page(inner: Arc<Inner>, filter: ListFilter) -> StoreResult<Page> {
        let limit = filter.limit.clamp(1, ListFilter::MAX_LIMIT);
        let below = filter.cursor.as_deref().map(parse_cursor).transpose()?;
        let (at, id) = match &below {
            Some((at, id)) => (Some(*at), Some(id.as_str())),
            None => (None, None),
        };
        let status = filter.status.map(status_text);
        let filtered =
            filter.status.is_some() || filter.report_type.is_some() || filter.county.is_some();
        let want = (limit + 1) as i64;
        let client = inner.client().await?;
        let sql: &str = if below.is_some() {
            &LIST
        } else {
            &LIST_FROM_START
        };
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        let rows = client
            .query(
                &statement,
                &[
                    &at,
                    &id,
                    &LIST_SCAN_BUDGET,
                    &status,
                    &filter.report_type,
                    &filter.county,
                    &want,
                ],
            )
            .await
            .map_err(pg_error)?;
        let mut jobs = decode_jobs(&rows, 0)?;
        if jobs.len() > limit {
            jobs.truncate(limit);
            let last = jobs.last().expect("a full page");
            let next_cursor = Some(cursor(last.created_at, &last.job_id));
            return Ok(Page { jobs, next_cursor });
        }
        let mut next_cursor = None;
        if filtered {
            // The scan may have stopped at its budget with rows left below it.
            let statement = client
                .prepare_cached(LIST_SCAN_END)
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&at, &id, &(LIST_SCAN_BUDGET - 1)])
                .await
                .map_err(pg_error)?;
            if rows.len() == 2 {
                let last_at: DateTime<Utc> = rows[0].try_get(0).map_err(pg_error)?;
                let last_id: String = rows[0].try_get(1).map_err(pg_error)?;
                next_cursor = Some(format!("{}.{last_id}", last_at.timestamp_micros()));
            }
        }
        Ok(Page { jobs, next_cursor })
    }
}

/// A list position as a cursor: `<created_at µs>.<job id>` of the last position shown (or
/// examined); the next page starts just below it. The same form as the sled store's.
fn cursor(created_at: DateTime<Utc>, job_id: &JobId) -> String {
    format!("{}.{job_id}", created_at.timestamp_micros())
}

/// The position a [`cursor`] names.
fn parse_cursor(text: &str) -> StoreResult<(DateTime<Utc>, JobId)> {
    let invalid = || StoreError::InvalidCursor(text.to_owned());
    let (micros, id) = text.split_once('.').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
    let id: JobId = id.parse().map_err(|_| invalid())?;
    Ok((at, id))
}

#[cfg(test)]
mod tests {
    use crate::store::conformance::at;

    #[test]
    fn cursors_round_trip() {
        let at = at(5);
        let id: crate::job::JobId = "JOB_ABCD1234".parse().unwrap();
        let text = super::cursor(at, &id);
        assert_eq!(super::parse_cursor(&text).unwrap(), (at, id));
        for bad in ["", "1", "x.JOB_ABCD1234", "1.JOB_abcd1234"] {
            assert!(super::parse_cursor(bad).is_err(), "{bad}");
        }
    }
}
