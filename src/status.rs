//! The status machine of DESIGN.md: the only moves a job's status may make.
//!
//! ```text
//! QUEUED ──claim──▶ PROCESSING ──▶ COMPLETED
//!    │                 │  │
//!    │                 │  └──────▶ FAILED
//!    └──────┬──────────┘
//!           ▼
//!       CANCELLED
//! PROCESSING ──lease expired / retry──▶ QUEUED   (attempt + 1)
//! ```
//!
//! Stores call [`transition`] for every status change they write, so a move that is not drawn
//! above can never reach disk. Changes that keep the status (a lease renewal, a cancel request on
//! a running job) are not transitions.

use crate::job::JobStatus;

/// The name of an allowed move, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// QUEUED → PROCESSING.
    Claim,
    /// PROCESSING → COMPLETED.
    Succeed,
    /// PROCESSING → FAILED, finally.
    Fail,
    /// PROCESSING → QUEUED: the lease expired or the attempt failed with a retry left.
    Requeue,
    /// QUEUED → CANCELLED, or PROCESSING → CANCELLED.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("a job cannot go from {from} to {to}")]
    Illegal { from: JobStatus, to: JobStatus },
}

/// Checks one status change against the machine and names it; anything not drawn in the module
/// docs is refused.
pub fn transition(from: JobStatus, to: JobStatus) -> Result<Transition, StatusError> {
    use JobStatus::*;
    match (from, to) {
        (Queued, Processing) => Ok(Transition::Claim),
        (Processing, Completed) => Ok(Transition::Succeed),
        (Processing, Failed) => Ok(Transition::Fail),
        (Processing, Queued) => Ok(Transition::Requeue),
        (Queued | Processing, Cancelled) => Ok(Transition::Cancel),
        _ => Err(StatusError::Illegal { from, to }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use JobStatus::*;

    /// The drawing in DESIGN.md, written out as data, independently of the `match` above.
    const ALLOWED: [(JobStatus, JobStatus, Transition); 6] = [
        (Queued, Processing, Transition::Claim),
        (Processing, Completed, Transition::Succeed),
        (Processing, Failed, Transition::Fail),
        (Processing, Queued, Transition::Requeue),
        (Queued, Cancelled, Transition::Cancel),
        (Processing, Cancelled, Transition::Cancel),
    ];

    fn expected(from: JobStatus, to: JobStatus) -> Option<Transition> {
        ALLOWED
            .iter()
            .find(|(f, t, _)| *f == from && *t == to)
            .map(|(_, _, name)| *name)
    }

    fn status() -> impl Strategy<Value = JobStatus> {
        proptest::sample::select(JobStatus::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn every_pair_follows_the_drawing(from in status(), to in status()) {
            match (transition(from, to), expected(from, to)) {
                (Ok(got), Some(want)) => prop_assert_eq!(got, want),
                (Err(StatusError::Illegal { from: f, to: t }), None) => {
                    prop_assert_eq!((f, t), (from, to));
                }
                (got, want) => prop_assert!(false, "{from} → {to}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn all_25_pairs_exhaustively() {
        let mut allowed = 0;
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                assert_eq!(
                    transition(from, to).ok(),
                    expected(from, to),
                    "{from} → {to}"
                );
                allowed += usize::from(transition(from, to).is_ok());
            }
        }
        assert_eq!(allowed, ALLOWED.len());
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobStatus::ALL {
                assert!(transition(from, to).is_err(), "{from} → {to}");
            }
        }
    }
}
