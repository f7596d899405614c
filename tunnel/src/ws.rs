//! The server end of a tunnel WebSocket, shared by the runner and host tunnels: our own upgrade extractor (so the
//! socket's limits are ours to change), a read budget that holds a peer to
//! [`omnigent_proto::MAX_PRE_HELLO_FRAME_BYTES`] until its `hello` is accepted, and a lingering close so a
//! refused peer still reads its close code.
//!
//! axum's `WebSocket` fixes its size limits at the upgrade, so an unauthenticated peer could make the server
//! buffer a whole 100 MiB frame before the first check. Here every byte read before the `hello` is counted at
//! the socket: past the budget the read fails and the tunnel closes 1009.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use omnigent_proto::api::{ErrorBody, ErrorCode, ErrorDetail};
use omnigent_proto::ids::{check_path_id, loggable_id};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};
use tracing::debug;

/// Bytes a peer may send before its `hello` is accepted: one pre-hello frame at the cap, its header, and room
/// for a few control frames (ping, pong, close).
pub(crate) const PRE_HELLO_BUDGET: usize = omnigent_proto::MAX_PRE_HELLO_FRAME_BYTES + 4 * 1024;

/// How long a closing tunnel keeps reading (and discarding) what the peer still sends, so that unread bytes do
/// not turn our close into a TCP reset that could destroy the close frame before the peer reads it.
const LINGER: Duration = Duration::from_secs(2);
/// A lingering close ends early once the peer has been silent this long.
const LINGER_IDLE: Duration = Duration::from_millis(500);

/// `GET …/tunnel` as a WebSocket upgrade (HTTP/1.1), with the socket limits of a tunnel. Extract it in the route,
/// then call [`TunnelUpgrade::on_upgrade`] (or the tunnel's own `upgrade`).
#[derive(Debug)]
pub struct TunnelUpgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    peer: Option<SocketAddr>,
    max_frame_bytes: usize,
}

/// Why a request to a tunnel route is not a WebSocket upgrade: 400 with the JSON error body.
#[derive(Debug)]
pub struct UpgradeRejection(&'static str);

impl UpgradeRejection {
    pub fn reason(&self) -> &'static str {
        self.0
    }
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidInput,
            format!(
                "this route is a tunnel: open it as a WebSocket (HTTP/1.1 GET with `Connection: upgrade`, \
                 `Upgrade: websocket`, `Sec-WebSocket-Version: 13`); {}",
                self.0
            ),
        )
    }
}

/// The 400 answer that refuses the tunnel path id `id` of a `what` ("runner", "host") before the upgrade, or
/// `None` when the id is fine. A refused id is logged cut and escaped, never in full.
pub(crate) fn refuse_bad_id(what: &'static str, id: &str) -> Option<Response> {
    let e = check_path_id(id).err()?;
    tracing::info!(id = %loggable_id(id), error = %e, "refused a {what} tunnel: bad {what} id");
    Some(error_response(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidInput,
        format!("invalid {what} id: {e}"),
    ))
}

/// A `{"error":{"code","message"}}` answer.
pub(crate) fn error_response(status: StatusCode, code: ErrorCode, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message,
            required_role: None,
        },
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(bytes),
    )
        .into_response()
}

impl<S: Send + Sync> FromRequestParts<S> for TunnelUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, UpgradeRejection> {
        if parts.version > Version::HTTP_11 {
            return Err(UpgradeRejection("only HTTP/1.1 upgrades are served"));
        }
        if parts.method != Method::GET {
            return Err(UpgradeRejection("the method must be GET"));
        }
        let has = |name: header::HeaderName, token: &str| {
            parts.headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
        };
        if !has(header::CONNECTION, "upgrade") {
            return Err(UpgradeRejection("`Connection: upgrade` is missing"));
        }
        if !has(header::UPGRADE, "websocket") {
            return Err(UpgradeRejection("`Upgrade: websocket` is missing"));
        }
        if !has(header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(UpgradeRejection("`Sec-WebSocket-Version: 13` is missing"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(UpgradeRejection("`Sec-WebSocket-Key` is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(UpgradeRejection("this connection cannot be upgraded"))?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| *peer);
        Ok(TunnelUpgrade {
            key,
            on_upgrade,
            peer,
            max_frame_bytes: omnigent_proto::MAX_FRAME_BYTES,
        })
    }
}

impl TunnelUpgrade {
    /// The peer's address, when the server was started with `into_make_service_with_connect_info`.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The largest frame accepted once the `hello` is accepted (default [`omnigent_proto::MAX_FRAME_BYTES`]).
    pub fn max_frame_bytes(mut self, max: usize) -> Self {
        self.max_frame_bytes = max;
        self
    }

    /// Answer `101 Switching Protocols` and run `callback` on the socket once the connection is upgraded.
    #[must_use = "to set up the tunnel, this response must be returned"]
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(TunnelSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let cap = self.max_frame_bytes;
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    debug!(error = %e, "tunnel upgrade failed");
                    return;
                }
            };
            let budget = Arc::new(Budget {
                remaining: AtomicUsize::new(PRE_HELLO_BUDGET),
                exhausted: AtomicBool::new(false),
            });
            let io = BudgetedIo {
                inner: TokioIo::new(upgraded),
                budget: budget.clone(),
            };
            // The WebSocket layer allows the post-hello cap; the budget holds a peer to far less before that.
            let config = WebSocketConfig::default()
                .read_buffer_size(crate::WS_READ_BUFFER)
                .max_message_size(Some(cap))
                .max_frame_size(Some(cap));
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            callback(TunnelSocket { ws, budget }).await;
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// Bytes the peer may still send; `usize::MAX` once its `hello` is accepted.
struct Budget {
    remaining: AtomicUsize,
    exhausted: AtomicBool,
}

/// The upgraded connection, counting every byte read against the [`Budget`].
pub(crate) struct BudgetedIo {
    inner: TokioIo<hyper::upgrade::Upgraded>,
    budget: Arc<Budget>,
}

impl AsyncRead for BudgetedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let remaining = self.budget.remaining.load(Ordering::Acquire);
        if remaining == usize::MAX {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        if remaining == 0 {
            self.budget.exhausted.store(true, Ordering::Release);
            return Poll::Ready(Err(io::Error::other(
                "the peer sent more than the pre-hello budget",
            )));
        }
        let want = remaining.min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
        let result = Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        if let Poll::Ready(Ok(())) = result {
            buf.advance(n);
            // Only this task reads the socket; the budget only ever grows to MAX from elsewhere.
            let _ = self.budget.remaining.compare_exchange(
                remaining,
                remaining - n,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        result
    }
}

impl AsyncWrite for BudgetedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The WebSocket of one tunnel (server end).
pub(crate) type TunnelStream = WebSocketStream<BudgetedIo>;

/// An upgraded tunnel socket, held to the pre-hello budget until [`TunnelSocket::hello_accepted`].
pub struct TunnelSocket {
    pub(crate) ws: TunnelStream,
    budget: Arc<Budget>,
}

impl std::fmt::Debug for TunnelSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelSocket")
            .field(
                "pre_hello_budget",
                &self.budget.remaining.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl TunnelSocket {
    /// The peer's `hello` is accepted: from now on only the frame cap applies.
    pub(crate) fn hello_accepted(&self) {
        self.budget.remaining.store(usize::MAX, Ordering::Release);
    }

    /// Send a close frame, then linger: read and discard what the peer still sends until it closes, goes quiet
    /// or [`LINGER`] passes, so the close reaches it (an unread byte would make our close a TCP reset).
    pub(crate) async fn close(self, code: u16, reason: &str) {
        let mut ws = self.ws;
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        let _ = ws.send(Message::Close(Some(frame))).await;
        let _ = ws.flush().await;
        linger(ws).await;
    }
}

/// Read and discard raw bytes (below the WebSocket layer, so nothing is buffered) until the peer closes, is
/// silent for [`LINGER_IDLE`], or [`LINGER`] passes.
pub(crate) async fn linger(mut ws: TunnelStream) {
    let io = ws.get_mut();
    let mut scratch = [0u8; 4096];
    let drain = async {
        loop {
            match tokio::time::timeout(LINGER_IDLE, io.inner.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Whether a read error of the tunnel socket means the peer sent more than it may: a frame above the socket's
/// cap, or more bytes than the pre-hello budget.
pub(crate) fn is_oversized(error: &WsError, socket_budget_exhausted: bool) -> bool {
    matches!(
        error,
        WsError::Capacity(CapacityError::MessageTooLong { .. })
    ) || (socket_budget_exhausted && matches!(error, WsError::Io(_)))
}

impl TunnelSocket {
    /// Whether the peer ran out of its pre-hello budget (its reads now fail).
    pub(crate) fn budget_exhausted(&self) -> bool {
        self.budget.exhausted.load(Ordering::Acquire)
    }

    /// The next message, or `None` when the peer is gone.
    pub(crate) async fn recv(&mut self) -> Option<Result<Message, WsError>> {
        self.ws.next().await
    }
}
