//! The join rule inside a completion's transaction. The join-state rows of the completing job's
//! scope are locked first (an `INSERT … ON CONFLICT DO UPDATE … RETURNING`, which inserts or
//! locks the row atomically under READ COMMITTED), in join-id order, then updated and the
//! children inserted: two parents finishing on two machines at the same instant are serialized
//! on that row lock, and exactly one of them fires the child.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::Json;

use super::enqueue::{insert_jobs, new_records};
use super::errors::{pg_error, Failed};
use crate::job::Job;
use crate::store::{Event, JoinEdge, JoinError, JoinState, Pending};

/// Inserts or locks, in join-id order, the join-state rows of the join ids `$1` in the scope
/// (role, has county, county) `$2`–`$4`; returns their pending events.
const LOCK_JOIN_STATES: &str =
    "INSERT INTO join_state AS s (join_id, user_role, has_county, county_id, pending)
     SELECT id, $2, $3, $4, '{}'::jsonb FROM unnest($1::text[]) AS id ORDER BY id
     ON CONFLICT (join_id, user_role, has_county, county_id) DO UPDATE SET pending = s.pending
     RETURNING s.join_id, s.pending";

/// Stores the pending events `$2` of the join ids `$1` in the scope `$3`–`$5`.
const SAVE_JOIN_STATES: &str = "UPDATE join_state s SET pending = u.pending
     FROM unnest($1::text[], $2::jsonb[]) AS u(join_id, pending)
     WHERE s.join_id = u.join_id AND s.user_role = $3 AND s.has_county = $4 AND s.county_id = $5";

/// The join rule for `job`'s completion event, inside the transaction that recorded it: locks
/// the join-state rows of the job's scope (in join-id order), records the event, creates the
/// children that fire.
pub(super) async fn apply_joins(
    client: &impl GenericClient,
    job: &Job,
    joins: &[JoinEdge],
    now: DateTime<Utc>,
) -> Result<(Vec<Job>, Vec<JoinError>), Failed> {
    let mut errors = Vec::new();
    let Some(event) = Event::of(job.status) else {
        return Ok((Vec::new(), errors));
    };
    let mut edges = Vec::new();
    for (i, edge) in joins.iter().enumerate() {
        if !edge.accepts(job, event) || joins[..i].iter().any(|seen| seen.join_id == edge.join_id) {
            continue;
        }
        if let Err(message) = edge.validate() {
            errors.push(JoinError {
                join_id: edge.join_id.clone(),
                message,
            });
            continue;
        }
        edges.push(edge);
    }
    if edges.is_empty() {
        return Ok((Vec::new(), errors));
    }
    let has_county = job.county.is_some();
    let county = job.county.as_deref().unwrap_or("");
    let join_ids: Vec<&str> = edges.iter().map(|e| e.join_id.as_str()).collect();
    let lock = client.prepare_cached(LOCK_JOIN_STATES).await?;
    let rows = client
        .query(&lock, &[&join_ids, &job.role, &has_county, &county])
        .await?;
    let mut stored: HashMap<String, serde_json::Value> = HashMap::with_capacity(rows.len());
    for row in &rows {
        stored.insert(
            row.try_get(0).map_err(pg_error)?,
            row.try_get(1).map_err(pg_error)?,
        );
    }
    let mut children = Vec::new();
    let mut states = Vec::with_capacity(edges.len());
    for edge in &edges {
        let value = stored.remove(&edge.join_id).unwrap_or_default();
        let mut state = JoinState {
            pending: serde_json::from_value::<BTreeMap<String, Pending>>(value).unwrap_or_else(
                |error| {
                    errors.push(JoinError {
                        join_id: edge.join_id.clone(),
                        message: format!("pending events of this scope were lost: {error}"),
                    });
                    BTreeMap::new()
                },
            ),
        };
        if let Some(parents) = state.record(edge, job) {
            children.push(edge.child.instantiate(job, parents));
        }
        states.push(Json(
            serde_json::to_value(&state.pending).unwrap_or_default(),
        ));
    }
    let save = client.prepare_cached(SAVE_JOIN_STATES).await?;
    client
        .execute(
            &save,
            &[&join_ids, &states, &job.role, &has_county, &county],
        )
        .await?;
    let children = new_records(&children, now);
    insert_jobs(client, &children, now).await?;
    Ok((children, errors))
}
