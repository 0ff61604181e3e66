//! All-or-nothing changes without sled batches: the intent, and its replay at open.
//!
//! A drain holding a change that must land whole (a completion and the children or join
//! state it writes, an enqueue of several jobs, a unique key) first writes its *intent*
//! (every key and value it is about to write) under one key, then its writes as single
//! inserts. sled recovers a prefix of its log, so a key of the drain is on disk only if its
//! intent is; opening the store writes the intent's keys again where they are missing or older
//! (see `replay_intent`). The next such drain overwrites the intent. A drain of rewrites of
//! existing jobs only (claims, completions without dependents, a lease sweep) needs none: each
//! record is whole in its own insert, and none depends on another. (Why not sled's batches:
//! `store::sled`'s docs.)

use super::codec::{corrupt, decode_job, RECORD_FORMAT};
use super::keys::JOB;
use crate::store::{StoreError, StoreResult};

/// The tree that holds the intent of the last all-or-nothing change (see [`replay_intent`]).
/// Its own tree: an intent can be large (an enqueue of many jobs), and sled rewrites a whole
/// leaf every few changes to it; beside the newest job records it was rewritten with every
/// enqueue, several kilobytes of log per job.
pub(super) const INTENT_TREE: &str = "flowctl-intent";
/// The intent's key in [`INTENT_TREE`].
pub(super) const INTENT: &[u8] = b"w";

/// Whether a change must be written behind an intent: it creates a job and writes anything
/// else (the job and its parent's completion, its unique key, its siblings of one enqueue), or
/// it writes anything but job records (join state, unique keys, fire times and the child index
/// are written by no other kind of change, which [`replay_intent`] relies on). Rewrites of
/// existing jobs alone (a claim of many, a completion that claims the next job, a lease
/// sweep) are independent facts, each whole in one insert.
pub(super) fn needs_intent<'a>(
    mut keys: impl ExactSizeIterator<Item = &'a sled::IVec>,
    creates_jobs: bool,
) -> bool {
    (creates_jobs && keys.len() > 1) || keys.any(|key| key.first() != Some(&JOB))
}

/// The intent: `[RECORD_FORMAT]`, then per write a key length (u32 BE), the key, and either
/// `0` (a removal) or `1`, a value length (u32 BE) and the value.
pub(super) fn encode_intent<'a>(
    writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + Clone,
) -> Vec<u8> {
    let size: usize = writes
        .clone()
        .map(|(key, value)| 9 + key.len() + value.map_or(0, |v| v.len()))
        .sum();
    let mut out = Vec::with_capacity(1 + size);
    out.push(RECORD_FORMAT);
    for (key, value) in writes {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
    }
    out
}

type IntentWrite<'a> = (&'a [u8], Option<&'a [u8]>);

fn decode_intent(bytes: &[u8]) -> StoreResult<Vec<IntentWrite<'_>>> {
    let bad = |what: &str| corrupt(INTENT, format!("the pending change is unreadable: {what}"));
    let Some((&RECORD_FORMAT, mut rest)) = bytes.split_first() else {
        return Err(bad("unknown format"));
    };
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        *rest = tail;
        Some(head)
    }
    fn length(rest: &mut &[u8]) -> Option<usize> {
        let bytes = take(rest, 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?) as usize)
    }
    let mut writes = Vec::new();
    while !rest.is_empty() {
        let key = length(&mut rest)
            .and_then(|n| take(&mut rest, n))
            .ok_or_else(|| bad("a key is cut short"))?;
        let value = match take(&mut rest, 1) {
            Some([0]) => None,
            Some([1]) => Some(
                length(&mut rest)
                    .and_then(|n| take(&mut rest, n))
                    .ok_or_else(|| bad("a value is cut short"))?,
            ),
            _ => return Err(bad("a write is neither a put nor a removal")),
        };
        writes.push((key, value));
    }
    Ok(writes)
}

/// Finishes the last all-or-nothing change, if a crash interrupted it, and drops its intent.
///
/// sled recovers a prefix of its log, and a change writes its intent before any of its keys,
/// so a key the change wrote is on disk only if the intent is. Writing the intent's keys again
/// is therefore safe for every key only such changes write. A job record may have been
/// rewritten since by a claim or a completion (single inserts, no intent): it is written again
/// only if what is stored is older than the intent's version of it.
pub(super) fn replay_intent(tree: &sled::Tree, intents: &sled::Tree) -> StoreResult<usize> {
    let Some(bytes) = intents.get(INTENT).map_err(StoreError::Sled)? else {
        return Ok(0);
    };
    let mut replayed = 0;
    for (key, value) in decode_intent(&bytes)? {
        let stored = tree.get(key).map_err(StoreError::Sled)?;
        let apply = match (key.first(), &stored, value) {
            (_, None, None) => false,
            (_, None, Some(_)) | (_, Some(_), None) => true,
            (Some(&JOB), Some(stored), Some(value)) => {
                match (decode_job(key, stored), decode_job(key, value)) {
                    (Ok(stored), Ok(intended)) => stored.version < intended.version,
                    (Err(error), _) | (_, Err(error)) => {
                        // Which one is newer cannot be told; the unreadable record is reported
                        // as such wherever it is read, as any other.
                        tracing::error!(%error, "left a job record of an interrupted change as it was");
                        false
                    }
                }
            }
            (_, Some(stored), Some(value)) => stored.as_ref() != value,
        };
        if apply {
            replayed += 1;
            match value {
                Some(value) => tree.insert(key, value).map(drop),
                None => tree.remove(key).map(drop),
            }
            .map_err(StoreError::Sled)?;
        }
    }
    intents.remove(INTENT).map_err(StoreError::Sled)?;
    tree.flush().map_err(StoreError::Sled)?;
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use std::time::Duration;

    use proptest::prelude::*;

    use crate::job::JobStatus;
    use crate::store::conformance::{self, at, new_job};
    use crate::store::sled::testing::{open_at, raw_sled};
    use crate::store::sled::{codec, keys, watermark, SledStore};
    use crate::store::{Cas, Outcome, Store, StoreError};

    /// The last all-or-nothing change's intent, as sled holds it.
    fn intent_of(store: &SledStore) -> Option<sled::IVec> {
        let intents = store.db.open_tree(super::INTENT_TREE).unwrap();
        intents.get(super::INTENT).unwrap()
    }

    /// The bytes of every key of the store.
    /// Every key and value but the commit round's (bookkeeping of the flush thread).
    fn keys_and_values(tree: &sled::Tree) -> BTreeMap<Vec<u8>, Vec<u8>> {
        tree.iter()
            .map(|entry| entry.unwrap())
            .filter(|(key, _)| key.as_ref() != keys::META_COMMIT)
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
            .collect()
    }

    /// A completion that creates a child, cut by a crash right after its intent: every other
    /// key it writes is put back as it was before. The next open finishes the change.
    #[tokio::test]
    async fn a_change_cut_short_by_a_crash_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let joins = vec![conformance::edge(
            "dep:C",
            &["P"],
            crate::workflow::Condition::OnSuccess,
            "C",
        )];
        let store = open_at(&path);
        let parent = conformance::start(&store, new_job("P", "S", None), at(0)).await;
        store.sync().await.unwrap();
        let before = keys_and_values(&store.tree);
        let Cas::Applied(done) = store
            .complete(
                &parent.job_id,
                parent.version,
                conformance::success(),
                &joins,
                at(1),
            )
            .await
            .unwrap()
        else {
            panic!("not applied")
        };
        let child = done.children_created[0].clone();
        let after = keys_and_values(&store.tree);
        assert!(intent_of(&store).is_some());
        drop(store);
        {
            // The crash: the intent is on disk, the change's own writes are not.
            let db = raw_sled(&path);
            let tree = db.open_tree("flowctl").unwrap();
            for (key, value) in &after {
                match before.get(key) {
                    Some(old) if old != value => tree.insert(key, old.as_slice()).map(drop),
                    Some(_) => Ok(()),
                    None => tree.remove(key).map(drop),
                }
                .unwrap();
            }
            assert_eq!(keys_and_values(&tree), before);
            // The round never finished, so its number reached neither sled nor the watermark.
            let round = watermark::read_commit(&tree).unwrap() - 1;
            tree.insert(keys::META_COMMIT, &round.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
            watermark::Watermark::create(&path, round).unwrap();
        }
        let store = open_at(&path);
        assert!(intent_of(&store).is_none());
        assert_eq!(keys_and_values(&store.tree), after);
        assert_eq!(store.get(&parent.job_id).await.unwrap(), Some(done.job));
        assert_eq!(store.get(&child.job_id).await.unwrap(), Some(child.clone()));
        assert_eq!(
            store.children(&parent.job_id).await.unwrap(),
            vec![child.clone()]
        );
        let counts = store.counts().await.unwrap();
        assert_eq!(
            (counts[&JobStatus::Completed], counts[&JobStatus::Queued]),
            (1, 1)
        );
        // The child is claimable, once.
        let claimed = store
            .claim("w", 5, Duration::from_secs(30), at(2))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].job_id, child.job_id);
    }

    /// The last intent stays on disk after its change is whole, and later single-record
    /// changes to its jobs are not undone by it at the next open.
    #[tokio::test]
    async fn a_finished_change_is_not_replayed_over_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = open_at(&path);
        let jobs = conformance::created(
            store
                .enqueue(vec![new_job("R", "S", None); 3], None, at(0))
                .await
                .unwrap(),
        );
        let intent = intent_of(&store).expect("an intent");
        // Claims and a completion: single inserts, no new intent.
        let claimed = store
            .claim("w", 2, Duration::from_secs(30), at(1))
            .await
            .unwrap();
        store
            .complete(
                &claimed[0].job_id,
                claimed[0].version,
                Outcome::Cancelled,
                &[],
                at(2),
            )
            .await
            .unwrap();
        assert_eq!(intent_of(&store), Some(intent));
        let mut expected = Vec::new();
        for job in &jobs {
            expected.push(store.get(&job.job_id).await.unwrap());
        }
        drop(store);
        let store = open_at(&path);
        for (job, expected) in jobs.iter().zip(expected) {
            assert_eq!(store.get(&job.job_id).await.unwrap(), expected);
        }
        let counts = store.counts().await.unwrap();
        assert_eq!(
            (
                counts[&JobStatus::Queued],
                counts[&JobStatus::Processing],
                counts[&JobStatus::Cancelled]
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn which_changes_need_an_intent() {
        let job = |n: u8| sled::IVec::from(vec![keys::JOB, n]);
        let needs =
            |keys: &[sled::IVec], creates_jobs| super::needs_intent(keys.iter(), creates_jobs);
        // Rewrites of existing jobs: each whole on its own.
        assert!(!needs(&[job(1)], false));
        assert!(!needs(&[job(1), job(2), job(3)], false));
        // One new job alone is one insert.
        assert!(!needs(&[job(1)], true));
        // New jobs with anything else, and any other kind of key.
        assert!(needs(&[job(1), job(2)], true));
        let join = sled::IVec::from(&[keys::JOIN, b'x'][..]);
        assert!(needs(std::slice::from_ref(&join), false));
        assert!(needs(&[job(1), join], false));
    }

    #[test]
    fn an_unreadable_intent_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            &[9u8][..],
            &[codec::RECORD_FORMAT, 0, 0, 0][..],
            &[codec::RECORD_FORMAT, 0, 0, 0, 1, b'j', 7][..],
            &[codec::RECORD_FORMAT, 0, 0, 0, 1, b'j', 1, 0, 0, 0, 9, 1][..],
        ] {
            assert!(
                matches!(super::decode_intent(bytes), Err(StoreError::Corrupt { .. })),
                "{bytes:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn intents_decode_to_what_was_encoded(
            writes in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
                0..20,
            )
        ) {
            let writes: BTreeMap<sled::IVec, Option<sled::IVec>> = writes
                .into_iter()
                .map(|(k, v)| (k.into(), v.map(Into::into)))
                .collect();
            let bytes = super::encode_intent(
                writes.iter().map(|(k, v)| (k.as_ref(), v.as_deref())),
            );
            let decoded = super::decode_intent(&bytes).unwrap();
            let expected: Vec<(&[u8], Option<&[u8]>)> = writes
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_deref()))
                .collect();
            prop_assert_eq!(decoded, expected);
        }
    }
}
