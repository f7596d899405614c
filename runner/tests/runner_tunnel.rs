//! The runner process end to end: `omnigent_runner::run` against a real axum server that serves the runner
//! tunnel with `omnigent_tunnel`'s server side, driving whole turns over the tunnel like 0.19.1's server does.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message as AMessage, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use omnigent_proto::events::SseStream;
use omnigent_proto::headers::{TURN_RECORD_HEADER, TURN_RECORD_WANTED};
use omnigent_runner::BackoffPolicy;
use omnigent_runner::harness::HarnessKind;
use omnigent_runner::{CancellationToken, HarnessEnv, RunnerConfig, RunnerError};
use omnigent_tunnel::{RunnerConnection, RunnerRegistry, TunnelConfig, upgrade};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Bound on waits for signals that should come at once; hitting it means the signal never came.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone)]
struct TestServer {
    registry: RunnerRegistry,
    /// (runner id, token header) of each `POST /v1/runners/{id}/token`.
    announces: mpsc::UnboundedSender<(String, Option<String>)>,
}

async fn tunnel_route(
    State(server): State<TestServer>,
    Path(runner_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: http::HeaderMap,
    ws: omnigent_tunnel::TunnelUpgrade,
) -> Response {
    assert_eq!(headers["origin"], "omnigent://internal");
    upgrade(ws, peer, runner_id, &headers, server.registry)
}

async fn token_route(
    State(server): State<TestServer>,
    Path(runner_id): Path<String>,
    headers: http::HeaderMap,
) -> Response {
    let token = headers
        .get(omnigent_proto::headers::RUNNER_TUNNEL_TOKEN)
        .map(|v| v.to_str().unwrap().to_owned());
    let _ = server.announces.send((runner_id, token));
    // What a local 0.19.1 server answers; the runner carries on.
    (StatusCode::BAD_REQUEST, "{\"code\":\"invalid_input\"}").into_response()
}

struct Running {
    registry: RunnerRegistry,
    /// The listening socket (a duplicate), to keep the port across a simulated restart.
    listener: std::net::TcpListener,
    announces: mpsc::UnboundedReceiver<(String, Option<String>)>,
    serve: tokio::task::JoinHandle<()>,
}

async fn start_server_on(listener: tokio::net::TcpListener) -> Running {
    let std_listener = listener.into_std().unwrap();
    let spare = std_listener.try_clone().unwrap();
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    let registry = RunnerRegistry::new(TunnelConfig::default());
    let (announces_tx, announces) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/v1/runners/{id}/tunnel", get(tunnel_route))
        .route("/v1/runners/{id}/token", post(token_route))
        .with_state(TestServer {
            registry: registry.clone(),
            announces: announces_tx,
        });
    let serve = omnigent_testkit::net::serve_on(listener, app).task;
    Running {
        registry,
        listener: spare,
        announces,
        serve,
    }
}

async fn start_server() -> (SocketAddr, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, start_server_on(listener).await)
}

fn fast_backoff() -> BackoffPolicy {
    BackoffPolicy {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        reset_after: Duration::from_secs(60),
    }
}

fn runner_config(addr: SocketAddr, token: Option<&str>, workspace: &FsPath) -> RunnerConfig {
    let mut config = RunnerConfig::new(
        format!("http://{addr}"),
        token.map(str::to_owned),
        workspace.to_path_buf(),
        HarnessKind::Echo,
    );
    config.env = HarnessEnv::default();
    config.backoff = fast_backoff();
    config
}

fn spawn_runner(
    config: RunnerConfig,
) -> (
    tokio::task::JoinHandle<Result<(), RunnerError>>,
    CancellationToken,
) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(omnigent_runner::run(config, shutdown.clone()));
    (task, shutdown)
}

fn json_request(method: &str, path: &str, body: Value) -> http::Request<Bytes> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

async fn call(conn: &RunnerConnection, request: http::Request<Bytes>) -> (u16, Value) {
    let response = tokio::time::timeout(WAIT, conn.request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect_bytes().await;
    (status, serde_json::from_slice(&bytes).unwrap())
}

trait CollectBytes {
    async fn collect_bytes(self) -> Vec<u8>;
}

impl CollectBytes for Body {
    async fn collect_bytes(self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stream = self.into_data_stream();
        while let Some(chunk) = tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }
}

/// A runner SSE stream opened through the tunnel, parsed into events.
struct Events {
    body: SseStream<axum::body::BodyDataStream>,
}

impl Events {
    /// The stream as a 0.19.1 server opens it (no turn record asked for).
    async fn open(conn: &RunnerConnection, session_id: &str) -> Events {
        Events::open_asking(conn, session_id, false).await
    }

    /// The stream, with the turn's record first when `record` (as our server opens it).
    async fn open_asking(conn: &RunnerConnection, session_id: &str, record: bool) -> Events {
        let mut request = http::Request::get(format!("/v1/sessions/{session_id}/stream"));
        if record {
            request = request.header(TURN_RECORD_HEADER, TURN_RECORD_WANTED);
        }
        let response =
            tokio::time::timeout(WAIT, conn.request(request.body(Bytes::new()).unwrap()))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream; charset=utf-8"
        );
        assert_eq!(response.headers()["cache-control"], "no-cache");
        Events {
            body: SseStream::new(response.into_body().into_data_stream(), 1 << 20),
        }
    }

    /// The next event; panics on an event with an `event:` or `id:` line (the runner sends data only).
    async fn next(&mut self) -> Value {
        let event = tokio::time::timeout(WAIT, self.body.next())
            .await
            .expect("an event in time")
            .expect("stream still open")
            .unwrap();
        assert!(
            event.event.is_none() && event.id.is_none(),
            "not a data-only SSE event: {event:?}"
        );
        serde_json::from_str(&event.data).unwrap()
    }

    /// Events up to and including the next `session.status` idle, heartbeats left out.
    async fn until_idle(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await;
            if event["type"] == "session.heartbeat" {
                continue;
            }
            let idle = event["type"] == "session.status" && event["status"] == "idle";
            events.push(event);
            if idle {
                return events;
            }
        }
    }

    /// Skip events until one of `type`; returns it.
    async fn until_type(&mut self, kind: &str) -> Value {
        loop {
            let event = self.next().await;
            if event["type"] == kind {
                return event;
            }
        }
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn message(text: &str) -> Value {
    json!({
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
        "agent_id": "675fd1468fd8985e0f5fef34ba77ed39",
        "model": "test-agent",
        "has_mcp_servers": false,
        "browser_renderer_available": true,
        "persisted_item_id": "78275d6dc1114ad29f7548a0dab9d0d8"
    })
}

fn session_init(session_id: &str, workspace: &FsPath, harness: Option<&str>) -> Value {
    json!({
        "session_id": session_id,
        "agent_id": "675fd1468fd8985e0f5fef34ba77ed39",
        "sub_agent_name": null,
        "session_init": {
            "protocol_version": 2,
            "server_version": "0.19.1",
            "session_id": session_id,
            "snapshot": {
                "workspace": workspace.display().to_string(),
                "labels": {},
                "harness_override": harness,
                "inference_config": null
            },
            "suppress_recovery_turn": false,
            "resume_interrupted_turn": false,
            "recovery_id": null
        }
    })
}

#[tokio::test]
async fn whole_echo_turn_over_the_tunnel() {
    let workspace = tempfile::tempdir().unwrap();
    let (addr, mut server) = start_server().await;
    let config = runner_config(addr, Some("binding-token-1"), workspace.path());
    let runner_id = config.runner_id();
    let (runner, shutdown) = spawn_runner(config);

    let conn = server
        .registry
        .wait_for_runner(&runner_id, WAIT)
        .await
        .expect("runner connects");
    assert_eq!(
        conn.hello().harnesses[..4],
        ["echo", "openai", "anthropic", "exec"]
    );
    assert!(conn.hello().harnesses.iter().any(|h| h == "openai-agents"));
    assert!(conn.hello().capabilities.is_empty());
    let (announced_id, announced_token) = server.announces.recv().await.unwrap();
    assert_eq!(announced_id, runner_id);
    assert_eq!(announced_token.as_deref(), Some("binding-token-1"));

    // 0.19.1's order: stream first (its ready heartbeat), then init, terminals, then the turn.
    let session = "236c499235044eda91f89497da50b959";
    let mut events = Events::open(&conn, session).await;
    assert_eq!(events.next().await, json!({"type": "session.heartbeat"}));
    let (status, created) = call(
        &conn,
        json_request(
            "POST",
            "/v1/sessions",
            session_init(session, workspace.path(), None),
        ),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["id"], session);
    assert_eq!(created["status"], "idle");
    assert_eq!(created["workspace"], workspace.path().display().to_string());
    let (status, terminals) = call(
        &conn,
        http::Request::get(format!(
            "/v1/sessions/{session}/resources/terminals?order=asc&limit=1000"
        ))
        .body(Bytes::new())
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        terminals,
        json!({"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false})
    );

    let (status, accepted) = call(
        &conn,
        json_request(
            "POST",
            &format!("/v1/sessions/{session}/events"),
            message("hello brave world"),
        ),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        accepted,
        json!({"status": "accepted", "detail": "Turn started."})
    );

    let turn = events.until_idle().await;
    assert_eq!(
        types(&turn),
        [
            "session.status",
            "response.in_progress",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_item.done",
            "response.completed",
            "session.status",
        ]
    );
    assert_eq!(turn[0]["status"], "running");
    let in_progress = &turn[1]["response"];
    assert_eq!(in_progress["object"], "response");
    assert_eq!(in_progress["status"], "in_progress");
    assert_eq!(in_progress["output"], json!([]));
    // The agent name the server sent as `model` labels the response, like 0.19.1.
    assert_eq!(in_progress["model"], "test-agent");
    let response_id = in_progress["id"].as_str().unwrap();
    assert!(response_id.starts_with("resp_"));
    let text: String = turn[2..5]
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "hello brave world");
    // The deltas are one message's, and its item carries the whole text (what a server stores).
    let item = &turn[5]["item"];
    assert_eq!(
        (&item["type"], &item["role"], &item["status"]),
        (&json!("message"), &json!("assistant"), &json!("completed"))
    );
    assert_eq!(item["content"][0]["text"], "hello brave world");
    assert_eq!(item["response_id"], response_id);
    assert!(turn[2..5].iter().all(|d| d["message_id"] == item["id"]));
    assert_eq!(turn[6]["response"]["id"], response_id);
    assert_eq!(turn[6]["response"]["status"], "completed");

    let (status, snapshot) = call(
        &conn,
        http::Request::get(format!("/v1/sessions/{session}"))
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    assert_eq!((status, &snapshot["status"]), (200, &json!("idle")));

    // A session the runner never saw is created on first use.
    let mut other = Events::open(&conn, "0123456789abcdef0123456789abcdef").await;
    assert_eq!(other.next().await["type"], "session.heartbeat");
    let (status, _) = call(
        &conn,
        json_request(
            "POST",
            "/v1/sessions/0123456789abcdef0123456789abcdef/events",
            message("again"),
        ),
    )
    .await;
    assert_eq!(status, 202);
    let turn = other.until_idle().await;
    assert_eq!(turn[2]["delta"], "again");

    // Garbage bodies are refused with an error envelope, not a crash.
    let (status, error) = call(
        &conn,
        http::Request::post(format!("/v1/sessions/{session}/events"))
            .header("content-type", "application/json")
            .body(Bytes::from_static(b"{nope"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error["code"], "invalid_input");

    shutdown.cancel();
    tokio::time::timeout(WAIT, runner)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The ids of the items a turn completed.
fn item_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .map(|e| e["item"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn only_a_stream_that_asks_for_the_turn_record_gets_it() {
    let workspace = tempfile::tempdir().unwrap();
    let (addr, server) = start_server().await;
    let config = runner_config(addr, Some("record-token"), workspace.path());
    let runner_id = config.runner_id();
    let (runner, shutdown) = spawn_runner(config);
    let conn = server
        .registry
        .wait_for_runner(&runner_id, WAIT)
        .await
        .expect("runner connects");
    let session = "5b1e0c8f2a3d4e6f8a9b0c1d2e3f4a5b";
    let turn = |text: &str| {
        json_request(
            "POST",
            &format!("/v1/sessions/{session}/events"),
            message(text),
        )
    };

    let mut ours = Events::open_asking(&conn, session, true).await;
    assert_eq!(ours.next().await["type"], "session.heartbeat");
    let (status, _) = call(
        &conn,
        json_request(
            "POST",
            "/v1/sessions",
            session_init(session, workspace.path(), None),
        ),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(call(&conn, turn("first turn")).await.0, 202);
    let first = item_ids(&ours.until_idle().await);
    assert!(!first.is_empty());
    drop(ours);

    // A 0.19.1 server's stream: after its ready heartbeat, the next turn's events and nothing of the last one.
    let mut plain = Events::open(&conn, session).await;
    assert_eq!(plain.next().await["type"], "session.heartbeat");
    assert_eq!(call(&conn, turn("second turn")).await.0, 202);
    let second = plain.until_idle().await;
    assert_eq!(second[0]["type"], "session.status", "{second:?}");
    assert_eq!(second[0]["status"], "running");
    assert!(second.iter().all(|e| e.get("snapshot").is_none()));
    let second = item_ids(&second);
    assert!(!second.is_empty());
    assert!(
        second.iter().all(|id| !first.contains(id)),
        "{first:?} {second:?}"
    );

    // Ours gets the last turn's items again, in the same chunk as the heartbeat.
    let mut again = Events::open_asking(&conn, session, true).await;
    assert_eq!(again.next().await["type"], "session.heartbeat");
    let resent = again.next().await;
    assert_eq!(resent["type"], "response.output_item.done", "{resent:?}");
    assert_eq!(resent["item"]["id"].as_str(), Some(second[0].as_str()));

    drop((plain, again));
    shutdown.cancel();
    tokio::time::timeout(WAIT, runner)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// An exec harness command that prints `got: <prompt>` and then waits until the file `release` appears in the
/// workspace (the test creates it to let the turn finish).
fn gated_exec_env() -> HarnessEnv {
    HarnessEnv {
        exec_command: Some(vec![
            "sh".into(),
            "-c".into(),
            // The new message is the prompt's last line (exec passes the conversation before it).
            "echo \"got: $(printf '%s\\n' \"$1\" | tail -n 1)\"; while [ ! -e release ]; do sleep 0.02; done".into(),
            "sh".into(),
        ]),
        ..HarnessEnv::default()
    }
}

#[tokio::test]
async fn interrupt_mid_turn_and_a_message_queued_during_a_turn() {
    let workspace = tempfile::tempdir().unwrap();
    let (addr, server) = start_server().await;
    let mut config = runner_config(addr, None, workspace.path());
    config.env = gated_exec_env();
    let mut registry_events = server.registry.subscribe();
    let (_runner, shutdown) = spawn_runner(config);
    let omnigent_tunnel::RunnerEvent::Connected { runner_id, .. } =
        tokio::time::timeout(WAIT, registry_events.recv())
            .await
            .unwrap()
            .unwrap()
    else {
        panic!("expected a connect first")
    };
    let conn = server.registry.get(&runner_id).unwrap();
    assert!(conn.runner_id().starts_with("runner_"), "tokenless id");

    let session = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut events = Events::open(&conn, session).await;
    assert_eq!(events.next().await["type"], "session.heartbeat");
    let (status, _) = call(
        &conn,
        json_request(
            "POST",
            "/v1/sessions",
            session_init(session, workspace.path(), Some("exec")),
        ),
    )
    .await;
    assert_eq!(status, 201);
    let events_path = format!("/v1/sessions/{session}/events");

    // Turn 1 runs and blocks on the gate.
    let (status, body) = call(&conn, json_request("POST", &events_path, message("first"))).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (202, Some("Turn started."))
    );
    let delta = events.until_type("response.output_text.delta").await;
    assert!(
        delta["delta"].as_str().unwrap().contains("got: first"),
        "{delta}"
    );

    // A message while it runs is queued for the next turn, not started.
    let (status, body) = call(&conn, json_request("POST", &events_path, message("second"))).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (202, Some("Queued for the next turn."))
    );
    let (_, snapshot) = call(
        &conn,
        http::Request::get(format!("/v1/sessions/{session}"))
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    assert_eq!(snapshot["status"], "running");

    // Interrupt turn 1: it ends incomplete (user_interrupt), then idle.
    let (status, body) = call(
        &conn,
        json_request("POST", &events_path, json!({"type": "interrupt"})),
    )
    .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (202, Some("Interrupt requested."))
    );
    let rest = events.until_idle().await;
    assert_eq!(
        types(&rest),
        [
            "response.output_item.done",
            "response.incomplete",
            "session.status"
        ]
    );
    assert_eq!(rest[0]["item"]["status"], "incomplete");
    assert_eq!(
        rest[1]["response"]["incomplete_details"],
        json!({"reason": "user_interrupt"})
    );
    assert_eq!(rest[1]["response"]["status"], "incomplete");

    // The queued message runs next, and this time the gate opens: it completes.
    let running = events.next().await;
    assert_eq!(
        running,
        json!({"type": "session.status", "status": "running"})
    );
    let delta = events.until_type("response.output_text.delta").await;
    assert!(
        delta["delta"].as_str().unwrap().contains("got: second"),
        "{delta}"
    );
    std::fs::write(workspace.path().join("release"), b"").unwrap();
    let rest = events.until_idle().await;
    assert_eq!(types(&rest).last(), Some(&"session.status"));
    assert!(types(&rest).contains(&"response.completed"), "{rest:?}");

    // Interrupting an idle session is accepted and changes nothing.
    let (status, body) = call(
        &conn,
        json_request("POST", &events_path, json!({"type": "interrupt"})),
    )
    .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (202, Some("No turn is running."))
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_failing_harness_emits_error_and_failed_then_idle() {
    let workspace = tempfile::tempdir().unwrap();
    let (addr, server) = start_server().await;
    // The exec harness with no command configured: a configuration error for the turn, not the runner.
    let mut config = runner_config(addr, Some("tok-fail"), workspace.path());
    config.harness = HarnessKind::Exec;
    let runner_id = config.runner_id();
    let (_runner, shutdown) = spawn_runner(config);
    let conn = server
        .registry
        .wait_for_runner(&runner_id, WAIT)
        .await
        .unwrap();
    let session = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let mut events = Events::open(&conn, session).await;
    events.next().await;
    let (status, _) = call(
        &conn,
        json_request(
            "POST",
            &format!("/v1/sessions/{session}/events"),
            message("hi"),
        ),
    )
    .await;
    assert_eq!(status, 202);
    let turn = events.until_idle().await;
    assert_eq!(
        types(&turn),
        [
            "session.status",
            "response.in_progress",
            "response.error",
            "response.failed",
            "session.status"
        ]
    );
    assert_eq!(turn[2]["source"], "llm");
    assert_eq!(turn[2]["error"]["code"], "harness_not_configured");
    let message = turn[2]["error"]["message"].as_str().unwrap();
    assert!(message.contains("OMNIGENT_EXEC_COMMAND"), "{message}");
    assert_eq!(turn[3]["response"]["status"], "failed");
    assert_eq!(turn[3]["response"]["error"]["message"], message);
    shutdown.cancel();
}

/// A hand-played server: sends what a 0.19.1 server may send that we do not use, then a request.
#[tokio::test]
async fn unknown_frames_are_tolerated() {
    let (hello_tx, mut hello_rx) = mpsc::unbounded_channel::<Value>();
    let (answer_tx, mut answer_rx) = mpsc::unbounded_channel::<Value>();
    let app = Router::new().route(
        "/v1/runners/{id}/tunnel",
        get(move |ws: WebSocketUpgrade| {
            let (hello_tx, answer_tx) = (hello_tx.clone(), answer_tx.clone());
            async move {
                ws.on_upgrade(move |mut socket| async move {
                    let Some(Ok(AMessage::Text(hello))) = socket.recv().await else {
                        return;
                    };
                    hello_tx.send(serde_json::from_str(hello.as_str()).unwrap()).unwrap();
                    for frame in [
                        json!({"kind": "event.ready"}).to_string(),
                        json!({"kind": "event.ack", "id": "1", "applied": 0}).to_string(),
                        "not json at all".to_owned(),
                        json!({"kind": "request", "id": "r1", "method": "GET", "path": "/v1/sessions/cccccccccccccccccccccccccccccccc", "query_string": "", "headers": [["host", "runner"]], "body": null, "encoding": "utf-8", "stream": true, "future_field": [1, 2]}).to_string(),
                    ] {
                        socket.send(AMessage::Text(frame.into())).await.unwrap();
                    }
                    while let Some(Ok(AMessage::Text(text))) = socket.recv().await {
                        let value: Value = serde_json::from_str(text.as_str()).unwrap();
                        let _ = answer_tx.send(value);
                    }
                })
            }
        }),
    );
    let addr = omnigent_testkit::serve(app).await.addr;
    let workspace = tempfile::tempdir().unwrap();
    let (_runner, shutdown) = spawn_runner(runner_config(addr, Some("t"), workspace.path()));
    let hello = tokio::time::timeout(WAIT, hello_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hello["kind"], "hello");
    assert_eq!(hello["frame_protocol_version"], 1);
    let head = tokio::time::timeout(WAIT, answer_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            head["kind"].as_str(),
            head["id"].as_str(),
            head["status"].as_u64()
        ),
        (Some("response.head"), Some("r1"), Some(200))
    );
    let body = tokio::time::timeout(WAIT, answer_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let session: Value = serde_json::from_str(body["body"].as_str().unwrap()).unwrap();
    assert_eq!(session["id"], "cccccccccccccccccccccccccccccccc");
    shutdown.cancel();
}

/// A server that refuses the tunnel with `code` after the hello.
async fn refusing_server(code: u16) -> SocketAddr {
    let app = Router::new().route(
        "/v1/runners/{id}/tunnel",
        get(move |ws: WebSocketUpgrade| async move {
            ws.on_upgrade(move |mut socket| async move {
                let _ = socket.recv().await;
                let _ = socket
                    .send(AMessage::Close(Some(CloseFrame {
                        code,
                        reason: "refused by test".into(),
                    })))
                    .await;
            })
        }),
    );
    omnigent_testkit::serve(app).await.addr
}

#[tokio::test]
async fn fatal_close_codes_stop_the_runner_with_a_config_error() {
    let workspace = tempfile::tempdir().unwrap();
    for code in [4001u16, 4002, 4004, 4500] {
        let addr = refusing_server(code).await;
        let (runner, _shutdown) = spawn_runner(runner_config(addr, Some("t"), workspace.path()));
        let err = tokio::time::timeout(WAIT, runner)
            .await
            .expect("a fatal close ends the runner")
            .unwrap()
            .unwrap_err();
        match &err {
            RunnerError::Refused { code: got, reason } => {
                assert_eq!(*got, code);
                assert_eq!(reason, "refused by test");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(err.to_string().contains(&code.to_string()), "{err}");
    }
}

#[tokio::test]
async fn unauthorized_before_the_first_connection_is_fatal() {
    let app = Router::new().route(
        "/v1/runners/{id}/tunnel",
        get(|| async { (StatusCode::UNAUTHORIZED, "no") }),
    );
    let addr = omnigent_testkit::serve(app).await.addr;
    let workspace = tempfile::tempdir().unwrap();
    let (runner, _shutdown) = spawn_runner(runner_config(addr, Some("t"), workspace.path()));
    let err = tokio::time::timeout(WAIT, runner)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, RunnerError::Unauthorized { status: 401 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("--token"));
}

#[tokio::test]
async fn a_non_fatal_close_reconnects_and_a_server_restart_is_survived() {
    let workspace = tempfile::tempdir().unwrap();
    let (addr, server) = start_server().await;
    let config = runner_config(addr, Some("restart-token"), workspace.path());
    let runner_id = config.runner_id();
    let (runner, shutdown) = spawn_runner(config);
    let first = server
        .registry
        .wait_for_runner(&runner_id, WAIT)
        .await
        .unwrap();

    // A routine close (4003) is retried.
    let mut registry_events = server.registry.subscribe();
    first.close(4003, "tunnel closed");
    let second = loop {
        if let omnigent_tunnel::RunnerEvent::Connected { generation, .. } =
            tokio::time::timeout(WAIT, registry_events.recv())
                .await
                .unwrap()
                .unwrap()
        {
            break server
                .registry
                .get(&runner_id)
                .filter(|c| c.generation() == generation);
        }
    }
    .expect("reconnected");
    assert!(second.generation() > first.generation());

    // The server goes away: its app stops and its tunnels are closed 1012. The port stays ours (a duplicate of
    // the listening socket), so no parallel test can take it; while "down" it drops every connection.
    let spare = server.listener.try_clone().unwrap();
    server.serve.abort();
    let _ = server.serve.await;
    server.registry.close_all(1012, "service restart");
    second.closed().await;
    let (attempt_tx, mut attempts) = mpsc::unbounded_channel();
    let down = {
        let spare = tokio::net::TcpListener::from_std(spare.try_clone().unwrap()).unwrap();
        tokio::spawn(async move {
            loop {
                let (socket, _) = spare.accept().await.unwrap();
                drop(socket);
                let _ = attempt_tx.send(());
            }
        })
    };
    // The runner keeps trying while the server is down…
    for _ in 0..2 {
        tokio::time::timeout(WAIT, attempts.recv())
            .await
            .unwrap()
            .unwrap();
    }
    down.abort();
    let _ = down.await;

    // …and finds it when it comes back on the same port.
    let listener = tokio::net::TcpListener::from_std(spare).unwrap();
    let server = start_server_on(listener).await;
    let conn = server
        .registry
        .wait_for_runner(&runner_id, WAIT)
        .await
        .expect("runner reconnects to the restarted server");
    let session = "dddddddddddddddddddddddddddddddd";
    let mut events = Events::open(&conn, session).await;
    events.next().await;
    let (status, _) = call(
        &conn,
        json_request(
            "POST",
            &format!("/v1/sessions/{session}/events"),
            message("back"),
        ),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(events.until_idle().await[2]["delta"], "back");
    shutdown.cancel();
    tokio::time::timeout(WAIT, runner)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn unauthorized_after_a_successful_connection_is_retried() {
    let workspace = tempfile::tempdir().unwrap();
    let (addr, server) = start_server().await;
    let config = runner_config(addr, Some("later-401"), workspace.path());
    let runner_id = config.runner_id();
    let (runner, shutdown) = spawn_runner(config);
    let conn = server
        .registry
        .wait_for_runner(&runner_id, WAIT)
        .await
        .unwrap();

    // The server now answers every upgrade with 401: the runner must keep trying, not exit.
    let spare = server.listener.try_clone().unwrap();
    server.serve.abort();
    let _ = server.serve.await;
    let (attempt_tx, mut attempts) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/v1/runners/{id}/tunnel",
            get(move || {
                let attempt_tx = attempt_tx.clone();
                async move {
                    let _ = attempt_tx.send(());
                    (StatusCode::UNAUTHORIZED, "token expired")
                }
            }),
        )
        .route(
            "/v1/runners/{id}/token",
            post(|| async { StatusCode::BAD_REQUEST }),
        );
    let listener = tokio::net::TcpListener::from_std(spare).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    conn.close(4003, "tunnel closed");
    for _ in 0..3 {
        tokio::time::timeout(WAIT, attempts.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(!runner.is_finished(), "a 401 after a success is retried");
    shutdown.cancel();
    tokio::time::timeout(WAIT, runner)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
