//! `POST /v1/sessions/{id}/events` (reference §1.2 "Event types accepted by POST /events").
//!
//! User-facing types that start or steer a turn go to the session's runner (reference §3.4); `interrupt` and
//! `stop_session` follow §2.6. Each is one command to the session's actor, which owns the turn. The `external_*` types let a client (or a runner over plain HTTP) append items and publish deltas
//! without a runner; they all go through the session's actor.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use omnigent_proto::api::{ErrorCode, EventAccepted, SessionEventInput, SessionStatus};
use omnigent_proto::elicitation::Resolution;
use omnigent_proto::events::kind;
use omnigent_proto::events::{Interrupted, ServerEvent};
use omnigent_proto::ids::{canonical_id, new_id};
use serde_json::{Map, Value};

use super::{ApiError, AppState, JsonBody, json, session_id};
use crate::actor::TurnInput;
use crate::clock::now_ms;
use crate::store::NewItem;

/// Types that start or steer a turn: they need a runner.
const RUNNER_TYPES: &[&str] = &[
    "message",
    "function_call_output",
    "function_call",
    "reasoning",
    "compact",
    "retry_session",
];

/// Every type this server accepts, for the error message.
const ACCEPTED: &str = "message, function_call_output, function_call, reasoning, approval, compact, \
     retry_session, interrupt, stop_session, external_conversation_item, external_output_text_delta, \
     external_output_reasoning_delta, external_tool_output_delta, external_session_status, \
     external_session_usage, external_session_interrupted, external_model_change";

/// Item types a conversation may hold.
const ITEM_TYPES: &[&str] = &[
    "message",
    "function_call",
    "function_call_output",
    "reasoning",
    "error",
    "compaction",
    "resource_event",
];

pub async fn post_event(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    JsonBody(ev): JsonBody<SessionEventInput>,
) -> Result<Response, ApiError> {
    let id = session_id(&raw)?;
    let accepted = |queued: bool, item_id: Option<String>| {
        json(StatusCode::ACCEPTED, &EventAccepted { queued, item_id })
    };
    let data = ev.data.as_object().ok_or_else(|| {
        ApiError::invalid(format!(
            "`data` of a `{}` event must be a JSON object",
            ev.kind
        ))
    })?;
    match ev.kind.as_str() {
        kind if RUNNER_TYPES.contains(&kind) => {
            let item = if ITEM_TYPES.contains(&kind) {
                Some(
                    item_from_input(kind, &ev.data, ev.created_by.clone(), now_ms())
                        .map_err(ApiError::invalid)?,
                )
            } else {
                None
            };
            let input = TurnInput {
                kind: kind.to_owned(),
                data: data.clone(),
                item,
            };
            let item_id = st.sessions.deliver(&id, input).await?;
            Ok(accepted(true, item_id))
        }
        // An answer to the agent's question: the same command as `…/elicitations/{eid}/resolve`.
        omnigent_proto::elicitation::APPROVAL_EVENT => {
            let resolution = Resolution::from_event(&ev.data).map_err(|e| {
                ApiError::invalid(format!(
                    "`data` of an `approval` event must be {{elicitation_id, action: accept|decline|cancel, \
                     content?}}: {e}"
                ))
            })?;
            super::elicitations::answer_question(&st, &id, resolution).await
        }
        "interrupt" | "stop_session" => {
            let response_id = opt_str(data, "response_id")?;
            st.sessions.interrupt(&id, &ev.kind, response_id).await?;
            Ok(accepted(false, None))
        }
        "external_session_interrupted" => {
            let event = ServerEvent::Interrupted {
                sequence_number: None,
                data: Interrupted {
                    requested_at: crate::clock::now_secs_f64(),
                    response_id: opt_str(data, "response_id")?,
                },
            };
            st.sessions.publish(&id, to_value(&event)).await?;
            Ok(accepted(false, None))
        }
        "external_conversation_item" => {
            // liveapi hook: 0.19.1's `{item_type, item_data, response_id?}` (http/live.rs).
            let python = super::live::python_external_item(data)?;
            let item_value = python
                .as_ref()
                .or_else(|| data.get("item").filter(|v| v.is_object()))
                .unwrap_or(&ev.data);
            let kind = item_value
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("message");
            let item = item_from_input(kind, item_value, ev.created_by.clone(), now_ms())
                .map_err(ApiError::invalid)?;
            let (row, _) = st.sessions.append_item(&id, item).await.map_err(|e| {
                if let crate::actor::ActorError::Store(crate::store::StoreError::Db(db)) = &e
                    && db
                        .as_database_error()
                        .is_some_and(|d| d.is_unique_violation())
                {
                    return ApiError::new(
                        ErrorCode::AlreadyExists,
                        "an item with this id already exists; omit `id` to get a fresh one",
                    );
                }
                e.into()
            })?;
            Ok(accepted(false, Some(row.id)))
        }
        "external_output_text_delta" => {
            let event = ServerEvent::OutputTextDelta {
                sequence_number: None,
                delta: req_str(data, "delta")?,
                message_id: opt_str(data, "message_id")?,
                index: data.get("index").and_then(Value::as_i64),
                is_final: data.get("final").and_then(Value::as_bool),
            };
            st.sessions.publish(&id, to_value(&event)).await?;
            Ok(accepted(false, None))
        }
        "external_output_reasoning_delta" => {
            let event = ServerEvent::ReasoningTextDelta {
                sequence_number: None,
                delta: req_str(data, "delta")?,
            };
            st.sessions.publish(&id, to_value(&event)).await?;
            Ok(accepted(false, None))
        }
        "external_tool_output_delta" => {
            let event = ServerEvent::FunctionCallOutputDelta {
                sequence_number: None,
                call_id: req_str(data, "call_id")?,
                delta: req_str(data, "delta")?,
            };
            st.sessions.publish(&id, to_value(&event)).await?;
            Ok(accepted(false, None))
        }
        "external_session_status" => {
            let raw_status = req_str(data, "status")?;
            let status = SessionStatus::parse(&raw_status).ok_or_else(|| {
                ApiError::invalid(format!(
                    "status `{raw_status}` is not one of idle, launching, running, waiting, failed"
                ))
            })?;
            let error = data.get("error").filter(|e| !e.is_null()).cloned();
            st.sessions
                .set_status(&id, status, opt_str(data, "response_id")?, error)
                .await?;
            Ok(accepted(false, None))
        }
        "external_session_usage" => {
            let mut event = data.clone();
            event.insert("type".into(), Value::from(kind::SESSION_USAGE));
            event.insert("conversation_id".into(), Value::from(id.clone()));
            st.sessions.publish(&id, Value::Object(event)).await?;
            Ok(accepted(false, None))
        }
        "external_model_change" => {
            let event = ServerEvent::Model {
                sequence_number: None,
                conversation_id: id.clone(),
                model: opt_str(data, "model")?,
            };
            st.sessions.publish(&id, to_value(&event)).await?;
            Ok(accepted(false, None))
        }
        other => Err(ApiError::invalid(format!(
            "unknown event type `{other}`; accepted types: {ACCEPTED}"
        ))),
    }
}

fn to_value(event: &ServerEvent) -> Value {
    // Plain data (string keys, finite numbers): serializing cannot fail.
    serde_json::to_value(event).unwrap_or(Value::Null)
}

fn req_str(data: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match data.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::invalid(format!("`data.{key}` must be a string"))),
        None => Err(ApiError::invalid(format!("`data.{key}` is required"))),
    }
}

fn opt_str(data: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!(
            "`data.{key}` must be a string or null"
        ))),
    }
}

/// Validate an item given by a client and split its envelope (`id`, `type`, `status`, `response_id`,
/// `created_at`) from its own fields. The error says which field to fix.
pub fn item_from_input(
    kind: &str,
    data: &Value,
    created_by: Option<String>,
    now: i64,
) -> Result<NewItem, String> {
    if !ITEM_TYPES.contains(&kind) {
        return Err(format!(
            "item type `{kind}` is not one of {}",
            ITEM_TYPES.join(", ")
        ));
    }
    let Some(obj) = data.as_object() else {
        return Err(format!("the `{kind}` item must be a JSON object"));
    };
    let mut fields = obj.clone();
    let id = match fields.remove("id") {
        None | Some(Value::Null) => new_id(),
        Some(Value::String(s)) => {
            canonical_id(&s).ok_or_else(|| format!("item id `{s}` is not a 32-hex id"))?
        }
        Some(_) => return Err("item `id` must be a string".to_owned()),
    };
    fields.remove("type");
    fields.remove("created_at");
    let status = match fields.remove("status") {
        None | Some(Value::Null) => "completed".to_owned(),
        Some(Value::String(s)) => s,
        Some(_) => return Err("item `status` must be a string".to_owned()),
    };
    let response_id = match fields.remove("response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("item `response_id` must be a string".to_owned()),
    };
    let created_by = match fields.remove("created_by") {
        Some(Value::String(s)) => Some(s),
        _ => created_by,
    };
    match kind {
        "message" => {
            match fields.get("role").and_then(Value::as_str) {
                Some("user" | "assistant" | "system" | "developer") => {}
                Some(other) => {
                    return Err(format!(
                        "message role `{other}` is not user, assistant, system or developer"
                    ));
                }
                None => {
                    return Err(
                        "a message needs `role` (user, assistant, system or developer)".to_owned(),
                    );
                }
            }
            match fields.get("content") {
                Some(Value::String(_)) => {}
                Some(Value::Array(parts)) => {
                    if let Some(i) = parts
                        .iter()
                        .position(|p| p.get("type").and_then(Value::as_str).is_none())
                    {
                        return Err(format!(
                            "message content[{i}] needs a string `type` (input_text, output_text…)"
                        ));
                    }
                }
                _ => {
                    return Err(
                        "a message needs `content`: a string or a list of {type, text} parts"
                            .to_owned(),
                    );
                }
            }
        }
        "function_call" => {
            for key in ["name", "call_id"] {
                if fields.get(key).and_then(Value::as_str).is_none() {
                    return Err(format!("a function_call needs a string `{key}`"));
                }
            }
        }
        "function_call_output" if fields.get("call_id").and_then(Value::as_str).is_none() => {
            return Err("a function_call_output needs a string `call_id`".to_owned());
        }
        _ => {}
    }
    Ok(NewItem {
        id,
        kind: kind.to_owned(),
        status,
        response_id,
        created_at_ms: now,
        created_by,
        data: fields,
    })
}
