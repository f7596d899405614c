//! The listener: one task per HTTP/1.1 connection, with limits no client can outstay (issue 9 hole 6).
//!
//! - **Header timeout**: a request head must be complete within `header_read_timeout` of its first byte (of
//!   the connection's start, for the first request), or the connection is closed.
//! - **Idle timeout**: a kept-alive connection with no request under way is closed after `idle_timeout`.
//! - **Body timeout**: a request body must arrive whole within `body_read_timeout` of its head; a handler
//!   reading it then gets an error (the JSON extractors answer 400) and the connection is not reused.
//! - **Connection cap**: at most `max_connections` open connections, WebSockets included (the slot lives in
//!   the socket, so an upgraded tunnel holds it until it closes). At the cap a new connection is admitted by
//!   closing the one that has waited longest with no request under way (idle between keep-alive requests, or
//!   still sending its request head), so slow clients never lock others out; only when every open connection
//!   has a request under way (an SSE stream, an upgraded tunnel, a handler running) is the new one closed at
//!   once. Either way a warning, at most every [`REFUSAL_LOG_EVERY`], says how many were evicted and refused.
//!
//! None of these limits cut a response that is streaming (SSE) or an upgraded WebSocket: the clocks run only
//! while no request is under way on the connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Logged (at most once a while) when the connection cap makes the server close or refuse connections.
pub const CONNECTION_CAP_REACHED: &str = "connection cap reached";

/// At most one "connection cap reached" (or accept failure) warning per this long.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// File descriptors kept free for the database, logs and the runtime when the cap is derived from the limit.
const FD_RESERVE: u64 = 64;

/// The limits on every connection (fields of [`crate::config::ServerConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The default connection cap: the open-file limit minus a reserve, so the cap bites before `accept` fails
/// with EMFILE (between 16 and 16,384).
pub fn default_max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let cap = soft.saturating_sub(FD_RESERVE).clamp(16, 16_384);
    usize::try_from(cap).unwrap_or(16_384)
}

/// Accept connections until `stop`; each is served on a task of `connections`. After `stop`, open connections
/// finish their requests and close (graceful); after `force`, they are dropped.
pub async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    connections: TaskTracker,
    stop: CancellationToken,
    force: CancellationToken,
) {
    let registry = Arc::new(Registry::default());
    let mut next_id: u64 = 0;
    let mut cap_log = RateLimited::default();
    let (mut evicted, mut refused) = (0u64, 0u64);
    let mut accept_log = RateLimited::default();
    let mut accept_errors = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: retrying at once would spin; a short pause lets connections close.
                    accept_errors += 1;
                    if accept_log.due() {
                        warn!(error = %e, failures = std::mem::take(&mut accept_errors),
                            "cannot accept a connection; retrying");
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                    continue;
                }
            },
        };
        next_id += 1;
        let activity = Arc::new(Activity::new());
        let admission = registry.admit(next_id, activity.clone(), limits.max_connections);
        match admission {
            Admission::Free => {}
            Admission::Evicted => evicted += 1,
            Admission::Refused => refused += 1,
        }
        if admission != Admission::Free && cap_log.due() {
            warn!(
                max_connections = limits.max_connections,
                evicted,
                refused,
                "{CONNECTION_CAP_REACHED} ({} open): closed {evicted} connection(s) that waited longest with no \
                 request under way (idle or slow clients) to admit new ones, and refused {refused} new \
                 connection(s) because every open one had a request under way (streams, tunnels, handlers). \
                 Raise OMNIGENT_SERVER_MAX_CONNECTIONS or the open-file limit if this is real load",
                limits.max_connections
            );
            (evicted, refused) = (0, 0);
        }
        if admission == Admission::Refused {
            drop(stream);
            continue;
        }
        let slot = Slot {
            registry: registry.clone(),
            id: next_id,
            activity,
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            peer,
            slot,
            app.clone(),
            limits,
            stop.clone(),
            force.clone(),
        ));
    }
}

/// Whether a new connection got a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Below the cap.
    Free,
    /// At the cap: the longest-waiting connection with no request under way was closed for it.
    Evicted,
    /// At the cap with a request under way on every open connection: the new one is closed.
    Refused,
}

/// The open connections (until their socket drops, upgraded ones included), by id.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Registry {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<u64, Arc<Activity>>) -> T) -> T {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut open)
    }

    /// Give connection `id` a slot if there is one or one can be freed (see [`Admission`]).
    fn admit(&self, id: u64, activity: Arc<Activity>, max: usize) -> Admission {
        self.with(|open| {
            let mut admission = Admission::Free;
            while open.len() >= max.max(1) {
                let Some((_, victim)) = open
                    .iter()
                    .filter_map(|(id, a)| a.waiting_since().map(|t| (t, *id)))
                    .min()
                else {
                    return Admission::Refused;
                };
                // A request may have begun since `waiting_since`: then it is busy, and the next one is tried.
                if open.get(&victim).is_some_and(|a| a.try_evict()) {
                    open.remove(&victim);
                    admission = Admission::Evicted;
                }
            }
            open.insert(id, activity);
            admission
        })
    }
}

/// A connection's slot in the [`Registry`], freed when its socket drops.
struct Slot {
    registry: Arc<Registry>,
    id: u64,
    activity: Arc<Activity>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.with(|open| open.remove(&self.id));
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    limits: ConnLimits,
    stop: CancellationToken,
    force: CancellationToken,
) {
    let activity = slot.activity.clone();
    let io = TokioIo::new(Tracked { slot, stream });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = RequestGuard::begin(requests.clone());
        let deadline = Instant::now() + limits.body_read_timeout;
        let mut req = req.map(|body| Body::new(DeadlineBody::new(body, deadline, limits)));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let app = app.clone();
        async move {
            let response = tower::ServiceExt::oneshot(app, req).await?;
            if response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
                // The socket becomes a WebSocket once this answer is sent: busy for as long as it lives.
                guard.0.in_flight.fetch_add(1, Ordering::AcqRel);
            }
            // The request counts as under way until its response body is dropped (an SSE stream, for as
            // long as it streams).
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &guard;
                    frame
                }))
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = force.cancelled() => return,
            () = activity.evict.cancelled() => {
                debug!(%peer, "closing the connection: the connection cap is reached and it waited longest \
                    with no request under way");
                return;
            }
            () = activity.changed.notified() => {}
            () = sleep_until(deadline) => {
                if let Some(why) = activity.expired(&limits) {
                    debug!(%peer, "closing the connection: {why}");
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, shared by its socket (bytes read), its service (requests) and its task (clocks).
/// Times are milliseconds since `start`.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// When the connection last became idle (no request under way).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived; [`NONE`] while none has.
    head_since: AtomicU64,
    /// Wakes the connection's task when a request ends (its clocks start again).
    changed: Notify,
    /// Cancelled when the connection is closed to make room for a new one (see [`Registry::admit`]).
    evict: CancellationToken,
}

const NONE: u64 = u64::MAX;
/// `in_flight` of an evicted connection: busy from then on, so it is neither evicted twice nor timed out.
const EVICTED: usize = usize::MAX / 2;

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            // A new connection must send its first request within the header timeout.
            head_since: AtomicU64::new(0),
            changed: Notify::new(),
            evict: CancellationToken::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_since.compare_exchange(
                NONE,
                self.now(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Since when the connection waits with no request under way (idle, or sending a request head); `None`
    /// while one is under way (a handler running, a response streaming, a WebSocket). The eviction order.
    fn waiting_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| self.at(self.idle_since.load(Ordering::Acquire)))
    }

    /// Close the connection to make room, unless a request is under way on it by now.
    fn try_evict(&self) -> bool {
        let evicted = self
            .in_flight
            .compare_exchange(0, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if evicted {
            self.evict.cancel();
        }
        evicted
    }

    /// When the connection must be closed unless something happens; `None` while a request is under way.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::Acquire) {
            NONE => Some(self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout),
            since => Some(self.at(since) + limits.header_read_timeout),
        }
    }

    fn expired(&self, limits: &ConnLimits) -> Option<String> {
        let deadline = self.deadline(limits)?;
        if Instant::now() < deadline {
            return None;
        }
        Some(match self.head_since.load(Ordering::Acquire) {
            NONE => format!("idle for {:?}", limits.idle_timeout),
            _ => format!(
                "no complete request head within {:?}",
                limits.header_read_timeout
            ),
        })
    }
}

/// One request under way on a connection, from its head to the drop of its response body.
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_since.store(NONE, Ordering::Release);
        RequestGuard(activity)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.changed.notify_one();
    }
}

/// The socket, noting reads for the header clock and holding the connection's slot until it closes (also
/// after a WebSocket upgrade, which takes it over).
struct Tracked {
    // Dropped first (fields drop in order): the slot is free before the peer can see the socket close.
    slot: Slot,
    stream: TcpStream,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.slot.activity.read_some();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request body that fails once its deadline passes before it has arrived whole.
struct DeadlineBody {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl DeadlineBody {
    fn new(inner: Incoming, deadline: Instant, limits: ConnLimits) -> Self {
        DeadlineBody {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            limit: limits.body_read_timeout,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the request body did not arrive within {:?}; send it at once, whole",
                    this.limit
                ),
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Says when to log a recurring event: the first time at once, then at most once per [`REFUSAL_LOG_EVERY`]
/// (the caller counts the events in between).
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
}

impl RateLimited {
    fn due(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + REFUSAL_LOG_EVERY) {
            return false;
        }
        self.last = Some(now);
        true
    }
}
