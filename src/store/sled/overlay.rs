//! The overlay: writes committed but not yet in sled, and whether each must be durable
//! ([`Write`]).
//!
//! **Write-behind.** A change commits into the *overlay* (`Overlay`, in `State`): the newest
//! committed value of each key not yet in sled. Every read looks there first. The flush
//! thread drains it: it copies what is due, writes it to sled in key order, forgets what was
//! not written again meanwhile, then fsyncs. sled's inserts (3–9 µs each, with leaf splits
//! and node copies) thus run beside the writer's turn, not in it, and several changes to one
//! key between two drains cost one insert.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Whether a write must be on disk before its change is reported durable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Write {
    /// Reported durable only once on disk.
    Durable,
    /// A claim or a heartbeat: losing it to a crash only runs the job again (the store requeues
    /// what it finds PROCESSING at open anyway). It reaches sled with the job's next durable
    /// write, which replaces it, or after [`LAZY_WRITE_DELAY`]: a no-op job claimed and
    /// completed within that time costs one record write, not two.
    Lazy,
}

/// The longest a lazy write waits in the overlay.
pub(super) const LAZY_WRITE_DELAY: Duration = Duration::from_millis(100);

/// Writes committed but not yet in sled: the newest value of each key, numbered in commit order
/// so that the flush thread can tell whether a key was written again while it copied it.
#[derive(Default)]
pub(super) struct Overlay {
    writes: BTreeMap<sled::IVec, Pending>,
    /// Number of the last write.
    seq: u64,
    /// A change that must land all or nothing committed since the last drain.
    pub(super) intent: bool,
}

struct Pending {
    seq: u64,
    value: Option<sled::IVec>,
    /// Set while every write to the key since the last drain was lazy: when the first was.
    lazy_since: Option<Instant>,
}

/// What one drain takes to sled: writes in key order, each with its number.
pub(super) struct Drained {
    /// Key, value (`None`: a removal) and the write's number.
    pub(super) writes: Vec<(sled::IVec, Option<sled::IVec>, u64)>,
    /// Whether the drain holds a change that must land all or nothing (see `intent.rs`).
    pub(super) intent: bool,
}

impl Overlay {
    /// Whether every committed write is in sled.
    pub(super) fn is_empty(&self) -> bool {
        self.writes.is_empty() && !self.intent
    }

    /// A key's newest committed value, if it is not yet in sled (`Some(None)`: removed).
    pub(super) fn get(&self, key: &[u8]) -> Option<Option<sled::IVec>> {
        self.writes.get(key).map(|pending| pending.value.clone())
    }

    /// Commits a write of `kind` to `key`.
    pub(super) fn put(
        &mut self,
        key: sled::IVec,
        value: Option<sled::IVec>,
        kind: Write,
        now: Instant,
    ) {
        self.seq += 1;
        let seq = self.seq;
        let lazy_since = match (kind, self.writes.get(&key)) {
            (Write::Durable, _) => None,
            (Write::Lazy, None) => Some(now),
            // Lazy after lazy keeps the older time; lazy after durable stays durable.
            (Write::Lazy, Some(pending)) => pending.lazy_since,
        };
        self.writes.insert(
            key,
            Pending {
                seq,
                value,
                lazy_since,
            },
        );
    }

    /// Keys starting with `prefix`.
    pub(super) fn with_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = sled::IVec> + 'a {
        self.writes
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key.clone())
    }

    /// Copies what is due: every durable write, and lazy ones older than `lazy_before` (all of
    /// them with `None`).
    pub(super) fn drain(&mut self, lazy_before: Option<Instant>) -> Drained {
        let due = |pending: &Pending| match (pending.lazy_since, lazy_before) {
            (None, _) | (Some(_), None) => true,
            (Some(since), Some(before)) => since <= before,
        };
        let writes = self
            .writes
            .iter()
            .filter(|(_, pending)| due(pending))
            .map(|(key, pending)| (key.clone(), pending.value.clone(), pending.seq))
            .collect();
        Drained {
            writes,
            intent: std::mem::take(&mut self.intent),
        }
    }

    /// Forgets drained writes that are in sled now, unless written again since.
    pub(super) fn written(&mut self, drained: &Drained) {
        for (key, _, seq) in &drained.writes {
            if self
                .writes
                .get(key)
                .is_some_and(|pending| pending.seq == *seq)
            {
                self.writes.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use std::time::Duration;

    use proptest::prelude::*;

    use crate::store::conformance::{self, at, new_job};

    use crate::store::sled::{SledConfig, SledStore};
    use crate::store::{Cas, ListFilter, Outcome, Store};

    fn ivec(bytes: &[u8]) -> sled::IVec {
        sled::IVec::from(bytes)
    }

    /// A lazy write waits for its delay; a durable write to the same key takes it along, and
    /// a lazy write after a durable one is durable too (the durable value must not wait).
    #[test]
    fn lazy_writes_wait_and_ride_with_the_next_durable_write() {
        use super::{Overlay, Write};
        let t0 = std::time::Instant::now();
        let later = t0 + Duration::from_millis(1);
        let mut overlay = Overlay::default();
        overlay.put(ivec(b"ja"), Some(ivec(b"claimed")), Write::Lazy, t0);
        let drained = overlay.drain(t0.checked_sub(Duration::from_millis(1)));
        assert!(drained.writes.is_empty(), "not due yet");
        overlay.written(&drained);
        assert_eq!(overlay.get(b"ja"), Some(Some(ivec(b"claimed"))));
        // Due once its delay has passed, or when closing.
        assert_eq!(overlay.drain(Some(t0)).writes.len(), 1);
        assert_eq!(overlay.drain(None).writes.len(), 1);
        // A completion replaces it: one write, of the newest value.
        overlay.put(ivec(b"ja"), Some(ivec(b"completed")), Write::Durable, later);
        let drained = overlay.drain(Some(t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0)));
        let values: Vec<_> = drained
            .writes
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(values, vec![(ivec(b"ja"), Some(ivec(b"completed")))]);
        overlay.written(&drained);
        assert_eq!(overlay.get(b"ja"), None, "in sled now");
        // Created (durable), then claimed (lazy) before any drain: still due at once.
        overlay.put(ivec(b"jb"), Some(ivec(b"queued")), Write::Durable, later);
        overlay.put(ivec(b"jb"), Some(ivec(b"claimed")), Write::Lazy, later);
        let drained = overlay.drain(Some(t0));
        assert_eq!(drained.writes.len(), 1);
        assert_eq!(drained.writes[0].1, Some(ivec(b"claimed")));
    }

    /// A key written again while a drain copies it stays in the overlay with its new value
    /// (the next drain writes it); the intent flag goes with the drain that saw it.
    #[test]
    fn a_key_written_during_a_drain_is_kept_for_the_next() {
        use super::{Overlay, Write};
        let now = std::time::Instant::now();
        let mut overlay = Overlay::default();
        overlay.put(ivec(b"ja"), Some(ivec(b"1")), Write::Durable, now);
        overlay.put(ivec(b"jb"), Some(ivec(b"1")), Write::Durable, now);
        overlay.intent = true;
        let drained = overlay.drain(Some(now));
        assert!(drained.intent);
        assert!(!overlay.intent);
        overlay.put(ivec(b"jb"), Some(ivec(b"2")), Write::Durable, now);
        overlay.written(&drained);
        assert_eq!(overlay.get(b"ja"), None);
        assert_eq!(overlay.get(b"jb"), Some(Some(ivec(b"2"))));
        let next = overlay.drain(Some(now));
        assert_eq!(next.writes.len(), 1);
        assert!(!next.intent);
    }

    proptest! {
        /// For any interleaving of durable and lazy writes with drains (a drain copies, more
        /// writes may come, then it lands): every read sees the newest value; a drain carries
        /// every key written durably since that key last went to sled, with its newest value;
        /// and a final drain leaves sled equal to what was written.
        #[test]
        fn the_overlay_never_holds_back_a_durable_write_nor_loses_one(
            ops in proptest::collection::vec((0u8..4, 0u8..4, any::<u8>()), 1..120)
        ) {
            use super::{Overlay, Write};
            let base = std::time::Instant::now();
            let mut overlay = Overlay::default();
            let mut sled: BTreeMap<sled::IVec, sled::IVec> = BTreeMap::new();
            let mut model: BTreeMap<sled::IVec, sled::IVec> = BTreeMap::new();
            let mut owed: BTreeSet<sled::IVec> = BTreeSet::new();
            let mut in_flight: Option<super::Drained> = None;
            let land = |drained: super::Drained, overlay: &mut Overlay,
                        sled: &mut BTreeMap<sled::IVec, sled::IVec>| {
                for (key, value, _) in &drained.writes {
                    sled.insert(key.clone(), value.clone().expect("puts only"));
                }
                overlay.written(&drained);
            };
            for (step, (action, key, value)) in ops.into_iter().enumerate() {
                let now = base + Duration::from_millis(step as u64);
                let key = ivec(&[b'j', key]);
                match action {
                    0 | 1 => {
                        let kind = if action == 0 { Write::Durable } else { Write::Lazy };
                        overlay.put(key.clone(), Some(ivec(&[value])), kind, now);
                        model.insert(key.clone(), ivec(&[value]));
                        if kind == Write::Durable {
                            owed.insert(key);
                        }
                    }
                    2 => {
                        if let Some(drained) = in_flight.take() {
                            land(drained, &mut overlay, &mut sled);
                        }
                        let drained = overlay.drain(now.checked_sub(Duration::from_millis(3)));
                        for key in std::mem::take(&mut owed) {
                            let carried = drained.writes.iter().find(|(k, _, _)| *k == key);
                            prop_assert!(carried.is_some(), "durable write held back");
                            let carried = carried.and_then(|(_, v, _)| v.clone());
                            prop_assert_eq!(carried.as_ref(), model.get(&key));
                        }
                        in_flight = Some(drained);
                    }
                    _ => {
                        if let Some(drained) = in_flight.take() {
                            land(drained, &mut overlay, &mut sled);
                        }
                    }
                }
                for (key, value) in &model {
                    let seen = match overlay.get(key) {
                        Some(pending) => pending,
                        None => sled.get(key).cloned(),
                    };
                    prop_assert_eq!(seen.as_ref(), Some(value));
                }
            }
            if let Some(drained) = in_flight.take() {
                land(drained, &mut overlay, &mut sled);
            }
            let last = overlay.drain(None);
            land(last, &mut overlay, &mut sled);
            prop_assert!(overlay.writes.is_empty());
            prop_assert_eq!(sled, model);
        }
    }

    /// Without fsync nobody waits for the flush thread: reads must find what it has not yet
    /// written, of every kind (records, the child index, fire times).
    #[tokio::test]
    async fn reads_see_writes_still_on_their_way() {
        let dir = tempfile::tempdir().unwrap();
        let config = SledConfig {
            flush: false,
            ..SledConfig::new(dir.path().join("db"))
        };
        let store = SledStore::open(config).unwrap();
        let joins = vec![conformance::edge(
            "dep:C",
            &["P"],
            crate::workflow::Condition::OnSuccess,
            "C",
        )];
        for round in 0..20 {
            let fire = at(round);
            let parent = conformance::created(
                store
                    .enqueue(
                        vec![new_job("P", "S", None)],
                        Some(crate::store::UniqueKey::fire("nightly", fire)),
                        fire,
                    )
                    .await
                    .unwrap(),
            )
            .remove(0);
            assert_eq!(store.last_fire("nightly").await.unwrap(), Some(fire));
            let claimed = store
                .claim("w", 1, Duration::from_secs(30), fire)
                .await
                .unwrap()
                .remove(0);
            assert_eq!(claimed.job_id, parent.job_id);
            let Cas::Applied(done) = store
                .complete(
                    &parent.job_id,
                    claimed.version,
                    conformance::success(),
                    &joins,
                    fire,
                )
                .await
                .unwrap()
            else {
                panic!("not applied")
            };
            assert_eq!(store.get(&parent.job_id).await.unwrap(), Some(done.job));
            assert_eq!(
                store.children(&parent.job_id).await.unwrap(),
                done.children_created
            );
            assert_eq!(done.children_created.len(), 1);
            let page = store.list(ListFilter::default()).await.unwrap();
            assert!(page.jobs.contains(&done.children_created[0]));
            let child = &done.children_created[0];
            let claimed = store
                .claim("w", 1, Duration::from_secs(30), fire)
                .await
                .unwrap()
                .remove(0);
            assert_eq!(claimed.job_id, child.job_id);
            store
                .complete(
                    &child.job_id,
                    claimed.version,
                    Outcome::Cancelled,
                    &[],
                    fire,
                )
                .await
                .unwrap();
        }
    }
}
