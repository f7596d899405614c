//! The runner side of a session (reference §3.4): talking to the session's runner through its tunnel.
//!
//! The session's actor (`crate::actor`) owns the relay's state; this module holds what it delegates, with no
//! knowledge of the actor: the reader task that subscribes to the runner's `GET /v1/sessions/{id}/stream`,
//! initialises the session on the runner and hands every runner event back as a [`ReaderEvent`]; the one-shot
//! requests of a turn (forward an input, deliver an interrupt); the relay's [`lifecycle`] (fence, grace,
//! re-open, orphaned turn) as a sans-I/O type; and the pure [`translate`] of runner events into items.

pub mod lifecycle;
pub mod translate;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use omnigent_proto::events::kind;
use omnigent_proto::headers::{TURN_RECORD_HEADER, TURN_RECORD_WANTED};
use omnigent_proto::runner_api::{SessionCreate, TurnEvent};
use omnigent_tunnel::{RunnerConnection, TunnelError};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

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

/// What a relay reader tells its session, in order.
#[derive(Debug)]
pub enum ReaderEvent {
    /// Runner events, in order (those that arrived together, so the subscribers are woken once for all).
    Events(Vec<Value>),
    /// Subscribed (ready heartbeat seen) and the session initialised; what the runner says of its status.
    Ready { runner_status: Option<String> },
    /// The stream ended (or could not be opened), for this reason. The reader's last word.
    Ended { why: String },
}

/// A [`ReaderEvent`] of the reader `epoch`, on tunnel `generation`: the session's mailbox takes these
/// (`From<FromReader>`), so a reader needs no more of the actor than a weak sender.
#[derive(Debug)]
pub struct FromReader {
    pub epoch: u64,
    pub generation: u64,
    pub event: ReaderEvent,
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
    pub init: SessionCreate,
}

/// Send one JSON request to the runner and read its answer (status, JSON body or `null`), bounded by
/// `head_timeout` for the response head and `read_timeout` for the whole answer.
pub async fn call(
    conn: &RunnerConnection,
    method: http::Method,
    path: &str,
    body: Option<&impl serde::Serialize>,
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
            Bytes::from(serde_json::to_vec(body).map_err(|e| RelayError::Build(e.to_string()))?)
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
/// report ready, then hand every event to the session until the stream ends. Ends with [`ReaderEvent::Ended`].
pub async fn run_reader<M>(spec: OpenSpec, session: mpsc::WeakSender<M>)
where
    M: From<FromReader> + Send + 'static,
{
    let sink = Sink {
        session,
        epoch: spec.epoch,
        generation: spec.conn.generation(),
    };
    let why = match read(&spec, &sink).await {
        Ok(()) => "the runner's event stream ended".to_owned(),
        Err(why) => why,
    };
    debug!(session_id = %spec.session_id, epoch = sink.epoch, generation = sink.generation, %why, "relay reader ended");
    let _ = sink.send(ReaderEvent::Ended { why }).await;
}

/// Where a reader's events go.
struct Sink<M> {
    session: mpsc::WeakSender<M>,
    epoch: u64,
    generation: u64,
}

impl<M: From<FromReader>> Sink<M> {
    async fn send(&self, event: ReaderEvent) -> Result<(), String> {
        let stopped = || "the session actor stopped".to_owned();
        let tx = self.session.upgrade().ok_or_else(stopped)?;
        let message = FromReader {
            epoch: self.epoch,
            generation: self.generation,
            event,
        };
        tx.send(M::from(message)).await.map_err(|_| stopped())
    }

    async fn events(&self, events: Vec<Value>) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        self.send(ReaderEvent::Events(events)).await
    }
}

async fn read<M: From<FromReader>>(spec: &OpenSpec, sink: &Sink<M>) -> Result<(), String> {
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
                sink.events(vec![first]).await?;
            }
        }
    }
    call(
        &spec.conn,
        http::Method::POST,
        SESSIONS_PATH,
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
        None::<&Value>,
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
        if pass_on(sink, &mut events, next, sid).await?.is_break() {
            return Ok(());
        }
    }
    sink.send(ReaderEvent::Ready { runner_status }).await?;
    info!(session_id = %sid, runner_id = spec.conn.runner_id(), generation = spec.conn.generation(), "{RELAY_SUBSCRIBED}");
    loop {
        // Wait for an event, then take every one that has already arrived with it (up to a batch): the actor
        // handles them back to back and wakes the stream subscribers once.
        let next = events.next().await;
        if pass_on(sink, &mut events, next, sid).await?.is_break() {
            return Ok(());
        }
    }
}

/// Hand `next` and the events already there after it to the session: `Break` when the stream ended, an error
/// when it broke.
async fn pass_on<M, S>(
    sink: &Sink<M>,
    events: &mut S,
    next: Option<Result<Value, omnigent_tunnel::sse::SseError>>,
    sid: &str,
) -> Result<std::ops::ControlFlow<()>, String>
where
    M: From<FromReader>,
    S: futures_util::Stream<Item = Result<Value, omnigent_tunnel::sse::SseError>> + Unpin,
{
    let mut batch = Vec::new();
    let taken = take_batch(events, next, &mut batch, sid);
    sink.events(batch).await?;
    match taken {
        Taken::More => Ok(std::ops::ControlFlow::Continue(())),
        Taken::Ended => Ok(std::ops::ControlFlow::Break(())),
        Taken::Broke(why) => Err(why),
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

/// The runner's session collection (`POST` initialises a session).
const SESSIONS_PATH: &str = "/v1/sessions";

/// Forward a turn input to the runner (`POST /v1/sessions/{id}/events`, reference §3.4 step 4).
pub async fn forward_input(
    conn: &RunnerConnection,
    session_id: &str,
    body: &TurnEvent,
) -> Result<(), RelayError> {
    let budget = (FORWARD_CONNECT_TIMEOUT, FORWARD_READ_TIMEOUT);
    post_event(conn, session_id, body, budget).await
}

/// Forward a person's answer to the runner's question (`POST /v1/sessions/{id}/events`
/// `{"type": "approval", "data": …}`, built by `Resolution::runner_event`).
pub async fn forward_approval(
    conn: &RunnerConnection,
    session_id: &str,
    body: &Value,
) -> Result<(), RelayError> {
    let budget = (FORWARD_CONNECT_TIMEOUT, FORWARD_READ_TIMEOUT);
    post_event(conn, session_id, body, budget).await
}

/// Deliver an interrupt (`interrupt` or `stop_session`) to the runner within [`INTERRUPT_TIMEOUT`].
pub async fn deliver_interrupt(
    conn: &RunnerConnection,
    session_id: &str,
    kind: &str,
) -> Result<(), RelayError> {
    let budget = (INTERRUPT_TIMEOUT, INTERRUPT_TIMEOUT);
    post_event(conn, session_id, &TurnEvent::interrupt(kind), budget).await
}

/// `POST /v1/sessions/{id}/events` on the runner within `(head, whole answer)` timeouts.
async fn post_event(
    conn: &RunnerConnection,
    session_id: &str,
    body: &impl serde::Serialize,
    (head, read): (Duration, Duration),
) -> Result<(), RelayError> {
    let path = format!("/v1/sessions/{session_id}/events");
    call(conn, http::Method::POST, &path, Some(body), head, read)
        .await
        .map(drop)
}
