//! The accept loop: **no connection holds the server forever**. [`serve_with`] bounds the time
//! to send a request head and the time idle, and caps the number of open connections
//! ([`ServeConfig`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use tokio::io::AsyncRead;

use super::head_limit::{close_response, HeadLimit, HeadLimits};
use super::{app, AppError, AppState};

/// How [`serve`] treats connections. Slow or silent clients must not hold the server's file
/// descriptors: every connection is bounded in time, and their number is capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Time a connection has to send a whole request head, counted from when the server starts
    /// waiting for it (at connect, and after each response): partial headers, and silent
    /// connections, are closed after it.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed
    /// (kept-alive connections between requests). The header timer bounds waiting for a
    /// request too, so the shorter of the two applies to an idle connection.
    pub idle_timeout: Duration,
    /// Connections held open at most; beyond it the server stops accepting (new connections
    /// wait in the listen backlog) until one closes.
    pub max_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            max_connections: 512,
        }
    }
}

impl ServeConfig {
    /// The defaults overridden by [`crate::env::HTTP_HEADER_TIMEOUT`],
    /// [`crate::env::HTTP_IDLE_TIMEOUT`] and [`crate::env::HTTP_MAX_CONNECTIONS`] as `var`
    /// finds them. Errors name the variable.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<ServeConfig, String> {
        use crate::env::{HTTP_HEADER_TIMEOUT, HTTP_IDLE_TIMEOUT, HTTP_MAX_CONNECTIONS};
        let mut config = ServeConfig::default();
        let duration = |name: &str| -> Result<Option<Duration>, String> {
            var(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    crate::compiler::parse_duration(v.trim())
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            format!("{name}={v}: expected a duration such as 10s or 500ms")
                        })
                })
                .transpose()
        };
        if let Some(d) = duration(HTTP_HEADER_TIMEOUT)? {
            config.header_read_timeout = d;
        }
        if let Some(d) = duration(HTTP_IDLE_TIMEOUT)? {
            config.idle_timeout = d;
        }
        if let Some(v) = var(HTTP_MAX_CONNECTIONS).filter(|v| !v.trim().is_empty()) {
            config.max_connections = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| {
                    format!("{HTTP_MAX_CONNECTIONS}={v}: expected a whole number from 1 to 1000000")
                })?;
        }
        Ok(config)
    }
}

/// Request heads the socket's guard ([`head_limit`](super::head_limit)) lets through to hyper,
/// in bytes: heads between [`HEADER_LIMIT`] and this get the JSON `431` from the `observe`
/// middleware, larger ones from the guard, which then closes the connection.
pub(super) const GUARDED_HEADER_LIMIT: usize = 64 * 1024;
/// Largest request head (request line and header fields) the API accepts, in bytes (checked by
/// [`observe`](super::middleware::observe)).
pub const HEADER_LIMIT: usize = 16 * 1024;
/// Most header fields a request may have; beyond, the guard answers the JSON `431` and closes.
pub const MAX_HEADERS: usize = 100;
/// hyper's own limits, above the guard's so that hyper's bare `431` (no body) is never what a
/// client gets while the guard follows the connection's framing.
const HYPER_HEADER_LIMIT: usize = GUARDED_HEADER_LIMIT + 8 * 1024;
const HYPER_MAX_HEADERS: usize = 2 * MAX_HEADERS;

/// Serves `app(state)` on `listener` with [`ServeConfig::default`] until `shutdown` resolves,
/// then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, ServeConfig::default(), shutdown).await
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then stops accepting, closes
/// idle connections and lets requests in flight finish.
///
/// A hand-written accept loop over hyper's HTTP/1 connection (axum's `serve` has no timeouts
/// and no cap): a permit of a semaphore of [`ServeConfig::max_connections`] per connection,
/// hyper's header-read timer, and an idle watchdog per connection.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tokio::sync::{watch, Semaphore};

    let app = app(state);
    let max = config.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let (closing, _) = watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(HYPER_HEADER_LIMIT)
        .max_headers(HYPER_MAX_HEADERS)
        .keep_alive(true);
    let refusal = head_refusal().await;
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before accept:
                    // keep serving the connections we have, and try again shortly.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small JSON answers: send them now rather than wait for more to coalesce.
        let _ = tcp.set_nodelay(true);
        let tcp = HeadLimit::new(
            tcp,
            HeadLimits {
                bytes: GUARDED_HEADER_LIMIT,
                fields: MAX_HEADERS,
            },
            refusal.clone(),
        );
        tokio::spawn(serve_connection(
            tcp,
            app.clone(),
            builder.clone(),
            config.idle_timeout,
            closing.subscribe(),
            permit,
        ));
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection holds a permit until it ends.
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}

/// The whole response the socket's guard sends for a head over its limits: the API's JSON `431`.
async fn head_refusal() -> axum::body::Bytes {
    use axum::response::IntoResponse;
    let error = AppError::HeadersTooLarge(format!(
        "request head larger than {} KiB or with more than {MAX_HEADERS} header fields; \
         the connection is closed",
        GUARDED_HEADER_LIMIT / 1024
    ));
    let status = error.status();
    let body = axum::body::to_bytes(error.into_response().into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    close_response(status, &body)
}

/// Activity of one connection, for its idle watchdog.
#[derive(Default)]
struct Activity {
    /// Milliseconds after `start` of the last byte read or written.
    last: std::sync::atomic::AtomicU64,
    /// Requests whose handler has not answered yet.
    in_flight: std::sync::atomic::AtomicUsize,
}

impl Activity {
    fn touch(&self, start: tokio::time::Instant) {
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self, start: tokio::time::Instant) -> tokio::time::Instant {
        start + Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn busy(&self) -> bool {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

/// One connection: hyper's HTTP/1 state machine, closed gracefully when the server stops or
/// when it idles longer than `idle_timeout`.
async fn serve_connection(
    tcp: HeadLimit<tokio::net::TcpStream>,
    app: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    idle_timeout: Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let start = tokio::time::Instant::now();
    let activity = Arc::new(Activity::default());
    let io = hyper_util::rt::TokioIo::new(Watched {
        inner: tcp,
        activity: activity.clone(),
        start,
    });
    let tower = hyper_util::service::TowerToHyperService::new(app);
    let busy = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        let guard = InFlight::enter(busy.clone());
        let answer = hyper::service::Service::call(&tower, request);
        async move {
            let response = answer.await;
            drop(guard);
            response
        }
    });
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut closed = false;
    loop {
        let idle_deadline = activity.last(start) + idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = closing.changed(), if !closed => {
                if changed.is_err() || *closing.borrow() {
                    closed = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                if activity.busy() {
                    // A handler is working (no bytes move meanwhile): look again later.
                    activity.touch(start);
                } else if activity.last(start) + idle_timeout <= tokio::time::Instant::now() {
                    if closed {
                        // Closing, yet no byte moved for a whole idle timeout: a client that
                        // stopped reading its response. Dropping the connection closes it, so
                        // it cannot hold its slot under the cap forever.
                        tracing::debug!("dropping a connection whose client stopped reading");
                        return;
                    }
                    // Closes a connection waiting for a request; one whose response is still
                    // being written finishes it first.
                    tracing::debug!("closing an idle connection");
                    closed = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Counts a request in flight on its connection while alive.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: Arc<Activity>) -> InFlight {
        activity
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A socket that records when bytes last moved through it.
struct Watched {
    inner: HeadLimit<tokio::net::TcpStream>,
    activity: Arc<Activity>,
    start: tokio::time::Instant,
}

impl Watched {
    fn touch(&self) {
        self.activity.touch(self.start);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        result
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_config_reads_its_variables() {
        use crate::env::{HTTP_HEADER_TIMEOUT, HTTP_IDLE_TIMEOUT, HTTP_MAX_CONNECTIONS};
        let with = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ServeConfig::from_lookup(move |name| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        assert_eq!(with(&[]).unwrap(), ServeConfig::default());
        let c = with(&[
            (HTTP_HEADER_TIMEOUT, "2s"),
            (HTTP_IDLE_TIMEOUT, "500ms"),
            (HTTP_MAX_CONNECTIONS, "64"),
        ])
        .unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.idle_timeout, Duration::from_millis(500));
        assert_eq!(c.max_connections, 64);
        for (name, value) in [
            (HTTP_HEADER_TIMEOUT, "0s"),
            (HTTP_IDLE_TIMEOUT, "soon"),
            (HTTP_MAX_CONNECTIONS, "0"),
        ] {
            let err = with(&[(name, value)]).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
    }
}
