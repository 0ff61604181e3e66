//! Waiting for something to happen (a job to finish, a line in a log, a file on disk): a probe
//! polled with a deadline, and a failure that says what was awaited and what was seen.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `probe` every `every` until it returns `Some`, for at most `limit`; then panics with
/// `gave up after LIMIT: ` and `what()` (which should say what was awaited and seen).
#[track_caller]
pub fn wait_for<T>(
    limit: Duration,
    every: Duration,
    what: impl Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?}: {}",
            what()
        );
        std::thread::sleep(every);
    }
}

/// [`wait_for`] with an async probe, sleeping on the tokio timer between calls.
pub async fn until<T, F, Fut>(
    limit: Duration,
    every: Duration,
    what: impl Fn() -> String,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?}: {}",
            what()
        );
        tokio::time::sleep(every).await;
    }
}
