//! The public HTTP API (clients ⇄ server), omnigent-compatible (reference omnigent-server-v1.md §1, wire
//! 0.19.1 "Client API"). Ids on the wire are bare 32-hex; legacy prefixed ids are accepted on input
//! (see [`crate::ids::canonical_id`]).
//!
//! Fields we add are additive and marked "ours"; an omnigent client ignores them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Default cap on a JSON request body (1 MiB), checked before the body is buffered.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default and largest page sizes (reference §1 "Pagination envelope").
pub const DEFAULT_SESSIONS_LIMIT: u32 = 20;
pub const DEFAULT_ITEMS_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1000;

// ---------------------------------------------------------------------------------------------------------
// Errors

/// Error codes and the HTTP status each one maps to (omnigent `errors.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidInput,
    WrongReplica,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    AlreadyExists,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    WorkspaceMissing,
    HarnessNotConfigured,
    InternalError,
    HarnessProtocolViolation,
    RunnerUnavailable,
    RunnerCapabilityMismatch,
    /// Ours: the `Host` the request was sent to is not a name this server answers to (DNS rebinding
    /// defence); 421 Misdirected Request.
    MisdirectedRequest,
    /// Ours: a durable write failed because the file system holding the database is full (507).
    StorageFull,
    /// Ours: a durable write failed for another storage reason (I/O error, read-only, corrupt; 503).
    StorageUnavailable,
    /// Ours: a request from off this machine without a valid device token (401); the message says how to pair.
    Unauthenticated,
    /// Ours: a pairing code that is wrong, used or expired (404, the same answer for all three).
    PairingCodeInvalid,
    /// Ours: too many wrong pairing codes from one address (429).
    TooManyAttempts,
    /// An approval answered after another answer won (409; [`crate::elicitation`]).
    AlreadyResolved,
}

impl ErrorCode {
    /// The HTTP status for this code. `method_not_allowed`, `misdirected_request`, `payload_too_large` and
    /// `unsupported_media_type` are ours (405, 421, 413, 415).
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidInput | ErrorCode::WrongReplica => 400,
            ErrorCode::Unauthorized | ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound | ErrorCode::PairingCodeInvalid => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::AlreadyExists | ErrorCode::Conflict | ErrorCode::AlreadyResolved => 409,
            ErrorCode::WorkspaceMissing => 410,
            ErrorCode::HarnessNotConfigured => 412,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::MisdirectedRequest => 421,
            ErrorCode::TooManyAttempts => 429,
            ErrorCode::InternalError | ErrorCode::HarnessProtocolViolation => 500,
            ErrorCode::RunnerUnavailable
            | ErrorCode::RunnerCapabilityMismatch
            | ErrorCode::StorageUnavailable => 503,
            ErrorCode::StorageFull => 507,
        }
    }
}

/// `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// Ours, on 403 `forbidden` from the role check: the role that would be needed (`driver`, `owner`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_role: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Lists

/// The pagination envelope shared by every list endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListEnvelope<T> {
    /// Always `"list"`.
    pub object: String,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T> ListEnvelope<T> {
    /// Wrap one page; `id` reads the id of an element for `first_id`/`last_id`.
    pub fn new(data: Vec<T>, has_more: bool, id: impl Fn(&T) -> &str) -> Self {
        ListEnvelope {
            object: "list".to_owned(),
            first_id: data.first().map(|t| id(t).to_owned()),
            last_id: data.last().map(|t| id(t).to_owned()),
            data,
            has_more,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Asc,
    #[default]
    Desc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    #[default]
    CreatedAt,
    UpdatedAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKindFilter {
    #[default]
    Default,
    SubAgent,
    Any,
}

/// Query of `GET /v1/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionListQuery {
    pub limit: Option<u32>,
    pub after: Option<String>,
    pub before: Option<String>,
    pub order: Option<Order>,
    pub sort_by: Option<SortBy>,
    pub search_query: Option<String>,
    pub include_archived: Option<bool>,
    pub kind: Option<SessionKindFilter>,
    pub agent_id: Option<String>,
}

/// Query of `GET /v1/sessions/{id}/items` and `GET /v1/agents` (default order `asc` for items).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub after: Option<String>,
    pub before: Option<String>,
    pub order: Option<Order>,
}

// ---------------------------------------------------------------------------------------------------------
// Health, info, me

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionLiveness>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<BTreeMap<String, Liveness>>,
    /// Ours, only while durable writes fail (`status` is then `"degraded"`). The answer stays 200:
    /// `/health` is what supervisors restart on, and a restart does not free a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageHealth>,
}

/// Ours: the state of the server's durable writes (`/health`, `/v1/info`, `omnigent status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageHealth {
    /// The last durable write succeeded (or none has failed).
    pub ok: bool,
    /// While failing: `storage_full` or `storage_unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// While failing: the error of the last failed write (names the file system and its free space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// While failing: when the first write of this run of failures failed, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<i64>,
    /// Free bytes on the file system holding the database, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionLiveness {
    pub id: String,
    #[serde(flatten)]
    pub liveness: Liveness,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Liveness {
    pub runner_online: bool,
    pub host_online: Option<bool>,
    pub host_version: Option<String>,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub accounts_enabled: bool,
    pub single_user: bool,
    pub login_url: Option<String>,
    pub needs_setup: bool,
    pub sharing_mode: String,
    pub server_version: String,
    pub features: Map<String, Value>,
    /// Ours: `"omnigent-rs"`, so the daemon recognises its own server on a port.
    #[serde(default)]
    pub implementation: Option<String>,
    /// Ours.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Ours: the SQLite path or a redacted database URL.
    #[serde(default)]
    pub database: Option<String>,
    /// Ours: epoch seconds.
    #[serde(default)]
    pub started_at: Option<i64>,
    /// Ours.
    #[serde(default)]
    pub session_count: Option<u64>,
    /// Ours: whether durable writes are succeeding (this answer stays 200 while they fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageHealth>,
    /// Ours (issue 13): whether this caller needs a device token, the roles, and who the caller is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::auth::AuthInfo>,
}

/// What `implementation` says for this server.
pub const IMPLEMENTATION: &str = "omnigent-rs";

/// `GET /v1/me`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Me {
    pub user_id: Option<String>,
    pub is_admin: bool,
}

// ---------------------------------------------------------------------------------------------------------
// Agents, hosts, runners

/// One agent of `GET /v1/agents` (and `GET /v1/agents/{id}`): a built-in one, or one a bundle upload created
/// (those carry `version` and `session_scoped`; the built-ins leave them out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub object: String,
    pub name: String,
    pub description: String,
    pub created_at: i64,
    /// The harness name as the spec wrote it (`openai-agents`, `claude-sdk`, …) or the built-in's.
    pub harness: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `true` for the agent of a multipart `POST /v1/sessions` (it belongs to that one session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_scoped: Option<bool>,
}

/// `GET /v1/runners`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunnerList {
    pub data: Vec<RunnerInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerInfo {
    pub runner_id: String,
    pub online: bool,
    #[serde(default)]
    pub harnesses: Vec<String>,
}

/// `GET /v1/hosts`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostList {
    pub hosts: Vec<HostInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub host_id: String,
    pub name: String,
    pub owner: Option<String>,
    pub status: String,
    #[serde(default)]
    pub sandbox_provider: Option<String>,
    #[serde(default)]
    pub configured_harnesses: Map<String, Value>,
    #[serde(default)]
    pub gateway_inference: Option<Value>,
}

// ---------------------------------------------------------------------------------------------------------
// Sessions

/// `git` of a create request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitSpec {
    pub branch_name: String,
    #[serde(default)]
    pub base_branch: Option<String>,
}

/// `POST /v1/sessions` (JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionCreateRequest {
    pub agent_id: Option<String>,
    pub initial_items: Vec<SessionEventInput>,
    pub title: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub host_id: Option<String>,
    pub workspace: Option<String>,
    pub git: Option<GitSpec>,
    pub terminal_launch_args: Option<Vec<String>>,
    pub model_override: Option<String>,
    pub reasoning_effort: Option<String>,
    pub parent_session_id: Option<String>,
    pub sub_agent_name: Option<String>,
    pub host_type: Option<String>,
}

/// `PATCH /v1/sessions/{id}`: absent fields are left alone; `null` clears a nullable field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionPatchRequest {
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Merged into the existing labels; a `null` value removes the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, Option<String>>>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<Option<String>>,
    /// `"default"`, `"off"` or `"reset"` (or `null`) clear it.
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub model_override: Option<Option<String>>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub cost_control_mode_override: Option<Option<String>>,
    /// Write-once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_session_id: Option<String>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub terminal_launch_args: Option<Option<Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
}

/// Deserialize a field that was present (possibly `null`) as `Some(inner)`, so that "absent" (the
/// `#[serde(default)]` `None`) and "explicitly null" (`Some(None)`) differ.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `201` of a multipart `POST /v1/sessions` (an uploaded agent bundle): only the new session's id, as 0.19.1
/// answers; its session-scoped agent's id is in `GET /v1/sessions/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSessionCreated {
    pub session_id: String,
}

/// `DELETE /v1/sessions/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionDeleted {
    pub id: String,
    pub deleted: bool,
}

/// `POST /v1/sessions/{id}/fork`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForkRequest {
    pub title: Option<String>,
    pub up_to_response_id: Option<String>,
}

/// `POST /v1/sessions/{id}/events` body (and each of `initial_items`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEventInput {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "empty_object")]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_override: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// The 202 answer of `POST …/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventAccepted {
    pub queued: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
}

/// Session status as the snapshot and list report it (`waiting` is live-only in practice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    #[default]
    Idle,
    Launching,
    Running,
    Waiting,
    Failed,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Idle => "idle",
            SessionStatus::Launching => "launching",
            SessionStatus::Running => "running",
            SessionStatus::Waiting => "waiting",
            SessionStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "idle" => SessionStatus::Idle,
            "launching" => SessionStatus::Launching,
            "running" => SessionStatus::Running,
            "waiting" => SessionStatus::Waiting,
            "failed" => SessionStatus::Failed,
            _ => return None,
        })
    }
}

/// One entry of `GET /v1/sessions` (reference §7: the fields the sidebar needs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionListItem {
    pub id: String,
    pub agent_id: String,
    pub agent_name: Option<String>,
    pub status: SessionStatus,
    pub created_at: i64,
    pub updated_at: i64,
    pub title: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub runner_id: Option<String>,
    pub host_id: Option<String>,
    pub runner_online: bool,
    pub host_online: Option<bool>,
    pub workspace: Option<String>,
    pub archived: bool,
    pub pending_elicitations_count: u32,
    pub parent_session_id: Option<String>,
    /// Ours (`default` or `sub_agent`); absent from a 0.19.1 entry.
    #[serde(default)]
    pub kind: String,
    pub sub_agent_name: Option<String>,
    /// The reader's "last seen" baseline (`PUT …/read-state`), epoch seconds; `null` when never set.
    #[serde(default)]
    pub viewer_last_seen: Option<i64>,
    /// The reader marked the session unread.
    #[serde(default)]
    pub viewer_unread: bool,
}

/// `GET /v1/sessions/{id}`, and the answer of create, patch and fork.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionResponse {
    pub id: String,
    pub agent_id: String,
    pub agent_name: Option<String>,
    pub status: SessionStatus,
    pub created_at: i64,
    pub updated_at: i64,
    pub title: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub runner_id: Option<String>,
    pub host_id: Option<String>,
    pub workspace: Option<String>,
    pub runner_online: Option<bool>,
    pub host_online: Option<bool>,
    pub reasoning_effort: Option<String>,
    pub items: Vec<SnapshotItem>,
    pub sub_agent_name: Option<String>,
    pub kind: String,
    pub parent_session_id: Option<String>,
    pub root_conversation_id: String,
    pub harness: Option<String>,
    pub model_override: Option<String>,
    pub cost_control_mode_override: Option<String>,
    pub external_session_id: Option<String>,
    pub terminal_launch_args: Option<Vec<String>>,
    pub pending_elicitations: Vec<Value>,
    pub pending_inputs: Vec<Value>,
    pub git_branch: Option<String>,
    pub archived: bool,
    pub todos: Vec<Value>,
    pub terminal_pending: bool,
}

/// A conversation item as `GET …/items` returns it: flat, the item's data fields beside its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireItem {
    pub id: String,
    pub response_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub created_at: i64,
    /// The item's own fields (`role`, `content`, `call_id`, `output`, `model`…).
    #[serde(flatten)]
    pub data: Map<String, Value>,
}

/// A conversation item as the session snapshot embeds it: the data nested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotItem {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub response_id: Option<String>,
    pub created_at: i64,
    pub data: Map<String, Value>,
    pub created_by: Option<String>,
}

impl From<SnapshotItem> for WireItem {
    fn from(item: SnapshotItem) -> Self {
        WireItem {
            id: item.id,
            response_id: item.response_id,
            kind: item.kind,
            status: item.status,
            created_at: item.created_at,
            data: item.data,
        }
    }
}
