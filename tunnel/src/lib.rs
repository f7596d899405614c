//! omnigent-tunnel: HTTP over WebSocket (runner tunnel v1, reference/omnigent-server-v1.md §3), written once.
//!
//! - [`registry`]: the one registry of live tunnels behind [`RunnerRegistry`] and [`host::HostRegistry`] (newest
//!   connection wins among equally authenticated ones, generation-guarded deregistration, connect/disconnect
//!   events; a replaced tunnel's end sends no `Disconnected`).
//! - Server side ([`server`]): [`RunnerRegistry`] (the runner registry, `wait_for_runner`), [`serve_runner_socket`] /
//!   [`upgrade`] (the handshake of §3.1 and the connection task), and [`RunnerConnection`], an HTTP client whose
//!   transport is the tunnel.
//! - [`auth`]: who may open a tunnel (runner or host) and which tunnel may replace which, written once.
//! - [`ws`]: the server end's WebSocket ([`TunnelUpgrade`], [`TunnelSocket`]): the pre-hello read budget, the
//!   frame cap, the lingering close.
//! - Runner side ([`router`]): [`serve_router`] drives an axum `Router` from `request` frames.
//! - [`client`]: the dialing end of both tunnels (the runner and the daemon's host tunnel): server URLs, the
//!   dial, the full-jitter redial schedule, the write loop.
//! - [`sse`]: reading a runner's SSE stream as JSON events (for the server's relay).
//!
//! Frames are [`omnigent_proto::runner_frames::RunnerFrame`].
//!
//! # Wiring the server side
//!
//! ```ignore
//! // State: one RunnerRegistry for the server's life (RunnerRegistry::new(TunnelConfig::default())).
//! async fn runner_tunnel(
//!     State(app): State<AppState>,
//!     Path(runner_id): Path<String>,
//!     ConnectInfo(peer): ConnectInfo<SocketAddr>,
//!     headers: HeaderMap,
//!     ws: omnigent_tunnel::TunnelUpgrade,
//! ) -> Response {
//!     omnigent_tunnel::upgrade(ws, peer, runner_id, &headers, app.runners.clone())
//! }
//! // Router::new().route("/v1/runners/{runner_id}/tunnel", get(runner_tunnel)) …
//! // axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//!
//! // GET /v1/runners: registry.list() → {"data":[{"runner_id","online":true,"harnesses"}]}
//! // React to tunnels: registry.subscribe() → RunnerEvent::Connected / Disconnected { generation }
//! // (Disconnected only when the runner has no live tunnel left, never for a replaced one).
//! // Relay: let conn = registry.wait_for_runner(&id, Duration::from_secs(30)).await?;
//! //        let body = conn.request(http::Request::get(format!("/v1/sessions/{sid}/stream"))
//! //                       .body(Bytes::new())?).await?.into_body();
//! //        let mut events = std::pin::pin!(sse::data_events(body, MAX_FRAME_BYTES));
//! //        while let Some(event) = events.next().await { … }   // first: {"type":"session.heartbeat"}
//! ```

use std::time::Duration;

/// Read buffer of each server-side tunnel socket. Tungstenite's default (128 KiB, allocated up front) made an
/// idle tunnel cost about 150 KiB of server memory; large frames still arrive whole, in more reads.
pub(crate) const WS_READ_BUFFER: usize = 16 * 1024;

pub mod auth;
pub mod channel;
pub mod client;
pub mod connection;
pub mod host;
pub mod registry;
pub mod router;
pub mod server;
mod socket;
pub mod sse;
pub mod ws;

pub use channel::{Channel, ChannelEvent, ChannelMessage};
pub use connection::RunnerConnection;
pub use router::{RouterConfig, ServeEnd, serve_router};
pub use server::{RunnerEvent, RunnerInfo, RunnerRegistry, serve_runner_socket, upgrade};
pub use ws::{TunnelSocket, TunnelUpgrade, UpgradeRejection};

/// Timings and limits of the server side of the tunnel. The defaults are the protocol's (reference §3.5); tests
/// shrink them or run under `tokio::time::pause()`.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// App-level `ping` interval (30 s).
    pub ping_interval: Duration,
    /// Close 4003 "ping timeout" after this long without any inbound frame (90 s).
    pub liveness_timeout: Duration,
    /// How long a new connection may take to send its `hello` (30 s).
    pub hello_timeout: Duration,
    /// Largest text frame accepted once the `hello` is accepted ([`omnigent_proto::MAX_FRAME_BYTES`]); before
    /// it, [`omnigent_proto::MAX_PRE_HELLO_FRAME_BYTES`].
    pub max_frame_bytes: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            ping_interval: Duration::from_secs(30),
            liveness_timeout: Duration::from_secs(90),
            hello_timeout: Duration::from_secs(30),
            max_frame_bytes: omnigent_proto::MAX_FRAME_BYTES,
        }
    }
}

/// Why a request over the tunnel failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TunnelError {
    /// No tunnel is registered for this runner.
    #[error("runner {0} is not connected; start it or wait for it to reconnect")]
    RunnerOffline(String),
    /// The tunnel ended (closed, replaced, timed out) while the request was open.
    #[error("tunnel closed before request completed")]
    Closed,
    /// The runner answered something that is not a valid response (bad body encoding, end before head…).
    #[error("runner sent an invalid response: {0}")]
    BadResponse(String),
    /// The request cannot be sent over the tunnel.
    #[error("request cannot be sent over the runner tunnel: {0}")]
    BadRequest(String),
}

/// Milliseconds since the Unix epoch, for `ping.ts`.
pub(crate) fn epoch_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
