//! The local control API (CLI ⇄ daemon), ours (DESIGN §5.1).
//!
//! HTTP/1.1 + JSON over a local socket (`daemon.sock`, 0600 in a 0700 runtime dir), so
//! `curl --unix-socket <sock> http://omnigent/v1/status` works for debugging.
//!
//! Every client's first call is [`HELLO_PATH`] with a [`Hello`]. The hello request and reply shapes are
//! **frozen forever** (only additive `#[serde(default)]` fields): a CLI must be able to read any daemon's
//! hello, find out it is incompatible and which pid to stop. An incompatible client gets HTTP 426 with a
//! [`ControlError`] whose `code` is [`ControlErrorCode::ProtocolMismatch`] and whose `daemon` field carries
//! the daemon's hello.
//!
//! Requests may also carry [`PROTOCOL_HEADER`]; a daemon refuses a request whose header names another
//! protocol version (426, same error), so a client that skipped the hello still cannot misread a reply.

use serde::{Deserialize, Serialize};

/// `Host` used on the control socket (any value works; this one reads well in logs).
pub const CONTROL_HOST: &str = "omnigent";
/// Optional request header carrying the client's [`crate::CONTROL_PROTOCOL_VERSION`].
pub const PROTOCOL_HEADER: &str = "x-omnigent-protocol";
/// Largest request or response body on the control socket, checked before buffering.
pub const MAX_CONTROL_BODY_BYTES: usize = 1024 * 1024;

/// `POST` [`Hello`] → [`HelloReply`] (200) or [`ControlError`] (426).
pub const HELLO_PATH: &str = "/v1/hello";
/// `GET` → [`DaemonStatus`]. Query `after=<revision>&timeout_ms=<ms>`: wait (at most `timeout_ms`, capped at
/// 60 s) until the daemon's state revision is greater than `after`, then answer. Lets scripts and tests wait
/// for a change (a server restart, a config reload) by signal instead of polling.
pub const STATUS_PATH: &str = "/v1/status";
/// `GET` → [`ServerStatus`].
pub const SERVER_PATH: &str = "/v1/server";
/// `POST` (empty body) → [`ServerStatus`]: start the local server if it is not running and wait until it is
/// healthy (or has failed). Idempotent.
pub const SERVER_START_PATH: &str = "/v1/server/start";
/// `POST` [`StopRequest`] → [`ServerStatus`]: stop the local server; returns once the process is gone.
pub const SERVER_STOP_PATH: &str = "/v1/server/stop";
/// `POST` [`StopRequest`] → [`ShutdownReply`]: stop every child (runners, then the server), answer, then exit.
pub const SHUTDOWN_PATH: &str = "/v1/shutdown";
/// `GET`: the targets ([`TargetStatus`]); `POST` an [`AddTarget`] → [`TargetStatus`]. With `persist`, the
/// daemon first appends a `[[targets]]` table to config.toml; if it cannot, the call fails
/// ([`ControlErrorCode::ConfigFailed`]) and nothing is started.
pub const TARGETS_PATH: &str = "/v1/targets";
/// `POST` a [`RemoveTarget`] → [`RemoveTargetReply`].
pub const TARGETS_REMOVE_PATH: &str = "/v1/targets/remove";

/// Set by a CLI that spawns `omnigent daemon run`: the daemon reports readiness as one line on its stdout
/// (a pipe to the CLI): [`NOTIFY_READY`], or [`NOTIFY_FAILED_PREFIX`] followed by the reason.
pub const NOTIFY_ENV: &str = "OMNIGENT_DAEMON_NOTIFY";
/// Value of [`NOTIFY_ENV`] meaning "report on stdout".
pub const NOTIFY_STDOUT: &str = "stdout";
pub const NOTIFY_READY: &str = "ready";
pub const NOTIFY_FAILED_PREFIX: &str = "failed: ";
/// Who started the daemon (`cli`, `systemd`, ...), shown in status.
pub const STARTED_BY_ENV: &str = "OMNIGENT_DAEMON_STARTED_BY";

/// First call of every client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's [`crate::CONTROL_PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The client's [`crate::BUILD_VERSION`].
    pub build_version: String,
}

impl Hello {
    /// The hello this build sends.
    pub fn current() -> Self {
        Hello {
            protocol_version: crate::CONTROL_PROTOCOL_VERSION,
            build_version: crate::BUILD_VERSION.to_owned(),
        }
    }
}

/// The daemon's answer to a compatible [`Hello`] (also embedded in a protocol-mismatch error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub protocol_version: u32,
    pub build_version: String,
    /// The daemon's process id (what a CLI stops when the daemon is incompatible).
    pub pid: u32,
    /// When the daemon started, milliseconds since the Unix epoch.
    #[serde(default)]
    pub started_at_ms: u64,
}

/// Error body of every non-2xx control reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    pub code: ControlErrorCode,
    /// What failed, why, and what to do.
    pub message: String,
    /// Set on [`ControlErrorCode::ProtocolMismatch`]: who the client is talking to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<HelloReply>,
}

/// Machine-readable error codes. Unknown codes from a newer daemon read as [`ControlErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlErrorCode {
    /// The client's protocol version differs from the daemon's (HTTP 426).
    ProtocolMismatch,
    /// Malformed request body or query (400).
    BadRequest,
    /// No such route (404).
    NotFound,
    /// Body over [`MAX_CONTROL_BODY_BYTES`] (413).
    PayloadTooLarge,
    /// The peer runs as another user (403).
    Forbidden,
    /// The daemon is shutting down (503).
    ShuttingDown,
    /// The local server could not be started (500); the message carries the cause and log tail.
    ServerFailed,
    /// config.toml could not be read, parsed or written for a change the client asked for (500); the message
    /// names the file and the cause, and nothing was changed.
    ConfigFailed,
    /// The request's body did not arrive within the daemon's body timeout (408).
    RequestTimeout,
    /// Every control connection the daemon allows is busy (503); retry in a moment.
    Busy,
    /// Anything else (500).
    Internal,
    #[serde(other)]
    Unknown,
}

/// Body of [`SERVER_STOP_PATH`] and [`SHUTDOWN_PATH`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// Skip the SIGTERM grace period: SIGKILL children at once.
    #[serde(default)]
    pub force: bool,
}

/// Answer to [`SHUTDOWN_PATH`], sent after every child is gone; the daemon exits right after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReply {
    /// Processes that were stopped, e.g. `["server pid 123"]`.
    pub stopped: Vec<String>,
    /// The daemon's pid (the client waits for it to be gone).
    pub daemon_pid: u32,
}

/// Answer to [`STATUS_PATH`]: the whole picture, stable for scripts (`omnigent status --json` prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Increases on every state change (server state, config reload). See [`STATUS_PATH`].
    pub revision: u64,
    pub daemon: DaemonInfo,
    pub server: ServerStatus,
    #[serde(default)]
    pub targets: Vec<TargetStatus>,
    #[serde(default)]
    pub runners: Vec<RunnerStatus>,
    pub config: ConfigStatus,
    pub logs: LogPaths,
    /// Each harness as `host.hello`'s `configured_harnesses` reports it (our names; aliases share a row), with
    /// what the probe found of an agent CLI. A plain status call probes the CLIs again first.
    #[serde(default)]
    pub harnesses: Vec<HarnessStatus>,
}

/// One harness in [`DaemonStatus::harnesses`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarnessStatus {
    /// Our name (`claude-sdk`).
    pub name: String,
    pub aliases: Vec<String>,
    /// `true` | `"needs-auth"` | `"binary-missing"`.
    pub configured: serde_json::Value,
    /// An agent CLI's binary, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Its version line, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What to do when it is not configured (the install or login command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub version: String,
    pub protocol_version: u32,
    pub started_at_ms: u64,
    pub uptime_ms: u64,
    /// Who started it: `cli` (spawned by a command), `foreground` (`daemon run --foreground`), `systemd`,
    /// or `manual` (`daemon run` by hand).
    pub started_by: String,
    pub socket: String,
    pub runtime_dir: String,
}

/// Lifecycle of a supervised child (the local server now, runners later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Not running and not wanted.
    Stopped,
    /// Spawned, waiting for its ready line.
    Starting,
    /// Up and answering.
    Running,
    /// Exited unexpectedly; restarting after a backoff delay.
    Backoff,
    /// Exited too often too fast; not restarted until asked (`omnigent server start`).
    Crashloop,
    /// A healthy omnigent-rs server that this daemon did not start answers on the port; used, not supervised.
    Adopted,
    /// Being stopped.
    Stopping,
    #[serde(other)]
    Unknown,
}

/// One exit of a supervised child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildExit {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// How long it had run, in milliseconds.
    pub uptime_ms: u64,
    /// When it exited, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A program other than our server listening on the configured port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignListener {
    pub port: u16,
    /// When the OS tells (Linux /proc, or `lsof`).
    pub pid: Option<u32>,
    pub command: Option<String>,
}

/// The local server as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub state: ChildState,
    pub url: Option<String>,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// `GET /health` answered ok just now (None when not running).
    pub healthy: Option<bool>,
    pub database: Option<String>,
    pub session_count: Option<u64>,
    /// What the server says of its durable writes (`/v1/info`), when it answered. A failing storage is
    /// shown, never cured by a restart: the supervisor leaves the server running.
    #[serde(default)]
    pub storage: Option<crate::api::StorageHealth>,
    /// Restarts after unexpected exits since the daemon started.
    pub restarts: u32,
    /// Most recent exits, oldest first (at most 10).
    #[serde(default)]
    pub last_exits: Vec<ChildExit>,
    /// Last lines of `server.log`, filled when the server is failing (backoff, crashloop).
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// Set when a foreign program holds the configured port.
    pub foreign: Option<ForeignListener>,
    /// The address the server listens on besides loopback when it serves the LAN too (`omnigent start
    /// --lan`: `0.0.0.0`); `None` on loopback only.
    #[serde(default)]
    pub lan_bind: Option<String>,
    /// Every address the server is told to listen on (`--bind` of `omnigent server run`: `127.0.0.1`,
    /// `0.0.0.0`, …), as config.toml's `server.bind` or `OMNIGENT_SERVER_BIND` set it; `None` from an older
    /// daemon.
    #[serde(default)]
    pub bind: Option<String>,
    /// Why the last start failed, if it did.
    pub last_error: Option<String>,
    pub log_file: String,
}

/// A host tunnel's state as `omnigent status` shows it (wire: the lowercase name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    /// Dialling for the first time.
    Connecting,
    /// Serving the server's requests.
    Online,
    /// Lost or refused; retrying.
    Reconnecting,
    /// Gave up for good.
    Failed,
    /// Stopped on request.
    Stopped,
    /// No tunnel (older daemons), or a state this version does not know.
    #[default]
    #[serde(other)]
    None,
}

impl TunnelState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelState::Connecting => "connecting",
            TunnelState::Online => "online",
            TunnelState::Reconnecting => "reconnecting",
            TunnelState::Failed => "failed",
            TunnelState::Stopped => "stopped",
            TunnelState::None => "none",
        }
    }
}

impl std::fmt::Display for TunnelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the wire name (`state == "online"`).
impl PartialEq<&str> for TunnelState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A server this host serves (the local one, remote ones once the host tunnel lands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub url: String,
    /// The host tunnel's state.
    pub tunnel: TunnelState,
    /// The local server (true) or a remote one (`omnigent host URL`, config `targets`).
    #[serde(default)]
    pub local: bool,
    /// Kept in config.toml (restored at boot) rather than added for the life of one `omnigent host`.
    #[serde(default)]
    pub persistent: bool,
    /// Failed dials since the tunnel was last online.
    #[serde(default)]
    pub attempt: u32,
    /// Why the last dial failed, or why the tunnel gave up (`failed`).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Set when the server rejects credentials that used to work (the tunnel keeps retrying).
    #[serde(default)]
    pub warning: Option<String>,
    /// Runners launched for this target.
    #[serde(default)]
    pub runners: u32,
}

/// One runner the daemon supervises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerStatus {
    pub id: String,
    pub pid: Option<u32>,
    pub state: ChildState,
    /// The server URL it serves.
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub harness: Option<String>,
    #[serde(default)]
    pub workspace: String,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub last_exits: Vec<ChildExit>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub log_tail: Vec<String>,
    #[serde(default)]
    pub log_file: String,
}

/// `POST /v1/targets`: add a remote target (register this machine with that server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddTarget {
    pub url: String,
    /// Keep it in config.toml (a `[[targets]]` table), so every later daemon start restores it
    /// (`omnigent host URL --background`). False: for the life of the daemon, or until removed (the
    /// foreground `omnigent host URL`).
    #[serde(default)]
    pub persist: bool,
}

/// `POST /v1/targets/remove`: drop a target added through the API (its runners are stopped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveTarget {
    pub url: String,
    /// Also remove its `[[targets]]` table from config.toml (`omnigent host stop URL`). False: a target kept
    /// in config.toml stays (the foreground `omnigent host URL` on Ctrl-C).
    #[serde(default)]
    pub from_config: bool,
}

/// Reply to a target removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveTargetReply {
    /// It was hosted and no longer is.
    pub removed: bool,
    /// Runners stopped with it.
    #[serde(default)]
    pub runners_stopped: u32,
    /// Its `[[targets]]` table was removed from config.toml.
    #[serde(default)]
    pub removed_from_config: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub path: String,
    /// The last reload error (file, line, column, why); the previous config stays in force.
    pub error: Option<String>,
    /// Number of successful loads since the daemon started (1 after boot).
    pub loads: u64,
    pub host_id: String,
    pub host_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPaths {
    pub dir: String,
    pub daemon: String,
    pub server: String,
}

/// The one line `omnigent server run` prints on stdout once it accepts connections (the daemon waits for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerReady {
    pub ready: bool,
    pub url: String,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub database: Option<String>,
}

/// `server.json` in the runtime dir: the local server the daemon runs (or adopted). Written atomically when
/// the server is up, removed when it is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub url: String,
    pub port: u16,
    pub pid: Option<u32>,
    #[serde(default)]
    pub database: Option<String>,
    /// True when the daemon found this server already running and did not start it.
    #[serde(default)]
    pub adopted: bool,
    pub daemon_pid: u32,
    #[serde(default)]
    pub started_at_ms: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_states_keep_their_wire_names_and_an_unknown_one_is_none() {
        for (state, wire) in [
            (TunnelState::Connecting, "connecting"),
            (TunnelState::Online, "online"),
            (TunnelState::Reconnecting, "reconnecting"),
            (TunnelState::Failed, "failed"),
            (TunnelState::Stopped, "stopped"),
            (TunnelState::None, "none"),
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), wire);
            let back: TunnelState = serde_json::from_value(wire.into()).unwrap();
            assert_eq!(back, state);
            assert_eq!(state, wire);
        }
        let later: TunnelState = serde_json::from_str(r#""paused""#).unwrap();
        assert_eq!(later, TunnelState::None);
    }

    #[test]
    fn hello_round_trips_and_ignores_extra_fields() {
        let h = Hello::current();
        let back: Hello = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        let r: HelloReply = serde_json::from_str(
            r#"{"protocol_version":7,"build_version":"9.9.9","pid":4,"future":true}"#,
        )
        .unwrap();
        assert_eq!(r.pid, 4);
        assert_eq!(r.started_at_ms, 0);
    }

    #[test]
    fn unknown_error_codes_and_states_do_not_fail_parsing() {
        let e: ControlError =
            serde_json::from_str(r#"{"code":"brand_new","message":"m"}"#).unwrap();
        assert_eq!(e.code, ControlErrorCode::Unknown);
        let s: ChildState = serde_json::from_str(r#""hibernating""#).unwrap();
        assert_eq!(s, ChildState::Unknown);
        let e = ControlError {
            code: ControlErrorCode::ProtocolMismatch,
            message: "x".into(),
            daemon: Some(HelloReply {
                protocol_version: 2,
                build_version: "1".into(),
                pid: 1,
                started_at_ms: 0,
            }),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["code"], "protocol_mismatch");
        assert_eq!(v["daemon"]["protocol_version"], 2);
    }

    #[test]
    fn target_requests_from_older_clients_neither_persist_nor_touch_config() {
        let add: AddTarget = serde_json::from_str(r#"{"url":"http://a"}"#).unwrap();
        assert!(!add.persist);
        let remove: RemoveTarget = serde_json::from_str(r#"{"url":"http://a"}"#).unwrap();
        assert!(!remove.from_config);
        let reply: RemoveTargetReply =
            serde_json::from_str(r#"{"removed":true,"runners_stopped":2}"#).unwrap();
        assert!(!reply.removed_from_config);
        let e: ControlError =
            serde_json::from_str(r#"{"code":"config_failed","message":"m"}"#).unwrap();
        assert_eq!(e.code, ControlErrorCode::ConfigFailed);
    }

    #[test]
    fn stop_request_defaults_to_graceful() {
        let r: StopRequest = serde_json::from_str("{}").unwrap();
        assert!(!r.force);
    }
}
