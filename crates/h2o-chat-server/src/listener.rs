//! The accept loop: every connection is bounded in number and in time.
//!
//! axum's own `serve` keeps a connection as long as the client likes. Here each connection
//! is watched, every deadline absolute (counted from when the wait began, not from the last
//! byte, so a byte every few seconds buys nothing):
//!
//! - **Request head**: a new connection, or a kept-alive one that started sending a request,
//!   has `header_read` to deliver the whole head; a half-sent request is dropped.
//! - **Request body**: `body_read` from the end of the head to the body's last byte.
//! - **Keep-alive idle**: a connection with no request in flight is closed after
//!   `keep_alive_idle`.
//! - **Write stall**: a response write that makes no progress for `write_stall` (the client
//!   stopped reading) drops the connection.
//! - **Caps**: `max_connections` in all and `max_connections_per_client` from one address.
//!   At the overall cap a newcomer makes room by closing a connection that is idle or past a
//!   deadline (the longest-idle first); when none is, it gets `503` with `Connection: close`
//!   at once. A client at its own cap gets the `503` without closing anyone's connection.
//! - **HTTP/1.1** unless HTTP/2 is asked for; with it, a few streams per connection, each
//!   request counted like an HTTP/1.1 one.
//! - **Shutdown**: draining closes idle connections and lets running requests finish; past
//!   the deadline (plus a second for the error events to go out) the rest are dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
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
    /// The client's address (for the per-client cap).
    peer: IpAddr,
    in_flight: AtomicUsize,
    /// When the connection last became idle (no request in flight).
    idle_since: AtomicU64,
    /// When the bytes of a request head started to be awaited or to arrive (0: none).
    head_since: AtomicU64,
    /// When a write started waiting for the client to read (0: not waiting).
    write_blocked_since: AtomicU64,
    /// The request bodies being read (HTTP/2 reads several at once), by when each began.
    bodies: Mutex<HashMap<u64, u64>>,
    next_body: AtomicU64,
    /// Asked to close (evicted at the cap).
    close: CancellationToken,
}

impl Watch {
    fn new(peer: IpAddr) -> Self {
        let now = now_ms();
        Watch {
            peer,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            // A new connection owes its first request head.
            head_since: AtomicU64::new(now),
            write_blocked_since: AtomicU64::new(0),
            bodies: Mutex::new(HashMap::new()),
            next_body: AtomicU64::new(0),
            close: CancellationToken::new(),
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    fn bodies(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.bodies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the oldest body still being read began (0: none is).
    fn oldest_body(&self) -> u64 {
        self.bodies().values().copied().min().unwrap_or(0)
    }
}

/// A request body, its deadline counted from the end of the head to its last byte.
struct TimedBody {
    inner: Incoming,
    watch: Arc<Watch>,
    /// Its key in `Watch::bodies` while it is being read.
    key: Option<u64>,
}

impl TimedBody {
    fn new(inner: Incoming, watch: &Arc<Watch>) -> Self {
        let key = (!inner.is_end_stream()).then(|| {
            let key = watch.next_body.fetch_add(1, Ordering::Relaxed);
            watch.bodies().insert(key, now_ms());
            key
        });
        TimedBody {
            inner,
            watch: watch.clone(),
            key,
        }
    }

    /// Read to its end (or given up): its deadline no longer counts.
    fn done(&mut self) {
        if let Some(key) = self.key.take() {
            self.watch.bodies().remove(&key);
        }
    }
}

impl HttpBody for TimedBody {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || self.inner.is_end_stream()
        {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.done();
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
    let body = watch.oldest_body();
    if body != 0 && elapsed(body) > timeouts.body_read {
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
    /// Open connections per client address.
    per_client: HashMap<IpAddr, usize>,
}

impl Registry {
    /// A connection to close to make room: one idle or past a deadline, the longest-idle
    /// first.
    fn victim(&self, timeouts: &Timeouts, now: u64) -> Option<Arc<Watch>> {
        self.open
            .values()
            .filter(|w| !w.close.is_cancelled())
            .filter(|w| w.is_idle() || verdict(w, timeouts, now) == Verdict::Drop)
            .min_by_key(|w| (!w.is_idle(), w.idle_since.load(Ordering::Acquire)))
            .cloned()
    }

    fn remove(&mut self, id: u64) {
        if let Some(watch) = self.open.remove(&id)
            && let Some(count) = self.per_client.get_mut(&watch.peer)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_client.remove(&watch.peer);
            }
        }
    }
}

/// How the listener serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listening {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// HTTP/2 streams per connection; `None`: HTTP/1.1 only.
    pub http2_streams: Option<u32>,
    pub timeouts: Timeouts,
}

/// Serves `app` on `listener` until shutdown; returns when every connection has closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    listening: Listening,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) {
    let timeouts = listening.timeouts;
    let mut builder = Builder::new(TokioExecutor::new());
    builder = match listening.http2_streams {
        Some(streams) => {
            builder.http2().max_concurrent_streams(streams);
            builder
        }
        None => builder.http1_only(),
    };
    let builder = Arc::new(builder);
    let registry = Arc::new(Mutex::new(Registry::default()));
    let tasks = tokio_util::task::TaskTracker::new();
    let tick = [
        timeouts.header_read,
        timeouts.body_read,
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
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, mostly (the connection cap is kept below the
                // process's limit, so this is another process's doing): let connections close
                // before trying again.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let watch = Arc::new(Watch::new(peer.ip()));
        let id = {
            let mut registry = registry.lock().unwrap_or_else(|e| e.into_inner());
            let from_client = registry.per_client.get(&peer.ip()).copied().unwrap_or(0);
            if from_client >= listening.max_connections_per_client.max(1) {
                // This client holds its share: it is refused, nobody else is closed for it.
                metrics.connections_refused.inc();
                tasks.spawn(refuse(stream));
                continue;
            }
            if registry.open.len() >= listening.max_connections.max(1) {
                match registry.victim(&timeouts, now_ms()) {
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
            *registry.per_client.entry(peer.ip()).or_default() += 1;
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
                .remove(id);
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
        let request = request.map(|body| Body::new(TimedBody::new(body, &service_watch)));
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await?;
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
        let watch = Watch::new(IpAddr::from([127, 0, 0, 1]));
        let start = watch.head_since.load(Ordering::Acquire);
        assert_eq!(verdict(&watch, &timeouts(), start + 50), Verdict::Keep);
        assert_eq!(verdict(&watch, &timeouts(), start + 150), Verdict::Drop);
    }

    #[test]
    fn an_idle_connection_closes_after_the_keep_alive_timeout() {
        let watch = Arc::new(Watch::new(IpAddr::from([127, 0, 0, 1])));
        let request = InFlight::start(&watch);
        drop(request);
        let idle = watch.idle_since.load(Ordering::Acquire);
        assert_eq!(verdict(&watch, &timeouts(), idle + 150), Verdict::Keep);
        assert_eq!(verdict(&watch, &timeouts(), idle + 250), Verdict::Close);
    }

    #[test]
    fn a_request_in_flight_keeps_its_connection_until_writes_stall() {
        let watch = Arc::new(Watch::new(IpAddr::from([127, 0, 0, 1])));
        let _request = InFlight::start(&watch);
        let now = now_ms();
        assert_eq!(verdict(&watch, &timeouts(), now + 10_000), Verdict::Keep);
        watch.write_blocked_since.store(now, Ordering::Release);
        assert_eq!(verdict(&watch, &timeouts(), now + 400), Verdict::Drop);
    }

    #[test]
    fn a_body_is_due_in_full_by_its_deadline_however_it_trickles_in() {
        let watch = Arc::new(Watch::new(IpAddr::from([127, 0, 0, 1])));
        let _request = InFlight::start(&watch);
        let start = now_ms();
        watch.bodies().insert(0, start);
        let timeouts = Timeouts {
            body_read: Duration::from_millis(1000),
            ..timeouts()
        };
        assert_eq!(verdict(&watch, &timeouts, start + 900), Verdict::Keep);
        // A byte now and then changes nothing: the deadline counts from the head.
        assert_eq!(verdict(&watch, &timeouts, start + 1100), Verdict::Drop);
        watch.bodies().remove(&0);
        assert_eq!(verdict(&watch, &timeouts, start + 1100), Verdict::Keep);
    }

    #[test]
    fn at_the_cap_an_idle_or_overdue_connection_makes_room_never_a_busy_one() {
        let timeouts = Timeouts {
            body_read: Duration::from_millis(1000),
            ..timeouts()
        };
        let mut registry = Registry::default();
        let busy = Arc::new(Watch::new(IpAddr::from([127, 0, 0, 1])));
        let _working = InFlight::start(&busy);
        registry.open.insert(1, busy.clone());
        let now = now_ms();
        assert!(registry.victim(&timeouts, now).is_none());
        let overdue = Arc::new(Watch::new(IpAddr::from([127, 0, 0, 2])));
        let _trickling = InFlight::start(&overdue);
        overdue.bodies().insert(0, now);
        registry.open.insert(2, overdue.clone());
        assert!(
            registry.victim(&timeouts, now + 10).is_none(),
            "not yet due"
        );
        let victim = registry.victim(&timeouts, now + 1100).unwrap();
        assert!(Arc::ptr_eq(&victim, &overdue));
        let idle = Arc::new(Watch::new(IpAddr::from([127, 0, 0, 3])));
        registry.open.insert(3, idle.clone());
        let victim = registry.victim(&timeouts, now + 1100).unwrap();
        assert!(Arc::ptr_eq(&victim, &idle), "an idle one first");
    }
}
