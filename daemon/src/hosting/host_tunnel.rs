//! The host end of the host tunnel v1 (DESIGN §5.2, §6; reference/omnigent-host-v1.md §5): dial
//! `ws(s)://<server>/v1/hosts/{host_id}/tunnel`, say `host.hello`, answer the server's requests, report runner
//! exits, and keep the tunnel up through server restarts, network loss and laptop sleep.
//!
//! One task owns the tunnel's lifecycle ([`run_host_tunnel`]); each request frame runs in a task of its own so
//! a slow handler never delays a pong. What the tunnel asks of the rest of the daemon (launch, stop, status of
//! runners) goes through [`HostActions`]; what the daemon tells the tunnel (a runner exited) goes through an
//! [`ExitReporter`]. The tunnel's state is published on a `watch` channel for `omnigent status`.

mod fs;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use omnigent_proto::headers::HOST_TOKEN as HOST_TOKEN_HEADER;
use omnigent_proto::host_frames::{
    ConnectionError, HostFrame, HostFrameError, HostHello, LaunchRunner, LaunchRunnerResult, Ping,
    RunnerExited, RunnerRef, StatusResult, close,
};
use omnigent_proto::ids::canonical_id;
use omnigent_tunnel::client::{
    self, Backoff, BackoffPolicy, ClientSocket as Ws, DialError, DialRequest, ServerUrl, write_loop,
};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{Instrument, debug, info, info_span, warn};

/// Room in the WebSocket layer above the frame cap.
const WS_LAYER_SLACK: usize = 1024 * 1024;
/// How many runner exits may wait for the tunnel (in the channel, and again parked while it is down).
pub const EXIT_QUEUE: usize = 256;
/// The daemon's exit code for a fatal tunnel error (EX_CONFIG): service managers must not restart it.
pub const FATAL_EXIT_CODE: i32 = omnigent_proto::exit::CONFIG as i32;

/// How the host proves who it is to the server. Omitted on loopback.
#[derive(Clone, PartialEq, Eq)]
pub enum HostAuth {
    /// `Authorization: Bearer <token>` (a stored `omnigent login`).
    Bearer(String),
    /// `X-Omnigent-Host-Token: <token>` (a managed host, `OMNIGENT_HOST_TOKEN`).
    HostToken(String),
}

impl std::fmt::Debug for HostAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log a secret.
        match self {
            HostAuth::Bearer(_) => f.write_str("Bearer(…)"),
            HostAuth::HostToken(_) => f.write_str("HostToken(…)"),
        }
    }
}

/// Reads the wall clock (the suspend detector compares it with the monotonic clock). Tests inject a clock
/// that jumps to play a laptop waking up.
pub type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Timings of the tunnel. The defaults are DESIGN §6's; tests shrink them or use paused time.
#[derive(Debug, Clone)]
pub struct HostTunnelTimings {
    /// First backoff ceiling (250 ms).
    pub backoff_base: Duration,
    /// Largest backoff ceiling (3 s for the host).
    pub backoff_cap: Duration,
    /// A connection that lasted this long resets the backoff (60 s).
    pub backoff_reset_after: Duration,
    /// Draw each delay from `U(0, ceiling)` (true) or wait the whole ceiling (false: deterministic tests).
    pub full_jitter: bool,
    /// Timeout of `GET /v1/me` and the upgrade before the host ever connected (10 s) …
    pub open_timeout_first: Duration,
    /// … and once it has (3 s).
    pub open_timeout: Duration,
    /// Protocol-level WebSocket ping interval (30 s).
    pub ws_ping_interval: Duration,
    /// Drop the socket after this long without any inbound message (90 s): never tighter than the server's
    /// app-level budget (reference §5.3, #1116).
    pub liveness_timeout: Duration,
    /// How often the suspend detector compares the clocks (5 s) …
    pub wake_check_interval: Duration,
    /// … and the wall-clock lead over monotonic time that means the machine slept (15 s).
    pub wake_gap: Duration,
    /// A tunnel counts as a first success once the server sent a frame or it stayed up this long (3 s):
    /// before that, refusals (401/403, close 4001/4002/4003/4004) are fatal.
    pub established_after: Duration,
    /// 401/403 in a row before the first success that make the error fatal (3).
    pub fatal_auth_rejections: u32,
}

impl Default for HostTunnelTimings {
    fn default() -> Self {
        HostTunnelTimings {
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(3),
            backoff_reset_after: Duration::from_secs(60),
            full_jitter: true,
            open_timeout_first: Duration::from_secs(10),
            open_timeout: Duration::from_secs(3),
            ws_ping_interval: Duration::from_secs(30),
            liveness_timeout: Duration::from_secs(90),
            wake_check_interval: Duration::from_secs(5),
            wake_gap: Duration::from_secs(15),
            established_after: Duration::from_secs(3),
            fatal_auth_rejections: 3,
        }
    }
}

/// Everything [`run_host_tunnel`] needs to reach one server.
#[derive(Clone)]
pub struct HostTunnelConfig {
    /// `http(s)://host[:port][/prefix]` (or `ws(s)://…`).
    pub server_url: String,
    /// This machine's host id (32 hex; dashes and a legacy `host_` prefix are accepted).
    pub host_id: String,
    /// The name shown in the server's host list.
    pub name: String,
    pub installation_id: Option<String>,
    pub auth: Option<HostAuth>,
    /// `credentials.json` ([`omnigent_proto::credentials`]): without `auth`, each dial sends the device token
    /// stored there for this server, read afresh, so an `omnigent login` while the tunnel retries takes effect.
    pub credentials_file: Option<std::path::PathBuf>,
    pub timings: HostTunnelTimings,
    /// Largest inbound frame ([`omnigent_proto::MAX_FRAME_BYTES`]).
    pub max_frame_bytes: usize,
    pub wall_clock: WallClock,
}

impl std::fmt::Debug for HostTunnelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTunnelConfig")
            .field("server_url", &self.server_url)
            .field("host_id", &self.host_id)
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}

impl HostTunnelConfig {
    /// A config with the protocol's timings, no auth and the system wall clock.
    pub fn new(server_url: &str, host_id: &str, name: &str) -> Self {
        HostTunnelConfig {
            server_url: server_url.to_owned(),
            host_id: host_id.to_owned(),
            name: name.to_owned(),
            installation_id: None,
            auth: None,
            credentials_file: None,
            timings: HostTunnelTimings::default(),
            max_frame_bytes: omnigent_proto::MAX_FRAME_BYTES,
            wall_clock: Arc::new(SystemTime::now),
        }
    }
}

/// What `omnigent status` shows about a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HostTunnelState {
    /// Dialling for the first time.
    Connecting,
    /// Hello sent; serving the server's requests.
    Online,
    /// Lost or refused; `attempt` failed tries since the last time online. `warning` is set when the server
    /// rejects credentials that used to work (the tunnel keeps retrying; the user should log in again).
    Reconnecting {
        attempt: u32,
        last_error: String,
        warning: Option<String>,
    },
    /// Gave up for good (see [`HostTunnelError`]).
    Failed { reason: String },
    /// Shut down on request.
    Stopped,
}

/// Why the tunnel gave up for good. The daemon exits [`FATAL_EXIT_CODE`] on these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostTunnelError {
    #[error("server URL {url:?} is not usable: {reason}; use http(s)://host[:port][/prefix]")]
    BadServerUrl { url: String, reason: String },
    #[error("host id {0:?} is not 32 hex digits; fix or delete host_id in config.toml")]
    InvalidHostId(String),
    #[error(
        "the server {url} refused this host's credentials (HTTP {status}) {times} times in a row; pair this machine with `omnigent login {url}` (a host-role code from `omnigent share --role host` on the server's machine), or set OMNIGENT_HOST_TOKEN, and start the host again"
    )]
    Unauthorized {
        url: String,
        status: u16,
        times: u32,
    },
    #[error(
        "the server {url} says host id {host_id} belongs to another user (HTTP 409); use this machine's own identity or remove host_id from config.toml to get a new one"
    )]
    OwnerConflict { url: String, host_id: String },
    #[error(
        "the server {url} refused the host tunnel (close {code} {reason:?}); check that server and host run compatible omnigent versions"
    )]
    Refused {
        url: String,
        code: u16,
        reason: String,
    },
    #[error(
        "the server {url} refused the host at stage {stage:?}: {error}; this is not retryable, fix the cause and start the host again"
    )]
    ConnectionError {
        url: String,
        stage: String,
        error: String,
    },
    #[error("the host tunnel task failed: {0}")]
    Crashed(String),
}

/// A launch the server asked for (`host.launch_runner`).
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchRequest {
    pub binding_token: String,
    pub workspace: String,
    pub session_id: Option<String>,
    /// Launched even when reported as lacking credentials: the runner reports that as a turn error.
    pub harness: Option<String>,
    /// Fields the frame carried that we do not model (`inference_config`…).
    pub extra: Map<String, Value>,
}

/// Why a launch failed, with the code the server acts on (none: a failure a retry may fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LaunchError {
    pub code: Option<omnigent_proto::host_frames::LaunchErrorCode>,
    pub message: String,
}

/// A runner's liveness as `host.runner_status_result` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerStatus {
    Alive,
    Dead,
    Unknown,
}

impl RunnerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerStatus::Alive => "alive",
            RunnerStatus::Dead => "dead",
            RunnerStatus::Unknown => "unknown",
        }
    }
}

/// What the tunnel asks of the daemon's runner supervisor. Each call runs in its own task.
pub trait HostActions: Send + Sync + 'static {
    /// Start a runner; `Ok(runner_id)` once it is spawned.
    fn launch_runner(
        &self,
        request: LaunchRequest,
    ) -> impl Future<Output = Result<String, LaunchError>> + Send;
    /// Stop a runner; `Err(message)` e.g. for an unknown id.
    fn stop_runner(&self, runner_id: String) -> impl Future<Output = Result<(), String>> + Send;
    fn runner_status(&self, runner_id: String) -> impl Future<Output = RunnerStatus> + Send;
    /// Ids of the runners alive now (for `host.hello`).
    fn live_runners(&self) -> Vec<String>;
    /// harness name → `true` | `false` | `"needs-auth"` | `"binary-missing"` (for `host.hello`).
    fn configured_harnesses(&self) -> Map<String, Value>;
}

/// A runner exit to report (`host.runner_exited`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerExit {
    pub runner_id: String,
    /// The exit code and log tail.
    pub error: Option<String>,
}

/// Reports runner exits to the tunnel: sent at once when online, parked while it is down and flushed right
/// after the next hello. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ExitReporter {
    tx: mpsc::Sender<RunnerExit>,
}

impl ExitReporter {
    /// Queue a report. Returns false (and logs) when the queue is full or the tunnel is gone.
    pub fn runner_exited(&self, runner_id: impl Into<String>, error: Option<String>) -> bool {
        let exit = RunnerExit {
            runner_id: runner_id.into(),
            error,
        };
        match self.tx.try_send(exit) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(exit)) => {
                warn!(runner_id = %exit.runner_id, "runner exit report dropped: {EXIT_QUEUE} reports already wait for the tunnel");
                false
            }
            Err(mpsc::error::TrySendError::Closed(exit)) => {
                debug!(runner_id = %exit.runner_id, "runner exit report dropped: the host tunnel has stopped");
                false
            }
        }
    }
}

/// The receiving end of an [`ExitReporter`], consumed by [`run_host_tunnel`].
#[derive(Debug)]
pub struct RunnerExits {
    rx: mpsc::Receiver<RunnerExit>,
}

/// A reporter and the receiver to hand to [`run_host_tunnel`].
pub fn exit_channel() -> (ExitReporter, RunnerExits) {
    let (tx, rx) = mpsc::channel(EXIT_QUEUE);
    (ExitReporter { tx }, RunnerExits { rx })
}

/// A running tunnel task.
#[derive(Debug)]
pub struct HostTunnelHandle {
    state: watch::Receiver<HostTunnelState>,
    exits: ExitReporter,
    task: JoinHandle<Result<(), HostTunnelError>>,
}

impl HostTunnelHandle {
    pub fn state(&self) -> watch::Receiver<HostTunnelState> {
        self.state.clone()
    }

    pub fn exit_reporter(&self) -> ExitReporter {
        self.exits.clone()
    }

    /// See [`ExitReporter::runner_exited`].
    pub fn runner_exited(&self, runner_id: impl Into<String>, error: Option<String>) -> bool {
        self.exits.runner_exited(runner_id, error)
    }

    /// Wait for the task: `Ok` after `shutdown`, `Err` on a fatal error (exit [`FATAL_EXIT_CODE`]).
    pub async fn join(self) -> Result<(), HostTunnelError> {
        self.task
            .await
            .unwrap_or_else(|e| Err(HostTunnelError::Crashed(e.to_string())))
    }
}

/// Run [`run_host_tunnel`] as a task, with its state channel and exit queue.
pub fn spawn_host_tunnel<A: HostActions>(
    config: HostTunnelConfig,
    actions: A,
    shutdown: CancellationToken,
) -> HostTunnelHandle {
    let (state_tx, state) = watch::channel(HostTunnelState::Connecting);
    let (exits, exits_rx) = exit_channel();
    let task = tokio::spawn(run_host_tunnel(
        config, actions, exits_rx, state_tx, shutdown,
    ));
    HostTunnelHandle { state, exits, task }
}

/// Keep a host tunnel to `config.server_url` up until `shutdown` (→ `Ok`) or a fatal error (→ `Err`, exit 78).
/// `state` follows every transition; `exits` are reported as `host.runner_exited`.
pub async fn run_host_tunnel<A: HostActions>(
    config: HostTunnelConfig,
    actions: A,
    exits: RunnerExits,
    state: watch::Sender<HostTunnelState>,
    shutdown: CancellationToken,
) -> Result<(), HostTunnelError> {
    let span = info_span!("host_tunnel", host_id = %config.host_id, server = %config.server_url);
    let result = Tunnel::new(config, Arc::new(actions), exits, state.clone(), shutdown)
        .run()
        .instrument(span)
        .await;
    match &result {
        Ok(()) => state.send_replace(HostTunnelState::Stopped),
        Err(e) => {
            warn!(error = %e, "host tunnel gave up");
            state.send_replace(HostTunnelState::Failed {
                reason: e.to_string(),
            })
        }
    };
    result
}

/// The URLs of one server.
struct ServerUrls {
    me: reqwest::Url,
    tunnel: reqwest::Url,
    loopback: bool,
}

impl ServerUrls {
    fn new(server: &str, host_id: &str) -> Result<Self, HostTunnelError> {
        let bad = |reason: String| HostTunnelError::BadServerUrl {
            url: server.to_owned(),
            reason,
        };
        let base = ServerUrl::parse(server).map_err(bad)?;
        Ok(ServerUrls {
            me: base.http("/v1/me").map_err(bad)?,
            tunnel: base
                .ws(&format!("/v1/hosts/{host_id}/tunnel"))
                .map_err(bad)?,
            loopback: base.is_loopback(),
        })
    }
}

/// How one connected tunnel ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    /// The server closed the tunnel (`code` is `None` without a close code).
    Closed {
        code: Option<u16>,
        reason: String,
    },
    /// The socket failed or ended without a close frame.
    Lost(String),
    /// Nothing came in for the liveness budget.
    Silent,
    /// The machine woke from sleep.
    Woke,
}

struct SessionOutcome {
    end: SessionEnd,
    /// The server sent a frame or the tunnel stayed up long enough: a first success.
    established: bool,
    /// Any frame came in (a server that accepts and says nothing gets no prompt reconnects).
    received: bool,
    /// The last `host.connection_error` the server sent.
    connection_error: Option<ConnectionError>,
    connected_for: Duration,
}

/// Runner exits waiting for the tunnel: one per runner (the newest report wins), at most [`EXIT_QUEUE`].
#[derive(Debug, Default)]
struct Parked {
    exits: VecDeque<RunnerExit>,
}

impl Parked {
    fn push(&mut self, exit: RunnerExit) {
        self.exits.retain(|e| e.runner_id != exit.runner_id);
        if self.exits.len() >= EXIT_QUEUE
            && let Some(dropped) = self.exits.pop_front()
        {
            warn!(runner_id = %dropped.runner_id, "dropping the oldest parked runner exit report: the queue is full");
        }
        self.exits.push_back(exit);
    }
}

/// Notices the machine waking from sleep: the wall clock ran ahead of the monotonic clock (which stops
/// while suspended) by more than `gap` between two checks.
#[derive(Debug)]
struct SuspendDetector {
    gap: Duration,
    last_wall: SystemTime,
    last_mono: Instant,
}

impl SuspendDetector {
    fn new(gap: Duration, wall: SystemTime, mono: Instant) -> Self {
        SuspendDetector {
            gap,
            last_wall: wall,
            last_mono: mono,
        }
    }

    /// Record a check; true when the machine slept since the last one.
    fn check(&mut self, wall: SystemTime, mono: Instant) -> bool {
        let wall_delta = wall.duration_since(self.last_wall).unwrap_or_default();
        let mono_delta = mono.saturating_duration_since(self.last_mono);
        self.last_wall = wall;
        self.last_mono = mono;
        wall_delta.saturating_sub(mono_delta) > self.gap
    }
}

/// Watch the clocks until `wakes` has no receiver; bump it on every wake.
async fn watch_for_wakes(
    clock: WallClock,
    interval: Duration,
    gap: Duration,
    wakes: watch::Sender<u64>,
) {
    let mut detector = SuspendDetector::new(gap, clock(), Instant::now());
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = wakes.closed() => return,
            _ = tick.tick() => {
                if detector.check(clock(), Instant::now()) {
                    info!("the machine woke from sleep; reconnecting the host tunnel now");
                    wakes.send_modify(|n| *n += 1);
                }
            }
        }
    }
}

/// How long a tunnel that ended waits for its request handlers still under way.
const REPLY_DRAIN: Duration = Duration::from_secs(3);

/// The lifecycle of one tunnel: owned by one task.
struct Tunnel<A> {
    config: HostTunnelConfig,
    host_id: String,
    actions: Arc<A>,
    exits: RunnerExits,
    parked: Parked,
    state: watch::Sender<HostTunnelState>,
    shutdown: CancellationToken,
    wakes: watch::Receiver<u64>,
    /// The suspend detector, ended with the tunnel.
    _wake_watcher: AbortOnDropHandle<()>,
    /// The request handlers under way, waited for (briefly) when the tunnel ends.
    replies: TaskTracker,
}

/// What to do after a failed attempt.
enum Next {
    Retry {
        delay: Duration,
        error: String,
        warning: Option<String>,
    },
    Fatal(HostTunnelError),
    Stop,
}

impl<A: HostActions> Tunnel<A> {
    fn new(
        config: HostTunnelConfig,
        actions: Arc<A>,
        exits: RunnerExits,
        state: watch::Sender<HostTunnelState>,
        shutdown: CancellationToken,
    ) -> Self {
        let (wake_tx, wakes) = watch::channel(0u64);
        let wake_watcher = AbortOnDropHandle::new(tokio::spawn(watch_for_wakes(
            config.wall_clock.clone(),
            config.timings.wake_check_interval,
            config.timings.wake_gap,
            wake_tx,
        )));
        Tunnel {
            host_id: String::new(),
            config,
            actions,
            exits,
            parked: Parked::default(),
            state,
            shutdown,
            wakes,
            _wake_watcher: wake_watcher,
            replies: TaskTracker::new(),
        }
    }

    /// [`Tunnel::serve`], then a short wait for the request handlers still under way, so none outlives it.
    async fn run(mut self) -> Result<(), HostTunnelError> {
        let result = self.serve().await;
        self.replies.close();
        if tokio::time::timeout(REPLY_DRAIN, self.replies.wait())
            .await
            .is_err()
        {
            warn!(
                pending = self.replies.len(),
                "request handlers still running {REPLY_DRAIN:?} after the tunnel ended; leaving them"
            );
        }
        result
    }

    async fn serve(&mut self) -> Result<(), HostTunnelError> {
        self.host_id = canonical_id(&self.config.host_id)
            .ok_or_else(|| HostTunnelError::InvalidHostId(self.config.host_id.clone()))?;
        let urls = ServerUrls::new(&self.config.server_url, &self.host_id)?;
        let mut http = reqwest::Client::builder().timeout(self.config.timings.open_timeout_first);
        if urls.loopback {
            // Never send loopback through a proxy (reference §9.16).
            http = http.no_proxy();
        }
        let http = http.build().map_err(|e| HostTunnelError::BadServerUrl {
            url: self.config.server_url.clone(),
            reason: format!("cannot build an HTTP client: {e}"),
        })?;

        let t = self.config.timings.clone();
        let mut backoff = Backoff::new(BackoffPolicy {
            base: t.backoff_base,
            cap: t.backoff_cap,
            reset_after: t.backoff_reset_after,
        })
        .with_jitter(t.full_jitter);
        let mut ever_connected = false;
        let mut auth_rejections = 0u32;
        let mut attempt = 0u32;
        let mut silent_prompts = 0u32;
        let mut warning: Option<String> = None;
        loop {
            let open_timeout = if ever_connected {
                t.open_timeout
            } else {
                t.open_timeout_first
            };
            // A wake that came while we were down is served by this very dial.
            self.wakes.borrow_and_update();
            let auth = self.config.auth.clone().or_else(|| {
                let file = self.config.credentials_file.as_deref()?;
                omnigent_proto::credentials::token_for(file, &self.config.server_url)
                    .map(HostAuth::Bearer)
            });
            let dial = dial(
                &http,
                &urls,
                auth.as_ref(),
                open_timeout,
                self.config.max_frame_bytes,
            );
            let dialled = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                dialled = park_while(dial, &mut self.exits, &mut self.parked) => dialled,
            };
            let next = match dialled {
                Ok(ws) => {
                    auth_rejections = 0;
                    warning = None;
                    attempt = 0;
                    info!(url = %urls.tunnel, "host tunnel connected");
                    let outcome = self.session(ws).await;
                    ever_connected |= outcome.established;
                    backoff.connection_ended(outcome.connected_for);
                    if outcome.received {
                        silent_prompts = 0;
                    }
                    self.after_session(outcome, ever_connected, &mut backoff, &mut silent_prompts)
                }
                Err(DialError::Status(status @ (401 | 403))) => {
                    let error =
                        format!("the server refused this host's credentials (HTTP {status})");
                    if ever_connected {
                        warning = Some(format!(
                            "{error}; still retrying. Run `omnigent login {}` (or renew OMNIGENT_HOST_TOKEN) to fix it",
                            self.config.server_url
                        ));
                        Next::Retry {
                            delay: backoff.next_delay(),
                            error,
                            warning: warning.clone(),
                        }
                    } else {
                        auth_rejections += 1;
                        if auth_rejections >= t.fatal_auth_rejections {
                            Next::Fatal(HostTunnelError::Unauthorized {
                                url: self.config.server_url.clone(),
                                status,
                                times: auth_rejections,
                            })
                        } else {
                            Next::Retry {
                                delay: backoff.next_delay(),
                                error,
                                warning: None,
                            }
                        }
                    }
                }
                Err(DialError::Status(409)) => Next::Fatal(HostTunnelError::OwnerConflict {
                    url: self.config.server_url.clone(),
                    host_id: self.host_id.clone(),
                }),
                Err(err) => {
                    auth_rejections = 0;
                    Next::Retry {
                        delay: backoff.next_delay(),
                        error: err.to_string(),
                        warning: warning.clone(),
                    }
                }
            };
            let delay = match next {
                Next::Stop => return Ok(()),
                Next::Fatal(e) => return Err(e),
                Next::Retry {
                    delay,
                    error,
                    warning,
                } => {
                    attempt = attempt.saturating_add(1);
                    warn!(attempt, ?delay, error = %error, "host tunnel down; reconnecting");
                    self.state.send_replace(HostTunnelState::Reconnecting {
                        attempt,
                        last_error: error,
                        warning,
                    });
                    delay
                }
            };
            if !delay.is_zero() {
                let wakes = &mut self.wakes;
                tokio::select! {
                    () = self.shutdown.cancelled() => return Ok(()),
                    () = park_while(tokio::time::sleep(delay), &mut self.exits, &mut self.parked) => {}
                    Ok(()) = wakes.changed() => info!("woke from sleep: reconnecting without waiting"),
                }
            }
        }
    }

    fn after_session(
        &self,
        outcome: SessionOutcome,
        ever_connected: bool,
        backoff: &mut Backoff,
        silent_prompts: &mut u32,
    ) -> Next {
        let url = || self.config.server_url.clone();
        if let Some(e) = &outcome.connection_error
            && !e.retryable
        {
            return Next::Fatal(HostTunnelError::ConnectionError {
                url: url(),
                stage: e.stage.clone(),
                error: e.error.clone(),
            });
        }
        let mut prompt = |error: String| {
            // A server that accepts and closes at once, saying nothing, gets the normal backoff after a
            // few tries so we never spin (reference §9.15).
            if !outcome.received {
                *silent_prompts += 1;
            }
            let delay = if *silent_prompts > 10 {
                backoff.next_delay()
            } else {
                Duration::ZERO
            };
            Next::Retry {
                delay,
                error,
                warning: None,
            }
        };
        match outcome.end {
            SessionEnd::Shutdown => Next::Stop,
            SessionEnd::Woke => prompt("the machine woke from sleep".to_owned()),
            SessionEnd::Closed {
                code: Some(code),
                reason,
            } if code == close::GOING_AWAY || code == close::SERVICE_RESTART => {
                prompt(format!("the server closed the tunnel ({code} {reason:?})"))
            }
            SessionEnd::Closed {
                code: Some(code), ..
            } if code == close::OWNER_CONFLICT => Next::Fatal(HostTunnelError::OwnerConflict {
                url: url(),
                host_id: self.host_id.clone(),
            }),
            SessionEnd::Closed {
                code: Some(code),
                reason,
            } if !ever_connected
                && (code == close::HELLO_EXPECTED
                    || code == close::PROTOCOL_MISMATCH
                    || code == close::UNAUTHENTICATED
                    || (code == close::INVALID_HOST_ID && reason.contains("invalid host id"))) =>
            {
                let reason = match &outcome.connection_error {
                    Some(e) if !e.error.is_empty() => format!("{reason}: {}", e.error),
                    _ => reason,
                };
                Next::Fatal(HostTunnelError::Refused {
                    url: url(),
                    code,
                    reason,
                })
            }
            SessionEnd::Closed { code, reason } => {
                let mut error = match code {
                    Some(code) => format!("the server closed the tunnel ({code} {reason:?})"),
                    None => "the server closed the tunnel without a code".to_owned(),
                };
                if let Some(e) = &outcome.connection_error {
                    error.push_str(&format!(": {} ({})", e.error, e.stage));
                }
                Next::Retry {
                    delay: backoff.next_delay(),
                    error,
                    warning: None,
                }
            }
            SessionEnd::Lost(error) => Next::Retry {
                delay: backoff.next_delay(),
                error: format!("the tunnel broke: {error}"),
                warning: None,
            },
            SessionEnd::Silent => Next::Retry {
                delay: backoff.next_delay(),
                error: format!(
                    "nothing came from the server for {:?}",
                    self.config.timings.liveness_timeout
                ),
                warning: None,
            },
        }
    }

    fn hello(&self) -> HostFrame {
        let mut extra = Map::new();
        extra.insert(
            "connection_id".to_owned(),
            Value::String(uuid::Uuid::new_v4().simple().to_string()),
        );
        HostFrame::Hello(HostHello {
            version: omnigent_proto::BUILD_VERSION.to_owned(),
            frame_protocol_version: omnigent_proto::FRAME_PROTOCOL_VERSION,
            name: self.config.name.clone(),
            runners: self.actions.live_runners(),
            configured_harnesses: Some(self.actions.configured_harnesses()),
            gateway_inference: None,
            telemetry_opt_out: true,
            installation_id: self.config.installation_id.clone(),
            extra,
        })
    }

    /// Serve one connected tunnel until it ends.
    async fn session(&mut self, ws: Ws) -> SessionOutcome {
        let t = self.config.timings.clone();
        let started = Instant::now();
        let (sink, mut stream) = ws.split();
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(write_loop(sink, out_rx, "host"));
        let send = |frame: &HostFrame| {
            let _ = out_tx.send(Message::text(frame.encode()));
        };

        send(&self.hello());
        let parked: Vec<RunnerExit> = self.parked.exits.drain(..).collect();
        if !parked.is_empty() {
            info!(
                count = parked.len(),
                "reporting runner exits parked while the tunnel was down"
            );
        }
        for exit in parked {
            send(&runner_exited(exit));
        }
        self.state.send_replace(HostTunnelState::Online);

        let mut outcome = SessionOutcome {
            end: SessionEnd::Shutdown,
            established: false,
            received: false,
            connection_error: None,
            connected_for: Duration::ZERO,
        };
        let mut last_inbound = Instant::now();
        let mut ping = tokio::time::interval_at(started + t.ws_ping_interval, t.ws_ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let established_at = started + t.established_after;
        self.wakes.borrow_and_update();

        let end = loop {
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    let _ = out_tx.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "host shutting down".into(),
                    })));
                    break SessionEnd::Shutdown;
                }
                Ok(()) = self.wakes.changed() => break SessionEnd::Woke,
                message = stream.next() => {
                    let text = match message {
                        None => break SessionEnd::Lost("the connection ended without a close frame".to_owned()),
                        Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = match frame {
                                Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                                None => (None, String::new()),
                            };
                            break SessionEnd::Closed { code, reason };
                        }
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Binary(_))) => {
                            last_inbound = Instant::now();
                            outcome.received = true;
                            debug!("dropping a binary message on the host tunnel");
                            continue;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                            last_inbound = Instant::now();
                            outcome.received = true;
                            outcome.established = true;
                            continue;
                        }
                    };
                    last_inbound = Instant::now();
                    outcome.received = true;
                    let frame = match HostFrame::decode_capped(text.as_str(), self.config.max_frame_bytes) {
                        Ok(frame) => frame,
                        Err(HostFrameError::TooLarge { size, cap }) => {
                            warn!(size, cap, "server sent a frame above the cap; skipped");
                            continue;
                        }
                        Err(e) => {
                            warn!(error = %e, "skipping a malformed frame from the server");
                            continue;
                        }
                    };
                    if let HostFrame::ConnectionError(e) = frame {
                        warn!(stage = %e.stage, error = %e.error, retryable = e.retryable, "the server reports a connection error");
                        outcome.connection_error = Some(e);
                        continue;
                    }
                    outcome.established = true;
                    self.on_frame(frame, text.as_str(), &out_tx);
                }
                Some(exit) = self.exits.rx.recv() => send(&runner_exited(exit)),
                _ = ping.tick() => {
                    let _ = out_tx.send(Message::Ping(Default::default()));
                }
                () = tokio::time::sleep_until(established_at), if !outcome.established => {
                    outcome.established = true;
                }
                () = tokio::time::sleep_until(last_inbound + t.liveness_timeout) => break SessionEnd::Silent,
            }
        };
        match &end {
            SessionEnd::Shutdown => {}
            // Answer the server's close (tungstenite queues the reply; the writer, its queue ended below,
            // closes the sink, which flushes it).
            SessionEnd::Closed { .. } => {}
            SessionEnd::Lost(_) | SessionEnd::Silent | SessionEnd::Woke => writer.abort(),
        }
        drop(out_tx);
        let abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .is_err()
        {
            abort.abort();
        }
        outcome.end = end;
        outcome.connected_for = started.elapsed();
        info!(end = ?outcome.end, connected_for = ?outcome.connected_for, "host tunnel session ended");
        outcome
    }

    /// One frame from the server. Requests run in tasks of their own; the rest is answered inline.
    fn on_frame(&self, frame: HostFrame, text: &str, out: &mpsc::UnboundedSender<Message>) {
        let kind = frame.kind();
        let actions = self.actions.clone();
        match frame {
            HostFrame::Ping(ping) => {
                let pong = HostFrame::Pong(Ping {
                    ts: ping.ts,
                    extra: Default::default(),
                });
                let _ = out.send(Message::text(pong.encode()));
            }
            HostFrame::Pong(_) | HostFrame::ConnectionError(_) => {}
            HostFrame::LaunchRunner(req) => {
                spawn_reply(&self.replies, out, kind, async move {
                    launch(actions.as_ref(), req).await
                });
            }
            HostFrame::StopRunner(RunnerRef {
                request_id,
                runner_id,
                ..
            }) => spawn_reply(&self.replies, out, kind, async move {
                let (status, error) = match actions.stop_runner(runner_id).await {
                    Ok(()) => ("stopped", None),
                    Err(e) => ("failed", Some(e)),
                };
                HostFrame::StopRunnerResult(status_result(request_id, status, error))
            }),
            HostFrame::RunnerStatus(RunnerRef {
                request_id,
                runner_id,
                ..
            }) => spawn_reply(&self.replies, out, kind, async move {
                let status = actions.runner_status(runner_id).await;
                HostFrame::RunnerStatusResult(status_result(request_id, status.as_str(), None))
            }),
            HostFrame::Stat(req) => spawn_reply(&self.replies, out, kind, async move {
                HostFrame::StatResult(fs::stat(req).await)
            }),
            HostFrame::ListDir(req) => spawn_reply(&self.replies, out, kind, async move {
                HostFrame::ListDirResult(fs::list_dir(req).await)
            }),
            HostFrame::CreateDir(req) => spawn_reply(&self.replies, out, kind, async move {
                HostFrame::CreateDirResult(fs::create_dir(req).await)
            }),
            HostFrame::Hello(_)
            | HostFrame::HarnessReadiness(_)
            | HostFrame::LaunchRunnerResult(_)
            | HostFrame::StopRunnerResult(_)
            | HostFrame::RunnerStatusResult(_)
            | HostFrame::RunnerExited(_)
            | HostFrame::StatResult(_)
            | HostFrame::ListDirResult(_)
            | HostFrame::CreateDirResult(_) => {
                warn!(kind, "the server sent a host→server kind; ignored");
            }
            HostFrame::Unknown => {
                debug!(kind = ?omnigent_proto::runner_frames::peek_kind(text), "unknown frame kind from the server; skipped");
            }
        }
    }
}

/// Run one request handler in a task of its own and send its result, unless the tunnel died meanwhile (the
/// server's request times out and it retries).
fn spawn_reply(
    tasks: &TaskTracker,
    out: &mpsc::UnboundedSender<Message>,
    kind: &'static str,
    handler: impl Future<Output = HostFrame> + Send + 'static,
) {
    let out = out.clone();
    tasks.spawn(async move {
        let result = handler.await;
        if out.send(Message::text(result.encode())).is_err() {
            info!(
                kind,
                "the tunnel died before the reply could be sent; reply dropped"
            );
        }
    });
}

async fn launch<A: HostActions>(actions: &A, req: LaunchRunner) -> HostFrame {
    let LaunchRunner {
        request_id,
        binding_token,
        workspace,
        session_id,
        harness,
        extra,
    } = req;
    info!(session_id = ?session_id, harness = ?harness, workspace = %workspace, "launch requested");
    let request = LaunchRequest {
        binding_token,
        workspace,
        session_id,
        harness,
        extra,
    };
    let result = match actions.launch_runner(request).await {
        Ok(runner_id) => LaunchRunnerResult {
            request_id,
            status: "launched".to_owned(),
            runner_id: Some(runner_id),
            error: None,
            error_code: None,
            extra: Default::default(),
        },
        Err(e) => {
            warn!(error = %e.message, code = ?e.code, "launch failed");
            LaunchRunnerResult {
                request_id,
                status: "failed".to_owned(),
                runner_id: None,
                error: Some(e.message),
                error_code: e.code.map(|c| c.as_str().to_owned()),
                extra: Default::default(),
            }
        }
    };
    HostFrame::LaunchRunnerResult(result)
}

fn status_result(request_id: String, status: &str, error: Option<String>) -> StatusResult {
    StatusResult {
        request_id,
        status: status.to_owned(),
        error,
        extra: Default::default(),
    }
}

fn runner_exited(exit: RunnerExit) -> HostFrame {
    HostFrame::RunnerExited(RunnerExited {
        runner_id: exit.runner_id,
        error: exit.error,
        extra: Default::default(),
    })
}

/// Await `fut`, parking every runner exit reported meanwhile.
async fn park_while<F: Future>(fut: F, exits: &mut RunnerExits, parked: &mut Parked) -> F::Output {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            Some(exit) = exits.rx.recv() => {
                debug!(runner_id = %exit.runner_id, "runner exit parked until the tunnel is back");
                parked.push(exit);
            }
        }
    }
}

/// `GET /v1/me` like 0.19.1 (its answer is informational), then the WebSocket upgrade.
async fn dial(
    http: &reqwest::Client,
    urls: &ServerUrls,
    auth: Option<&HostAuth>,
    open_timeout: Duration,
    max_frame_bytes: usize,
) -> Result<Ws, DialError> {
    let headers = match auth {
        Some(HostAuth::Bearer(token)) => {
            vec![(http::header::AUTHORIZATION, format!("Bearer {token}"))]
        }
        Some(HostAuth::HostToken(token)) => {
            vec![(
                http::HeaderName::from_static(HOST_TOKEN_HEADER),
                token.clone(),
            )]
        }
        None => Vec::new(),
    };
    let request = DialRequest {
        announce: Some((http::Method::GET, urls.me.clone())),
        tunnel: urls.tunnel.clone(),
        headers,
        timeout: open_timeout,
        // Room above our own cap, so an oversized frame reaches the check in the session and is skipped there.
        max_message_bytes: max_frame_bytes.saturating_add(WS_LAYER_SLACK),
    };
    client::dial(http, &request).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_prefix_and_map_the_scheme() {
        let urls = ServerUrls::new("https://team.example.com/omni/", "abc").unwrap();
        assert_eq!(urls.me.as_str(), "https://team.example.com/omni/v1/me");
        assert_eq!(
            urls.tunnel.as_str(),
            "wss://team.example.com/omni/v1/hosts/abc/tunnel"
        );
        assert!(!urls.loopback);
        let urls = ServerUrls::new("http://127.0.0.1:6767", "abc").unwrap();
        assert_eq!(
            urls.tunnel.as_str(),
            "ws://127.0.0.1:6767/v1/hosts/abc/tunnel"
        );
        assert!(urls.loopback);
        assert!(ServerUrls::new("http://localhost:1", "a").unwrap().loopback);
        assert!(matches!(
            ServerUrls::new("ftp://x", "a"),
            Err(HostTunnelError::BadServerUrl { .. })
        ));
        assert!(ServerUrls::new("not a url", "a").is_err());
    }

    #[test]
    fn keepalive_is_never_tighter_than_the_servers_90s_budget() {
        let t = HostTunnelTimings::default();
        assert!(t.liveness_timeout >= Duration::from_secs(90));
        assert!(t.ws_ping_interval * 3 <= t.liveness_timeout);
        assert_eq!(t.backoff_cap, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn suspend_detector_fires_only_when_the_wall_clock_jumps_ahead() {
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut d = SuspendDetector::new(Duration::from_secs(15), wall0, Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!d.check(wall0 + Duration::from_secs(5), Instant::now()));
        // 5 s of monotonic time but 2 minutes of wall time: the machine slept.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(d.check(wall0 + Duration::from_secs(130), Instant::now()));
        // Wall clock set backwards, or a small skew: not a wake.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!d.check(wall0, Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!d.check(wall0 + Duration::from_secs(19), Instant::now()));
    }

    #[test]
    fn parked_exits_keep_one_report_per_runner_and_are_bounded() {
        let mut p = Parked::default();
        p.push(RunnerExit {
            runner_id: "a".into(),
            error: Some("1".into()),
        });
        p.push(RunnerExit {
            runner_id: "b".into(),
            error: None,
        });
        p.push(RunnerExit {
            runner_id: "a".into(),
            error: Some("2".into()),
        });
        let ids: Vec<_> = p
            .exits
            .iter()
            .map(|e| (e.runner_id.as_str(), e.error.as_deref()))
            .collect();
        assert_eq!(ids, vec![("b", None), ("a", Some("2"))]);
        for i in 0..(EXIT_QUEUE + 10) {
            p.push(RunnerExit {
                runner_id: format!("r{i}"),
                error: None,
            });
        }
        assert_eq!(p.exits.len(), EXIT_QUEUE);
        assert_eq!(
            p.exits.back().unwrap().runner_id,
            format!("r{}", EXIT_QUEUE + 9)
        );
    }
}
