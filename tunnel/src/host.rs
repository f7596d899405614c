//! Server end of the host tunnel v1 (`GET /v1/hosts/{host_id}/tunnel`, reference/omnigent-host-v1.md §5.1–§5.3,
//! omnigent-server-v1.md §3.7): the handshake, the registry of live hosts and [`HostConnection`], the handle
//! that sends requests to one host and correlates their `*_result` by `request_id`.
//!
//! One task per tunnel owns the socket's read half, every in-flight request and the liveness clock; a
//! separate writer task is the only writer. Everything else talks to it through [`HostConnection`] messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use omnigent_proto::headers::HOST_TOKEN;
use omnigent_proto::host_frames::{
    ConnectionError, CreateDirResult, HarnessReadiness, HostFrame, HostFrameError, HostHello,
    LaunchRunner, LaunchRunnerResult, ListDir, ListDirResult, PathRequest, Ping, RunnerRef,
    StatResult, StatusResult, close,
};
use omnigent_proto::ids::{canonical_id, loggable_id};
use omnigent_proto::{FRAME_PROTOCOL_VERSION, MAX_PRE_HELLO_FRAME_BYTES};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::{Admission, Authentication, Claim, PeerCredentials, admit};
use crate::epoch_millis;
use crate::registry::{Registry, Tunnel};
use crate::socket;
use crate::ws::{TunnelSocket, TunnelStream, TunnelUpgrade, is_oversized};

/// How many notifications a slow subscriber may fall behind before it sees `Lagged` (and should resync
/// from [`HostRegistry::list`]).
const EVENT_BUFFER: usize = 4096;

/// Timings and limits of the server end. The defaults are the protocol's; tests shrink them or run under
/// `tokio::time::pause()`.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// App-level `ping` interval (30 s).
    pub ping_interval: Duration,
    /// Close 4003 "ping timeout" after this long without any inbound frame (90 s).
    pub liveness_timeout: Duration,
    /// How long a new connection may take to send its `host.hello` (30 s).
    pub hello_timeout: Duration,
    /// Largest text frame accepted ([`omnigent_proto::MAX_FRAME_BYTES`]).
    pub max_frame_bytes: usize,
    /// Timeout of `host.launch_runner` (30 s).
    pub launch_timeout: Duration,
    /// Timeout of `host.stat`, `host.list_dir`, `host.create_dir` (5 s).
    pub fs_timeout: Duration,
    /// Timeout of `host.stop_runner` and `host.runner_status` (15 s: a stop may wait 5 s for SIGTERM, then
    /// 5 s more after SIGKILL on a Python host).
    pub control_timeout: Duration,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            ping_interval: Duration::from_secs(30),
            liveness_timeout: Duration::from_secs(90),
            hello_timeout: Duration::from_secs(30),
            max_frame_bytes: omnigent_proto::MAX_FRAME_BYTES,
            launch_timeout: Duration::from_secs(30),
            fs_timeout: Duration::from_secs(5),
            control_timeout: Duration::from_secs(15),
        }
    }
}

/// What the registry tells the rest of the server (mark hosts online/offline, record runner exits).
#[derive(Debug, Clone, PartialEq)]
pub enum HostEvent {
    /// A host completed its hello and is now the live tunnel for `host_id` (it may have replaced an older
    /// one, which sends no `Disconnected`).
    Connected {
        host_id: String,
        generation: u64,
        hello: HostHello,
    },
    /// The host has no live tunnel any more. Sent only when the ending tunnel was the current one, so a
    /// replaced tunnel never marks a reconnected host offline.
    Disconnected { host_id: String, generation: u64 },
    /// `host.runner_exited`: a runner of this host died (non-zero exit); `error` has the code and log tail.
    RunnerExited {
        host_id: String,
        runner_id: String,
        error: Option<String>,
    },
    /// `host.harness_readiness`: the host's harness readiness changed.
    HarnessReadiness {
        host_id: String,
        readiness: HarnessReadiness,
    },
}

/// Why a request to a host failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostRequestError {
    #[error(
        "host {0} is not connected; start its daemon (`omnigent start`) or wait for it to reconnect"
    )]
    HostOffline(String),
    #[error(
        "the tunnel to host {host_id} closed before it answered {kind}; retry once the host has reconnected"
    )]
    Closed { host_id: String, kind: &'static str },
    #[error(
        "host {host_id} did not answer {kind} within {after:?}; the host may be overloaded or its tunnel dead"
    )]
    Timeout {
        host_id: String,
        kind: &'static str,
        after: Duration,
    },
    #[error("{0} is not a request the server can send to a host")]
    NotARequest(&'static str),
    #[error("host {host_id} answered {expected} with {got}; the host does not follow protocol v1")]
    UnexpectedReply {
        host_id: String,
        expected: &'static str,
        got: &'static str,
    },
}

/// The live host tunnels of this server, keyed by canonical (bare hex) host id: a [`Registry`] of
/// [`HostConnection`]s (newest wins among equally authenticated tunnels; a replaced tunnel's end sends no
/// `Disconnected`). Cheap to clone.
#[derive(Clone)]
pub struct HostRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    tunnels: Registry<HostConnection, HostEvent>,
    settings: HostSettings,
}

impl Tunnel for HostConnection {
    fn close(&self, code: u16, reason: &str) {
        HostConnection::close(self, code, reason)
    }
}

impl std::fmt::Debug for HostRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostRegistry")
            .field("tunnels", &self.inner.tunnels)
            .finish()
    }
}

impl Default for HostRegistry {
    fn default() -> Self {
        Self::new(HostSettings::default())
    }
}

impl HostRegistry {
    pub fn new(settings: HostSettings) -> Self {
        HostRegistry {
            inner: Arc::new(RegistryInner {
                tunnels: Registry::new(EVENT_BUFFER),
                settings,
            }),
        }
    }

    pub fn settings(&self) -> &HostSettings {
        &self.inner.settings
    }

    /// The live tunnel of `host_id` (bare hex, dashed or legacy `host_`-prefixed), if any.
    pub fn get(&self, host_id: &str) -> Option<HostConnection> {
        self.inner.tunnels.get(&canonical_id(host_id)?)
    }

    pub fn is_online(&self, host_id: &str) -> bool {
        self.get(host_id).is_some()
    }

    /// Every live tunnel, sorted by host id.
    pub fn list(&self) -> Vec<HostConnection> {
        self.inner.tunnels.tunnels()
    }

    /// Notifications from now on. On `Lagged`, resync from [`Self::list`].
    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.inner.tunnels.subscribe()
    }

    /// The host's tunnel, waiting up to `timeout` for it to connect. Event-driven: no polling.
    pub async fn wait_for_host(&self, host_id: &str, timeout: Duration) -> Option<HostConnection> {
        let id = canonical_id(host_id)?;
        self.inner.tunnels.wait_for(&id, timeout).await
    }

    /// Send `frame` to `host_id` (see [`HostConnection::request`]).
    pub async fn request(
        &self,
        host_id: &str,
        frame: HostFrame,
    ) -> Result<HostFrame, HostRequestError> {
        let conn = self
            .get(host_id)
            .ok_or_else(|| HostRequestError::HostOffline(host_id.to_owned()))?;
        conn.request(frame).await
    }

    /// Close every tunnel (server shutdown: 1012 "service restart" makes hosts reconnect at once).
    pub fn close_all(&self, code: u16, reason: &str) {
        self.inner.tunnels.close_all(code, reason);
    }

    fn emit(&self, event: HostEvent) {
        self.inner.tunnels.emit(event);
    }

    /// Make `conn` the live tunnel of its host and send `Connected` (see [`Registry::register`]).
    fn register(&self, conn: HostConnection) -> Result<(), Authentication> {
        let connected = HostEvent::Connected {
            host_id: conn.host_id().to_owned(),
            generation: conn.generation(),
            hello: conn.hello().clone(),
        };
        let host_id = conn.host_id().to_owned();
        let (generation, auth) = (conn.generation(), conn.authentication());
        self.inner
            .tunnels
            .register(&host_id, generation, auth, conn, connected)
    }

    /// The tunnel `generation` of `host_id` ended; `Disconnected` only if it was the live one (see
    /// [`Registry::deregister`]).
    fn deregister(&self, host_id: &str, generation: u64) {
        let event = HostEvent::Disconnected {
            host_id: host_id.to_owned(),
            generation,
        };
        self.inner.tunnels.deregister(host_id, generation, event);
    }
}

enum Command {
    Request {
        id: String,
        expected: &'static str,
        frame: Box<HostFrame>,
        reply: oneshot::Sender<Result<HostFrame, HostRequestError>>,
    },
    Forget {
        id: String,
    },
    Close {
        code: u16,
        reason: String,
    },
}

/// A handle on one live host tunnel. Cheap to clone; every clone talks to the same connection task.
#[derive(Clone)]
pub struct HostConnection {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    host_id: String,
    generation: u64,
    hello: HostHello,
    authentication: Authentication,
    settings: HostSettings,
    commands: mpsc::UnboundedSender<Command>,
    closed: CancellationToken,
}

impl std::fmt::Debug for HostConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConnection")
            .field("host_id", &self.inner.host_id)
            .field("generation", &self.inner.generation)
            .field("name", &self.inner.hello.name)
            .finish()
    }
}

impl HostConnection {
    /// Canonical bare-hex host id.
    pub fn host_id(&self) -> &str {
        &self.inner.host_id
    }

    /// Increases with every accepted connection; tells a reconnected tunnel from the one it replaced.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// The host's `host.hello` (name, version, live runners, harnesses…).
    pub fn hello(&self) -> &HostHello {
        &self.inner.hello
    }

    /// How the tunnel proved its claim on the host id.
    pub fn authentication(&self) -> Authentication {
        self.inner.authentication
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Resolves once the connection task has ended (closed, replaced, timed out).
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await
    }

    /// Close the tunnel with `code`; pending requests fail with [`HostRequestError::Closed`].
    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.inner.commands.send(Command::Close {
            code,
            reason: reason.to_owned(),
        });
    }

    fn timeout_for(&self, frame: &HostFrame) -> Duration {
        let s = &self.inner.settings;
        match frame {
            HostFrame::LaunchRunner(_) => s.launch_timeout,
            HostFrame::Stat(_) | HostFrame::ListDir(_) | HostFrame::CreateDir(_) => s.fs_timeout,
            _ => s.control_timeout,
        }
    }

    /// Send one request frame (its `request_id` is replaced by a fresh 16-hex id) and wait for the
    /// `*_result` with the same id, up to the kind's timeout (launch 30 s, fs 5 s, stop/status 15 s).
    /// Fails at once with [`HostRequestError::Closed`] when the tunnel ends first.
    pub async fn request(&self, mut frame: HostFrame) -> Result<HostFrame, HostRequestError> {
        let kind = frame.kind();
        let id = new_request_id();
        let expected = frame
            .prepare_request(&id)
            .ok_or(HostRequestError::NotARequest(kind))?;
        let after = self.timeout_for(&frame);
        let closed = || HostRequestError::Closed {
            host_id: self.host_id().to_owned(),
            kind,
        };
        let (reply, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Request {
                id: id.clone(),
                expected,
                frame: Box::new(frame),
                reply,
            })
            .map_err(|_| closed())?;
        // From here on, giving up (timeout or the caller's future dropped) must free the pending slot.
        let mut guard = ForgetOnDrop {
            id: Some(id),
            commands: self.inner.commands.clone(),
        };
        match tokio::time::timeout(after, rx).await {
            Err(_) => Err(HostRequestError::Timeout {
                host_id: self.host_id().to_owned(),
                kind,
                after,
            }),
            Ok(Err(_)) => {
                guard.id = None;
                Err(closed())
            }
            Ok(Ok(result)) => {
                guard.id = None;
                result
            }
        }
    }

    /// `host.stat`: does `path` exist on the host, and what is it.
    pub async fn stat(&self, path: &str) -> Result<StatResult, HostRequestError> {
        let frame = HostFrame::Stat(PathRequest {
            request_id: String::new(),
            path: path.to_owned(),
            extra: Default::default(),
        });
        match self.request(frame).await? {
            HostFrame::StatResult(r) => Ok(r),
            other => Err(self.unexpected("host.stat_result", &other)),
        }
    }

    /// `host.launch_runner`: start a runner bound to `binding_token` in `workspace`.
    pub async fn launch_runner(
        &self,
        binding_token: &str,
        workspace: &str,
        session_id: Option<&str>,
        harness: Option<&str>,
    ) -> Result<LaunchRunnerResult, HostRequestError> {
        let frame = HostFrame::LaunchRunner(LaunchRunner {
            request_id: String::new(),
            binding_token: binding_token.to_owned(),
            workspace: workspace.to_owned(),
            session_id: session_id.map(str::to_owned),
            harness: harness.map(str::to_owned),
            extra: Default::default(),
        });
        match self.request(frame).await? {
            HostFrame::LaunchRunnerResult(r) => Ok(r),
            other => Err(self.unexpected("host.launch_runner_result", &other)),
        }
    }

    /// `host.stop_runner`: `status` is `"stopped"` or `"failed"`.
    pub async fn stop_runner(&self, runner_id: &str) -> Result<StatusResult, HostRequestError> {
        let frame = HostFrame::StopRunner(runner_ref(runner_id));
        match self.request(frame).await? {
            HostFrame::StopRunnerResult(r) => Ok(r),
            other => Err(self.unexpected("host.stop_runner_result", &other)),
        }
    }

    /// `host.runner_status`: `status` is `"alive"`, `"dead"` or `"unknown"`.
    pub async fn runner_status(&self, runner_id: &str) -> Result<StatusResult, HostRequestError> {
        let frame = HostFrame::RunnerStatus(runner_ref(runner_id));
        match self.request(frame).await? {
            HostFrame::RunnerStatusResult(r) => Ok(r),
            other => Err(self.unexpected("host.runner_status_result", &other)),
        }
    }

    /// `host.list_dir`: one page of `limit` entries (clamped to 1..=1000) after the name `after`.
    pub async fn list_dir(
        &self,
        path: &str,
        limit: u32,
        after: Option<&str>,
    ) -> Result<ListDirResult, HostRequestError> {
        let frame = HostFrame::ListDir(ListDir {
            request_id: String::new(),
            path: path.to_owned(),
            limit: limit.clamp(1, 1000),
            after: after.map(str::to_owned),
            before: None,
            extra: Default::default(),
        });
        match self.request(frame).await? {
            HostFrame::ListDirResult(r) => Ok(r),
            other => Err(self.unexpected("host.list_dir_result", &other)),
        }
    }

    /// `host.create_dir`: create `path` and its parents.
    pub async fn create_dir(&self, path: &str) -> Result<CreateDirResult, HostRequestError> {
        let frame = HostFrame::CreateDir(PathRequest {
            request_id: String::new(),
            path: path.to_owned(),
            extra: Default::default(),
        });
        match self.request(frame).await? {
            HostFrame::CreateDirResult(r) => Ok(r),
            other => Err(self.unexpected("host.create_dir_result", &other)),
        }
    }

    fn unexpected(&self, expected: &'static str, got: &HostFrame) -> HostRequestError {
        HostRequestError::UnexpectedReply {
            host_id: self.host_id().to_owned(),
            expected,
            got: got.kind(),
        }
    }
}

fn runner_ref(runner_id: &str) -> RunnerRef {
    RunnerRef {
        request_id: String::new(),
        runner_id: runner_id.to_owned(),
        extra: Default::default(),
    }
}

/// A fresh 16-hex request id, like the Python server's.
fn new_request_id() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(16);
    id
}

/// Frees a pending request's slot when its caller gives up.
struct ForgetOnDrop {
    id: Option<String>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let _ = self.commands.send(Command::Forget { id });
        }
    }
}

/// The axum side of `GET /v1/hosts/{host_id}/tunnel`: refuses an id that is not a safe path id with 400 before
/// the upgrade, takes the admission decision of [`crate::auth`] from the headers (the `Origin`; hosts are
/// owner "local" on this server), applies the frame cap to the socket and runs [`serve_host_socket`] on it.
pub fn upgrade(
    ws: TunnelUpgrade,
    host_id: String,
    headers: &http::HeaderMap,
    registry: HostRegistry,
) -> Response {
    if let Some(refusal) = crate::ws::refuse_bad_id("host", &host_id) {
        return refusal;
    }
    let credentials = PeerCredentials::from_headers(headers, HOST_TOKEN, ws.peer());
    let cap = registry.settings().max_frame_bytes;
    ws.max_frame_bytes(cap)
        .on_upgrade(move |socket| async move {
            serve_host_socket(socket, &host_id, credentials, registry).await
        })
}

/// Run one host tunnel to its end: admit the peer ([`crate::auth::admit`]) before reading anything, check the
/// host id, require a `host.hello` of protocol 1 within the pre-hello cap, register (newest wins among equally
/// authenticated tunnels), then ping, correlate results and surface notifications until the tunnel ends, and
/// deregister.
pub async fn serve_host_socket(
    socket: TunnelSocket,
    host_id: &str,
    credentials: PeerCredentials,
    registry: HostRegistry,
) {
    let span =
        info_span!("host_tunnel", host_id = %loggable_id(host_id), conn = tracing::field::Empty);
    serve(socket, host_id, credentials, registry)
        .instrument(span)
        .await
}

async fn serve(
    mut socket: TunnelSocket,
    path_host_id: &str,
    credentials: PeerCredentials,
    registry: HostRegistry,
) {
    let authentication = match admit(&credentials, Claim::Host(path_host_id)) {
        Admission::Admit(auth) => auth,
        Admission::Refuse { code, reason } => {
            info!(code, reason, origin = ?credentials.origin, "refused a host tunnel");
            return socket.close(code, reason).await;
        }
    };
    let Some(host_id) = canonical_id(path_host_id) else {
        info!("refused: host id is not a UUID");
        return refuse(socket, None, close::INVALID_HOST_ID, "invalid host id").await;
    };
    let settings = registry.settings().clone();
    let hello = match tokio::time::timeout(settings.hello_timeout, read_hello(&mut socket)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(HelloRefusal::Gone)) => {
            debug!("host went away before its hello");
            return;
        }
        Ok(Err(HelloRefusal::Close {
            code,
            reason,
            error,
        })) => {
            info!(code, %error, "refused host tunnel");
            return refuse(socket, Some(error), code, reason).await;
        }
        Err(_) => {
            info!("no host.hello in time");
            let error = "no host.hello within the handshake timeout".to_owned();
            return refuse(socket, Some(error), close::HELLO_EXPECTED, "hello expected").await;
        }
    };
    socket.hello_accepted();

    let generation = registry.inner.tunnels.next_generation();
    tracing::Span::current().record("conn", generation);
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let conn = HostConnection {
        inner: Arc::new(ConnInner {
            host_id: host_id.clone(),
            generation,
            hello,
            authentication,
            settings: settings.clone(),
            commands,
            closed: CancellationToken::new(),
        }),
    };
    if let Err(held) = registry.register(conn.clone()) {
        warn!(held_by = ?held, ours = ?authentication, "refused: the host id is held by a more strongly authenticated tunnel");
        let error = "this host id is held by a more strongly authenticated tunnel".to_owned();
        return refuse(
            socket,
            Some(error),
            close::UNAUTHENTICATED,
            "unauthenticated",
        )
        .await;
    }
    info!(
        name = %conn.hello().name,
        version = %conn.hello().version,
        runners = conn.hello().runners.len(),
        "host connected"
    );
    let (sink, stream) = socket.ws.split();
    let (code, reason) = run_connection(&conn, commands_rx, stream, sink, &registry).await;
    registry.deregister(&host_id, generation);
    info!(code, reason, "host disconnected");
}

enum HelloRefusal {
    /// The peer went away.
    Gone,
    /// Send `host.connection_error{stage:"hello", error}` and close with `code`.
    Close {
        code: u16,
        reason: &'static str,
        error: String,
    },
}

/// Read until the first text frame, which must be a `host.hello` of our protocol major and at most
/// [`MAX_PRE_HELLO_FRAME_BYTES`].
async fn read_hello(socket: &mut TunnelSocket) -> Result<HostHello, HelloRefusal> {
    let too_big = || HelloRefusal::Close {
        code: close::MESSAGE_TOO_BIG,
        reason: "frame exceeds 65536 bytes before hello",
        error: format!(
            "the first frame exceeds {MAX_PRE_HELLO_FRAME_BYTES} bytes; host.hello is far smaller"
        ),
    };
    let text = loop {
        match socket.recv().await {
            Some(Err(e)) if is_oversized(&e, socket.budget_exhausted()) => {
                warn!(error = %e, cap = MAX_PRE_HELLO_FRAME_BYTES, "host sent more than the pre-hello cap; closing");
                return Err(too_big());
            }
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Err(HelloRefusal::Gone),
            Some(Ok(Message::Text(text))) => break text,
            Some(Ok(_)) => continue,
        }
    };
    let refuse = |code, reason, error: String| {
        Err(HelloRefusal::Close {
            code,
            reason,
            error,
        })
    };
    match HostFrame::decode_capped(text.as_str(), MAX_PRE_HELLO_FRAME_BYTES) {
        Ok(HostFrame::Hello(hello)) if hello.frame_protocol_version == FRAME_PROTOCOL_VERSION => {
            Ok(hello)
        }
        Ok(HostFrame::Hello(hello)) => refuse(
            close::PROTOCOL_MISMATCH,
            "frame protocol version mismatch",
            format!(
                "host speaks frame protocol {}, this server speaks {FRAME_PROTOCOL_VERSION}; upgrade the older side",
                hello.frame_protocol_version
            ),
        ),
        Ok(other) => refuse(
            close::HELLO_EXPECTED,
            "hello expected",
            format!(
                "expected host.hello as the first frame, got {}",
                other.kind()
            ),
        ),
        Err(HostFrameError::TooLarge { size, cap }) => {
            warn!(
                size,
                cap, "host sent a frame above the pre-hello cap; closing"
            );
            Err(too_big())
        }
        Err(e) => refuse(
            close::HELLO_EXPECTED,
            "hello expected",
            format!("expected host.hello as the first frame: {e}"),
        ),
    }
}

/// Send `host.connection_error{stage:"hello", retryable:false}` when there is an `error`, then close.
async fn refuse(mut socket: TunnelSocket, error: Option<String>, code: u16, reason: &str) {
    if let Some(error) = error {
        let frame = HostFrame::ConnectionError(ConnectionError {
            stage: "hello".to_owned(),
            error,
            retryable: false,
            extra: Default::default(),
        });
        let _ =
            futures_util::SinkExt::send(&mut socket.ws, Message::Text(frame.encode().into())).await;
    }
    socket.close(code, reason).await;
}

struct Pending {
    expected: &'static str,
    kind: &'static str,
    reply: oneshot::Sender<Result<HostFrame, HostRequestError>>,
}

/// Drive one registered tunnel until it ends (through the one socket driver, [`socket::drive`]); returns
/// the close code and reason sent to the host.
async fn run_connection(
    conn: &HostConnection,
    commands: mpsc::UnboundedReceiver<Command>,
    stream: SplitStream<TunnelStream>,
    sink: SplitSink<TunnelStream, Message>,
    registry: &HostRegistry,
) -> (u16, String) {
    let settings = &conn.inner.settings;
    let config = socket::DriverConfig {
        ping_interval: settings.ping_interval,
        liveness_timeout: settings.liveness_timeout,
        max_frame_bytes: settings.max_frame_bytes,
    };
    let protocol = HostTunnel {
        conn: conn.clone(),
        registry: registry.clone(),
        pending: HashMap::new(),
    };
    socket::drive(protocol, commands, stream, sink, config).await
}

/// What the host tunnel holds: its requests awaiting a `*_result`.
struct HostTunnel {
    conn: HostConnection,
    registry: HostRegistry,
    pending: HashMap<String, Pending>,
}

impl socket::Protocol for HostTunnel {
    type Frame = HostFrame;
    type Command = Command;
    const PEER: &'static str = "host";
    const CLOSED: u16 = close::PING_TIMEOUT;

    fn decode(text: &str, cap: usize) -> Result<HostFrame, socket::DecodeError> {
        HostFrame::decode_capped(text, cap).map_err(|e| match e {
            HostFrameError::TooLarge { size, cap } => socket::DecodeError::TooLarge { size, cap },
            e => socket::DecodeError::Malformed(e.to_string()),
        })
    }

    fn encode(frame: &HostFrame) -> String {
        frame.encode()
    }

    fn ping() -> HostFrame {
        HostFrame::Ping(Ping {
            ts: epoch_millis(),
            extra: Default::default(),
        })
    }

    fn on_frame(&mut self, frame: HostFrame, text: &str, out: &socket::Outbox<Self>) {
        let send = |frame: HostFrame| out.send(frame);
        on_frame(
            &self.conn,
            frame,
            text,
            &mut self.pending,
            &send,
            &self.registry,
        );
    }

    fn on_command(
        &mut self,
        command: Command,
        out: &socket::Outbox<Self>,
    ) -> Option<(u16, String)> {
        match command {
            Command::Request {
                id,
                expected,
                frame,
                reply,
            } => {
                let kind = frame.kind();
                out.send(*frame);
                self.pending.insert(
                    id,
                    Pending {
                        expected,
                        kind,
                        reply,
                    },
                );
            }
            Command::Forget { id } => {
                self.pending.remove(&id);
            }
            Command::Close { code, reason } => return Some((code, reason)),
        }
        None
    }

    /// Refuse new requests first, then fail the open ones: nothing can slip in between.
    fn on_end(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) {
        let closed = |kind| HostRequestError::Closed {
            host_id: self.conn.host_id().to_owned(),
            kind,
        };
        self.conn.inner.closed.cancel();
        commands.close();
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(closed(p.kind)));
        }
        while let Ok(command) = commands.try_recv() {
            if let Command::Request { reply, frame, .. } = command {
                let _ = reply.send(Err(closed(frame.kind())));
            }
        }
    }
}

fn on_frame(
    conn: &HostConnection,
    frame: HostFrame,
    text: &str,
    pending: &mut HashMap<String, Pending>,
    send: &impl Fn(HostFrame),
    registry: &HostRegistry,
) {
    let host_id = conn.host_id();
    match frame {
        HostFrame::LaunchRunnerResult(_)
        | HostFrame::StopRunnerResult(_)
        | HostFrame::RunnerStatusResult(_)
        | HostFrame::StatResult(_)
        | HostFrame::ListDirResult(_)
        | HostFrame::CreateDirResult(_) => {
            let id = frame.request_id().unwrap_or_default();
            let Some(p) = pending.remove(id) else {
                debug!(
                    kind = frame.kind(),
                    request_id = id,
                    "result for no pending request (late or unknown); ignored"
                );
                return;
            };
            let result = if frame.kind() == p.expected {
                Ok(frame)
            } else {
                warn!(
                    expected = p.expected,
                    got = frame.kind(),
                    "host answered a request with the wrong kind"
                );
                Err(HostRequestError::UnexpectedReply {
                    host_id: host_id.to_owned(),
                    expected: p.expected,
                    got: frame.kind(),
                })
            };
            if p.reply.send(result).is_err() {
                debug!("result for a request nobody waits for any more");
            }
        }
        HostFrame::RunnerExited(exited) => {
            info!(runner_id = %loggable_id(&exited.runner_id), error = ?exited.error, "host reports a runner exited");
            registry.emit(HostEvent::RunnerExited {
                host_id: host_id.to_owned(),
                runner_id: exited.runner_id,
                error: exited.error,
            });
        }
        HostFrame::HarnessReadiness(readiness) => registry.emit(HostEvent::HarnessReadiness {
            host_id: host_id.to_owned(),
            readiness,
        }),
        HostFrame::Ping(ping) => send(HostFrame::Pong(Ping {
            ts: ping.ts,
            extra: Default::default(),
        })),
        HostFrame::Pong(_) => {}
        HostFrame::Hello(_) => warn!("second host.hello on an established tunnel; ignored"),
        HostFrame::ConnectionError(e) => {
            warn!(stage = %e.stage, error = %e.error, "host sent a connection_error; ignored")
        }
        HostFrame::LaunchRunner(_)
        | HostFrame::StopRunner(_)
        | HostFrame::RunnerStatus(_)
        | HostFrame::Stat(_)
        | HostFrame::ListDir(_)
        | HostFrame::CreateDir(_) => {
            warn!(
                kind = frame.kind(),
                "host sent a server→host request kind; ignored"
            )
        }
        HostFrame::Unknown => {
            debug!(kind = ?omnigent_proto::runner_frames::peek_kind(text), "unknown host frame kind; skipped")
        }
    }
}
