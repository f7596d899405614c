//! Approvals: an agent asks a person before it uses a tool (Claude Code's permission prompts, Codex's approval
//! requests), every client of the session sees the question, and the first answer wins (issue 15 item 6).
//!
//! The shapes are MCP's elicitation, as omnigent 0.19.1 carries them (reference §2.3
//! `response.elicitation_request` / `response.elicitation_resolved`, §1.2
//! `POST /v1/sessions/{id}/elicitations/{eid}/resolve`):
//!
//! - the runner publishes [`ElicitationRequest`] (`response.elicitation_request`) on the session's stream and
//!   the session's status becomes `waiting`;
//! - a client answers with an [`Answer`] at `POST …/elicitations/{eid}/resolve`, or with
//!   `POST …/events {"type": "approval", "data": Resolution}`; the server forwards it to the runner as
//!   `POST /v1/sessions/{id}/events {"type": "approval", "data": Resolution}` (nested, as 0.19.1 does; a runner
//!   reads `data`, else the body itself);
//! - everyone is told [`Resolved`] (`response.elicitation_resolved`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The MCP method every request carries.
pub const METHOD: &str = "elicitation/create";

/// The event type a client posts to `…/events` to answer, and the server forwards to the runner.
pub const APPROVAL_EVENT: &str = "approval";

/// A fresh elicitation id: `elicit_` and 32 hex digits (unguessable: the id is part of the capability).
pub fn new_elicitation_id() -> String {
    format!("elicit_{}", uuid::Uuid::new_v4().simple())
}

/// `response.elicitation_request` without its `type` (see [`ElicitationRequest::event`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ElicitationRequest {
    pub elicitation_id: String,
    /// Always [`METHOD`].
    #[serde(default = "method")]
    pub method: String,
    pub params: ElicitationParams,
    /// Ours: the tool call the question is about, so a client can show it beside its `function_call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}

fn method() -> String {
    METHOD.to_owned()
}

impl ElicitationRequest {
    /// A request with a fresh id.
    pub fn new(params: ElicitationParams) -> Self {
        ElicitationRequest {
            elicitation_id: new_elicitation_id(),
            method: method(),
            params,
            call_id: None,
        }
    }

    /// The SSE event (`{"type": "response.elicitation_request", …}`).
    pub fn event(&self) -> Value {
        with_type(crate::events::kind::RESPONSE_ELICITATION_REQUEST, self)
    }
}

/// The request's `params`: MCP's `ElicitRequestFormParams` plus omnigent's extensions. Unknown fields are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ElicitationParams {
    /// `form` (answered here) or `url` (answered on the page at `url`).
    #[serde(default = "form")]
    pub mode: String,
    /// What the person is asked, e.g. "Allow Bash: `rm -rf build`?".
    pub message: String,
    /// A JSON Schema for form answers; `None` for a plain approve / deny.
    #[serde(
        rename = "requestedSchema",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub requested_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// e.g. `pre_tool_use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Who asks: for our harnesses the agent CLI (`claude-code`, `codex`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    /// The tool's input, cut to [`CONTENT_PREVIEW_MAX`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_preview: Option<String>,
    /// Ours: the tool's name (`Bash`, `Write`, `commandExecution`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn form() -> String {
    "form".to_owned()
}

/// How long a `content_preview` may be (0.19.1 cuts at 1024).
pub const CONTENT_PREVIEW_MAX: usize = 1024;

impl ElicitationParams {
    /// A plain approve / deny question about `tool_name` from `asker`, previewing `input`.
    pub fn tool_approval(asker: &str, tool_name: &str, message: String, input: &str) -> Self {
        ElicitationParams {
            mode: form(),
            message,
            requested_schema: None,
            url: None,
            phase: Some("pre_tool_use".to_owned()),
            policy_name: Some(asker.to_owned()),
            content_preview: Some(input.chars().take(CONTENT_PREVIEW_MAX).collect()),
            tool_name: Some(tool_name.to_owned()),
            extra: Map::new(),
        }
    }
}

/// MCP's answer: accept (approve), decline (deny) or cancel (dismissed; also what an interrupt or a runner that
/// stops waiting gives). Anything but `accept` denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Decline,
    Cancel,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Decline => "decline",
            Action::Cancel => "cancel",
        }
    }

    /// Whether the tool may run.
    pub fn approves(self) -> bool {
        self == Action::Accept
    }
}

/// The body of `POST /v1/sessions/{id}/elicitations/{eid}/resolve` (MCP's `ElicitResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Map<String, Value>>,
    #[serde(rename = "_meta", default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

impl Answer {
    pub fn new(action: Action) -> Self {
        Answer {
            action,
            content: None,
            meta: None,
        }
    }
}

/// The `data` of an `approval` event: the id and the answer, flat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    pub elicitation_id: String,
    #[serde(flatten)]
    pub answer: Answer,
}

impl Resolution {
    /// The body the server posts to the runner's `…/events`: `{"type": "approval", "data": {…}}`.
    pub fn runner_event(&self) -> Value {
        serde_json::json!({"type": APPROVAL_EVENT, "data": self})
    }

    /// Read an `approval` event body as either end sends it: nested under `data` (0.19.1's server), or flat.
    pub fn from_event(body: &Value) -> Result<Self, serde_json::Error> {
        let data = match body.get("data") {
            Some(data) if data.is_object() => data,
            _ => body,
        };
        Resolution::deserialize(data)
    }
}

/// `response.elicitation_resolved` without its `type` (see [`Resolved::event`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    pub elicitation_id: String,
    /// The answer, when someone gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Why there is no answer (`unanswered`: the asker stopped waiting, e.g. the turn was interrupted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Resolved {
    pub fn event(&self) -> Value {
        with_type(crate::events::kind::RESPONSE_ELICITATION_RESOLVED, self)
    }
}

fn with_type(kind: &str, body: &impl Serialize) -> Value {
    let mut value = serde_json::to_value(body).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("type".to_owned(), Value::String(kind.to_owned()));
    }
    value
}

/// `GET /v1/sessions/{id}/elicitations/{eid}` (0.19.1's standalone approval page): the question while it is
/// pending, else only `{"status": "resolved"}` (also for an id the session never asked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ElicitationState {
    Pending {
        message: String,
        phase: String,
        policy_name: String,
        content_preview: String,
    },
    Resolved,
}

impl ElicitationState {
    /// A pending request as 0.19.1 shows it (absent fields as empty strings).
    pub fn pending(request: &ElicitationRequest) -> Self {
        let p = &request.params;
        ElicitationState::Pending {
            message: p.message.clone(),
            phase: p.phase.clone().unwrap_or_default(),
            policy_name: p.policy_name.clone().unwrap_or_default(),
            content_preview: p.content_preview.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_is_the_0_19_1_event_shape() {
        let mut request = ElicitationRequest::new(ElicitationParams::tool_approval(
            "claude-code",
            "Bash",
            "Allow Bash: `ls`?".to_owned(),
            "{\"command\":\"ls\"}",
        ));
        request.elicitation_id = "elicit_1".to_owned();
        assert_eq!(
            request.event(),
            json!({
                "type": "response.elicitation_request",
                "elicitation_id": "elicit_1",
                "method": "elicitation/create",
                "params": {
                    "mode": "form",
                    "message": "Allow Bash: `ls`?",
                    "phase": "pre_tool_use",
                    "policy_name": "claude-code",
                    "content_preview": "{\"command\":\"ls\"}",
                    "tool_name": "Bash",
                }
            })
        );
        let back: ElicitationRequest = serde_json::from_value(request.event()).unwrap();
        assert_eq!(back, request);
        let event: crate::events::ServerEvent = serde_json::from_value(request.event()).unwrap();
        assert_eq!(
            event,
            crate::events::ServerEvent::ElicitationRequest {
                sequence_number: None,
                request
            }
        );
    }

    #[test]
    fn an_approval_is_read_nested_or_flat() {
        let nested =
            json!({"type": "approval", "data": {"elicitation_id": "elicit_1", "action": "accept"}});
        let flat = json!({"type": "approval", "elicitation_id": "elicit_1", "action": "decline"});
        let read = Resolution::from_event(&nested).unwrap();
        assert_eq!(read.elicitation_id, "elicit_1");
        assert_eq!(read.answer.action, Action::Accept);
        assert_eq!(read.runner_event(), nested);
        assert_eq!(
            Resolution::from_event(&flat).unwrap().answer.action,
            Action::Decline
        );
        assert!(Resolution::from_event(&json!({"type": "approval", "action": "maybe"})).is_err());
    }

    #[test]
    fn resolved_carries_the_action_or_a_reason() {
        let answered = Resolved {
            elicitation_id: "elicit_1".to_owned(),
            action: Some(Action::Decline),
            reason: None,
        };
        assert_eq!(
            answered.event(),
            json!({"type": "response.elicitation_resolved", "elicitation_id": "elicit_1", "action": "decline"})
        );
    }
}
