//! The runner HTTP API, as the omnigent 0.19.1 server drives it over the tunnel (reference wire file,
//! "Runner tunnel"): an axum `Router` that [`omnigent_tunnel::serve_router`] feeds with `request` frames.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use omnigent_proto::elicitation::{self, Resolution};
use omnigent_proto::events::kind;
use omnigent_proto::headers::{TURN_RECORD_HEADER, TURN_RECORD_WANTED};
use omnigent_proto::runner_api::{EventAccepted, RunnerError, SessionCreate, TurnEvent};
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::agent::AgentLoad;
use crate::harness::HarnessKind;
use crate::session::{Accepted, SessionGone, SessionInit, Sessions, TurnInput};

/// Heartbeat interval of a session stream (`_SESSION_STREAM_HEARTBEAT_INTERVAL_S`).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

pub(crate) fn router(sessions: Sessions) -> Router {
    Router::new()
        .route("/v1/sessions", post(create_session))
        .route("/v1/sessions/{id}", get(get_session))
        .route("/v1/sessions/{id}/stream", get(stream))
        .route("/v1/sessions/{id}/events", post(post_event))
        .route("/v1/sessions/{id}/resources/terminals", get(list_terminals))
        .layer(DefaultBodyLimit::max(omnigent_proto::MAX_FRAME_BYTES))
        .with_state(sessions)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(RunnerError::new(code, message))).into_response()
}

impl IntoResponse for SessionGone {
    fn into_response(self) -> Response {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the session's task stopped; retry, and restart the runner if it persists",
        )
    }
}

fn bad_json(e: serde_json::Error) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_input",
        format!("request body is not JSON: {e}"),
    )
}

/// `POST /v1/sessions`: create or re-initialise a session from the server's `session_init`.
async fn create_session(State(sessions): State<Sessions>, body: Bytes) -> Response {
    let body: SessionCreate = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return bad_json(e),
    };
    let id = body.session_id.as_str();
    if id.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "session_id is required",
        );
    }
    let harness = body.harness_name().and_then(|name| {
        HarnessKind::parse(name)
            .inspect_err(|e| warn!(error = %e, "session init names an unknown harness; using the runner default"))
            .ok()
            .map(|kind| (name.to_owned(), kind))
    });
    // The agent comes from the server before the init is answered, so the first turn has it.
    let agent = match (body.agent_id.as_deref(), sessions.agents()) {
        (Some(agent_id), Some(fetcher)) if !agent_id.is_empty() => Some(fetcher.load(id).await),
        _ => None,
    };
    let init = SessionInit {
        agent_id: body.agent_id.clone(),
        workspace: body.workspace().map(PathBuf::from),
        harness,
        // The loaded spec's MCP servers replace the session's; an init without an agent leaves them.
        mcp_servers: agent.as_ref().map(|agent| match agent {
            AgentLoad::Loaded(loaded) => loaded.mcp_servers.clone(),
            AgentLoad::BuiltIn | AgentLoad::Failed(_) => Vec::new(),
        }),
        agent,
    };
    let handle = sessions.get_or_create(id);
    if let Err(gone) = handle.init(init) {
        return gone.into_response();
    }
    match handle.snapshot().await {
        Ok(mut session) => {
            session["session_init_protocol_version"] =
                json!(omnigent_proto::runner_api::SESSION_INIT_PROTOCOL_VERSION);
            session["terminal_ready"] = Value::Null;
            (StatusCode::CREATED, axum::Json(session)).into_response()
        }
        Err(gone) => gone.into_response(),
    }
}

/// `GET /v1/sessions/{id}`.
async fn get_session(State(sessions): State<Sessions>, Path(id): Path<String>) -> Response {
    match sessions.get_or_create(&id).snapshot().await {
        Ok(session) => axum::Json(session).into_response(),
        Err(gone) => gone.into_response(),
    }
}

/// `GET /v1/sessions/{id}/resources/terminals`: this runner has no terminals.
async fn list_terminals() -> Response {
    axum::Json(
        json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false}),
    )
    .into_response()
}

/// `POST /v1/sessions/{id}/events` with the server's flattened body.
async fn post_event(
    State(sessions): State<Sessions>,
    Path(id): Path<String>,
    body_bytes: Bytes,
) -> Response {
    let body: TurnEvent = match serde_json::from_slice(&body_bytes) {
        Ok(body) => body,
        Err(e) => return bad_json(e),
    };
    let handle = sessions.get_or_create(&id);
    let detail = match body.kind.as_str() {
        "message" => match handle
            .message(TurnInput {
                text: body.content.as_ref().map(message_text).unwrap_or_default(),
                agent_name: body.agent_name().map(str::to_owned),
            })
            .await
        {
            Ok(Accepted::Started) => "Turn started.",
            Ok(Accepted::Queued) => "Queued for the next turn.",
            Err(gone) => return gone.into_response(),
        },
        "interrupt" | "stop_session" => match handle.interrupt().await {
            Ok(true) => "Interrupt requested.",
            Ok(false) => "No turn is running.",
            Err(gone) => return gone.into_response(),
        },
        elicitation::APPROVAL_EVENT => {
            let resolution = serde_json::from_slice::<Value>(&body_bytes)
                .and_then(|body| Resolution::from_event(&body));
            let resolution = match resolution {
                Ok(resolution) => resolution,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_input",
                        format!(
                            "an approval event carries {{\"elicitation_id\", \"action\": \"accept\" | \
                             \"decline\" | \"cancel\", \"content\"?}} (under \"data\" or flat): {e}"
                        ),
                    );
                }
            };
            match handle.resolve(resolution).await {
                Ok(Ok(())) => "Answer delivered.",
                Ok(Err(not_pending)) => {
                    return error(
                        StatusCode::CONFLICT,
                        "already_resolved",
                        not_pending.to_string(),
                    );
                }
                Err(gone) => return gone.into_response(),
            }
        }
        other => {
            debug!(
                event_type = other,
                "event type not handled by this runner; ignored"
            );
            "Ignored."
        }
    };
    (StatusCode::ACCEPTED, axum::Json(EventAccepted::new(detail))).into_response()
}

/// The text of a message's content: a string, or the `text` of its text blocks joined.
fn message_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| {
                matches!(
                    b["type"].as_str(),
                    Some("input_text" | "output_text" | "text") | None
                )
            })
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn sse_frame(event: &Value) -> Bytes {
    Bytes::from(format!("data: {event}\n\n"))
}

/// `events` as SSE `data:` frames, in one chunk.
fn sse_frames<'a>(events: impl IntoIterator<Item = &'a Value>) -> Bytes {
    let mut chunk = Vec::new();
    for event in events {
        chunk.extend_from_slice(b"data: ");
        // Writing a `Value` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut chunk, event);
        chunk.extend_from_slice(b"\n\n");
    }
    Bytes::from(chunk)
}

/// `GET /v1/sessions/{id}/stream`: the session's events as SSE `data:` lines: the ready heartbeat first, then
/// the events kept while the session had no subscriber (a tunnel blip), then the live ones, with a heartbeat
/// every 15 s. A subscriber that sends [`TURN_RECORD_HEADER`] gets the turn's record before the kept events.
async fn stream(
    State(sessions): State<Sessions>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let record = headers
        .get(TURN_RECORD_HEADER)
        .is_some_and(|v| v.as_bytes() == TURN_RECORD_WANTED.as_bytes());
    let mut subscription = match sessions.get_or_create(&id).subscribe(record).await {
        Ok(subscription) => subscription,
        Err(gone) => return gone.into_response(),
    };
    let heartbeat = json!({"type": kind::SESSION_HEARTBEAT});
    // The heartbeat and the backlog in one chunk: a reader that has the ready signal has the backlog too (the
    // server's relay applies it before it judges the runner's status), and it takes no room in the channel of
    // live events, so a long backlog cannot make this subscriber look slow.
    let backlog = std::mem::take(&mut subscription.backlog);
    let opening = sse_frames(std::iter::once(&heartbeat).chain(&backlog));
    let body = async_stream(move |tx| async move {
        if tx.send(opening).await.is_err() {
            return;
        }
        let start = tokio::time::Instant::now() + HEARTBEAT_INTERVAL;
        let mut ticks = tokio::time::interval_at(start, HEARTBEAT_INTERVAL);
        loop {
            let frame = tokio::select! {
                event = subscription.events.recv() => match event {
                    Some(event) => sse_frame(&event),
                    // Dropped as a slow subscriber: end the stream so the server reconnects.
                    None => return,
                },
                _ = ticks.tick() => sse_frame(&heartbeat),
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A body fed by a producer future through a small channel; the producer stops when the body is dropped.
fn async_stream<F, Fut>(producer: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let task = tokio::spawn(producer(tx));
    let stream =
        futures_util::stream::unfold((rx, AbortOnDrop(task)), |(mut rx, guard)| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(b), (rx, guard)))
        });
    Body::from_stream(stream)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::session::SessionDefaults;
    use futures_util::StreamExt;
    use tower::ServiceExt;

    fn echo_sessions() -> Sessions {
        Sessions::new(SessionDefaults {
            workspace: ".".into(),
            harness: HarnessKind::Echo,
            env: Default::default(),
            harness_name: None,
            agents: None,
        })
    }

    fn app() -> Router {
        router(echo_sessions())
    }

    #[tokio::test(start_paused = true)]
    async fn stream_sends_the_ready_heartbeat_at_once_then_one_every_15_s() {
        let response = app()
            .oneshot(
                http::Request::get("/v1/sessions/s1/stream")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        let mut body = response.into_body().into_data_stream();
        let start = tokio::time::Instant::now();
        let heartbeat = Bytes::from_static(b"data: {\"type\":\"session.heartbeat\"}\n\n");
        for expected in [0, 15, 30] {
            assert_eq!(body.next().await.unwrap().unwrap(), heartbeat);
            assert_eq!(start.elapsed(), Duration::from_secs(expected));
        }
    }

    #[tokio::test]
    async fn stream_sends_the_ready_heartbeat_then_what_was_kept_then_live_events() {
        let sessions = echo_sessions();
        let session = sessions.get_or_create("s3");
        // Not text deltas: those of one message would merge while kept.
        let delta = |n: u32| json!({"type": "session.test", "n": n});
        for n in 0..3 {
            session.emit(delta(n));
        }
        let response = router(sessions)
            .oneshot(
                http::Request::get("/v1/sessions/s3/stream")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let mut body = response.into_body().into_data_stream();
        // One chunk: whoever has the ready heartbeat has the backlog too.
        let first = body.next().await.unwrap().unwrap();
        let expected: String = std::iter::once(json!({"type": "session.heartbeat"}))
            .chain((0..3).map(delta))
            .map(|e| format!("data: {e}\n\n"))
            .collect();
        assert_eq!(first, expected.as_bytes());
        session.emit(delta(3));
        let live = body.next().await.unwrap().unwrap();
        assert_eq!(live, format!("data: {}\n\n", delta(3)).as_bytes());
    }

    #[tokio::test]
    async fn unknown_event_types_are_accepted_and_ignored() {
        let response = app()
            .oneshot(
                http::Request::post("/v1/sessions/s2/events")
                    .body(Body::from(r#"{"type":"future_event","x":1}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let response = app()
            .oneshot(
                http::Request::post("/v1/sessions")
                    .body(Body::from(r#"{"no_session_id":true}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    async fn post(app: &Router, uri: &str, body: String) -> (StatusCode, Value) {
        let response = app
            .clone()
            .oneshot(http::Request::post(uri).body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn an_approval_answers_a_pending_question_once_and_refuses_the_rest() {
        use omnigent_proto::elicitation::{Action, Answer, ElicitationParams};
        let sessions = echo_sessions();
        let approvals = sessions.get_or_create("s4").approvals().await.unwrap();
        let app = router(sessions);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = crate::harness::EventSink::new(tx);
        let asking = tokio::spawn(async move {
            let params = ElicitationParams::tool_approval("test", "Bash", "Allow?".into(), "ls");
            approvals
                .ask(&sink, params, None, &Default::default())
                .await
        });
        assert_eq!(rx.recv().await.unwrap()["status"], "waiting");
        let id = rx.recv().await.unwrap()["elicitation_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let answer = |action: Action| Resolution {
            elicitation_id: id.clone(),
            answer: Answer::new(action),
        };
        let uri = "/v1/sessions/s4/events";
        // Not a resolution: 400, and the question still waits.
        let (status, body) = post(
            &app,
            uri,
            json!({"type": "approval", "data": {"action": "accept"}}).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = post(
            &app,
            uri,
            json!({"type": "approval", "elicitation_id": id, "action": "maybe"}).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        // The server's forward (nested, `Resolution::runner_event`): the first answer wins.
        let (status, body) = post(
            &app,
            uri,
            answer(Action::Decline).runner_event().to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(asking.await.unwrap().action, Action::Decline);
        let (status, body) =
            post(&app, uri, answer(Action::Accept).runner_event().to_string()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["code"], "already_resolved");
        // Flat, for an id nobody waits for.
        let (status, _) = post(
            &app,
            uri,
            json!({"type": "approval", "elicitation_id": "elicit_x", "action": "accept"})
                .to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
    }

    #[test]
    fn message_text_reads_strings_and_text_blocks() {
        assert_eq!(message_text(&json!("hi")), "hi");
        assert_eq!(
            message_text(&json!([
                {"type": "input_text", "text": "a"},
                {"type": "input_image", "image_url": "data:…"},
                {"type": "input_text", "text": "b"}
            ])),
            "a\nb"
        );
        assert_eq!(message_text(&Value::Null), "");
    }
}
