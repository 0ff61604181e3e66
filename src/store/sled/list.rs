//! Reads over many jobs: a job's children (the child index, in the overlay and in sled) and
//! list pages (the list index, newest first, filtered in memory), with their cursor.

use std::collections::BTreeSet;

use super::indexes::ListKey;
use super::keys::{id_bytes, job_id_at, job_id_from, Id, CHILD};
use super::lock;
use super::store::SledStore;
use crate::job::{Job, JobId};
use crate::store::{ListFilter, Page, StoreError, StoreResult};

/// Index entries a filtered `list` examines (in memory) before it returns a short page with a
/// cursor.
const LIST_SCAN_BUDGET: usize = 100_000;

impl SledStore {
    /// A job's children, oldest first.
    pub(super) fn children_sync(&self, job_id: &JobId) -> StoreResult<Vec<Job>> {
        let prefix = [&[CHILD][..], job_id.as_str().as_bytes()].concat();
        // Child index keys are only ever added: those still on their way to sled, then sled's.
        let mut keys: BTreeSet<sled::IVec> =
            lock(&self.state).overlay.with_prefix(&prefix).collect();
        for entry in self.tree.scan_prefix(&prefix) {
            keys.insert(entry.map_err(StoreError::Sled)?.0);
        }
        let mut children = Vec::new();
        for key in keys {
            let child_id = job_id_at(&key, prefix.len())?;
            if let Some(child) = self.read_job(&child_id)? {
                children.push(child);
            }
        }
        children.sort_by(|a, b| (a.created_at, &a.job_id).cmp(&(b.created_at, &b.job_id)));
        Ok(children)
    }

    /// One page of jobs, newest first.
    pub(super) fn list_sync(&self, filter: &ListFilter) -> StoreResult<Page> {
        let limit = filter.limit.clamp(1, ListFilter::MAX_LIMIT);
        let below = filter.cursor.as_deref().map(parse_cursor).transpose()?;
        let (found, next) = {
            let state = lock(&self.state);
            let report_type = match &filter.report_type {
                Some(name) => match state.names.find(name) {
                    Some(id) => Some(id),
                    None => return Ok(empty_page()),
                },
                None => None,
            };
            let county = match &filter.county {
                Some(name) => match state.names.find(name) {
                    Some(id) => Some(id),
                    None => return Ok(empty_page()),
                },
                None => None,
            };
            let mut found = Vec::with_capacity(limit);
            let mut next = None;
            let range = match below {
                Some(below) => state.jobs.range(..below),
                None => state.jobs.range(..),
            };
            for (examined, (position, entry)) in range.rev().enumerate() {
                if found.len() == limit || examined == LIST_SCAN_BUDGET {
                    // The page is full (or the budget spent) and more entries remain.
                    next = Some(found.last().copied().unwrap_or(*position));
                    if found.len() < limit {
                        // Resume at (and including) this unexamined entry.
                        next = Some(next_after(*position));
                    }
                    break;
                }
                let wanted = filter.status.is_none_or(|status| entry.status == status)
                    && report_type.is_none_or(|id| entry.report_type == id)
                    && county.is_none_or(|id| entry.county == id);
                if wanted {
                    found.push(*position);
                }
            }
            (found, next)
        };
        let mut jobs = Vec::with_capacity(found.len());
        for (_, id) in found {
            // Read after the lock: the job may have moved on since, so the filter is checked
            // again on the record.
            if let Some(job) = self.read_job(&job_id_from(&id)?)? {
                let wanted = filter.status.is_none_or(|status| job.status == status)
                    && filter
                        .report_type
                        .as_ref()
                        .is_none_or(|r| *r == job.report_type)
                    && filter
                        .county
                        .as_ref()
                        .is_none_or(|c| Some(c) == job.county.as_ref());
                if wanted {
                    jobs.push(job);
                }
            }
        }
        Ok(Page {
            jobs,
            next_cursor: next.map(|(micros, id)| cursor(micros, &id)),
        })
    }
}

fn empty_page() -> Page {
    Page {
        jobs: Vec::new(),
        next_cursor: None,
    }
}

/// The smallest position after `position`, as an exclusive upper bound that still includes it.
fn next_after((micros, id): ListKey) -> ListKey {
    let mut id = id;
    for byte in id.iter_mut().rev() {
        if *byte == u8::MAX {
            *byte = 0;
        } else {
            *byte += 1;
            return (micros, id);
        }
    }
    (micros + 1, id)
}

/// A list position as a cursor: `<created_at µs>.<job id>`, the first position not yet shown
/// being the one just below it.
fn cursor(micros: i64, id: &Id) -> String {
    format!("{micros}.{}", String::from_utf8_lossy(id))
}

fn parse_cursor(text: &str) -> StoreResult<ListKey> {
    let invalid = || StoreError::InvalidCursor(text.to_owned());
    let (micros, id) = text.split_once('.').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let id: JobId = id.parse().map_err(|_| invalid())?;
    Ok((micros, id_bytes(&id)))
}

#[cfg(test)]
mod tests {

    use chrono::TimeDelta;

    use crate::job::JobId;
    use crate::store::conformance::at;

    use crate::store::sled::keys;

    #[test]
    fn list_cursor_round_trips() {
        let id: JobId = "JOB_ABCD1234".parse().unwrap();
        let micros = (at(5) + TimeDelta::microseconds(7)).timestamp_micros();
        let position = super::parse_cursor(&format!("{micros}.{id}")).unwrap();
        assert_eq!(position, (micros, keys::id_bytes(&id)));
        assert_eq!(
            super::cursor(position.0, &position.1),
            format!("{micros}.{id}")
        );
        for bad in [
            "",
            "1",
            "x.JOB_ABCD1234",
            "1.JOB_abcd1234",
            "1.JOB_ABCD1234.2",
        ] {
            assert!(super::parse_cursor(bad).is_err(), "{bad}");
        }
    }
}
