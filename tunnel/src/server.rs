//! Server side of the runner tunnel: the registry of live runners and the handshake of reference §3.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use futures_util::StreamExt;
use omnigent_proto::headers::RUNNER_TUNNEL_TOKEN;
use omnigent_proto::ids::loggable_id;
use omnigent_proto::runner_frames::{FrameError, Hello, RunnerFrame, close};
use omnigent_proto::{FRAME_PROTOCOL_VERSION, MAX_PRE_HELLO_FRAME_BYTES};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::{Admission, Authentication, Claim, PeerCredentials, admit};
use crate::connection::{RunnerConnection, run_connection};
use crate::registry::{Registry, Tunnel};
use crate::ws::{TunnelSocket, TunnelUpgrade, is_oversized};
use crate::{TunnelConfig, TunnelError};

/// What happened to a runner's tunnel. `generation` tells a replaced tunnel's disconnect from the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerEvent {
    Connected { runner_id: String, generation: u64 },
    Disconnected { runner_id: String, generation: u64 },
}

/// One online runner, for `GET /v1/runners`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerInfo {
    pub runner_id: String,
    pub generation: u64,
    pub harnesses: Vec<String>,
    pub runner_version: String,
    pub peer: Option<SocketAddr>,
    /// How the tunnel proved its claim on the id.
    pub authentication: Authentication,
}

/// The live runner tunnels of this server, keyed by runner id: a [`Registry`] of [`RunnerConnection`]s (newest
/// wins among equally authenticated tunnels; a replaced tunnel's end sends no `Disconnected`). Cheap to clone.
#[derive(Clone)]
pub struct RunnerRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    tunnels: Registry<RunnerConnection, RunnerEvent>,
    config: TunnelConfig,
}

/// How many events a slow subscriber may fall behind before it sees `Lagged`.
const EVENT_BUFFER: usize = 1024;

impl Tunnel for RunnerConnection {
    fn close(&self, code: u16, reason: &str) {
        RunnerConnection::close(self, code, reason)
    }
}

impl std::fmt::Debug for RunnerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerRegistry")
            .field("tunnels", &self.inner.tunnels)
            .finish()
    }
}

impl Default for RunnerRegistry {
    fn default() -> Self {
        Self::new(TunnelConfig::default())
    }
}

impl RunnerRegistry {
    pub fn new(config: TunnelConfig) -> Self {
        RunnerRegistry {
            inner: Arc::new(RegistryInner {
                tunnels: Registry::new(EVENT_BUFFER),
                config,
            }),
        }
    }

    pub fn config(&self) -> &TunnelConfig {
        &self.inner.config
    }

    /// The live tunnel of `runner_id`, if any.
    pub fn get(&self, runner_id: &str) -> Option<RunnerConnection> {
        self.inner.tunnels.get(runner_id)
    }

    /// Whether `runner_id` has a live tunnel.
    pub fn is_online(&self, runner_id: &str) -> bool {
        self.inner.tunnels.contains(runner_id)
    }

    /// Every online runner, sorted by id.
    pub fn list(&self) -> Vec<RunnerInfo> {
        self.inner
            .tunnels
            .tunnels()
            .iter()
            .map(|c| RunnerInfo {
                runner_id: c.runner_id().to_owned(),
                generation: c.generation(),
                harnesses: c.hello().harnesses.clone(),
                runner_version: c.hello().runner_version.clone(),
                peer: c.peer(),
                authentication: c.authentication(),
            })
            .collect()
    }

    /// Connect/disconnect notifications, from now on. `Disconnected` means the runner has no live tunnel any
    /// more; a tunnel that ends after a newer one replaced it sends nothing.
    pub fn subscribe(&self) -> broadcast::Receiver<RunnerEvent> {
        self.inner.tunnels.subscribe()
    }

    /// The runner's tunnel, waiting up to `timeout` for it to connect. Event-driven: no polling.
    pub async fn wait_for_runner(
        &self,
        runner_id: &str,
        timeout: Duration,
    ) -> Option<RunnerConnection> {
        self.inner.tunnels.wait_for(runner_id, timeout).await
    }

    /// Send one HTTP request to `runner_id` (see [`RunnerConnection::request`]).
    pub async fn request(
        &self,
        runner_id: &str,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<axum::body::Body>, TunnelError> {
        let conn = self
            .get(runner_id)
            .ok_or_else(|| TunnelError::RunnerOffline(runner_id.to_owned()))?;
        conn.request(request).await
    }

    /// Close every tunnel (server shutdown). Runners see `code` and reconnect per their policy.
    pub fn close_all(&self, code: u16, reason: &str) {
        self.inner.tunnels.close_all(code, reason);
    }

    fn next_generation(&self) -> u64 {
        self.inner.tunnels.next_generation()
    }

    /// See [`Registry::register`].
    fn register(&self, conn: RunnerConnection) -> Result<(), Authentication> {
        let connected = RunnerEvent::Connected {
            runner_id: conn.runner_id().to_owned(),
            generation: conn.generation(),
        };
        let (generation, auth) = (conn.generation(), conn.authentication());
        let runner_id = conn.runner_id().to_owned();
        self.inner
            .tunnels
            .register(&runner_id, generation, auth, conn, connected)
    }

    /// See [`Registry::deregister`]: a replaced tunnel's end sends no `Disconnected`.
    fn deregister(&self, runner_id: &str, generation: u64) {
        let disconnected = RunnerEvent::Disconnected {
            runner_id: runner_id.to_owned(),
            generation,
        };
        self.inner
            .tunnels
            .deregister(runner_id, generation, disconnected);
    }
}

/// Logged (in the tunnel's span, with the runner id) once a runner tunnel is registered.
pub const RUNNER_CONNECTED: &str = "runner connected";
/// Logged (in the tunnel's span) when a registered runner tunnel has ended.
pub const RUNNER_DISCONNECTED: &str = "runner disconnected";

/// The axum side of the route `GET /v1/runners/{runner_id}/tunnel`: refuses a bad id with 400 before the
/// upgrade, takes the admission decision of [`crate::auth`] from the headers and `peer`, applies the frame cap
/// to the socket, and runs [`serve_runner_socket`] on it (a refused peer is closed before any frame is read).
pub fn upgrade(
    ws: TunnelUpgrade,
    peer: SocketAddr,
    runner_id: String,
    headers: &http::HeaderMap,
    registry: RunnerRegistry,
) -> Response {
    if let Some(refusal) = crate::ws::refuse_bad_id("runner", &runner_id) {
        return refusal;
    }
    let credentials = PeerCredentials::from_headers(headers, RUNNER_TUNNEL_TOKEN, Some(peer));
    let cap = registry.config().max_frame_bytes;
    ws.max_frame_bytes(cap)
        .on_upgrade(move |socket| serve_runner_socket(socket, runner_id, credentials, registry))
}

/// Run one runner tunnel to its end (reference §3.1): admit the peer ([`crate::auth::admit`]) before reading
/// anything, require a `hello` of protocol 1 within the pre-hello cap, register (newest wins among equally
/// authenticated tunnels), then serve requests until the tunnel ends, and deregister.
pub async fn serve_runner_socket(
    socket: TunnelSocket,
    runner_id: String,
    credentials: PeerCredentials,
    registry: RunnerRegistry,
) {
    let span = info_span!(
        "runner_tunnel",
        runner_id = %loggable_id(&runner_id),
        peer = ?credentials.peer,
        conn = tracing::field::Empty
    );
    serve(socket, runner_id, credentials, registry)
        .instrument(span)
        .await
}

async fn serve(
    mut socket: TunnelSocket,
    runner_id: String,
    credentials: PeerCredentials,
    registry: RunnerRegistry,
) {
    let auth = match admit(&credentials, Claim::Runner(&runner_id)) {
        Admission::Admit(auth) => auth,
        Admission::Refuse { code, reason } => {
            info!(code, reason, origin = ?credentials.origin, "refused a runner tunnel");
            return socket.close(code, reason).await;
        }
    };

    let config = registry.config().clone();
    let hello = match tokio::time::timeout(config.hello_timeout, read_hello(&mut socket)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(Some((code, reason)))) => {
            info!(code, reason, "refused runner tunnel");
            return socket.close(code, reason).await;
        }
        Ok(Err(None)) => {
            debug!("runner went away before its hello");
            return;
        }
        Err(_) => {
            info!("no hello in time");
            return socket.close(close::HELLO_EXPECTED, "hello expected").await;
        }
    };
    socket.hello_accepted();

    let generation = registry.next_generation();
    tracing::Span::current().record("conn", generation);
    let (conn, commands) =
        RunnerConnection::new(runner_id.clone(), generation, hello, credentials.peer, auth);
    if let Err(held) = registry.register(conn.clone()) {
        warn!(
            held_by = ?held,
            ours = ?auth,
            "refused: the runner id is held by a more strongly authenticated tunnel"
        );
        return socket
            .close(
                close::UNAUTHENTICATED,
                "runner id is held by an authenticated tunnel",
            )
            .await;
    }
    info!(harnesses = ?conn.hello().harnesses, ?auth, "{RUNNER_CONNECTED}");
    let (sink, stream) = socket.ws.split();
    let (code, reason) = run_connection(conn, commands, stream, sink, config).await;
    registry.deregister(&runner_id, generation);
    info!(code, reason, "{RUNNER_DISCONNECTED}");
}

/// Read frames until the first text frame, which must be a `hello` of our protocol major and at most
/// [`MAX_PRE_HELLO_FRAME_BYTES`]. `Err(None)`: the peer went away; `Err(Some((code, reason)))`: close with that.
async fn read_hello(socket: &mut TunnelSocket) -> Result<Hello, Option<(u16, &'static str)>> {
    const TOO_BIG: (u16, &str) = (
        close::MESSAGE_TOO_BIG,
        "frame exceeds 65536 bytes before hello",
    );
    loop {
        let text = match socket.recv().await {
            Some(Err(e)) if is_oversized(&e, socket.budget_exhausted()) => {
                warn!(error = %e, cap = MAX_PRE_HELLO_FRAME_BYTES, "runner sent more than the pre-hello cap; closing");
                return Err(Some(TOO_BIG));
            }
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Err(None),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        return match RunnerFrame::decode_capped(text.as_str(), MAX_PRE_HELLO_FRAME_BYTES) {
            Ok(RunnerFrame::Hello(hello))
                if hello.frame_protocol_version == FRAME_PROTOCOL_VERSION =>
            {
                Ok(hello)
            }
            Ok(RunnerFrame::Hello(hello)) => {
                warn!(
                    version = hello.frame_protocol_version,
                    "runner speaks another frame protocol"
                );
                Err(Some((
                    close::PROTOCOL_MISMATCH,
                    "frame protocol version mismatch",
                )))
            }
            Ok(other) => {
                warn!(kind = other.kind(), "first runner frame is not hello");
                Err(Some((close::HELLO_EXPECTED, "hello expected")))
            }
            Err(FrameError::TooLarge { size, cap }) => {
                warn!(
                    size,
                    cap, "runner sent a frame above the pre-hello cap; closing"
                );
                Err(Some(TOO_BIG))
            }
            Err(e) => {
                warn!(error = %e, "first runner frame is not a valid hello");
                Err(Some((close::HELLO_EXPECTED, "hello expected")))
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(generation: u64, auth: Authentication) -> RunnerConnection {
        let hello: Hello = serde_json::from_value(serde_json::json!({
            "runner_version": "t", "frame_protocol_version": 1, "harnesses": [], "envs": [],
            "telemetry_opt_out": true
        }))
        .unwrap_or_else(|e| panic!("hello: {e}"));
        RunnerConnection::new("runner_x".to_owned(), generation, hello, None, auth).0
    }

    #[test]
    fn newest_wins_only_among_equally_authenticated_tunnels() {
        let registry = RunnerRegistry::default();
        assert_eq!(
            registry.register(conn(1, Authentication::BindingToken)),
            Ok(())
        );
        assert_eq!(
            registry.register(conn(2, Authentication::Anonymous)),
            Err(Authentication::BindingToken)
        );
        assert_eq!(registry.get("runner_x").map(|c| c.generation()), Some(1));
        assert_eq!(
            registry.register(conn(3, Authentication::BindingToken)),
            Ok(())
        );
        assert_eq!(registry.get("runner_x").map(|c| c.generation()), Some(3));
    }
}
