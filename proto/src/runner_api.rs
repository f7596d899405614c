//! Bodies of the runner HTTP API that the server drives through a runner tunnel (reference wire file, "Runner
//! tunnel"): the session init (`POST /v1/sessions`), a turn event or interrupt (`POST /v1/sessions/{id}/events`)
//! and the runner's error body. The server builds them, the runner parses them.
//!
//! Every body keeps the fields it does not model (`extra`), and a field that was `null` stays `null` while one
//! that was absent stays absent, so a body relayed or re-encoded comes out field for field as it came in
//! (golden tests: `tests/runner_api_golden.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Version of the session init the server sends (`session_init.protocol_version`).
pub const SESSION_INIT_PROTOCOL_VERSION: u32 = 2;

/// A field that may be absent, `null` or set, and re-encodes as it came: with
/// `#[serde(default, skip_serializing_if = "Field::is_absent")]`, an absent field stays absent and a `null`
/// stays `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Set(T),
}

impl<T> Field<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }

    /// The value, when set.
    pub fn get(&self) -> Option<&T> {
        match self {
            Field::Set(v) => Some(v),
            Field::Absent | Field::Null => None,
        }
    }

    /// A field that is sent: `null` for `None`.
    pub fn sent(value: Option<T>) -> Self {
        value.map_or(Field::Null, Field::Set)
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Set(v) => v.serialize(s),
            Field::Absent | Field::Null => s.serialize_none(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(d).map(Field::sent)
    }
}

/// `POST /v1/sessions` on the runner: create or re-initialise a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionCreate {
    #[serde(default)]
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub sub_agent_name: Field<String>,
    /// Ours (a 0.19.1 server does not send it): which harness the runner should use.
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub harness: Field<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_init: Option<SessionInit>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `session_init` of a [`SessionCreate`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionInit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Ours, as on [`SessionCreate::harness`].
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub harness: Field<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_recovery_turn: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_interrupted_turn: Option<bool>,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub recovery_id: Field<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `session_init.snapshot`: the session as the server stores it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the session was created and last updated (epoch s): required by a 0.19.1 runner, which refuses an
    /// init without them (400 "Invalid session initialization envelope").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub workspace: Field<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub harness_override: Field<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What the server knows of a session when it initialises it on a runner.
#[derive(Debug, Clone, Copy)]
pub struct SessionFacts<'a> {
    pub session_id: &'a str,
    pub agent_id: &'a str,
    pub harness: Option<&'a str>,
    pub sub_agent_name: Option<&'a str>,
    pub workspace: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
    /// When the session was created and last updated, epoch seconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// The sending server's version (`session_init.server_version`).
    pub server_version: &'a str,
}

impl SessionCreate {
    /// The init our server sends: 0.19.1's fields plus `harness` (top level, in `session_init`, and as the
    /// snapshot's `harness_override`), with no recovery turn.
    pub fn new(facts: SessionFacts<'_>) -> Self {
        let harness = Field::sent(facts.harness.map(str::to_owned));
        SessionCreate {
            session_id: facts.session_id.to_owned(),
            agent_id: Some(facts.agent_id.to_owned()),
            sub_agent_name: Field::sent(facts.sub_agent_name.map(str::to_owned)),
            harness: harness.clone(),
            session_init: Some(SessionInit {
                protocol_version: Some(SESSION_INIT_PROTOCOL_VERSION),
                server_version: Some(facts.server_version.to_owned()),
                session_id: Some(facts.session_id.to_owned()),
                agent_id: Some(facts.agent_id.to_owned()),
                harness: harness.clone(),
                snapshot: Some(Snapshot {
                    created_at: Some(facts.created_at),
                    updated_at: Some(facts.updated_at),
                    workspace: Field::sent(facts.workspace.map(str::to_owned)),
                    labels: Some(facts.labels.clone()),
                    harness_override: harness,
                    extra: Map::new(),
                }),
                suppress_recovery_turn: Some(true),
                resume_interrupted_turn: Some(false),
                recovery_id: Field::Null,
                extra: Map::new(),
            }),
            extra: Map::new(),
        }
    }

    fn snapshot(&self) -> Option<&Snapshot> {
        self.session_init.as_ref()?.snapshot.as_ref()
    }

    /// The harness asked for, first non-empty of: the snapshot's `harness_override`, `session_init.harness`,
    /// the top-level `harness`.
    pub fn harness_name(&self) -> Option<&str> {
        [
            self.snapshot().and_then(|s| s.harness_override.get()),
            self.session_init.as_ref().and_then(|i| i.harness.get()),
            self.harness.get(),
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .find(|s| !s.is_empty())
    }

    /// The session's workspace (the snapshot's), when it names one.
    pub fn workspace(&self) -> Option<&str> {
        self.snapshot()
            .and_then(|s| s.workspace.get())
            .map(String::as_str)
            .filter(|w| !w.is_empty())
    }
}

/// `POST /v1/sessions/{id}/events` on the runner: a client event flattened (`{type, ...data}`) with what the
/// server adds (reference §3.4 step 4), or an interrupt (`{type: "interrupt" | "stop_session"}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnEvent {
    #[serde(rename = "type", default)]
    pub kind: String,
    /// A message's content: a string, or a list of `{type, text}` parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The agent's name (0.19.1 calls it `model`).
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub model: Field<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_mcp_servers: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_renderer_available: Option<bool>,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub persisted_item_id: Field<String>,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub agent_revision: Field<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TurnEvent {
    /// A client event of `kind` with its `data` flattened in, for the agent `agent_id` (named `agent_name`),
    /// its input stored as `persisted_item_id`. What the server adds wins over `data`'s fields of those names.
    pub fn input(
        kind: &str,
        data: &Map<String, Value>,
        agent_id: &str,
        agent_name: Option<&str>,
        persisted_item_id: Option<&str>,
    ) -> Self {
        let mut extra = data.clone();
        extra.remove("type");
        let content = extra.remove("content");
        for added in [
            "agent_id",
            "model",
            "has_mcp_servers",
            "browser_renderer_available",
            "persisted_item_id",
            "agent_revision",
        ] {
            extra.remove(added);
        }
        TurnEvent {
            kind: kind.to_owned(),
            content,
            agent_id: Some(agent_id.to_owned()),
            model: Field::sent(agent_name.map(str::to_owned)),
            has_mcp_servers: Some(false),
            browser_renderer_available: Some(false),
            persisted_item_id: Field::sent(persisted_item_id.map(str::to_owned)),
            agent_revision: Field::Null,
            extra,
        }
    }

    /// An interrupt (`interrupt`) or stop (`stop_session`): only its `type`.
    pub fn interrupt(kind: &str) -> Self {
        TurnEvent {
            kind: kind.to_owned(),
            ..TurnEvent::default()
        }
    }

    /// The agent name the server sent (`model`), when set.
    pub fn agent_name(&self) -> Option<&str> {
        self.model.get().map(String::as_str)
    }
}

/// The runner's error body: `{code, message}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RunnerError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        RunnerError {
            code: code.to_owned(),
            message: message.into(),
            extra: Map::new(),
        }
    }
}

/// The runner's answer to an accepted event: `{status: "accepted", detail}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventAccepted {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub detail: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl EventAccepted {
    pub fn new(detail: &str) -> Self {
        EventAccepted {
            status: "accepted".to_owned(),
            detail: detail.to_owned(),
            extra: Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn absent_null_and_set_fields_each_re_encode_as_they_came() {
        let body =
            json!({"session_id": "s", "sub_agent_name": null, "session_init": {"snapshot": {}}});
        let parsed: SessionCreate = serde_json::from_value(body.clone()).expect("parse");
        assert_eq!(parsed.sub_agent_name, Field::Null);
        assert_eq!(parsed.harness, Field::Absent);
        assert_eq!(serde_json::to_value(&parsed).expect("encode"), body);
    }

    #[test]
    fn the_harness_asked_for_is_the_first_non_empty_of_three_places() {
        let body = json!({"session_id": "s", "harness": "echo",
            "session_init": {"harness": "", "snapshot": {"harness_override": null, "workspace": "/w"}}});
        let parsed: SessionCreate = serde_json::from_value(body).expect("parse");
        assert_eq!(parsed.harness_name(), Some("echo"));
        assert_eq!(parsed.workspace(), Some("/w"));
        let bare: SessionCreate = serde_json::from_value(json!({})).expect("parse");
        assert_eq!((bare.harness_name(), bare.workspace()), (None, None));
    }

    #[test]
    fn a_turn_event_flattens_the_client_data_under_what_the_server_adds() {
        let data = json!({"type": "x", "role": "user", "content": "hi", "model": "spoof"});
        let Value::Object(data) = data else {
            unreachable!()
        };
        let event = TurnEvent::input("message", &data, "a1", Some("echo"), Some("i1"));
        assert_eq!(
            serde_json::to_value(&event).expect("encode"),
            json!({"type": "message", "role": "user", "content": "hi", "agent_id": "a1", "model": "echo",
                "has_mcp_servers": false, "browser_renderer_available": false, "persisted_item_id": "i1",
                "agent_revision": null})
        );
        assert_eq!(
            serde_json::to_value(TurnEvent::interrupt("stop_session")).expect("encode"),
            json!({"type": "stop_session"})
        );
    }
}
