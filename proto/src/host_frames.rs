//! Host tunnel v1 frames (daemon ⇄ server, `ws(s)://<server>/v1/hosts/{host_id}/tunnel`), omnigent-compatible.
//!
//! JSON text frames tagged by `kind` (reference/omnigent-host-v1.md §5.2; what 0.19.1 really sends is in
//! omnigent-wire-0.19.1.md "Host tunnel"). Requests and their results are correlated by `request_id`.
//! Every struct keeps the fields it does not model in `extra`, so a frame re-encodes exactly as it came and a
//! newer peer's additions pass through. Kinds we do not know decode to [`HostFrame::Unknown`] and are skipped.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Close codes on the host tunnel (server → host).
pub mod close {
    /// The host id in the path is not a UUID.
    pub const INVALID_HOST_ID: u16 = 4003;
    /// The first frame was not `host.hello`.
    pub const HELLO_EXPECTED: u16 = 4001;
    /// `frame_protocol_version` is not ours.
    pub const PROTOCOL_MISMATCH: u16 = 4002;
    /// Authentication failed.
    pub const UNAUTHENTICATED: u16 = 4004;
    /// The upgrade carried an `Origin` that may not open a tunnel (a browser page): refused before any frame.
    pub const FORBIDDEN_ORIGIN: u16 = 4403;
    /// Registration failed after accept (retryable).
    pub const REGISTRATION_FAILED: u16 = 4005;
    /// The host id belongs to another owner.
    pub const OWNER_CONFLICT: u16 = 4009;
    /// A newer connection for the same host replaced this one.
    pub const REPLACED: u16 = 4000;
    /// The host sent nothing for the liveness budget (90 s): reason `"ping timeout"`.
    pub const PING_TIMEOUT: u16 = 4003;
    /// The peer goes away (server restart): reconnect at once.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame above the size cap.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Service restart: reconnect at once.
    pub const SERVICE_RESTART: u16 = 1012;
}

/// Every host tunnel frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum HostFrame {
    #[serde(rename = "host.hello")]
    Hello(HostHello),
    #[serde(rename = "host.connection_error")]
    ConnectionError(ConnectionError),
    #[serde(rename = "host.harness_readiness")]
    HarnessReadiness(HarnessReadiness),
    #[serde(rename = "host.launch_runner")]
    LaunchRunner(LaunchRunner),
    #[serde(rename = "host.launch_runner_result")]
    LaunchRunnerResult(LaunchRunnerResult),
    #[serde(rename = "host.stop_runner")]
    StopRunner(RunnerRef),
    #[serde(rename = "host.stop_runner_result")]
    StopRunnerResult(StatusResult),
    #[serde(rename = "host.runner_status")]
    RunnerStatus(RunnerRef),
    #[serde(rename = "host.runner_status_result")]
    RunnerStatusResult(StatusResult),
    #[serde(rename = "host.runner_exited")]
    RunnerExited(RunnerExited),
    #[serde(rename = "host.stat")]
    Stat(PathRequest),
    #[serde(rename = "host.stat_result")]
    StatResult(StatResult),
    #[serde(rename = "host.list_dir")]
    ListDir(ListDir),
    #[serde(rename = "host.list_dir_result")]
    ListDirResult(ListDirResult),
    #[serde(rename = "host.create_dir")]
    CreateDir(PathRequest),
    #[serde(rename = "host.create_dir_result")]
    CreateDirResult(CreateDirResult),
    #[serde(rename = "ping")]
    Ping(Ping),
    #[serde(rename = "pong")]
    Pong(Ping),
    /// A kind this build does not know (worktrees, secrets, model options…): skipped, never fatal.
    #[serde(other)]
    Unknown,
}

impl HostFrame {
    /// Decode one text frame. `Err` is a malformed frame (not JSON, no `kind`, a known kind with wrong fields):
    /// the caller logs and skips it. Size is checked by the caller against [`crate::MAX_FRAME_BYTES`] first.
    pub fn decode(text: &str) -> Result<HostFrame, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Decode one text frame, refusing it before parsing when it is larger than `cap` bytes.
    pub fn decode_capped(text: &str, cap: usize) -> Result<HostFrame, HostFrameError> {
        if text.len() > cap {
            return Err(HostFrameError::TooLarge {
                size: text.len(),
                cap,
            });
        }
        Ok(Self::decode(text)?)
    }

    /// The wire `kind` (`"unknown"` for [`HostFrame::Unknown`]).
    pub fn kind(&self) -> &'static str {
        match self {
            HostFrame::Hello(_) => "host.hello",
            HostFrame::ConnectionError(_) => "host.connection_error",
            HostFrame::HarnessReadiness(_) => "host.harness_readiness",
            HostFrame::LaunchRunner(_) => "host.launch_runner",
            HostFrame::LaunchRunnerResult(_) => "host.launch_runner_result",
            HostFrame::StopRunner(_) => "host.stop_runner",
            HostFrame::StopRunnerResult(_) => "host.stop_runner_result",
            HostFrame::RunnerStatus(_) => "host.runner_status",
            HostFrame::RunnerStatusResult(_) => "host.runner_status_result",
            HostFrame::RunnerExited(_) => "host.runner_exited",
            HostFrame::Stat(_) => "host.stat",
            HostFrame::StatResult(_) => "host.stat_result",
            HostFrame::ListDir(_) => "host.list_dir",
            HostFrame::ListDirResult(_) => "host.list_dir_result",
            HostFrame::CreateDir(_) => "host.create_dir",
            HostFrame::CreateDirResult(_) => "host.create_dir_result",
            HostFrame::Ping(_) => "ping",
            HostFrame::Pong(_) => "pong",
            HostFrame::Unknown => "unknown",
        }
    }

    /// The `request_id` of a request or a result; `None` for the other kinds.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            HostFrame::LaunchRunner(f) => Some(&f.request_id),
            HostFrame::LaunchRunnerResult(f) => Some(&f.request_id),
            HostFrame::StopRunner(f) | HostFrame::RunnerStatus(f) => Some(&f.request_id),
            HostFrame::StopRunnerResult(f) | HostFrame::RunnerStatusResult(f) => {
                Some(&f.request_id)
            }
            HostFrame::Stat(f) | HostFrame::CreateDir(f) => Some(&f.request_id),
            HostFrame::StatResult(f) => Some(&f.request_id),
            HostFrame::ListDir(f) => Some(&f.request_id),
            HostFrame::ListDirResult(f) => Some(&f.request_id),
            HostFrame::CreateDirResult(f) => Some(&f.request_id),
            HostFrame::Hello(_)
            | HostFrame::ConnectionError(_)
            | HostFrame::HarnessReadiness(_)
            | HostFrame::RunnerExited(_)
            | HostFrame::Ping(_)
            | HostFrame::Pong(_)
            | HostFrame::Unknown => None,
        }
    }

    /// For a server → host request, set its `request_id` and return the kind of the result that answers it;
    /// `None` (frame untouched) for every other kind.
    pub fn prepare_request(&mut self, id: &str) -> Option<&'static str> {
        let (slot, result) = match self {
            HostFrame::LaunchRunner(f) => (&mut f.request_id, "host.launch_runner_result"),
            HostFrame::StopRunner(f) => (&mut f.request_id, "host.stop_runner_result"),
            HostFrame::RunnerStatus(f) => (&mut f.request_id, "host.runner_status_result"),
            HostFrame::Stat(f) => (&mut f.request_id, "host.stat_result"),
            HostFrame::ListDir(f) => (&mut f.request_id, "host.list_dir_result"),
            HostFrame::CreateDir(f) => (&mut f.request_id, "host.create_dir_result"),
            HostFrame::Hello(_)
            | HostFrame::ConnectionError(_)
            | HostFrame::HarnessReadiness(_)
            | HostFrame::LaunchRunnerResult(_)
            | HostFrame::StopRunnerResult(_)
            | HostFrame::RunnerStatusResult(_)
            | HostFrame::RunnerExited(_)
            | HostFrame::StatResult(_)
            | HostFrame::ListDirResult(_)
            | HostFrame::CreateDirResult(_)
            | HostFrame::Ping(_)
            | HostFrame::Pong(_)
            | HostFrame::Unknown => return None,
        };
        id.clone_into(slot);
        Some(result)
    }

    /// Encode as a text frame. Serialising these types cannot fail (string keys, no non-finite floats).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a host frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum HostFrameError {
    #[error("host frame of {size} bytes exceeds the {cap}-byte cap")]
    TooLarge { size: usize, cap: usize },
    #[error("malformed host frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// First frame from a host (`host.hello`). The server answers nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostHello {
    pub version: String,
    pub frame_protocol_version: u32,
    pub name: String,
    /// Runner ids still alive on this host (non-empty on reconnect).
    #[serde(default)]
    pub runners: Vec<String>,
    /// harness name → `true` | `false` | `"needs-auth"` | `"binary-missing"`.
    #[serde(default)]
    pub configured_harnesses: Option<Map<String, Value>>,
    #[serde(default)]
    pub gateway_inference: Option<Map<String, Value>>,
    #[serde(default)]
    pub telemetry_opt_out: bool,
    #[serde(default)]
    pub installation_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host.connection_error`: the server refuses or drops the host. `retryable: false` is fatal (exit 78).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionError {
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub retryable: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host.harness_readiness`: sent when the host's harness readiness changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarnessReadiness {
    #[serde(default)]
    pub configured_harnesses: Option<Map<String, Value>>,
    #[serde(default)]
    pub gateway_inference: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host.launch_runner`: start a runner bound to `binding_token`, cwd `workspace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchRunner {
    pub request_id: String,
    pub binding_token: String,
    pub workspace: String,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub harness: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Why a host refused a `host.launch_runner` (reference host §4.1): the `error_code` of a failed
/// `host.launch_runner_result`, by its wire name [`LaunchErrorCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchErrorCode {
    /// The harness named is not one this host knows.
    HarnessNotConfigured,
    /// The workspace is not a directory on the host.
    WorkspaceMissing,
}

impl LaunchErrorCode {
    pub const ALL: [LaunchErrorCode; 2] = [
        LaunchErrorCode::HarnessNotConfigured,
        LaunchErrorCode::WorkspaceMissing,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LaunchErrorCode::HarnessNotConfigured => "harness_not_configured",
            LaunchErrorCode::WorkspaceMissing => "workspace_missing",
        }
    }

    /// The code of a wire name; `None` for a code this version does not know.
    pub fn parse(code: &str) -> Option<LaunchErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

/// `host.launch_runner_result`. `status` is `"launched"` or `"failed"`; `error_code` is a
/// [`LaunchErrorCode`] wire name on failure (kept as a string: a peer may send codes we do not know).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchRunnerResult {
    pub request_id: String,
    pub status: String,
    #[serde(default)]
    pub runner_id: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host.stop_runner` and `host.runner_status`: a request about one runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerRef {
    pub request_id: String,
    pub runner_id: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host.stop_runner_result` (`"stopped"` | `"failed"`) and `host.runner_status_result`
/// (`"alive"` | `"dead"` | `"unknown"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResult {
    pub request_id: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host.runner_exited`: unsolicited, no reply. `error` carries the exit code and the log tail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerExited {
    pub runner_id: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host.stat` and `host.create_dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathRequest {
    pub request_id: String,
    pub path: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host.stat_result`. `type` (follows symlinks) is `"directory"`, `"file"` or `"other"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatResult {
    pub request_id: String,
    pub status: String,
    #[serde(default)]
    pub exists: bool,
    #[serde(rename = "type", default)]
    pub file_type: Option<String>,
    #[serde(default)]
    pub canonical_path: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host.list_dir`: one page of a directory, `limit` entries (20 by default, at most 1000).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListDir {
    pub request_id: String,
    pub path: String,
    #[serde(default = "default_list_limit")]
    pub limit: u32,
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub before: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_list_limit() -> u32 {
    20
}

/// One entry of a `host.list_dir_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub file_type: String,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub modified_at: Option<f64>,
}

/// `host.list_dir_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListDirResult {
    pub request_id: String,
    pub status: String,
    #[serde(default)]
    pub entries: Vec<DirEntry>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host.create_dir_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateDirResult {
    pub request_id: String,
    pub status: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `ping` / `pong` (shared with the runner tunnel): `ts` in epoch ms; a pong echoes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    #[serde(default)]
    pub ts: i64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_error_codes_have_their_wire_names() {
        for code in LaunchErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).expect("serializes"),
                code.as_str()
            );
            assert_eq!(LaunchErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(
            LaunchErrorCode::HarnessNotConfigured.as_str(),
            "harness_not_configured"
        );
        assert_eq!(LaunchErrorCode::parse("something_new"), None);
    }

    #[test]
    fn unknown_kinds_are_skipped_not_fatal() {
        let frame = HostFrame::decode(r#"{"kind":"host.install_harness","request_id":"1"}"#);
        assert_eq!(frame.ok(), Some(HostFrame::Unknown));
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(HostFrame::decode("not json").is_err());
        assert!(HostFrame::decode(r#"{"no_kind":1}"#).is_err());
        assert!(HostFrame::decode(r#"{"kind":"host.launch_runner"}"#).is_err());
    }

    #[test]
    fn requests_get_their_id_and_name_their_result_kind() {
        let mut frame = HostFrame::decode(r#"{"kind":"host.stat","request_id":"","path":"/"}"#)
            .expect("valid stat");
        assert_eq!(
            frame.prepare_request("0123456789abcdef"),
            Some("host.stat_result")
        );
        assert_eq!(frame.request_id(), Some("0123456789abcdef"));
        assert_eq!(frame.kind(), "host.stat");
        let mut ping = HostFrame::Ping(Ping {
            ts: 1,
            extra: Map::new(),
        });
        assert_eq!(ping.prepare_request("x"), None);
        assert_eq!(ping.request_id(), None);
        let big = format!(r#"{{"kind":"ping","pad":"{}"}}"#, "x".repeat(64));
        assert!(matches!(
            HostFrame::decode_capped(&big, 16),
            Err(HostFrameError::TooLarge { cap: 16, .. })
        ));
        assert!(matches!(
            HostFrame::decode_capped("nope", 16),
            Err(HostFrameError::Malformed(_))
        ));
    }

    #[test]
    fn list_dir_limit_defaults_to_20() {
        let frame = HostFrame::decode(r#"{"kind":"host.list_dir","request_id":"r","path":"/"}"#);
        match frame {
            Ok(HostFrame::ListDir(req)) => assert_eq!(req.limit, 20),
            other => panic!("unexpected {other:?}"),
        }
    }
}
