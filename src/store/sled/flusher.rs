//! Group commit: one thread that writes and fsyncs on behalf of every waiting caller, in
//! rounds, waking exactly the callers a round covers.
//!
//! **Durable before returning.** A method that changes a job waits for the flush round that
//! started after its change committed: that round drains it and fsyncs. Callers that arrive
//! while a round runs share the next one (group commit), and a round wakes only the callers
//! it covers. A failed write or fsync stops the store: every later change and wait fails
//! until it is opened again. Claims and heartbeats are *lazy* (`Write::Lazy`): they do not
//! wait, and reach sled with the job's next durable write or after `LAZY_WRITE_DELAY`.
//! Losing one to a crash only runs the job again, as recovery would anyway. Nor does
//! `complete_and_claim` wait: its caller syncs while it runs the job it claimed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::lock;
use super::overlay::LAZY_WRITE_DELAY;
use crate::store::{StoreError, StoreResult};

/// One thread that fsyncs on behalf of every waiting caller.
pub(super) struct Flusher {
    shared: Arc<FlushShared>,
    thread: Option<JoinHandle<()>>,
}

struct FlushShared {
    /// Changes committed and counted so far; a change's number is its place in this sequence.
    committed: AtomicU64,
    flushes: AtomicU64,
    request: Mutex<FlushRequest>,
    wakeup: Condvar,
}

/// What a waiter is told: on disk, or the fsync's failure.
type Flushed = Result<(), Arc<str>>;

/// What the callers want and what the flusher has done, under one lock.
#[derive(Default)]
struct FlushRequest {
    /// The highest change number someone waits for.
    wanted: u64,
    /// Every change up to this number is on disk.
    upto: u64,
    /// Sticky: after a failed fsync nothing written since can be trusted to be on disk.
    failure: Option<Arc<str>>,
    /// Callers waiting, each for its change number. A flush wakes exactly the ones it covers:
    /// with hundreds of completions in flight, waking every waiter after every fsync (a
    /// broadcast) cost more than the writes.
    waiters: Vec<(u64, oneshot::Sender<Flushed>)>,
    stop: bool,
}

impl Flusher {
    /// `flush` writes (and fsyncs, returning `true`) everything applied before it was called
    /// that the round is for.
    pub(super) fn start(
        flush: impl FnMut(Round) -> Result<bool, String> + Send + 'static,
    ) -> Flusher {
        let shared = Arc::new(FlushShared {
            committed: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            request: Mutex::new(FlushRequest::default()),
            wakeup: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("flowctl-store-flush".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || flush_loop(&shared, flush)
            })
            .expect("spawning the store's flush thread");
        Flusher {
            shared,
            thread: Some(thread),
        }
    }

    /// Waits until everything committed before this call is on disk.
    pub(super) async fn wait(&self) -> StoreResult<()> {
        let shared = &self.shared;
        let change = shared.committed.fetch_add(1, Ordering::SeqCst) + 1;
        let receiver = {
            let mut request = lock(&shared.request);
            if let Some(message) = &request.failure {
                return Err(disk_failure(message));
            }
            if request.upto >= change {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            request.waiters.push((change, tx));
            if request.wanted < change {
                request.wanted = change;
                shared.wakeup.notify_one();
            }
            rx
        };
        let flushed = receiver
            .await
            .unwrap_or_else(|_| Err("the flush thread stopped".into()));
        flushed.map_err(|message| disk_failure(&message))
    }

    /// Runs a final round (everything to disk) and ends the thread.
    pub(super) fn stop(&mut self) {
        lock(&self.shared.request).stop = true;
        self.shared.wakeup.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// How many rounds fsynced.
    pub(super) fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn disk_failure(message: &str) -> StoreError {
    StoreError::Stopped {
        reason: format!(
            "it could not write to disk ({message}); restart flowctl after fixing the disk"
        ),
    }
}

/// Why the flush thread runs a round.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Round {
    /// Someone waits for a change to be on disk.
    Waited,
    /// Nobody waits: writes that no one waits for (lazy ones, those of callers that never
    /// sync) still reach disk within [`LAZY_WRITE_DELAY`] or so.
    Tick,
    /// The store is closing: everything goes to disk.
    Final,
}

fn flush_loop(shared: &FlushShared, mut flush: impl FnMut(Round) -> Result<bool, String>) {
    loop {
        let round = {
            let mut request = lock(&shared.request);
            loop {
                if request.wanted > request.upto {
                    break Round::Waited;
                }
                if request.stop {
                    break Round::Final;
                }
                let (next, timeout) = shared
                    .wakeup
                    .wait_timeout(request, LAZY_WRITE_DELAY / 2)
                    .unwrap_or_else(PoisonError::into_inner);
                request = next;
                if timeout.timed_out() && request.wanted <= request.upto && !request.stop {
                    break Round::Tick;
                }
            }
        };
        // Every change numbered up to `target` was committed before it was numbered, so this
        // flush covers it; later ones wait for the next round.
        let target = shared.committed.load(Ordering::SeqCst);
        let result = flush(round);
        if round == Round::Final {
            if let Err(error) = result {
                tracing::error!(%error, "writing the job store on close failed");
            }
            return;
        }
        if result == Ok(true) {
            shared.flushes.fetch_add(1, Ordering::Relaxed);
        }
        if round == Round::Tick && result.is_ok() {
            continue;
        }
        let ready = {
            let mut request = lock(&shared.request);
            request.upto = target;
            if let Err(error) = &result {
                tracing::error!(%error, "flushing the job store failed");
                request.failure.get_or_insert_with(|| error.as_str().into());
            }
            let failure = request.failure.clone();
            let waiters = std::mem::take(&mut request.waiters);
            let (ready, waiting): (Vec<_>, Vec<_>) = waiters
                .into_iter()
                .partition(|(change, _)| *change <= target || failure.is_some());
            request.waiters = waiting;
            ready.into_iter().map(move |(_, tx)| (tx, failure.clone()))
        };
        // Woken outside the lock: their tasks may run at once on another thread.
        for (tx, failure) in ready {
            let _ = tx.send(failure.map_or(Ok(()), Err));
        }
    }
}

#[cfg(test)]
mod tests {

    use std::sync::Arc;
    use std::time::Duration;

    use crate::store::StoreError;

    /// Callers that arrive while an fsync runs share the next one, and each is woken when its
    /// own change is on disk. The fsync here takes 20 ms, so that the sharing does not depend
    /// on how fast this machine's disk is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_fsyncs() {
        const WRITERS: usize = 400;
        let flusher = Arc::new(super::Flusher::start(|_| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(true)
        }));
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let flusher = Arc::clone(&flusher);
                tokio::spawn(async move { flusher.wait().await.unwrap() })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let flushes = flusher
            .shared
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed);
        // The first caller's fsync, then one for everyone who came during it, and a few more
        // on a machine slow enough to spawn 400 tasks across several fsyncs.
        let rounds = started.elapsed().as_millis() as u64 / 20 + 1;
        assert!(
            (1..=rounds).contains(&flushes) && flushes <= 20,
            "{flushes} fsyncs for {WRITERS} writes"
        );
    }

    /// A failed fsync fails the changes it covered and every one after it.
    #[tokio::test]
    async fn a_failed_fsync_fails_every_later_wait() {
        let mut calls = 0;
        let flusher = super::Flusher::start(move |round| {
            if round != super::Round::Waited {
                return Ok(false);
            }
            calls += 1;
            if calls == 2 {
                Err("no space left on device".into())
            } else {
                Ok(true)
            }
        });
        flusher.wait().await.unwrap();
        for _ in 0..2 {
            match flusher.wait().await {
                Err(error @ StoreError::Stopped { .. }) => {
                    assert!(error.to_string().contains("no space left"), "{error}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
