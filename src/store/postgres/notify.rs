//! Wake-ups from other processes: the `NOTIFY`s the `jobs` triggers send when a statement leaves
//! jobs QUEUED, heard on a dedicated connection that reconnects with backoff. A notification
//! names the process that wrote (`flowctl.instance`), which has woken its own dispatcher already
//! and ignores it.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use super::errors::pg_error;
use super::store::Inner;
use crate::store::{StoreError, StoreResult};

/// Listens for other processes' `NOTIFY`s on a dedicated connection and bumps the store's wake
/// counter; reconnects with backoff when the connection is lost (and wakes then too: a
/// notification may have been missed meanwhile). Ends when the store is gone.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    instance: String,
    inner: std::sync::Weak<Inner>,
) {
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&config, &instance, &inner, &mut backoff).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "lost the LISTEN connection to the job store; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One LISTEN connection, until it fails (`Err`) or the store is gone (`Ok`).
async fn listen_once(
    config: &tokio_postgres::Config,
    instance: &str,
    inner: &std::sync::Weak<Inner>,
    backoff: &mut Duration,
) -> StoreResult<()> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(pg_error)?;
    let (tx, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Ok(n)).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    let _ = tx.send(Err(error));
                    return;
                }
                None => return,
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    let channel: String = client
        .query_one("SELECT flowctl_channel()", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    client
        .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
        .await
        .map_err(pg_error)?;
    *backoff = Duration::from_millis(100);
    match inner.upgrade() {
        Some(inner) => inner.wake(),
        None => return Ok(()),
    }
    while let Some(message) = notifications.recv().await {
        let notification = message.map_err(pg_error)?;
        let Some(inner) = inner.upgrade() else {
            return Ok(());
        };
        if notification.payload() != instance {
            inner.wake();
        }
    }
    drop(client);
    Err(StoreError::Unavailable(
        "the LISTEN connection closed".into(),
    ))
}

/// Aborts the task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
