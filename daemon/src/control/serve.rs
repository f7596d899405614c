//! The control socket's connections (issue 9, hole 6): HTTP/1.1 per accepted connection, peers of another
//! uid refused before a byte is read, and no client able to hold the daemon up:
//! - **idle timeout**: a connection waiting for a request (just accepted, or between keep-alive requests)
//!   is closed after [`ControlLimits::idle_timeout`] without a byte;
//! - **header timeout**: once the first byte of a request came, its head must be complete within
//!   [`ControlLimits::header_timeout`];
//! - **body timeout**: a request's body must arrive within [`ControlLimits::body_timeout`] (enforced where it
//!   is buffered, in `api`, which answers 408);
//! - **connection cap**: at [`ControlLimits::max_connections`] open connections, the longest-waiting one that
//!   has no request in flight is closed to make room (so idle or half-sent connections never lock others
//!   out); when every one is busy, the new one gets a 503 JSON error. Either way a log line says so.
//!
//! A request being handled (a status long-poll, a server start) has no deadline here.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::traits::StreamCommon;
use omnigent_proto::control::{ControlError, ControlErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Timeouts and the connection cap of the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ControlLimits {
    fn default() -> Self {
        ControlLimits {
            idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

/// Where a connection is: waiting for a request (since when, and whether a head has begun) or handling one.
struct ClockState {
    in_flight: usize,
    waiting_since: Instant,
    head_started: Option<Instant>,
    read_in_flight: bool,
}

struct Clock {
    state: Mutex<ClockState>,
    wake: Notify,
}

impl Clock {
    fn new() -> Self {
        Clock {
            state: Mutex::new(ClockState {
                in_flight: 0,
                waiting_since: Instant::now(),
                head_started: None,
                read_in_flight: false,
            }),
            wake: Notify::new(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ClockState) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    fn on_read(&self) {
        let started = self.with(|s| {
            if s.in_flight > 0 {
                s.read_in_flight = true;
                false
            } else if s.head_started.is_none() {
                s.head_started = Some(Instant::now());
                true
            } else {
                false
            }
        });
        if started {
            self.wake.notify_one();
        }
    }

    fn begin(&self) {
        self.with(|s| {
            s.in_flight += 1;
            s.head_started = None;
        });
    }

    fn end(&self) {
        self.with(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                let now = Instant::now();
                s.waiting_since = now;
                // Bytes read while handling (a pipelined next request) start its head now.
                s.head_started = std::mem::take(&mut s.read_in_flight).then_some(now);
            }
        });
        self.wake.notify_one();
    }

    /// When the connection must be closed if nothing changes; `None` while a request is in flight.
    fn deadline(&self, limits: &ControlLimits) -> Option<Instant> {
        self.with(|s| {
            (s.in_flight == 0).then(|| match s.head_started {
                Some(t) => t + limits.header_timeout,
                None => s.waiting_since + limits.idle_timeout,
            })
        })
    }

    /// Since when it waits without a request in flight (`None` when busy): the eviction order.
    fn waiting_since(&self) -> Option<Instant> {
        self.with(|s| (s.in_flight == 0).then_some(s.waiting_since))
    }
}

/// Ends a request on its connection's clock, however the handler ends.
struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The connection's stream, telling its clock when bytes arrive.
struct Watched<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.on_read();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The open connections: their clocks and a way to close each.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, (Arc<Clock>, CancellationToken)>>,
}

impl Registry {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashMap<u64, (Arc<Clock>, CancellationToken)>) -> T,
    ) -> T {
        let mut m = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut m)
    }

    /// Make room for one more: `Ok(None)` below the cap, `Ok(Some(id))` when connection `id` (the one
    /// waiting longest with no request in flight) was closed for it, `Err(())` when all are busy.
    fn make_room(&self, max: usize) -> Result<Option<u64>, ()> {
        self.with(|m| {
            if m.len() < max.max(1) {
                return Ok(None);
            }
            let victim = m
                .iter()
                .filter_map(|(id, (clock, _))| clock.waiting_since().map(|t| (t, *id)))
                .min()
                .map(|(_, id)| id);
            match victim.and_then(|id| m.remove(&id).map(|(_, close)| (id, close))) {
                Some((id, close)) => {
                    close.cancel();
                    Ok(Some(id))
                }
                None => Err(()),
            }
        })
    }
}

/// Says "the cap bit" at most once a second, with how often it bit meanwhile.
struct CapLog {
    last: Option<Instant>,
    unreported: u64,
}

impl CapLog {
    fn bit(&mut self, max: usize, what: std::fmt::Arguments<'_>) {
        self.unreported += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(
            max_connections = max,
            times = self.unreported,
            "control socket connection cap reached: {what}"
        );
        self.last = Some(Instant::now());
        self.unreported = 0;
    }
}

/// The 503 a connection gets when the cap is reached and no connection can be closed for it.
fn busy_reply(max: usize) -> Vec<u8> {
    let body = serde_json::to_vec(&ControlError {
        code: ControlErrorCode::Busy,
        message: format!(
            "the daemon has {max} control connections in use (its cap); retry in a moment"
        ),
        daemon: None,
    })
    .unwrap_or_default();
    let mut reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend(body);
    reply
}

/// Accept control connections until `stop`; a listener sent on `fresh` (the socket was re-created)
/// replaces the current one.
pub(crate) async fn accept_loop(
    mut listener: Listener,
    mut fresh: mpsc::Receiver<Listener>,
    app: axum::Router,
    limits: ControlLimits,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    let me = nix::unistd::geteuid().as_raw();
    let registry = Arc::new(Registry::default());
    let mut cap_log = CapLog {
        last: None,
        unreported: 0,
    };
    let mut conn_id: u64 = 0;
    loop {
        let mut stream = tokio::select! {
            () = stop.cancelled() => return,
            Some(new) = fresh.recv() => {
                listener = new;
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the control socket failed");
                    continue;
                }
            },
        };
        conn_id += 1;
        let peer = stream.peer_creds().ok().and_then(|c| c.euid());
        if peer != Some(me) {
            tracing::warn!(conn = conn_id, peer_uid = ?peer, "refused a control connection from another user");
            continue;
        }
        match registry.make_room(limits.max_connections) {
            Ok(None) => {}
            Ok(Some(closed)) => cap_log.bit(
                limits.max_connections,
                format_args!(
                    "closed the longest-waiting idle connection (conn {closed}) for conn {conn_id}"
                ),
            ),
            Err(()) => {
                cap_log.bit(
                    limits.max_connections,
                    format_args!("every connection is busy; refused conn {conn_id} with 503"),
                );
                let reply = busy_reply(limits.max_connections);
                connections.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&reply))
                        .await;
                });
                continue;
            }
        }
        let clock = Arc::new(Clock::new());
        let close = CancellationToken::new();
        registry.with(|m| m.insert(conn_id, (clock.clone(), close.clone())));
        let app = app.clone();
        let stop = stop.clone();
        let registry = registry.clone();
        connections.spawn(async move {
            serve_connection(stream, app, clock, &limits, close, stop, conn_id).await;
            registry.with(|m| m.remove(&conn_id));
        });
    }
}

async fn serve_connection(
    stream: interprocess::local_socket::tokio::Stream,
    app: axum::Router,
    clock: Arc<Clock>,
    limits: &ControlLimits,
    close: CancellationToken,
    stop: CancellationToken,
    conn_id: u64,
) {
    let service_clock = clock.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        service_clock.begin();
        let in_flight = InFlight(service_clock.clone());
        async move {
            let resp = tower::ServiceExt::oneshot(app, req.map(axum::body::Body::new)).await;
            drop(in_flight);
            resp
        }
    });
    let io = Watched {
        inner: stream,
        clock: clock.clone(),
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    loop {
        let deadline = clock.deadline(limits);
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(conn = conn_id, error = %e, "control connection ended with an error");
                }
                return;
            }
            () = clock.wake.notified() => {}
            () = expired => {
                // The state may have moved on since the deadline was computed: only close when it still holds.
                if clock.deadline(limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(conn = conn_id, "closed a control connection that sent no complete request in time");
                    return;
                }
            }
            () = close.cancelled() => return,
            () = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(max_connections: usize) -> ControlLimits {
        ControlLimits {
            idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_has_the_idle_deadline_then_the_header_deadline_and_none_while_in_flight()
    {
        let l = limits(4);
        let c = Clock::new();
        let t0 = Instant::now();
        assert_eq!(c.deadline(&l), Some(t0 + l.idle_timeout));
        tokio::time::advance(Duration::from_secs(5)).await;
        c.on_read();
        assert_eq!(c.deadline(&l), Some(t0 + Duration::from_secs(15)));
        // More bytes of the same head do not move it.
        tokio::time::advance(Duration::from_secs(5)).await;
        c.on_read();
        assert_eq!(c.deadline(&l), Some(t0 + Duration::from_secs(15)));
        c.begin();
        assert_eq!(
            c.deadline(&l),
            None,
            "a request being handled has no deadline"
        );
        tokio::time::advance(Duration::from_secs(100)).await;
        c.end();
        assert_eq!(c.deadline(&l), Some(Instant::now() + l.idle_timeout));
        // A pipelined request read while handling starts its head when the first one ends.
        c.begin();
        c.on_read();
        c.end();
        assert_eq!(c.deadline(&l), Some(Instant::now() + l.header_timeout));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_longest_waiting_idle_connection_makes_room_and_busy_ones_never_do() {
        let r = Registry::default();
        let add = |id: u64| {
            let clock = Arc::new(Clock::new());
            let close = CancellationToken::new();
            r.with(|m| m.insert(id, (clock.clone(), close.clone())));
            (clock, close)
        };
        let (busy, busy_close) = add(1);
        busy.begin();
        tokio::time::advance(Duration::from_secs(1)).await;
        let (_, old_close) = add(2);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (_, new_close) = add(3);
        assert_eq!(r.make_room(4), Ok(None));
        assert_eq!(r.make_room(3), Ok(Some(2)));
        assert!(old_close.is_cancelled() && !new_close.is_cancelled());
        assert_eq!(r.make_room(2), Ok(Some(3)));
        assert_eq!(r.make_room(1), Err(()), "the only one left is busy");
        assert!(!busy_close.is_cancelled());
    }
}
