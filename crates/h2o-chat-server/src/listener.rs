//! The accept loop: every connection is bounded in number and in time.
//!
//! axum's own `serve` keeps a connection as long as the client likes. Here each connection
//! is watched:
//!
//! - **Header read**: a new connection, or a kept-alive one that started sending a request,
//!   has `header_read` to deliver the whole head; a half-sent request is dropped.
//! - **Keep-alive idle**: a connection with no request in flight is closed after
//!   `keep_alive_idle`.
//! - **Write stall**: a response write that makes no progress for `write_stall` (the client
//!   stopped reading) drops the connection.
//! - **Cap**: at `max_connections`, a new connection makes the longest-idle one close; when
//!   none is idle, the newcomer gets `503` with `Connection: close` at once.
//! - **Shutdown**: draining closes idle connections and lets running requests finish; past
//!   the deadline (plus a second for the error events to go out) the rest are dropped.
//!
//! Request bodies have their own deadline (tower-http's `RequestBodyTimeoutLayer`, set up in
//! `lib.rs`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::Timeouts;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Milliseconds since the first call, plus one (0 means "not set").
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What the watchdog knows of one connection.
struct Watch {
    in_flight: AtomicUsize,
    /// When the connection last became idle (no request in flight).
    idle_since: AtomicU64,
    /// When the bytes of a request head started to be awaited or to arrive (0: none).
    head_since: AtomicU64,
    /// When a write started waiting for the client to read (0: not waiting).
    write_blocked_since: AtomicU64,
    /// Asked to close (evicted at the cap).
    close: CancellationToken,
}

impl Watch {
    fn new() -> Self {
        let now = now_ms();
        Watch {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            // A new connection owes its first request head.
            head_since: AtomicU64::new(now),
            write_blocked_since: AtomicU64::new(0),
            close: CancellationToken::new(),
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// Held by a request until its response body is dropped (sent or abandoned).
struct InFlight(Arc<Watch>);

impl InFlight {
    fn start(watch: &Arc<Watch>) -> Self {
        watch.in_flight.fetch_add(1, Ordering::AcqRel);
        watch.head_since.store(0, Ordering::Release);
        InFlight(watch.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(now_ms(), Ordering::Release);
        }
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when request bytes arrive and when writes stall.
struct Watched {
    stream: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before && self.watch.is_idle() {
            // The first bytes of a new request on an idle connection: its head is due.
            let _ = self.watch.head_since.compare_exchange(
                0,
                now_ms(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        result
    }
}

impl Watched {
    fn note_write<T>(&self, result: &Poll<io::Result<T>>) {
        match result {
            Poll::Pending => {
                let _ = self.watch.write_blocked_since.compare_exchange(
                    0,
                    now_ms(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            Poll::Ready(_) => self.watch.write_blocked_since.store(0, Ordering::Release),
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note_write(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.note_write(&result);
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What the watchdog decides for a connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Close once the running request (if any) is done.
    Close,
    /// Close now.
    Drop,
}

fn verdict(watch: &Watch, timeouts: &Timeouts, now: u64) -> Verdict {
    let elapsed = |since: u64| Duration::from_millis(now.saturating_sub(since));
    let blocked = watch.write_blocked_since.load(Ordering::Acquire);
    if blocked != 0 && elapsed(blocked) > timeouts.write_stall {
        return Verdict::Drop;
    }
    if !watch.is_idle() {
        return Verdict::Keep;
    }
    let head = watch.head_since.load(Ordering::Acquire);
    if head != 0 {
        return if elapsed(head) > timeouts.header_read {
            Verdict::Drop
        } else {
            Verdict::Keep
        };
    }
    if elapsed(watch.idle_since.load(Ordering::Acquire)) > timeouts.keep_alive_idle {
        return Verdict::Close;
    }
    Verdict::Keep
}

/// The open connections.
#[derive(Default)]
struct Registry {
    next: u64,
    open: HashMap<u64, Arc<Watch>>,
}

/// Serves `app` on `listener` until shutdown; returns when every connection has closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    timeouts: Timeouts,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) {
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    let registry = Arc::new(Mutex::new(Registry::default()));
    let tasks = tokio_util::task::TaskTracker::new();
    let tick = [
        timeouts.header_read,
        timeouts.keep_alive_idle,
        timeouts.write_stall,
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1))
    .div_f64(4.0)
    .clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.draining() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, mostly: let connections close before trying again.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let watch = Arc::new(Watch::new());
        let id = {
            let mut registry = registry.lock().unwrap_or_else(|e| e.into_inner());
            if registry.open.len() >= max_connections.max(1) {
                // Make room: the connection idle the longest goes.
                let victim = registry
                    .open
                    .values()
                    .filter(|w| w.is_idle() && !w.close.is_cancelled())
                    .min_by_key(|w| w.idle_since.load(Ordering::Acquire))
                    .cloned();
                match victim {
                    Some(victim) => {
                        victim.close.cancel();
                        metrics.connections_evicted.inc();
                    }
                    None => {
                        metrics.connections_refused.inc();
                        tasks.spawn(refuse(stream));
                        continue;
                    }
                }
            }
            registry.next += 1;
            let id = registry.next;
            registry.open.insert(id, watch.clone());
            id
        };
        metrics.connections.inc();
        let app = app.clone();
        let builder = builder.clone();
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            connection(stream, app, &builder, watch, timeouts, tick, shutdown).await;
            registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .remove(&id);
            metrics.connections.dec();
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// One connection, watched until it ends.
async fn connection(
    stream: TcpStream,
    app: Router,
    builder: &Builder<TokioExecutor>,
    watch: Arc<Watch>,
    timeouts: Timeouts,
    tick: Duration,
    shutdown: Shutdown,
) {
    let service_watch = watch.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = InFlight::start(&service_watch);
        let app = app.clone();
        async move {
            let response = app.oneshot(request.map(Body::new)).await?;
            Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let io = TokioIo::new(Watched {
        stream,
        watch: watch.clone(),
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    let past_deadline = async {
        shutdown.deadline_passed().await;
        // Room for the error events that end the running streams to go out.
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::pin!(past_deadline);
    loop {
        let close = tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%err, "connection ended with an error");
                }
                return;
            }
            () = &mut past_deadline => return,
            _ = ticks.tick() => match verdict(&watch, &timeouts, now_ms()) {
                Verdict::Keep => false,
                Verdict::Close => true,
                Verdict::Drop => return,
            },
            () = watch.close.cancelled(), if !closing => {
                if watch.is_idle() {
                    return;
                }
                true
            }
            () = shutdown.draining(), if !closing => true,
        };
        if close && !closing {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
    }
}

/// The answer at the connection cap when no connection can be closed: 503, then close.
async fn refuse(mut stream: TcpStream) {
    let body = "The server has as many connections as it accepts. Try again shortly.\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            header_read: Duration::from_millis(100),
            keep_alive_idle: Duration::from_millis(200),
            write_stall: Duration::from_millis(300),
            ..Timeouts::default()
        }
    }

    #[test]
    fn a_half_sent_head_is_dropped_after_the_header_timeout() {
        let watch = Watch::new();
        let start = watch.head_since.load(Ordering::Acquire);
        assert_eq!(verdict(&watch, &timeouts(), start + 50), Verdict::Keep);
        assert_eq!(verdict(&watch, &timeouts(), start + 150), Verdict::Drop);
    }

    #[test]
    fn an_idle_connection_closes_after_the_keep_alive_timeout() {
        let watch = Arc::new(Watch::new());
        let request = InFlight::start(&watch);
        drop(request);
        let idle = watch.idle_since.load(Ordering::Acquire);
        assert_eq!(verdict(&watch, &timeouts(), idle + 150), Verdict::Keep);
        assert_eq!(verdict(&watch, &timeouts(), idle + 250), Verdict::Close);
    }

    #[test]
    fn a_request_in_flight_keeps_its_connection_until_writes_stall() {
        let watch = Arc::new(Watch::new());
        let _request = InFlight::start(&watch);
        let now = now_ms();
        assert_eq!(verdict(&watch, &timeouts(), now + 10_000), Verdict::Keep);
        watch.write_blocked_since.store(now, Ordering::Release);
        assert_eq!(verdict(&watch, &timeouts(), now + 400), Verdict::Drop);
    }
}
