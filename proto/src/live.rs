//! What a live web client needs beyond sessions and items (reference omnigent-server-v1.md §1.2, §7): the
//! session-list WebSocket (`WS /v1/sessions/updates`), read state, project folders and their order, the
//! harness / extension / skill catalogs, sub-agent summaries and who is watching a session.
//!
//! Shapes are the ones a 0.19.1 server answers with (captured in `tests/golden/omnigent-0.19.1-live-api.json`);
//! fields we add are marked "ours".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::SessionListItem;

// ---------------------------------------------------------------------------------------------------------
// WS /v1/sessions/updates

/// Most session ids one `watch` may name; the ids past it are dropped (0.19.1 `_SESSION_UPDATES_MAX_WATCHED`).
pub const MAX_WATCHED: usize = 500;
/// A `heartbeat` is sent after this long without any other frame (0.19.1: 30 s).
pub const UPDATES_HEARTBEAT_SECS: u64 = 30;
/// Watched rows are re-read this often, to catch what no change notice announced (0.19.1: 4 s).
pub const UPDATES_RESCAN_SECS: u64 = 4;
/// Largest frame a client may send on the updates socket (500 ids of 32 hex are ~18 KiB).
pub const MAX_UPDATES_FRAME_BYTES: usize = 64 * 1024;

/// A frame the client sends: `{"type":"watch","session_ids":[…]}`, re-sent whenever the visible set changes
/// (it replaces the previous set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UpdatesClientFrame {
    Watch { session_ids: Vec<String> },
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UpdatesServerFrame {
    /// Once per `watch`: the watched sessions that exist (unknown ids are left out, as in 0.19.1).
    Snapshot { items: Vec<SessionListItem> },
    /// Watched sessions that changed, and sessions created elsewhere that the client does not watch yet.
    Changed { items: Vec<SessionListItem> },
    /// Watched sessions that were deleted.
    Removed { ids: Vec<String> },
    /// Nothing else was sent for [`UPDATES_HEARTBEAT_SECS`].
    Heartbeat,
    /// Ours: a frame from the client was not understood, or was cut down (more than [`MAX_WATCHED`] ids).
    /// 0.19.1 drops such frames silently; the socket stays open either way.
    Error { code: String, message: String },
}

// ---------------------------------------------------------------------------------------------------------
// Read state, projects

/// `PUT /v1/sessions/{id}/read-state` (answered with 204). Stored as given: the client owns its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadStatePut {
    /// Wall-clock "last seen" baseline, epoch seconds.
    pub last_seen: i64,
    /// Explicitly marked unread.
    pub unread: bool,
}

/// The label that files a session into a project folder (0.19.1's label-projects).
pub const PROJECT_LABEL: &str = "omni_project";

/// One entry of `GET /v1/sessions/projects` (a bare JSON array of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectSummary {
    /// First-class project id; always `null` here (only label-projects exist).
    pub id: Option<String>,
    pub name: String,
    pub icon: Option<String>,
}

/// `alphabetical` or `manual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectSortMode {
    #[default]
    Alphabetical,
    Manual,
}

/// `GET|PUT /v1/projects/order` answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProjectOrder {
    pub sort_mode: ProjectSortMode,
    /// The manual order, kept while in alphabetical mode once one was saved; `null` before that.
    pub ordered_project_ids: Option<Vec<String>>,
}

/// `PUT /v1/projects/order` body. `ordered_project_ids` is required; `null` selects alphabetical order and
/// keeps the remembered manual order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectOrderRequest {
    #[serde(deserialize_with = "required_nullable")]
    pub ordered_project_ids: Option<Vec<String>>,
}

/// Most ids a project order may hold (0.19.1).
pub const MAX_PROJECT_ORDER: usize = 10_000;

fn required_nullable<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    Option::<Vec<String>>::deserialize(d)
}

// ---------------------------------------------------------------------------------------------------------
// Catalogs

/// `GET /v1/harnesses`: the harnesses a session may be created with, and setup steps by every spelling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarnessCatalog {
    pub data: Vec<HarnessEntry>,
    pub setup_steps: BTreeMap<String, Vec<SetupStep>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarnessEntry {
    pub id: String,
    pub label: String,
    /// 0.19.1's capability vocabulary (`integration_mode`, `interrupt`, `streaming`, …).
    pub capabilities: Map<String, Value>,
    pub setup_steps: Vec<SetupStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupStep {
    pub kind: String,
    pub title: String,
    pub detail: String,
    pub action: String,
    pub command: Option<String>,
    pub status_key: Option<String>,
}

/// `GET /v1/extensions`: `{"object":"list","data":[]}` (no extensions are loaded by this server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtensionList {
    pub object: String,
    pub data: Vec<Value>,
}

/// `GET /v1/skills`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SkillsResponse {
    pub skills: Vec<SkillSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkillSummary {
    pub name: String,
    pub description: String,
    pub display_name: Option<String>,
}

/// `GET /v1/skills` query: `session_id` alone, or `host_id` + `harness` + `path` (+ `agent_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SkillsQuery {
    pub session_id: Option<String>,
    pub host_id: Option<String>,
    pub harness: Option<String>,
    pub path: Option<String>,
    pub agent_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Sub-agents

/// One entry of `GET /v1/sessions/{id}/child_sessions` (a list envelope of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildSessionSummary {
    pub id: String,
    /// Always `"child_session"`.
    pub object: String,
    pub parent_session_id: String,
    pub title: Option<String>,
    pub task_summary: Option<String>,
    pub tool: Option<String>,
    pub session_name: Option<String>,
    pub kind: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub current_task_id: Option<String>,
    pub current_task_status: Option<String>,
    pub busy: bool,
    pub labels: BTreeMap<String, String>,
    pub last_task_error: Option<BTreeMap<String, String>>,
    pub last_message_preview: Option<String>,
    pub pending_elicitations_count: u32,
    pub routed_model: Option<String>,
    pub routing_decision_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Presence

/// Ours: one open `GET …/stream` of a session, in `session.presence` (`connections`). 0.19.1 lists distinct
/// signed-in users in `viewers` and never the single-user `local`, so a local server's `viewers` stays empty
/// and the connections say who is watching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceConnection {
    /// Minted by the server per stream, e.g. `c3`.
    pub connection_id: String,
    /// ISO 8601 UTC, e.g. `2026-06-10T17:00:00Z`.
    pub joined_at: String,
    /// The stream was opened with `?idle=true` (a backgrounded tab).
    pub idle: bool,
    /// Ours (issue 13): the paired device behind the stream; `null` for the owner on this machine.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Ours: the device's name (`"this computer"` for the owner on loopback).
    #[serde(default)]
    pub device_name: String,
    /// Ours: what that device may do (`viewer`, `driver`, `host`, `owner`).
    #[serde(default = "owner_role")]
    pub role: crate::auth::Role,
}

fn owner_role() -> crate::auth::Role {
    crate::auth::Role::Owner
}
