#![allow(clippy::unwrap_used)]
//! The server end of the host tunnel, end to end: a real axum server on 127.0.0.1:0 serving
//! `/v1/hosts/{host_id}/tunnel` with `omnigent_tunnel::host`, and a raw tokio-tungstenite client playing the host
//! frame by frame.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use omnigent_proto::host_frames::HostFrame;
use omnigent_tunnel::host::{HostEvent, HostRegistry, HostRequestError, HostSettings, upgrade};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A bound on waits that should finish at once; a test failing on it means the awaited signal never came.
const WAIT: Duration = Duration::from_secs(10);

const HOST: &str = "534486bde1be41d9bec6e7b32874609b";

async fn tunnel_route(
    State(registry): State<HostRegistry>,
    Path(host_id): Path<String>,
    headers: http::HeaderMap,
    ws: omnigent_tunnel::TunnelUpgrade,
) -> Response {
    upgrade(ws, host_id, &headers, registry)
}

async fn start_server(settings: HostSettings) -> (SocketAddr, HostRegistry) {
    let registry = HostRegistry::new(settings);
    let app = Router::new()
        .route("/v1/hosts/{id}/tunnel", get(tunnel_route))
        .with_state(registry.clone());
    let addr = omnigent_testkit::serve(app).await.addr;
    (addr, registry)
}

async fn dial(addr: SocketAddr, host_id: &str) -> Ws {
    let url = format!("ws://{addr}/v1/hosts/{host_id}/tunnel");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

fn hello(version: u32, runners: &[&str]) -> Message {
    Message::text(
        json!({
            "kind": "host.hello",
            "version": "0.19.1",
            "frame_protocol_version": version,
            "name": "vm",
            "runners": runners,
            "configured_harnesses": {"echo": true, "claude-sdk": "needs-auth"},
            "gateway_inference": null,
            "telemetry_opt_out": true,
            "installation_id": null,
            "connection_id": "c1"
        })
        .to_string(),
    )
}

/// Dial and complete the hello; returns once the registry has the connection.
async fn connect(addr: SocketAddr, registry: &HostRegistry) -> Ws {
    let mut ws = dial(addr, HOST).await;
    ws.send(hello(1, &[])).await.unwrap();
    registry.wait_for_host(HOST, WAIT).await.unwrap();
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Close(frame) => panic!("closed while a frame was expected: {frame:?}"),
            _ => {}
        }
    }
}

/// The next request frame (skipping pings).
async fn next_request(ws: &mut Ws) -> Value {
    loop {
        let frame = next_json(ws).await;
        if frame["kind"] != "ping" {
            return frame;
        }
    }
}

async fn read_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => panic!("closed without a code"),
            Some(Ok(_)) => {}
        }
    }
}

async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

#[tokio::test]
async fn hello_registers_the_host_and_announces_it() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut events = registry.subscribe();
    // A dashed UUID in the path is accepted and registered under its bare-hex form.
    let mut ws = dial(addr, "534486BD-E1BE-41D9-BEC6-E7B32874609B").await;
    ws.send(hello(1, &["runner_token_a"])).await.unwrap();
    let HostEvent::Connected {
        host_id,
        generation,
        hello,
    } = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap()
    else {
        panic!("expected Connected")
    };
    assert_eq!(host_id, HOST);
    assert_eq!(hello.name, "vm");
    assert_eq!(hello.runners, vec!["runner_token_a".to_owned()]);
    assert_eq!(hello.extra["connection_id"], "c1");
    let conn = registry.get(HOST).unwrap();
    assert_eq!(conn.generation(), generation);
    assert_eq!(registry.list().len(), 1);
    assert!(registry.is_online(&format!("host_{HOST}")));

    drop(ws);
    conn.closed().await;
    assert_eq!(
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap(),
        HostEvent::Disconnected {
            host_id: HOST.into(),
            generation
        }
    );
    assert!(registry.get(HOST).is_none());
}

#[tokio::test]
async fn first_frame_must_be_a_hello() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut ws = dial(addr, HOST).await;
    send_json(&mut ws, json!({"kind": "pong", "ts": 1})).await;
    let error = next_json(&mut ws).await;
    assert_eq!(error["kind"], "host.connection_error");
    assert_eq!(error["stage"], "hello");
    assert_eq!(error["retryable"], false);
    assert!(
        error["error"].as_str().unwrap().contains("host.hello"),
        "{error}"
    );
    assert_eq!(read_close(&mut ws).await, (4001, "hello expected".into()));

    // A malformed first frame is refused the same way.
    let mut ws = dial(addr, HOST).await;
    ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["kind"], "host.connection_error");
    assert_eq!(read_close(&mut ws).await.0, 4001);
    assert!(registry.list().is_empty());
}

#[tokio::test]
async fn another_frame_protocol_is_refused_4002() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut ws = dial(addr, HOST).await;
    ws.send(hello(2, &[])).await.unwrap();
    let error = next_json(&mut ws).await;
    assert_eq!(error["kind"], "host.connection_error");
    assert_eq!(error["retryable"], false);
    assert!(
        error["error"].as_str().unwrap().contains("protocol 2"),
        "{error}"
    );
    assert_eq!(read_close(&mut ws).await.0, 4002);
    assert!(registry.list().is_empty());
}

#[tokio::test]
async fn a_host_id_that_is_not_a_uuid_is_refused_4003() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut ws = dial(addr, "not-a-uuid").await;
    assert_eq!(read_close(&mut ws).await, (4003, "invalid host id".into()));
    let mut ws = dial(addr, &HOST[..31]).await;
    assert_eq!(read_close(&mut ws).await.0, 4003);
    assert!(registry.list().is_empty());
}

#[tokio::test]
async fn newest_connection_wins_and_the_old_one_fails_its_requests() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut events = registry.subscribe();
    let mut old_ws = connect(addr, &registry).await;
    let old = registry.get(HOST).unwrap();
    let pending = tokio::spawn({
        let old = old.clone();
        async move { old.stat("/tmp").await }
    });
    // The request reached the old host; it never answers.
    assert_eq!(next_request(&mut old_ws).await["kind"], "host.stat");

    let mut new_ws = dial(addr, HOST).await;
    new_ws.send(hello(1, &[])).await.unwrap();
    assert_eq!(
        read_close(&mut old_ws).await,
        (4000, "tunnel replaced".into())
    );
    let err = tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err,
        HostRequestError::Closed {
            host_id: HOST.into(),
            kind: "host.stat"
        }
    );
    old.closed().await;
    let new = registry.get(HOST).unwrap();
    assert!(new.generation() > old.generation());
    // New requests go to the new connection.
    let request = tokio::spawn({
        let new = new.clone();
        async move { new.runner_status("runner_token_x").await }
    });
    let frame = next_request(&mut new_ws).await;
    assert_eq!(frame["kind"], "host.runner_status");
    send_json(
        &mut new_ws,
        json!({"kind": "host.runner_status_result", "request_id": frame["request_id"], "status": "alive"}),
    )
    .await;
    assert_eq!(request.await.unwrap().unwrap().status, "alive");

    // Connected(old), Connected(new), and no Disconnected for the replaced one.
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        matches!(&seen[1], HostEvent::Connected { generation, .. } if *generation == new.generation())
    );
}

#[tokio::test]
async fn concurrent_requests_are_correlated_by_request_id() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut ws = connect(addr, &registry).await;
    let conn = registry.get(HOST).unwrap();

    let stat = tokio::spawn({
        let conn = conn.clone();
        async move { conn.stat("/work").await }
    });
    let list = tokio::spawn({
        let conn = conn.clone();
        async move { conn.list_dir("/work", 5000, Some("b")).await }
    });
    let launch = tokio::spawn({
        let conn = conn.clone();
        async move {
            conn.launch_runner("tok", "/work", Some("sess"), Some("echo"))
                .await
        }
    });
    let mut requests = Vec::new();
    for _ in 0..3 {
        requests.push(next_request(&mut ws).await);
    }
    let ids: std::collections::HashSet<&str> = requests
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "request ids must be unique: {requests:?}");
    for id in &ids {
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
    // A result nobody asked for is ignored.
    send_json(&mut ws, json!({"kind": "host.stat_result", "request_id": "ffffffffffffffff", "status": "ok", "exists": false})).await;
    // Answer in reverse order.
    for request in requests.iter().rev() {
        let id = request["request_id"].clone();
        let answer = match request["kind"].as_str().unwrap() {
            "host.stat" => {
                json!({"kind": "host.stat_result", "request_id": id, "status": "ok", "exists": true, "type": "directory", "canonical_path": request["path"], "error": null})
            }
            "host.list_dir" => {
                assert_eq!(request["limit"], 1000, "limit is clamped");
                assert_eq!(request["after"], "b");
                json!({"kind": "host.list_dir_result", "request_id": id, "status": "ok", "entries": [{"name": "c", "path": "/work/c", "type": "file", "bytes": 3, "modified_at": 1.5}], "has_more": false, "error": null})
            }
            "host.launch_runner" => {
                assert_eq!(request["binding_token"], "tok");
                assert_eq!(request["session_id"], "sess");
                assert_eq!(request["harness"], "echo");
                json!({"kind": "host.launch_runner_result", "request_id": id, "status": "launched", "runner_id": "runner_token_1", "error": null, "error_code": null})
            }
            other => panic!("unexpected request {other}"),
        };
        send_json(&mut ws, answer).await;
    }
    let stat = stat.await.unwrap().unwrap();
    assert_eq!(
        (stat.exists, stat.file_type.as_deref()),
        (true, Some("directory"))
    );
    assert_eq!(stat.canonical_path.as_deref(), Some("/work"));
    let list = list.await.unwrap().unwrap();
    assert_eq!(list.entries[0].name, "c");
    let launch = launch.await.unwrap().unwrap();
    assert_eq!(launch.status, "launched");
    assert_eq!(launch.runner_id.as_deref(), Some("runner_token_1"));
}

#[tokio::test]
async fn a_reply_of_the_wrong_kind_fails_the_request() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut ws = connect(addr, &registry).await;
    let conn = registry.get(HOST).unwrap();
    let request = tokio::spawn({
        let conn = conn.clone();
        async move { conn.create_dir("/work/new").await }
    });
    let frame = next_request(&mut ws).await;
    assert_eq!(frame["kind"], "host.create_dir");
    send_json(
        &mut ws,
        json!({"kind": "host.stat_result", "request_id": frame["request_id"], "status": "ok"}),
    )
    .await;
    assert!(matches!(
        request.await.unwrap(),
        Err(HostRequestError::UnexpectedReply {
            expected: "host.create_dir_result",
            got: "host.stat_result",
            ..
        })
    ));
    // Non-request kinds are refused before anything is sent.
    assert_eq!(
        conn.request(HostFrame::Unknown).await,
        Err(HostRequestError::NotARequest("unknown"))
    );
}

#[tokio::test]
async fn a_request_times_out_and_a_late_answer_is_ignored() {
    let settings = HostSettings {
        fs_timeout: Duration::from_millis(200),
        ..HostSettings::default()
    };
    let (addr, registry) = start_server(settings).await;
    let mut ws = connect(addr, &registry).await;
    let conn = registry.get(HOST).unwrap();
    let request = tokio::spawn({
        let conn = conn.clone();
        async move { conn.stat("/slow").await }
    });
    let frame = next_request(&mut ws).await;
    let err = request.await.unwrap().unwrap_err();
    assert_eq!(
        err,
        HostRequestError::Timeout {
            host_id: HOST.into(),
            kind: "host.stat",
            after: Duration::from_millis(200)
        }
    );
    assert!(
        err.to_string().contains("did not answer host.stat"),
        "{err}"
    );
    // The late answer changes nothing and the tunnel stays up for the next request.
    send_json(&mut ws, json!({"kind": "host.stat_result", "request_id": frame["request_id"], "status": "ok", "exists": true})).await;
    let next = tokio::spawn({
        let conn = conn.clone();
        async move { conn.stat("/fast").await }
    });
    let frame2 = next_request(&mut ws).await;
    assert_ne!(frame2["request_id"], frame["request_id"]);
    send_json(&mut ws, json!({"kind": "host.stat_result", "request_id": frame2["request_id"], "status": "ok", "exists": false})).await;
    assert!(!next.await.unwrap().unwrap().exists);
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn unknown_malformed_and_binary_frames_are_skipped() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut ws = connect(addr, &registry).await;
    let conn = registry.get(HOST).unwrap();
    ws.send(Message::text("{definitely not json"))
        .await
        .unwrap();
    send_json(
        &mut ws,
        json!({"kind": "host.install_harness_result", "request_id": "1"}),
    )
    .await;
    send_json(&mut ws, json!({"kind": "host.launch_runner_result"})).await;
    send_json(&mut ws, json!({"no_kind": true})).await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    // A host ping is answered with a pong echoing ts.
    send_json(
        &mut ws,
        json!({"kind": "ping", "ts": 42, "traceparent": "x"}),
    )
    .await;
    let pong = next_json(&mut ws).await;
    assert_eq!(pong, json!({"kind": "pong", "ts": 42}));
    // Still serving requests.
    let request = tokio::spawn({
        let conn = conn.clone();
        async move { conn.stop_runner("runner_token_x").await }
    });
    let frame = next_request(&mut ws).await;
    assert_eq!(frame["runner_id"], "runner_token_x");
    send_json(&mut ws, json!({"kind": "host.stop_runner_result", "request_id": frame["request_id"], "status": "failed", "error": "unknown runner: runner_token_x", "extra_field": 1})).await;
    let result = request.await.unwrap().unwrap();
    assert_eq!(result.status, "failed");
    assert_eq!(
        result.error.as_deref(),
        Some("unknown runner: runner_token_x")
    );
}

#[tokio::test]
async fn an_oversized_frame_is_refused_1009() {
    let settings = HostSettings {
        max_frame_bytes: 1024,
        ..HostSettings::default()
    };
    let (addr, registry) = start_server(settings).await;
    let mut events = registry.subscribe();
    let mut ws = connect(addr, &registry).await;
    let conn = registry.get(HOST).unwrap();
    let big = json!({"kind": "pong", "ts": 1, "pad": "x".repeat(2048)}).to_string();
    ws.send(Message::text(big)).await.unwrap();
    let (code, reason) = read_close(&mut ws).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("1024"), "{reason}");
    conn.closed().await;
    assert!(matches!(
        events.recv().await.unwrap(),
        HostEvent::Connected { .. }
    ));
    assert!(matches!(
        events.recv().await.unwrap(),
        HostEvent::Disconnected { .. }
    ));
}

#[tokio::test]
async fn a_vanished_host_fails_pending_requests_at_once() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut ws = connect(addr, &registry).await;
    let conn = registry.get(HOST).unwrap();
    let request = tokio::spawn({
        let conn = conn.clone();
        async move { conn.launch_runner("tok", "/w", None, None).await }
    });
    assert_eq!(next_request(&mut ws).await["kind"], "host.launch_runner");
    drop(ws);
    // Well before the 30 s launch timeout.
    let err = tokio::time::timeout(WAIT, request)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            HostRequestError::Closed {
                kind: "host.launch_runner",
                ..
            }
        ),
        "{err:?}"
    );
    // Requests on a dead handle fail at once, and the registry says offline.
    assert!(matches!(
        conn.stat("/").await,
        Err(HostRequestError::Closed { .. })
    ));
    assert!(matches!(
        registry.request(HOST, HostFrame::Unknown).await,
        Err(HostRequestError::HostOffline(_))
    ));
}

#[tokio::test]
async fn runner_exited_and_harness_readiness_are_surfaced() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut ws = connect(addr, &registry).await;
    let mut events = registry.subscribe();
    send_json(
        &mut ws,
        json!({"kind": "host.runner_exited", "runner_id": "runner_token_dead", "error": "runner process exited with code 3"}),
    )
    .await;
    send_json(
        &mut ws,
        json!({"kind": "host.harness_readiness", "configured_harnesses": {"echo": true}, "gateway_inference": null}),
    )
    .await;
    assert_eq!(
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap(),
        HostEvent::RunnerExited {
            host_id: HOST.into(),
            runner_id: "runner_token_dead".into(),
            error: Some("runner process exited with code 3".into())
        }
    );
    let HostEvent::HarnessReadiness { host_id, readiness } =
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap()
    else {
        panic!("expected HarnessReadiness")
    };
    assert_eq!(host_id, HOST);
    assert_eq!(readiness.configured_harnesses.unwrap()["echo"], true);
}

#[tokio::test]
async fn close_all_sends_the_code_to_every_host() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let mut ws = connect(addr, &registry).await;
    registry.close_all(1012, "service restart");
    assert_eq!(read_close(&mut ws).await, (1012, "service restart".into()));
}

#[tokio::test(start_paused = true)]
async fn a_silent_host_is_closed_after_90_s_and_any_frame_keeps_it_alive() {
    let settings = HostSettings {
        // Generous so that paused time can never expire the handshake while the hello is in flight.
        hello_timeout: Duration::from_secs(3600),
        ..HostSettings::default()
    };
    let (addr, registry) = start_server(settings).await;
    let mut events = registry.subscribe();
    let mut ws = connect(addr, &registry).await;
    let conn = registry.get(HOST).unwrap();
    let start = tokio::time::Instant::now();
    let mut pings = Vec::new();
    let mut last_answer = start;
    let (code, reason) = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => {
                let HostFrame::Ping(ping) = HostFrame::decode(text.as_str()).unwrap() else {
                    panic!("unexpected frame {text}")
                };
                pings.push(start.elapsed());
                // Answer the first two pings (at 30 s and 60 s), then go silent.
                if pings.len() <= 2 {
                    send_json(&mut ws, json!({"kind": "pong", "ts": ping.ts})).await;
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
    loop {
        if let HostEvent::Disconnected { generation, .. } = events.recv().await.unwrap() {
            assert_eq!(generation, conn.generation());
            break;
        }
    }
    assert!(!registry.is_online(HOST));
}

// ---------------------------------------------------------------------------------------------------------
// Hostile peers (issue 9, hole 2): the same rule as the runner tunnel.

async fn dial_as(addr: SocketAddr, host_id: &str, origin: Option<&str>) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/v1/hosts/{host_id}/tunnel")
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("dial: {e}"),
    }
}

#[tokio::test]
async fn a_foreign_or_null_origin_is_closed_4403_before_any_frame() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    for origin in ["http://evil.example", "null"] {
        let mut ws = dial_as(addr, HOST, Some(origin)).await.unwrap();
        let _ = ws.send(hello(1, &[])).await;
        assert_eq!(
            read_close(&mut ws).await,
            (4403, "forbidden origin".to_owned()),
            "{origin}"
        );
    }
    assert!(registry.list().is_empty());
    for origin in ["omnigent://internal", "http://127.0.0.1:6767"] {
        let mut ws = dial_as(addr, HOST, Some(origin)).await.unwrap();
        ws.send(hello(1, &[])).await.unwrap();
        let conn = registry.wait_for_host(HOST, WAIT).await.unwrap();
        drop(ws);
        conn.closed().await;
    }
}

#[tokio::test]
async fn more_than_64_kib_before_the_hello_is_closed_1009() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    for pad in [100 * 1024, 65 * 1024] {
        let mut ws = dial(addr, HOST).await;
        let Message::Text(text) = hello(1, &[]) else {
            unreachable!()
        };
        let mut frame: Value = serde_json::from_str(text.as_str()).unwrap();
        frame["pad"] = json!("x".repeat(pad));
        let _ = ws.send(Message::text(frame.to_string())).await;
        let (code, reason) = loop {
            // A host.connection_error may come first.
            match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
                Some(Ok(Message::Close(Some(f)))) => {
                    break (u16::from(f.code), f.reason.to_string());
                }
                Some(Ok(_)) => {}
                other => panic!("closed without a code: {other:?}"),
            }
        };
        assert_eq!(code, 1009, "{pad}: {reason}");
    }
    assert!(registry.list().is_empty());
}

#[tokio::test]
async fn a_host_id_that_is_too_long_or_not_a_plain_name_is_refused_400_before_the_upgrade() {
    let (addr, registry) = start_server(HostSettings::default()).await;
    let long = "a".repeat(10_000);
    for id in [long.as_str(), "..%2F..%2Fx", "%1B%5B31m"] {
        assert_eq!(dial_as(addr, id, None).await.err(), Some(400));
    }
    assert!(registry.list().is_empty());
}
