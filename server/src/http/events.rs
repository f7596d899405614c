//! `POST /v1/sessions/{id}/events` (reference §1.2 "Event types accepted by POST /events").
//!
//! User-facing types that start or steer a turn go to the session's runner (reference §3.4); `interrupt` and
//! `stop_session` follow §2.6. The `external_*` types let a client (or a runner over plain HTTP) append items and publish deltas
//! without a runner; they all go through the session's actor.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use omnigent_proto::api::{ErrorCode, EventAccepted, SessionEventInput, SessionStatus};
use omnigent_proto::events::kind;
use omnigent_proto::events::{Interrupted, ServerEvent};
use omnigent_proto::ids::{canonical_id, new_id};
use serde_json::{Map, Value};

use super::{ApiError, AppState, JsonBody, json, session_id};
use crate::now_ms;
use crate::relay::{self, ReadyState};
use crate::store::NewItem;

/// Types that start or steer a turn: they need a runner.
const RUNNER_TYPES: &[&str] = &[
    "message",
    "function_call_output",
    "function_call",
    "reasoning",
    "approval",
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
            let (status, item_id) = deliver(&st, &id, kind, data, item).await?;
            Ok(accepted(status, item_id))
        }
        "interrupt" | "stop_session" => {
            let stop = ev.kind == "stop_session";
            interrupt(&st, &id, &ev.kind, stop, opt_str(data, "response_id")?).await?;
            Ok(accepted(false, None))
        }
        "external_session_interrupted" => {
            let event = ServerEvent::Interrupted {
                sequence_number: None,
                data: Interrupted {
                    requested_at: crate::now_secs_f64(),
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

/// The runner bound to session `id` and its live tunnel, or 503 `runner_unavailable` saying what to do.
async fn bound_runner(
    st: &AppState,
    id: &str,
    kind: &str,
) -> Result<(crate::store::SessionRow, String), ApiError> {
    let row = st
        .store
        .get_session(id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    // A host-bound session whose runner is offline while its host is online: the host relaunches it.
    let online = row
        .runner_id
        .as_deref()
        .is_some_and(|r| st.sessions.runners().is_online(r));
    if !online
        && let Some(relaunched) =
            crate::hosts::relaunch_host_runner(&st.hosts, &st.store, st.sessions.runners(), id)
                .await?
    {
        return Ok(relaunched);
    }
    let why = match &row.runner_id {
        Some(r) if st.sessions.runners().is_online(r) => {
            let runner = r.clone();
            return Ok((row, runner));
        }
        Some(r) => format!("its runner `{r}` is not connected"),
        None => "no runner is bound to it".to_owned(),
    };
    Err(ApiError::new(
        ErrorCode::RunnerUnavailable,
        format!(
            "cannot deliver `{kind}` to session {id}: {why}. Start the session's runner (or create the \
             session with a host_id so the host launches one), then retry"
        ),
    ))
}

/// A turn input (reference §3.4): resolve the runner, make sure the relay is subscribed and the session
/// initialised, persist the item and announce it (`session.input.consumed`, before any event of the turn it
/// starts), forward the flattened body.
async fn deliver(
    st: &AppState,
    id: &str,
    kind: &str,
    data: &Map<String, Value>,
    item: Option<NewItem>,
) -> Result<(bool, Option<String>), ApiError> {
    let (row, runner_id) = bound_runner(st, id, kind).await?;
    let unavailable = |why: String| {
        ApiError::new(
            ErrorCode::RunnerUnavailable,
            format!(
                "cannot deliver `{kind}` to session {id}: {why}; retry when the runner is back"
            ),
        )
    };
    let mut ready = st.sessions.ensure_relay(id, &runner_id).await?;
    let outcome = match tokio::time::timeout(
        relay::READY_TIMEOUT + relay::INIT_TIMEOUT,
        ready.wait_for(|s| !matches!(s, ReadyState::Opening)),
    )
    .await
    {
        Err(_) => Err(format!("runner `{runner_id}` did not get ready in time")),
        Ok(Err(_)) => Err("the session's relay stopped".to_owned()),
        Ok(Ok(state)) => match &*state {
            ReadyState::Failed(why) => Err(why.clone()),
            _ => Ok(()),
        },
    };
    outcome.map_err(unavailable)?;
    let conn = st
        .sessions
        .runners()
        .get(&runner_id)
        .ok_or_else(|| unavailable(format!("runner `{runner_id}` disconnected")))?;
    // Persist before forwarding (I1): the input survives whatever happens to the runner next.
    let stored = match item {
        Some(item) => Some(st.sessions.persist_item(id, item).await?),
        None => None,
    };
    let agent_name = crate::agents::find(&row.agent_id).map(|a| a.name.as_str());
    let body = relay::flatten_event(
        kind,
        data,
        &row.agent_id,
        agent_name,
        stored.as_ref().map(|r| r.id.as_str()),
    );
    let forwarded = relay::call(
        &conn,
        http::Method::POST,
        &format!("/v1/sessions/{id}/events"),
        Some(&body),
        relay::FORWARD_CONNECT_TIMEOUT,
        relay::FORWARD_READ_TIMEOUT,
    )
    .await;
    if let Err(e) = forwarded {
        let message = format!("the runner did not take the `{kind}` event: {e}");
        tracing::warn!(session_id = %id, %runner_id, "{message}");
        let error = serde_json::json!({"code": "runner_rejected_event", "message": message});
        st.sessions
            .set_status(id, SessionStatus::Failed, None, Some(error))
            .await?;
        return Err(ApiError::new(ErrorCode::RunnerUnavailable, message));
    }
    Ok((true, stored.map(|row| row.id)))
}

/// Interrupt (or stop) the session's turn (reference §2.6): publish `session.interrupted` and fence the
/// cancelled turn's trailing output, deliver the interrupt to the runner (5 s), lift the fence if it did not
/// get there. Without a connected runner there is no turn to cancel: a stop settles the status to idle.
async fn interrupt(
    st: &AppState,
    id: &str,
    kind: &str,
    stop: bool,
    response_id: Option<String>,
) -> Result<(), ApiError> {
    let row = st
        .store
        .get_session(id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    st.sessions.interrupt(id, stop, response_id).await?;
    let conn = row
        .runner_id
        .as_deref()
        .and_then(|r| st.sessions.runners().get(r));
    let delivered = match &conn {
        Some(conn) => {
            let body = serde_json::json!({"type": kind});
            match relay::call(
                conn,
                http::Method::POST,
                &format!("/v1/sessions/{id}/events"),
                Some(&body),
                relay::INTERRUPT_TIMEOUT,
                relay::INTERRUPT_TIMEOUT,
            )
            .await
            {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(session_id = %id, "the interrupt did not reach the runner: {e}");
                    false
                }
            }
        }
        None => false,
    };
    if !delivered {
        st.sessions.lift_fence(id).await;
        if stop {
            st.sessions
                .set_status(id, SessionStatus::Idle, None, None)
                .await?;
        }
    }
    Ok(())
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
