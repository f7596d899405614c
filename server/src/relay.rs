//! The runner side of a session (reference §3.4): talking to the session's runner through its tunnel.
//!
//! The state of a session's relay (text buffer, interrupt fence, `call_id → response_id`, disconnect grace) is
//! owned by the session's actor (`crate::actor`). This module holds what the actor delegates: the reader task
//! that subscribes to the runner's `GET /v1/sessions/{id}/stream`, initialises the session on the runner, and
//! hands every runner event back to the actor as a message; and the one-shot requests of a turn (forward an
//! input, deliver an interrupt) that the HTTP handlers send.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use omnigent_proto::events::kind;
use omnigent_proto::headers::{TURN_RECORD_HEADER, TURN_RECORD_WANTED};
use omnigent_tunnel::{RunnerConnection, TunnelError};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::actor::Command;

/// Logged (with the session and runner ids) once a relay has subscribed to the runner's session stream.
pub const RELAY_SUBSCRIBED: &str = "relay subscribed";

/// How long the runner may take to answer the stream request and send its ready heartbeat (reference §3.4).
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the session init on the runner may take.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect budget of a forwarded input (the tunnel is already connected; this bounds the response head).
pub const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read budget of a forwarded input (reference §3.4 step 4).
pub const FORWARD_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an interrupt may take to reach the runner (reference §2.6).
pub const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest runner answer body read for a one-shot request.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Largest single runner event accepted on the relay.
const MAX_EVENT_BYTES: usize = omnigent_proto::MAX_FRAME_BYTES;

/// Where a relay stands, as the readers of its `watch` see it.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadyState {
    /// Opening the stream and initialising the session.
    Opening,
    /// Subscribed (ready heartbeat seen) and the session initialised on tunnel `generation`.
    Ready { generation: u64 },
    /// The relay could not be opened, or its stream ended.
    Failed(String),
}

/// Why a request to the runner failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Tunnel(#[from] TunnelError),
    #[error("the runner did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the runner answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the runner's answer could not be read: {0}")]
    Body(String),
    #[error("cannot build the request to the runner: {0}")]
    Build(String),
}

/// What the reader needs to (re)open a session's relay.
#[derive(Debug, Clone)]
pub struct OpenSpec {
    pub session_id: String,
    pub epoch: u64,
    pub conn: RunnerConnection,
    /// Body of the runner's `POST /v1/sessions` (session init).
    pub init: Value,
}

/// The body of the session init (`POST /v1/sessions` on the runner), as 0.19.1 sends it, plus `harness` (which
/// our runner reads to pick echo/openai/anthropic/exec).
pub fn init_body(
    session_id: &str,
    agent_id: &str,
    harness: Option<&str>,
    sub_agent_name: Option<&str>,
    workspace: Option<&str>,
    labels: &std::collections::BTreeMap<String, String>,
) -> Value {
    json!({
        "session_id": session_id,
        "agent_id": agent_id,
        "sub_agent_name": sub_agent_name,
        "harness": harness,
        "session_init": {
            "protocol_version": 2,
            "server_version": omnigent_proto::BUILD_VERSION,
            "session_id": session_id,
            "agent_id": agent_id,
            "harness": harness,
            "snapshot": {
                "workspace": workspace,
                "labels": labels,
                "harness_override": harness,
            },
            "suppress_recovery_turn": true,
            "resume_interrupted_turn": false,
            "recovery_id": null,
        },
    })
}

/// Send one JSON request to the runner and read its answer (status, JSON body or `null`), bounded by
/// `head_timeout` for the response head and `read_timeout` for the whole answer.
pub async fn call(
    conn: &RunnerConnection,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
    head_timeout: Duration,
    read_timeout: Duration,
) -> Result<(u16, Value), RelayError> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("accept", "application/json");
    let bytes = match body {
        Some(body) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let request = builder
        .body(bytes)
        .map_err(|e| RelayError::Build(e.to_string()))?;
    let response = tokio::time::timeout(head_timeout, conn.request(request))
        .await
        .map_err(|_| RelayError::Timeout(head_timeout))??;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(
        read_timeout,
        axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES),
    )
    .await
    .map_err(|_| RelayError::Timeout(read_timeout))?
    .map_err(|e| RelayError::Body(e.to_string()))?;
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if status >= 400 {
        return Err(RelayError::Status {
            status,
            body: value.to_string(),
        });
    }
    Ok((status, value))
}

/// The reader of one relay: open the runner's stream, wait for its ready heartbeat, initialise the session,
/// report ready, then hand every event to the actor until the stream ends. Ends with a `RelayEnded` message.
pub async fn run_reader(
    spec: OpenSpec,
    actor: mpsc::WeakSender<Command>,
    ready: watch::Sender<ReadyState>,
) {
    let epoch = spec.epoch;
    let generation = spec.conn.generation();
    let why = match read(&spec, &actor, &ready).await {
        Ok(()) => "the runner's event stream ended".to_owned(),
        Err(why) => why,
    };
    debug!(session_id = %spec.session_id, epoch, generation, %why, "relay reader ended");
    ready.send_replace(ReadyState::Failed(why.clone()));
    if let Some(actor) = actor.upgrade() {
        let _ = actor
            .send(Command::RelayEnded {
                epoch,
                generation,
                why,
            })
            .await;
    }
}

async fn read(
    spec: &OpenSpec,
    actor: &mpsc::WeakSender<Command>,
    ready: &watch::Sender<ReadyState>,
) -> Result<(), String> {
    let sid = &spec.session_id;
    let request = http::Request::get(format!("/v1/sessions/{sid}/stream"))
        .header("accept", "text/event-stream")
        .header(TURN_RECORD_HEADER, TURN_RECORD_WANTED)
        .body(Bytes::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(READY_TIMEOUT, spec.conn.request(request))
        .await
        .map_err(|_| {
            format!("the runner did not open the session stream within {READY_TIMEOUT:?}")
        })?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!(
            "the runner answered the session stream with HTTP {}",
            response.status().as_u16()
        ));
    }
    let mut events = std::pin::pin!(omnigent_tunnel::sse::data_events(
        response.into_body(),
        MAX_EVENT_BYTES
    ));
    // The runner stream has no replay: the ready heartbeat proves we are subscribed.
    match tokio::time::timeout(READY_TIMEOUT, events.next()).await {
        Err(_) => {
            return Err(format!(
                "no ready heartbeat from the runner within {READY_TIMEOUT:?}"
            ));
        }
        Ok(None) => return Err("the runner's session stream ended at once".to_owned()),
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(Some(Ok(first))) => {
            if first["type"] != kind::SESSION_HEARTBEAT {
                // Not the ready signal, but an event all the same: keep it.
                forward(actor, spec.epoch, vec![first]).await?;
            }
        }
    }
    call(
        &spec.conn,
        http::Method::POST,
        "/v1/sessions",
        Some(&spec.init),
        INIT_TIMEOUT,
        INIT_TIMEOUT,
    )
    .await
    .map_err(|e| format!("the runner refused the session init: {e}"))?;
    // What the runner thinks of the session: after a reconnect, a restarted runner knows of no running turn.
    let runner_status = call(
        &spec.conn,
        http::Method::GET,
        &format!("/v1/sessions/{sid}"),
        None,
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await
    .ok()
    .and_then(|(_, body)| body["status"].as_str().map(str::to_owned));
    // What the runner kept while no relay was subscribed (a tunnel blip) came with its ready heartbeat: hand it
    // to the actor before the runner's status, so a turn that ended meanwhile ends by its own events, not as
    // a turn the runner no longer knows of.
    while let Some(next) = events.next().now_or_never() {
        let mut batch = Vec::new();
        let taken = take_batch(&mut events, next, &mut batch, sid);
        forward(actor, spec.epoch, batch).await?;
        match taken {
            Taken::More => {}
            Taken::Ended => return Ok(()),
            Taken::Broke(why) => return Err(why),
        }
    }
    let Some(tx) = actor.upgrade() else {
        return Ok(());
    };
    tx.send(Command::RelayReady {
        epoch: spec.epoch,
        generation: spec.conn.generation(),
        runner_status,
    })
    .await
    .map_err(|_| "the session actor stopped".to_owned())?;
    drop(tx);
    ready.send_replace(ReadyState::Ready {
        generation: spec.conn.generation(),
    });
    info!(session_id = %sid, runner_id = spec.conn.runner_id(), generation = spec.conn.generation(), "{RELAY_SUBSCRIBED}");
    loop {
        // Wait for an event, then take every one that has already arrived with it (up to a batch): the actor
        // handles them back to back and wakes the stream subscribers once.
        let mut batch = Vec::new();
        let next = events.next().await;
        let taken = take_batch(&mut events, next, &mut batch, sid);
        forward(actor, spec.epoch, batch).await?;
        match taken {
            Taken::More => {}
            Taken::Ended => return Ok(()),
            Taken::Broke(why) => return Err(why),
        }
    }
}

/// How the stream stood after [`take_batch`].
enum Taken {
    /// Open: more may come.
    More,
    /// The runner ended the stream.
    Ended,
    /// The stream failed, for this reason.
    Broke(String),
}

/// Put `next` and the runner events already available after it (up to [`RELAY_BATCH`]) in `batch`, skipping
/// heartbeats and events that are not JSON.
fn take_batch<S>(
    events: &mut S,
    mut next: Option<Result<Value, omnigent_tunnel::sse::SseError>>,
    batch: &mut Vec<Value>,
    sid: &str,
) -> Taken
where
    S: futures_util::Stream<Item = Result<Value, omnigent_tunnel::sse::SseError>> + Unpin,
{
    loop {
        match next {
            None => return Taken::Ended,
            Some(Ok(event)) => {
                if event["type"] != kind::SESSION_HEARTBEAT {
                    batch.push(event);
                }
            }
            Some(Err(omnigent_tunnel::sse::SseError::BadJson(e))) => {
                warn!(session_id = %sid, "skipping a runner event that is not JSON: {e}");
            }
            Some(Err(e)) => return Taken::Broke(e.to_string()),
        }
        if batch.len() >= RELAY_BATCH {
            return Taken::More;
        }
        match events.next().now_or_never() {
            Some(item) => next = item,
            None => return Taken::More,
        }
    }
}

/// Most runner events handed to the actor in one message.
const RELAY_BATCH: usize = 256;

async fn forward(
    actor: &mpsc::WeakSender<Command>,
    epoch: u64,
    events: Vec<Value>,
) -> Result<(), String> {
    if events.is_empty() {
        return Ok(());
    }
    let tx = actor
        .upgrade()
        .ok_or_else(|| "the session actor stopped".to_owned())?;
    tx.send(Command::RunnerEvents { epoch, events })
        .await
        .map_err(|_| "the session actor stopped".to_owned())
}

/// The runner body of a client event: `{type, ...data, agent_id, model, …}` (reference §3.4 step 4).
pub fn flatten_event(
    kind: &str,
    data: &serde_json::Map<String, Value>,
    agent_id: &str,
    agent_name: Option<&str>,
    persisted_item_id: Option<&str>,
) -> Value {
    let mut body = serde_json::Map::new();
    body.insert("type".into(), Value::from(kind));
    for (k, v) in data {
        if k != "type" {
            body.insert(k.clone(), v.clone());
        }
    }
    body.insert("agent_id".into(), Value::from(agent_id));
    body.insert(
        "model".into(),
        agent_name.map(Value::from).unwrap_or(Value::Null),
    );
    body.insert("has_mcp_servers".into(), Value::Bool(false));
    body.insert("browser_renderer_available".into(), Value::Bool(false));
    body.insert(
        "persisted_item_id".into(),
        persisted_item_id.map(Value::from).unwrap_or(Value::Null),
    );
    body.insert("agent_revision".into(), Value::Null);
    Value::Object(body)
}

/// Whether `kind` ends a response (these pass the interrupt fence and flush the text buffer).
pub fn is_terminal(kind: &str) -> bool {
    matches!(
        kind,
        kind::RESPONSE_COMPLETED
            | kind::RESPONSE_FAILED
            | kind::RESPONSE_INCOMPLETE
            | kind::RESPONSE_CANCELLED
    )
}

/// A runner's conversation item (`response.output_item.done`'s `item`) as a row to persist, with the
/// `response_id` the relay decided on and the agent's `model` on assistant messages. `None` when it is not an
/// object with a `type`.
pub fn runner_item(
    item: &Value,
    response_id: Option<String>,
    model: Option<String>,
) -> Option<crate::store::NewItem> {
    let mut fields = item.as_object()?.clone();
    let kind = match fields.remove("type") {
        Some(Value::String(kind)) if !kind.is_empty() => kind,
        _ => return None,
    };
    let id = fields
        .remove("id")
        .and_then(|v| v.as_str().and_then(omnigent_proto::ids::canonical_id))
        .unwrap_or_else(omnigent_proto::ids::new_id);
    let status = match fields.remove("status") {
        Some(Value::String(s)) => s,
        _ => "completed".to_owned(),
    };
    fields.remove("response_id");
    fields.remove("created_at");
    let created_by = match fields.remove("created_by") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    if let Some(model) = model
        && !fields.contains_key("model")
    {
        fields.insert("model".into(), Value::from(model));
    }
    Some(crate::store::NewItem {
        id,
        kind,
        status,
        response_id,
        created_at_ms: crate::now_ms(),
        created_by,
        data: fields,
    })
}
