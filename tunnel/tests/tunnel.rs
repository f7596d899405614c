#![allow(clippy::unwrap_used)]
//! The runner tunnel end to end: a real axum server on 127.0.0.1:0 serving `/v1/runners/{id}/tunnel` with
//! `serve_runner_socket`, and real tokio-tungstenite clients (either `serve_router` or a raw frame-level peer).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use omnigent_proto::headers::RUNNER_TUNNEL_TOKEN;
use omnigent_proto::ids::runner_id_for_token;
use omnigent_proto::runner_frames::{Hello, RunnerFrame};
use omnigent_tunnel::TunnelUpgrade;
use omnigent_tunnel::{
    RouterConfig, RunnerEvent, RunnerRegistry, ServeEnd, TunnelConfig, TunnelError, serve_router,
    upgrade,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A bound on waits that should finish at once; a test failing on it means the awaited signal never came.
const WAIT: Duration = Duration::from_secs(10);

async fn tunnel_route(
    State(registry): State<RunnerRegistry>,
    Path(runner_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: http::HeaderMap,
    ws: TunnelUpgrade,
) -> Response {
    upgrade(ws, peer, runner_id, &headers, registry)
}

/// The same tunnel, but as if the peer were on another machine.
async fn remote_tunnel_route(
    State(registry): State<RunnerRegistry>,
    Path(runner_id): Path<String>,
    headers: http::HeaderMap,
    ws: TunnelUpgrade,
) -> Response {
    let peer: SocketAddr = "10.1.2.3:4567".parse().unwrap();
    upgrade(ws, peer, runner_id, &headers, registry)
}

async fn start_server(config: TunnelConfig) -> (SocketAddr, RunnerRegistry) {
    let registry = RunnerRegistry::new(config);
    let app = Router::new()
        .route("/v1/runners/{id}/tunnel", get(tunnel_route))
        .route("/remote/v1/runners/{id}/tunnel", get(remote_tunnel_route))
        .with_state(registry.clone());
    let addr = omnigent_testkit::serve(app).await.addr;
    (addr, registry)
}

async fn dial_path(addr: SocketAddr, path: &str, token: Option<&str>) -> Ws {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "omnigent://internal".parse().unwrap());
    if let Some(token) = token {
        request
            .headers_mut()
            .insert(RUNNER_TUNNEL_TOKEN, token.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

async fn dial(addr: SocketAddr, runner_id: &str, token: Option<&str>) -> Ws {
    dial_path(addr, &format!("/v1/runners/{runner_id}/tunnel"), token).await
}

fn hello() -> Hello {
    serde_json::from_value(json!({
        "runner_version": "test",
        "frame_protocol_version": 1,
        "harnesses": ["echo"],
        "envs": [],
        "telemetry_opt_out": true,
        "capabilities": []
    }))
    .unwrap()
}

fn hello_text(version: u32) -> String {
    let mut h = hello();
    h.frame_protocol_version = version;
    RunnerFrame::Hello(h).encode()
}

/// Dial and serve `router` in the background; returns its end and a shutdown switch.
async fn start_runner(
    addr: SocketAddr,
    runner_id: &str,
    router: Router,
) -> (tokio::task::JoinHandle<ServeEnd>, CancellationToken) {
    let ws = dial(addr, runner_id, None).await;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        serve_router(ws, hello(), router, RouterConfig::default(), stop).await
    });
    (task, shutdown)
}

/// Read frames until a close; returns its code and reason.
async fn read_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("read failed before the close: {e}"),
        }
    }
}

/// Read the next runner frame (skipping pings).
async fn next_frame(ws: &mut Ws) -> RunnerFrame {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(text))) => match RunnerFrame::decode(text.as_str()).unwrap() {
                RunnerFrame::Ping(_) => {}
                frame => return frame,
            },
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
}

async fn body_text(response: http::Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn get_request(path: &str) -> http::Request<Bytes> {
    http::Request::get(path).body(Bytes::new()).unwrap()
}

fn echo_router() -> Router {
    Router::new()
        .route(
            "/v1/echo",
            post(|headers: http::HeaderMap, body: Bytes| async move {
                let ct = headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                ([("content-type", ct), ("x-echo", "yes".to_owned())], body)
            }),
        )
        .route(
            "/v1/query",
            get(|uri: http::Uri, headers: http::HeaderMap| async move {
                axum::Json(json!({
                    "query": uri.query(),
                    "host": headers.get("host").map(|h| h.to_str().unwrap().to_owned()),
                }))
            }),
        )
}

#[tokio::test]
async fn request_and_response_round_trip_text_and_binary() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let (_runner, _stop) = start_runner(addr, "runner_rt", echo_router()).await;
    let conn = registry
        .wait_for_runner("runner_rt", WAIT)
        .await
        .expect("runner registers");
    assert_eq!(conn.hello().harnesses, vec!["echo"]);
    let listed = registry.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].runner_id, "runner_rt");
    assert_eq!(listed[0].harnesses, vec!["echo"]);

    let response = conn
        .request(
            http::Request::post("/v1/echo")
                .header("content-type", "application/json")
                .body(Bytes::from_static(br#"{"hi":"there"}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo"], "yes");
    assert_eq!(body_text(response).await, r#"{"hi":"there"}"#);

    // Binary bodies travel base64 both ways and come back byte for byte.
    let binary: Vec<u8> = (0u8..=255).collect();
    let response = registry
        .request(
            "runner_rt",
            http::Request::post("/v1/echo")
                .header("content-type", "application/octet-stream")
                .body(Bytes::from(binary.clone()))
                .unwrap(),
        )
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes.as_ref(), binary.as_slice());

    let response = conn
        .request(get_request("/v1/query?order=asc&limit=5"))
        .await
        .unwrap();
    let value: Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(
        value,
        json!({"query": "order=asc&limit=5", "host": "runner"})
    );

    let response = conn.request(get_request("/v1/missing")).await.unwrap();
    assert_eq!(response.status(), 404);

    assert_eq!(
        registry
            .request("runner_nobody", get_request("/v1/query"))
            .await
            .unwrap_err(),
        TunnelError::RunnerOffline("runner_nobody".to_owned())
    );
}

/// A router whose `/v1/stream` body is fed by the test, chunk by chunk; `dropped` fires when the handler's
/// body is dropped (the request was cancelled or finished).
fn streaming_router(
    chunks: mpsc::UnboundedReceiver<&'static str>,
    dropped: oneshot::Sender<()>,
) -> Router {
    struct Guard(Option<oneshot::Sender<()>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
    let state = std::sync::Arc::new(std::sync::Mutex::new(Some((chunks, dropped))));
    Router::new().route(
        "/v1/stream",
        get(move || {
            let state = state.clone();
            async move {
                let (chunks, dropped) = state.lock().unwrap().take().unwrap();
                let guard = Guard(Some(dropped));
                let stream = futures_util::stream::unfold(
                    (chunks, guard),
                    |(mut chunks, guard)| async move {
                        let chunk = chunks.recv().await?;
                        Some((Ok::<_, Infallible>(Bytes::from(chunk)), (chunks, guard)))
                    },
                );
                (
                    [("content-type", "text/event-stream; charset=utf-8")],
                    Body::from_stream(stream),
                )
            }
        }),
    )
}

#[tokio::test]
async fn sse_body_streams_chunk_by_chunk_until_end() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let (chunk_tx, chunk_rx) = mpsc::unbounded_channel();
    let (dropped_tx, dropped_rx) = oneshot::channel();
    let (_runner, _stop) =
        start_runner(addr, "runner_sse", streaming_router(chunk_rx, dropped_tx)).await;
    let conn = registry.wait_for_runner("runner_sse", WAIT).await.unwrap();

    chunk_tx
        .send("data: {\"type\":\"session.heartbeat\"}\n\n")
        .unwrap();
    let response = conn.request(get_request("/v1/stream")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let mut body = response.into_body().into_data_stream();
    // Each chunk arrives before the next one even exists: the body is streamed, not buffered.
    let first = body.next().await.unwrap().unwrap();
    assert_eq!(
        first.as_ref(),
        b"data: {\"type\":\"session.heartbeat\"}\n\n"
    );
    chunk_tx
        .send("data: {\"type\":\"session.status\",\"status\":\"running\"}\n\n")
        .unwrap();
    let second = body.next().await.unwrap().unwrap();
    assert!(second.starts_with(b"data: {\"type\":\"session.status\""));
    drop(chunk_tx);
    assert!(body.next().await.is_none(), "response.end ends the body");
    tokio::time::timeout(WAIT, dropped_rx)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn dropping_the_response_body_cancels_the_runner_handler() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let (chunk_tx, chunk_rx) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped_rx) = oneshot::channel();
    let (_runner, _stop) = start_runner(
        addr,
        "runner_cancel",
        streaming_router(chunk_rx, dropped_tx),
    )
    .await;
    let conn = registry
        .wait_for_runner("runner_cancel", WAIT)
        .await
        .unwrap();

    chunk_tx.send("data: 1\n\n").unwrap();
    let response = conn.request(get_request("/v1/stream")).await.unwrap();
    let mut body = response.into_body().into_data_stream();
    assert_eq!(body.next().await.unwrap().unwrap().as_ref(), b"data: 1\n\n");
    assert!(
        dropped_rx.try_recv().is_err(),
        "the handler is still running while the body is open"
    );
    drop(body);
    // request.cancel reaches the runner, which aborts the handler and drops its body.
    tokio::time::timeout(WAIT, dropped_rx)
        .await
        .expect("handler aborted after cancel")
        .unwrap();
    // The tunnel is still usable.
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn newest_connection_wins_and_the_old_one_fails_its_requests() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let mut events = registry.subscribe();
    let (_chunk_tx, chunk_rx) = mpsc::unbounded_channel();
    let (dropped_tx, _dropped_rx) = oneshot::channel();
    let (old_runner, _stop_old) =
        start_runner(addr, "runner_dup", streaming_router(chunk_rx, dropped_tx)).await;
    let old = registry.wait_for_runner("runner_dup", WAIT).await.unwrap();
    let in_flight = old.request(get_request("/v1/stream")).await.unwrap();
    let mut in_flight = in_flight.into_body().into_data_stream();

    let (new_runner, stop_new) = start_runner(addr, "runner_dup", echo_router()).await;
    // The old tunnel is closed 4000 "tunnel replaced"…
    let end = tokio::time::timeout(WAIT, old_runner)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        end,
        ServeEnd::Closed {
            code: Some(4000),
            reason: "tunnel replaced".to_owned()
        }
    );
    // …its in-flight request fails with a clear error…
    let err = in_flight.next().await.unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains("tunnel closed before request completed"),
        "{err}"
    );
    old.closed().await;
    // …and the old handler's deregistration did not remove the new tunnel.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(
            tokio::time::timeout(WAIT, events.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let new = registry.get("runner_dup").expect("new tunnel registered");
    assert!(new.generation() > old.generation());
    assert_eq!(
        seen,
        [
            RunnerEvent::Connected {
                runner_id: "runner_dup".into(),
                generation: old.generation()
            },
            RunnerEvent::Connected {
                runner_id: "runner_dup".into(),
                generation: new.generation()
            }
        ]
    );
    let response = registry
        .request(
            "runner_dup",
            http::Request::post("/v1/echo")
                .header("content-type", "text/plain")
                .body(Bytes::from_static(b"to the new one"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(body_text(response).await, "to the new one");
    assert_eq!(
        old.request(get_request("/v1/query")).await.unwrap_err(),
        TunnelError::Closed
    );
    // The replaced tunnel's end announced nothing: the next event is the live tunnel's own end.
    stop_new.cancel();
    assert_eq!(new_runner.await.unwrap(), ServeEnd::Shutdown);
    assert_eq!(
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap(),
        RunnerEvent::Disconnected {
            runner_id: "runner_dup".into(),
            generation: new.generation()
        }
    );
    assert!(!registry.is_online("runner_dup"));
}

#[tokio::test]
async fn runner_going_away_fails_open_requests_and_deregisters() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let mut events = registry.subscribe();
    let (_chunk_tx, chunk_rx) = mpsc::unbounded_channel();
    let (dropped_tx, dropped_rx) = oneshot::channel();
    let (runner, stop) =
        start_runner(addr, "runner_gone", streaming_router(chunk_rx, dropped_tx)).await;
    let conn = registry.wait_for_runner("runner_gone", WAIT).await.unwrap();
    let response = conn.request(get_request("/v1/stream")).await.unwrap();
    stop.cancel();
    assert_eq!(runner.await.unwrap(), ServeEnd::Shutdown);
    // The runner aborted its handlers on the way out.
    tokio::time::timeout(WAIT, dropped_rx)
        .await
        .unwrap()
        .unwrap();
    let err = response.into_body().collect().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("tunnel closed before request completed")
    );
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        if let RunnerEvent::Disconnected { generation, .. } = event {
            assert_eq!(generation, conn.generation());
            break;
        }
    }
    assert!(!registry.is_online("runner_gone"));
    assert!(registry.list().is_empty());
}

#[tokio::test]
async fn wait_for_runner_is_woken_by_the_connection_and_times_out_otherwise() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    assert!(
        registry
            .wait_for_runner("runner_never", Duration::from_millis(50))
            .await
            .is_none()
    );
    let waiter = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.wait_for_runner("runner_later", WAIT).await })
    };
    let (_runner, _stop) = start_runner(addr, "runner_later", echo_router()).await;
    let conn = waiter.await.unwrap().expect("waiter woken by the connect");
    assert_eq!(conn.runner_id(), "runner_later");
}

#[tokio::test]
async fn token_must_match_the_runner_id() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let mut ws = dial(
        addr,
        "runner_token_00000000000000000000000000000000",
        Some("secret"),
    )
    .await;
    assert_eq!(
        read_close(&mut ws).await,
        (4004, "runner_id does not match tunnel token".to_owned())
    );
    // The matching id is accepted.
    let id = runner_id_for_token("secret");
    let mut ws = dial(addr, &id, Some("secret")).await;
    ws.send(Message::text(hello_text(1))).await.unwrap();
    assert!(registry.wait_for_runner(&id, WAIT).await.is_some());
}

#[tokio::test]
async fn remote_runner_needs_a_token() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let mut ws = dial_path(addr, "/remote/v1/runners/runner_x/tunnel", None).await;
    assert_eq!(
        read_close(&mut ws).await,
        (4004, "runner tunnel token is required".to_owned())
    );
    let id = runner_id_for_token("tok");
    let mut ws = dial_path(
        addr,
        &format!("/remote/v1/runners/{id}/tunnel"),
        Some("tok"),
    )
    .await;
    ws.send(Message::text(hello_text(1))).await.unwrap();
    assert!(registry.wait_for_runner(&id, WAIT).await.is_some());
}

#[tokio::test]
async fn first_frame_must_be_a_hello_of_protocol_1() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let mut ws = dial(addr, "runner_a", None).await;
    ws.send(Message::text(r#"{"kind":"ping","ts":1}"#))
        .await
        .unwrap();
    assert_eq!(
        read_close(&mut ws).await,
        (4001, "hello expected".to_owned())
    );

    let mut ws = dial(addr, "runner_b", None).await;
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(read_close(&mut ws).await.0, 4001);

    let mut ws = dial(addr, "runner_c", None).await;
    ws.send(Message::text(hello_text(2))).await.unwrap();
    assert_eq!(read_close(&mut ws).await.0, 4002);
    assert!(registry.list().is_empty());
}

#[tokio::test]
async fn no_hello_in_time_is_closed_4001() {
    let config = TunnelConfig {
        hello_timeout: Duration::from_millis(100),
        ..TunnelConfig::default()
    };
    let (addr, _registry) = start_server(config).await;
    let mut ws = dial(addr, "runner_silent", None).await;
    assert_eq!(
        read_close(&mut ws).await,
        (4001, "hello expected".to_owned())
    );
}

#[tokio::test]
async fn malformed_unknown_and_binary_frames_are_skipped_by_the_server() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let mut ws = dial(addr, "runner_raw", None).await;
    ws.send(Message::text(hello_text(1))).await.unwrap();
    let conn = registry.wait_for_runner("runner_raw", WAIT).await.unwrap();
    for junk in [
        Message::text("{not json"),
        Message::text(r#"{"kind":"event.batch","id":"b1","session_id":"s","events":[]}"#),
        Message::text(r#"{"no_kind":true}"#),
        Message::text(r#"{"kind":"response.end","id":"late-unknown-id"}"#),
        Message::binary(vec![1u8, 2, 3]),
    ] {
        ws.send(junk).await.unwrap();
    }
    let request = tokio::spawn(async move { conn.request(get_request("/v1/x")).await });
    let RunnerFrame::Request(req) = next_frame(&mut ws).await else {
        panic!("expected a request")
    };
    assert_eq!(req.path, "/v1/x");
    assert_eq!(req.body, None);
    for frame in [
        json!({"kind":"response.head","id":req.id,"status":200,"headers":[["content-type","text/plain"]],"extra_field":1}),
        json!({"kind":"response.body","id":req.id,"body":"aGVsbG8=","encoding":"base64"}),
        json!({"kind":"response.body","id":req.id,"body":" world","encoding":"utf-8"}),
        json!({"kind":"response.end","id":req.id}),
    ] {
        ws.send(Message::text(frame.to_string())).await.unwrap();
    }
    let response = request.await.unwrap().unwrap();
    assert_eq!(body_text(response).await, "hello world");
    assert!(registry.is_online("runner_raw"));
}

#[tokio::test]
async fn oversized_frame_is_refused() {
    let config = TunnelConfig {
        max_frame_bytes: 1024,
        ..TunnelConfig::default()
    };
    let (addr, registry) = start_server(config).await;
    let mut ws = dial(addr, "runner_big", None).await;
    ws.send(Message::text(hello_text(1))).await.unwrap();
    registry.wait_for_runner("runner_big", WAIT).await.unwrap();
    let big = json!({"kind":"pong","ts":1,"pad":"x".repeat(2048)}).to_string();
    ws.send(Message::text(big)).await.unwrap();
    let (code, reason) = read_close(&mut ws).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("1024"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn silent_runner_is_closed_after_90_s_and_any_frame_keeps_it_alive() {
    let config = TunnelConfig {
        // Generous so that paused time can never expire the handshake while the hello is in flight.
        hello_timeout: Duration::from_secs(3600),
        ..TunnelConfig::default()
    };
    let (addr, registry) = start_server(config).await;
    let mut events = registry.subscribe();
    let mut ws = dial(addr, "runner_quiet", None).await;
    ws.send(Message::text(hello_text(1))).await.unwrap();
    let conn = registry
        .wait_for_runner("runner_quiet", WAIT)
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut pings = Vec::new();
    let mut last_answer = start;
    let (code, reason) = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => {
                let RunnerFrame::Ping(ping) = RunnerFrame::decode(text.as_str()).unwrap() else {
                    panic!("unexpected frame {text}")
                };
                pings.push(start.elapsed());
                // Answer the first two pings (at 30 s and 60 s), then go silent.
                if pings.len() <= 2 {
                    let pong = json!({"kind": "pong", "ts": ping.ts}).to_string();
                    ws.send(Message::text(pong)).await.unwrap();
                    last_answer = tokio::time::Instant::now();
                }
            }
            Message::Close(Some(frame)) => break (u16::from(frame.code), frame.reason.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    };
    let closed_at = start.elapsed();
    assert_eq!((code, reason.as_str()), (4003, "ping timeout"));
    assert_eq!(pings[0], Duration::from_secs(30));
    assert_eq!(pings[1], Duration::from_secs(60));
    // 90 s after the last inbound frame, not 90 s after the connect.
    let silent = closed_at - (last_answer - start);
    assert!(
        silent >= Duration::from_secs(90),
        "closed after {silent:?} of silence"
    );
    assert!(
        closed_at < Duration::from_secs(181),
        "closed at {closed_at:?}"
    );
    conn.closed().await;
    while events.recv().await.unwrap()
        != (RunnerEvent::Disconnected {
            runner_id: "runner_quiet".into(),
            generation: conn.generation(),
        })
    {}
    assert!(!registry.is_online("runner_quiet"));
}

/// A hand-played server: checks what `serve_router` tolerates and answers, frame by frame.
#[tokio::test]
async fn runner_side_skips_unknown_frames_answers_pings_and_refuses_ws_channels() {
    let (frames_tx, mut frames_rx) = mpsc::unbounded_channel::<Value>();
    let app = Router::new().route(
        "/tunnel",
        get(move |ws: WebSocketUpgrade| {
            let frames_tx = frames_tx.clone();
            async move {
                ws.on_upgrade(move |mut socket| async move {
                    use axum::extract::ws::Message as AMessage;
                    for frame in [
                        json!({"kind": "event.ready"}).to_string(),
                        json!({"kind": "event.ack", "id": "x"}).to_string(),
                        "}{ not json".to_owned(),
                        json!({"kind": "request.cancel", "id": "unknown-id"}).to_string(),
                        json!({"kind": "ws.open", "ch_id": "0a0b0c0d", "path": "/v1/sessions/s/resources/terminals/t/attach", "query_string": ""}).to_string(),
                        json!({"kind": "ping", "ts": 1234}).to_string(),
                        json!({"kind": "request", "id": "r1", "method": "POST", "path": "/v1/echo", "query_string": "", "headers": [["content-type", "application/json"]], "body": "{\"a\":1}", "encoding": "utf-8", "stream": true}).to_string(),
                    ] {
                        socket.send(AMessage::Text(frame.into())).await.unwrap();
                    }
                    socket.send(AMessage::Binary(Bytes::from_static(b"\x00"))).await.unwrap();
                    while let Some(Ok(AMessage::Text(text))) = socket.recv().await {
                        let value: Value = serde_json::from_str(text.as_str()).unwrap();
                        let end = value["kind"] == "response.end";
                        frames_tx.send(value).unwrap();
                        if end {
                            break;
                        }
                    }
                })
            }
        }),
    );
    let addr = omnigent_testkit::serve(app).await.addr;
    let ws = dial_path(addr, "/tunnel", None).await;
    let runner = tokio::spawn(serve_router(
        ws,
        hello(),
        echo_router(),
        RouterConfig::default(),
        CancellationToken::new(),
    ));
    let mut got = Vec::new();
    loop {
        let frame = tokio::time::timeout(WAIT, frames_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let end = frame["kind"] == "response.end";
        got.push(frame);
        if end {
            break;
        }
    }
    assert_eq!(got[0]["kind"], "hello");
    assert_eq!(got[0]["frame_protocol_version"], 1);
    let find = |kind: &str| got.iter().find(|f| f["kind"] == kind).cloned();
    assert_eq!(
        find("ws.close").unwrap(),
        json!({"kind": "ws.close", "ch_id": "0a0b0c0d", "code": 4404, "reason": "websocket channels are not served by this runner"})
    );
    assert_eq!(find("pong").unwrap(), json!({"kind": "pong", "ts": 1234}));
    let head = find("response.head").unwrap();
    assert_eq!(head["id"], "r1");
    assert_eq!(head["status"], 200);
    let body = find("response.body").unwrap();
    assert_eq!(body["body"], "{\"a\":1}");
    assert_eq!(body["encoding"], "utf-8");
    // The server hung up after the end: the runner reports a closed tunnel.
    let end = tokio::time::timeout(WAIT, runner).await.unwrap().unwrap();
    assert!(matches!(end, ServeEnd::Closed { .. }), "{end:?}");
}

/// The runner side gives up on a server that went silent (no ping, nothing) for its idle timeout.
#[tokio::test(start_paused = true)]
async fn runner_side_drops_a_silent_server_after_the_idle_timeout() {
    let (hello_tx, mut hello_rx) = mpsc::unbounded_channel::<()>();
    let app = Router::new().route(
        "/tunnel",
        get(move |ws: WebSocketUpgrade| {
            let hello_tx = hello_tx.clone();
            async move {
                ws.on_upgrade(move |mut socket| async move {
                    // Read the hello, then say nothing while keeping the connection open.
                    let _ = socket.recv().await;
                    let _ = hello_tx.send(());
                    while socket.recv().await.is_some() {}
                })
            }
        }),
    );
    let addr = omnigent_testkit::serve(app).await.addr;
    let ws = dial_path(addr, "/tunnel", None).await;
    let start = tokio::time::Instant::now();
    let runner = tokio::spawn(serve_router(
        ws,
        hello(),
        echo_router(),
        RouterConfig::default(),
        CancellationToken::new(),
    ));
    hello_rx.recv().await.unwrap();
    assert_eq!(runner.await.unwrap(), ServeEnd::IdleTimeout);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(90) && waited < Duration::from_secs(91),
        "{waited:?}"
    );
}

#[tokio::test]
async fn ws_channels_carry_text_and_binary_both_ways_and_close_either_way() {
    use omnigent_tunnel::{ChannelEvent, ChannelMessage};
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let mut ws = dial(addr, "runner_ch", None).await;
    ws.send(Message::text(hello_text(1))).await.unwrap();
    let conn = registry.wait_for_runner("runner_ch", WAIT).await.unwrap();

    let mut channel = conn
        .open_channel(
            "/v1/sessions/s/resources/terminals/t/attach",
            "read_only=false&transport=ws",
        )
        .unwrap();
    let RunnerFrame::WsOpen(open) = next_frame(&mut ws).await else {
        panic!("expected ws.open")
    };
    assert_eq!(open.ch_id, channel.id());
    assert_eq!(open.ch_id.len(), 8);
    assert!(open.ch_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(open.path, "/v1/sessions/s/resources/terminals/t/attach");
    assert_eq!(open.query_string, "read_only=false&transport=ws");

    // Browser → runner: text as utf-8, keystrokes as base64.
    channel
        .send(ChannelMessage::Text(
            r#"{"type":"resize","cols":80,"rows":24}"#.into(),
        ))
        .unwrap();
    channel
        .send(ChannelMessage::Binary(Bytes::from_static(b"\x03")))
        .unwrap();
    let frames = [next_frame(&mut ws).await, next_frame(&mut ws).await];
    let encoded: Vec<Value> = frames
        .iter()
        .map(|f| serde_json::from_str(&f.encode()).unwrap())
        .collect();
    assert_eq!(
        encoded,
        [
            json!({"kind":"ws.frame","ch_id":open.ch_id,"data":r#"{"type":"resize","cols":80,"rows":24}"#,"encoding":"utf-8"}),
            json!({"kind":"ws.frame","ch_id":open.ch_id,"data":"Aw==","encoding":"base64"}),
        ]
    );

    // Runner → browser: base64 is PTY output (binary), utf-8 is text.
    for frame in [
        json!({"kind":"ws.frame","ch_id":open.ch_id,"data":"aGk=","encoding":"base64"}),
        json!({"kind":"ws.frame","ch_id":open.ch_id,"data":"osc52-clipboard-capability","encoding":"utf-8"}),
        json!({"kind":"ws.frame","ch_id":"ffffffff","data":"lost","encoding":"utf-8"}),
        json!({"kind":"ws.close","ch_id":open.ch_id,"code":4405,"reason":"detached"}),
    ] {
        ws.send(Message::text(frame.to_string())).await.unwrap();
    }
    assert_eq!(
        channel.recv().await,
        Some(ChannelEvent::Message(ChannelMessage::Binary(
            Bytes::from_static(b"hi")
        )))
    );
    assert_eq!(
        channel.recv().await,
        Some(ChannelEvent::Message(ChannelMessage::Text(
            "osc52-clipboard-capability".into()
        )))
    );
    assert_eq!(
        channel.recv().await,
        Some(ChannelEvent::Closed {
            code: 4405,
            reason: "detached".into()
        })
    );
    assert_eq!(channel.recv().await, None);
    drop(channel);

    // Dropping an open channel closes it 1000 on the runner side.
    let dropped = conn.open_channel("/a", "").unwrap();
    let RunnerFrame::WsOpen(open) = next_frame(&mut ws).await else {
        panic!("expected ws.open")
    };
    drop(dropped);
    let RunnerFrame::WsClose(close) = next_frame(&mut ws).await else {
        panic!("expected ws.close")
    };
    assert_eq!((close.ch_id, close.code), (open.ch_id, 1000));

    // Tunnel loss ends open channels with 1006.
    let mut orphan = conn.open_channel("/b", "").unwrap();
    let RunnerFrame::WsOpen(_) = next_frame(&mut ws).await else {
        panic!("expected ws.open")
    };
    drop(ws);
    assert_eq!(
        tokio::time::timeout(WAIT, orphan.recv()).await.unwrap(),
        Some(ChannelEvent::Closed {
            code: 1006,
            reason: "tunnel closed".into()
        })
    );
}

#[tokio::test]
async fn serve_router_refuses_ws_channels_with_4404() {
    use omnigent_tunnel::ChannelEvent;
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let (_runner, _stop) = start_runner(addr, "runner_noch", echo_router()).await;
    let conn = registry.wait_for_runner("runner_noch", WAIT).await.unwrap();
    let mut channel = conn
        .open_channel("/v1/sessions/s/resources/terminals/t/attach", "")
        .unwrap();
    match tokio::time::timeout(WAIT, channel.recv()).await.unwrap() {
        Some(ChannelEvent::Closed { code, .. }) => assert_eq!(code, 4404),
        other => panic!("expected a 4404 close, got {other:?}"),
    }
}

#[tokio::test]
async fn giving_up_before_the_response_head_cancels_the_runner_handler() {
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    struct Guard(Option<oneshot::Sender<()>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.take().unwrap().send(());
        }
    }
    let slots = std::sync::Arc::new(std::sync::Mutex::new(Some((started_tx, dropped_tx))));
    let router = Router::new().route(
        "/v1/slow",
        get(move || {
            let slots = slots.clone();
            async move {
                let (started, dropped) = slots.lock().unwrap().take().unwrap();
                let _guard = Guard(Some(dropped));
                started.send(()).unwrap();
                std::future::pending::<()>().await;
            }
        }),
    );
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let (_runner, _stop) = start_runner(addr, "runner_slow", router).await;
    let conn = registry.wait_for_runner("runner_slow", WAIT).await.unwrap();
    let caller = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.request(get_request("/v1/slow")).await })
    };
    tokio::time::timeout(WAIT, started_rx)
        .await
        .unwrap()
        .unwrap();
    caller.abort();
    tokio::time::timeout(WAIT, dropped_rx)
        .await
        .expect("the handler is aborted once the caller gives up")
        .unwrap();
    assert!(!conn.is_closed());
}

// ---------------------------------------------------------------------------------------------------------
// Hostile peers (issue 9, hole 2)

/// Dial `path` with exactly the `origin` and `token` given; `Err(status)` when the upgrade is answered with
/// an HTTP error instead.
async fn dial_as(
    addr: SocketAddr,
    path: &str,
    origin: Option<&str>,
    token: Option<&str>,
) -> Result<Ws, u16> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    if let Some(token) = token {
        request
            .headers_mut()
            .insert(RUNNER_TUNNEL_TOKEN, token.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("dial {path}: {e}"),
    }
}

/// The log lines written while the returned guard lives. The test runtime is single-threaded, so the server's
/// tasks log here too.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn a_foreign_or_null_origin_is_closed_4403_before_any_frame() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    for origin in [
        "http://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
    ] {
        let mut ws = dial_as(addr, "/v1/runners/runner_web/tunnel", Some(origin), None)
            .await
            .unwrap();
        // A hello sent at once is never read: the decision came before any frame.
        let _ = ws.send(Message::text(hello_text(1))).await;
        assert_eq!(
            read_close(&mut ws).await,
            (4403, "forbidden origin".to_owned()),
            "{origin}"
        );
    }
    assert!(registry.list().is_empty());
    // A page served from this machine, and a client with no Origin at all, may connect.
    for (id, origin) in [
        ("runner_local_page", Some("http://localhost:5173")),
        ("runner_no_origin", None),
    ] {
        let mut ws = dial_as(addr, &format!("/v1/runners/{id}/tunnel"), origin, None)
            .await
            .unwrap();
        ws.send(Message::text(hello_text(1))).await.unwrap();
        assert!(registry.wait_for_runner(id, WAIT).await.is_some(), "{id}");
    }
}

#[tokio::test]
async fn an_impostor_cannot_replace_a_token_bound_runner_which_keeps_serving() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let id = runner_id_for_token("the-real-token");
    let ws = dial(addr, &id, Some("the-real-token")).await;
    let stop = CancellationToken::new();
    let real = tokio::spawn(serve_router(
        ws,
        hello(),
        echo_router(),
        RouterConfig::default(),
        stop.clone(),
    ));
    let live = registry.wait_for_runner(&id, WAIT).await.unwrap();

    // Without the token (from loopback, where token-less runners are otherwise fine), or with another one.
    for (token, reason) in [
        (None, "runner tunnel token is required"),
        (Some("a-guess"), "runner_id does not match tunnel token"),
    ] {
        let mut impostor = dial(addr, &id, token).await;
        let _ = impostor.send(Message::text(hello_text(1))).await;
        assert_eq!(read_close(&mut impostor).await, (4004, reason.to_owned()));
    }

    // The real runner is still the registered tunnel and still answers.
    assert_eq!(registry.get(&id).unwrap().generation(), live.generation());
    let response = registry
        .request(
            &id,
            http::Request::post("/v1/echo")
                .header("content-type", "text/plain")
                .body(Bytes::from_static(b"still the real one"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(body_text(response).await, "still the real one");
    assert!(!real.is_finished());
    stop.cancel();
}

#[tokio::test]
async fn more_than_64_kib_before_the_hello_is_closed_1009_with_a_log_line() {
    let (logs, _guard) = Logs::capture();
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let padded_hello = |pad: usize| {
        let mut h = serde_json::to_value(RunnerFrame::Hello(hello())).unwrap();
        h["pad"] = json!("x".repeat(pad));
        h.to_string()
    };
    // 100 KiB: beyond what the socket reads from a peer before its hello.
    // 65 KiB: read whole, then refused by the pre-hello frame cap.
    for pad in [100 * 1024, 65 * 1024] {
        let mut ws = dial(addr, "runner_fat_hello", None).await;
        let _ = ws.send(Message::text(padded_hello(pad))).await;
        let (code, reason) = read_close(&mut ws).await;
        assert_eq!(code, 1009, "{pad}: {reason}");
        assert!(reason.contains("65536"), "{reason}");
    }
    assert!(registry.list().is_empty());
    let text = logs.text();
    assert_eq!(
        text.matches("pre-hello cap").count(),
        2,
        "one warning per refused peer:\n{text}"
    );
    // A hello under the cap is still welcome.
    let mut ws = dial(addr, "runner_fat_hello", None).await;
    ws.send(Message::text(padded_hello(60 * 1024)))
        .await
        .unwrap();
    assert!(
        registry
            .wait_for_runner("runner_fat_hello", WAIT)
            .await
            .is_some()
    );
}

#[tokio::test]
async fn after_the_hello_the_normal_cap_applies_and_an_over_cap_frame_is_closed_1009() {
    let (logs, _guard) = Logs::capture();
    let config = TunnelConfig {
        max_frame_bytes: 128 * 1024,
        ..TunnelConfig::default()
    };
    let (addr, registry) = start_server(config).await;
    let mut ws = dial(addr, "runner_after_hello", None).await;
    ws.send(Message::text(hello_text(1))).await.unwrap();
    let conn = registry
        .wait_for_runner("runner_after_hello", WAIT)
        .await
        .unwrap();
    // 100 KiB after the hello: above the pre-hello cap, under the normal one.
    let pong = |pad: usize| json!({"kind":"pong","ts":1,"pad":"x".repeat(pad)}).to_string();
    ws.send(Message::text(pong(100 * 1024))).await.unwrap();
    let request = tokio::spawn(async move { conn.request(get_request("/v1/alive")).await });
    let RunnerFrame::Request(req) = next_frame(&mut ws).await else {
        panic!("expected a request: the tunnel survived the 100 KiB frame")
    };
    ws.send(Message::text(
        json!({"kind":"response.head","id":req.id,"status":204,"headers":[]}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        json!({"kind":"response.end","id":req.id}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(request.await.unwrap().unwrap().status(), 204);

    // 200 KiB: over the cap.
    let _ = ws.send(Message::text(pong(200 * 1024))).await;
    let (code, reason) = read_close(&mut ws).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("131072"), "{reason}");
    let text = logs.text();
    assert!(
        text.contains("above the cap"),
        "a warning names it:\n{text}"
    );
}

#[tokio::test]
async fn a_runner_id_that_is_too_long_or_not_a_plain_name_is_refused_400_before_the_upgrade() {
    let (addr, registry) = start_server(TunnelConfig::default()).await;
    let long = "r".repeat(10_000);
    for id in [long.as_str(), "..%2F..%2Fx", "a%20b", "%1B%5B31m"] {
        let path = format!("/v1/runners/{id}/tunnel");
        assert_eq!(
            dial_as(addr, &path, Some("omnigent://internal"), None)
                .await
                .err(),
            Some(400),
            "{}",
            &id[..id.len().min(20)]
        );
    }
    assert!(registry.list().is_empty());
}
