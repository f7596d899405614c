//! Server side of the runner tunnel: the registry of live runners and the handshake of reference §3.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use omnigent_proto::runner_frames::{Hello, RunnerFrame, close};
use omnigent_proto::{FRAME_PROTOCOL_VERSION, ids::runner_id_for_token};
use tokio::sync::broadcast;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::connection::{RunnerConnection, run_connection};
use crate::{TOKEN_HEADER, TunnelConfig, TunnelError};

use crate::WS_LAYER_SLACK;

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
    pub peer: SocketAddr,
}

/// The live runner tunnels of this server, keyed by runner id. Newest connection wins. Cheap to clone.
#[derive(Clone)]
pub struct RunnerRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    runners: Mutex<HashMap<String, RunnerConnection>>,
    events: broadcast::Sender<RunnerEvent>,
    next_generation: AtomicU64,
    config: TunnelConfig,
}

impl std::fmt::Debug for RunnerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerRegistry")
            .field("runners", &self.lock().len())
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
        let (events, _) = broadcast::channel(1024);
        RunnerRegistry {
            inner: Arc::new(RegistryInner {
                runners: Mutex::new(HashMap::new()),
                events,
                next_generation: AtomicU64::new(1),
                config,
            }),
        }
    }

    pub fn config(&self) -> &TunnelConfig {
        &self.inner.config
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, RunnerConnection>> {
        // The map stays consistent even if a holder panicked: every critical section is a single insert/remove.
        self.inner
            .runners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The live tunnel of `runner_id`, if any.
    pub fn get(&self, runner_id: &str) -> Option<RunnerConnection> {
        self.lock().get(runner_id).cloned()
    }

    /// Whether `runner_id` has a live tunnel.
    pub fn is_online(&self, runner_id: &str) -> bool {
        self.lock().contains_key(runner_id)
    }

    /// Every online runner, sorted by id.
    pub fn list(&self) -> Vec<RunnerInfo> {
        let mut list: Vec<RunnerInfo> = self
            .lock()
            .values()
            .map(|c| RunnerInfo {
                runner_id: c.runner_id().to_owned(),
                generation: c.generation(),
                harnesses: c.hello().harnesses.clone(),
                runner_version: c.hello().runner_version.clone(),
                peer: c.peer(),
            })
            .collect();
        list.sort_by(|a, b| a.runner_id.cmp(&b.runner_id));
        list
    }

    /// Connect/disconnect notifications, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RunnerEvent> {
        self.inner.events.subscribe()
    }

    /// The runner's tunnel, waiting up to `timeout` for it to connect. Event-driven: no polling.
    pub async fn wait_for_runner(
        &self,
        runner_id: &str,
        timeout: Duration,
    ) -> Option<RunnerConnection> {
        let mut events = self.subscribe();
        if let Some(conn) = self.get(runner_id) {
            return Some(conn);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return None,
                Ok(Ok(RunnerEvent::Connected { runner_id: id, .. })) if id == runner_id => {
                    if let Some(conn) = self.get(runner_id) {
                        return Some(conn);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    if let Some(conn) = self.get(runner_id) {
                        return Some(conn);
                    }
                }
                // The registry owns the sender, so this cannot happen while `self` is alive.
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
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
        let conns: Vec<RunnerConnection> = self.lock().values().cloned().collect();
        for conn in conns {
            conn.close(code, reason);
        }
    }

    fn next_generation(&self) -> u64 {
        self.inner.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Register `conn`; an older tunnel of the same runner is closed 4000 "tunnel replaced".
    fn register(&self, conn: RunnerConnection) {
        let old = self
            .lock()
            .insert(conn.runner_id().to_owned(), conn.clone());
        if let Some(old) = old {
            info!(
                runner_id = conn.runner_id(),
                old = old.generation(),
                new = conn.generation(),
                "tunnel replaced"
            );
            old.close(close::REPLACED, "tunnel replaced");
        }
        let _ = self.inner.events.send(RunnerEvent::Connected {
            runner_id: conn.runner_id().to_owned(),
            generation: conn.generation(),
        });
    }

    /// Remove `runner_id` only if its registered tunnel is still `generation`: a stale handler never removes a
    /// newer tunnel.
    fn deregister(&self, runner_id: &str, generation: u64) {
        {
            let mut runners = self.lock();
            if runners
                .get(runner_id)
                .is_some_and(|c| c.generation() == generation)
            {
                runners.remove(runner_id);
            }
        }
        let _ = self.inner.events.send(RunnerEvent::Disconnected {
            runner_id: runner_id.to_owned(),
            generation,
        });
    }
}

/// Whether `peer` is a loopback address (127.0.0.0/8, ::1, v4-mapped loopback).
fn is_loopback(peer: &SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// The axum side of the route `GET /v1/runners/{runner_id}/tunnel`: applies the frame cap to the upgrade and
/// runs [`serve_runner_socket`] on the upgraded socket. Needs `ConnectInfo<SocketAddr>` for `peer`.
pub fn upgrade(
    ws: WebSocketUpgrade,
    peer: SocketAddr,
    runner_id: String,
    headers: &http::HeaderMap,
    registry: RunnerRegistry,
) -> Response {
    let token = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let cap = registry
        .config()
        .max_frame_bytes
        .saturating_add(WS_LAYER_SLACK);
    ws.max_message_size(cap)
        .max_frame_size(cap)
        .read_buffer_size(crate::WS_READ_BUFFER)
        .on_upgrade(move |socket| serve_runner_socket(socket, peer, runner_id, token, registry))
}

/// Run one runner tunnel to its end (reference §3.1): check the token against the path's runner id, require a
/// `hello` of protocol 1, register (newest wins), then serve requests until the tunnel ends, and deregister.
pub async fn serve_runner_socket(
    socket: WebSocket,
    peer: SocketAddr,
    path_runner_id: String,
    token: Option<String>,
    registry: RunnerRegistry,
) {
    let span = info_span!("runner_tunnel", runner_id = %path_runner_id, %peer, conn = tracing::field::Empty);
    serve(socket, peer, path_runner_id, token, registry)
        .instrument(span)
        .await
}

async fn serve(
    mut socket: WebSocket,
    peer: SocketAddr,
    runner_id: String,
    token: Option<String>,
    registry: RunnerRegistry,
) {
    match &token {
        Some(token) if runner_id_for_token(token) != runner_id => {
            info!("refused: runner id does not match its tunnel token");
            return refuse(
                socket,
                close::UNAUTHENTICATED,
                "runner_id does not match tunnel token",
            )
            .await;
        }
        None if !is_loopback(&peer) => {
            info!("refused: non-loopback runner without a token");
            return refuse(
                socket,
                close::UNAUTHENTICATED,
                "runner tunnel token is required",
            )
            .await;
        }
        _ => {}
    }

    let config = registry.config().clone();
    let hello =
        match tokio::time::timeout(config.hello_timeout, read_hello(&mut socket, &config)).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(Some((code, reason)))) => {
                info!(code, reason, "refused runner tunnel");
                return refuse(socket, code, reason).await;
            }
            Ok(Err(None)) => {
                debug!("runner went away before its hello");
                return;
            }
            Err(_) => {
                info!("no hello in time");
                return refuse(socket, close::HELLO_EXPECTED, "hello expected").await;
            }
        };

    let generation = registry.next_generation();
    tracing::Span::current().record("conn", generation);
    let (conn, commands) = RunnerConnection::new(runner_id.clone(), generation, hello, peer);
    let (sink, stream) = socket.split();
    registry.register(conn.clone());
    info!(harnesses = ?conn.hello().harnesses, "runner connected");
    let (code, reason) = run_connection(conn, commands, stream, sink, config).await;
    registry.deregister(&runner_id, generation);
    info!(code, reason, "runner disconnected");
}

/// Read frames until the first text frame, which must be a `hello` of our protocol major.
/// `Err(None)`: the peer went away; `Err(Some((code, reason)))`: close with that.
async fn read_hello(
    socket: &mut WebSocket,
    config: &TunnelConfig,
) -> Result<Hello, Option<(u16, &'static str)>> {
    loop {
        let text = match socket.recv().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Err(None),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        return match RunnerFrame::decode_capped(text.as_str(), config.max_frame_bytes) {
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
            Err(e) => {
                warn!(error = %e, "first runner frame is not a valid hello");
                Err(Some((close::HELLO_EXPECTED, "hello expected")))
            }
        };
    }
}

async fn refuse(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
    let _ = socket.close().await;
}
