//! How handlers reach the store: a transient failure is retried briefly, then answered `503
//! store_unavailable` with `Retry-After`, never `500`.

use std::future::Future;
use std::time::{Duration, Instant};

use super::AppError;
use crate::store::StoreError;

/// Pauses between the attempts of a store call that failed transiently (each ±25 %), as long
/// as [`STORE_RETRY_BUDGET`] allows.
const STORE_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(600),
];
/// How long a request keeps retrying a store that fails transiently before it answers 503
/// `store_unavailable`.
pub const STORE_RETRY_BUDGET: Duration = Duration::from_millis(1500);
/// The `Retry-After` (seconds) of a 503 `store_unavailable`.
pub const STORE_RETRY_AFTER_SECS: u64 = 2;
/// The message of a 503 `store_unavailable`.
pub(super) const STORE_UNAVAILABLE_MESSAGE: &str =
    "the job store is unavailable; retry after the time in Retry-After";

/// Runs one store operation for a request: a transient failure
/// ([`StoreError::is_transient`]) is retried with backoff within [`STORE_RETRY_BUDGET`], then
/// answered 503 `store_unavailable` with `Retry-After`; any other error is mapped once
/// ([`AppError::from`]). Every handler reaches the store through this, so none answers `500`
/// for a store that is only briefly away.
///
/// `op` must be safe to repeat: a transient failure may come after the store applied the
/// change (reads, `cancel`, and an `enqueue` with a unique key are).
pub async fn store_call<T, F, Fut>(mut op: F) -> Result<T, AppError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut delays = STORE_RETRY_DELAYS.iter();
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_transient() => {
                let delay = delays
                    .next()
                    .map(|d| d.mul_f64(rand::random_range(0.75..1.25)))
                    .filter(|d| started.elapsed() + *d <= STORE_RETRY_BUDGET);
                match delay {
                    Some(delay) => {
                        tracing::debug!(error = %e, ?delay, "the job store failed transiently; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
