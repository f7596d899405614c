//! Runners wired into the server, through real processes: `omnigent server run` and `omnigent runner` as child
//! processes over real sockets, a real SQLite file in a temp `OMNIGENT_HOME`, and, for the vendor harnesses, a
//! scripted fake of the vendor's streaming API started by the test on 127.0.0.1.
//!
//! Readiness is read from the processes' own log lines on stderr (the server logs "runner connected" once a
//! tunnel is registered), never waited for with sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

use common::{
    FakeVendor, Sse, Step, WAIT, oa_call, oa_finish, oa_text, openai_env, start_runner,
    start_server, summary, token_and_id,
};

// ---------------------------------------------------------------------------------------------------------
// Reading the stream

/// Read a whole turn: until both `session.status idle` and `session.input.consumed` came (a fast turn can
/// finish before the server has the runner's answer to the forward, so their order varies).
async fn turn_done(sse: &mut Sse) -> Vec<(String, Value)> {
    let mut events = sse
        .until(|k, v| is_status(k, v, "idle") || k == "session.input.consumed")
        .await;
    let stop_at: fn(&str, &Value) -> bool = if events.last().unwrap().0 == "session.input.consumed"
    {
        |k, v| is_status(k, v, "idle")
    } else {
        |k, _| k == "session.input.consumed"
    };
    events.extend(sse.until(stop_at).await);
    events
}

fn is_status(kind: &str, v: &Value, status: &str) -> bool {
    kind == "session.status" && v["status"] == status
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

fn text_of(item: &Value) -> String {
    item["content"][0]["text"].as_str().unwrap_or("").to_owned()
}

// ---------------------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn an_echo_turn_streams_through_server_and_runner_processes() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let mut server = start_server(home.path(), 0, 10_000).await;
    let (token, runner_id) = token_and_id("echo");

    // Before the runner: binding it is refused, a message is refused and nothing is persisted.
    let (_, created) = server
        .post("/v1/sessions", json!({"agent_id": "echo"}))
        .await;
    let early = created["id"].as_str().unwrap().to_owned();
    let (status, err) = server
        .patch(
            &format!("/v1/sessions/{early}"),
            json!({"runner_id": runner_id}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = server.message(&early, "too early").await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "runner_unavailable");
    assert!(server.transcript(&early).await.is_empty());
    // What 0.19.1 answers a runner's token call on a server without auth.
    let (status, err) = server
        .post(&format!("/v1/runners/{runner_id}/token"), json!({}))
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "invalid_input");

    let _runner = start_runner(home.path(), &server.url, &token, "echo", ws.path(), &[]);
    server
        .proc
        .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED, &runner_id])
        .await;

    let (status, runners) = server.get("/v1/runners").await;
    assert_eq!(status, 200);
    assert_eq!(runners["data"][0]["runner_id"], runner_id);
    assert_eq!(runners["data"][0]["online"], true);
    assert!(
        runners["data"][0]["harnesses"]
            .as_array()
            .unwrap()
            .contains(&json!("echo"))
    );
    let (_, st) = server.get(&format!("/v1/runners/{runner_id}/status")).await;
    assert_eq!(st, json!({"runner_id": runner_id, "online": true}));
    let (_, st) = server.get("/v1/runners/runner_nobody/status").await;
    assert_eq!(st["online"], false);

    let session = server.bound_session("echo", ws.path(), &runner_id).await;
    let (_, health) = server.get(&format!("/health?session_id={session}")).await;
    assert_eq!(health["session"]["runner_online"], true);

    let mut sse = server.stream(&session).await;
    let (status, accepted) = server.message(&session, "hello relay world").await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["queued"], true);
    let user_item = accepted["item_id"].as_str().unwrap().to_owned();

    let events = turn_done(&mut sse).await;
    let ks = kinds(&events);
    assert!(ks.contains(&"session.input.consumed"), "{ks:?}");
    let running = ks.iter().position(|k| *k == "session.status").unwrap();
    assert_eq!(events[running].1["status"], "running");
    assert_eq!(events[running].1["conversation_id"], session);
    let consumed = &events[ks
        .iter()
        .position(|k| *k == "session.input.consumed")
        .unwrap()]
    .1;
    assert_eq!(consumed["data"]["item_id"], user_item);
    assert_eq!(consumed["data"]["type"], "message");
    let deltas: String = events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, v)| v["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "hello relay world");
    // The assembled text is persisted before the terminal event, which comes before idle.
    let done = ks
        .iter()
        .position(|k| *k == "response.output_item.done")
        .unwrap();
    let completed = ks.iter().position(|k| *k == "response.completed").unwrap();
    let idle = ks.iter().rposition(|k| *k == "session.status").unwrap();
    assert!(done < completed && completed < idle, "{ks:?}");
    assert_eq!(text_of(&events[done].1["item"]), "hello relay world");

    let items = server.transcript(&session).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0]["id"], user_item);
    assert_eq!(items[0]["role"], "user");
    assert_eq!(text_of(&items[0]), "hello relay world");
    assert_eq!(items[1]["role"], "assistant");
    assert_eq!(text_of(&items[1]), "hello relay world");
    assert_eq!(items[1]["model"], "echo");
    let response_id = events[done].1["item"]["response_id"].clone();
    assert!(response_id.as_str().unwrap().starts_with("resp_"));
    assert_eq!(items[1]["response_id"], response_id);
    let (_, snap) = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "idle");
    assert_eq!(snap["runner_online"], true);

    // A second turn goes through the same relay.
    let (status, _) = server.message(&session, "again").await;
    assert_eq!(status, 202);
    turn_done(&mut sse).await;
    assert_eq!(server.transcript(&session).await.len(), 4);
}

#[tokio::test]
async fn an_openai_turn_runs_a_tool_in_the_workspace_and_persists_the_transcript_in_order() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let args = r#"{"path": "notes/hello.txt", "content": "hi there"}"#;
    let mut first = vec![
        oa_text("Let me "),
        oa_text("write it."),
        oa_call("call_1", "write_file", args),
    ];
    first.extend(oa_finish("tool_calls"));
    let mut second = vec![oa_text("Done.")];
    second.extend(oa_finish("stop"));
    let vendor = FakeVendor::start(vec![first, second]).await;
    let vendor_url = vendor.url.clone();

    let mut server = start_server(home.path(), 0, 10_000).await;
    let (token, runner_id) = token_and_id("openai");
    let _runner = start_runner(
        home.path(),
        &server.url,
        &token,
        "echo",
        ws.path(),
        &openai_env(&vendor_url),
    );
    server
        .proc
        .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED, &runner_id])
        .await;
    // The session's agent picks the harness (the runner's default is echo).
    let session = server.bound_session("openai", ws.path(), &runner_id).await;
    let mut sse = server.stream(&session).await;
    let (status, accepted) = server.message(&session, "write hello").await;
    assert_eq!(status, 202, "{accepted}");
    let events = turn_done(&mut sse).await;
    let ks = kinds(&events);
    assert_eq!(
        ks.iter()
            .filter(|k| **k == "response.output_item.done")
            .count(),
        4,
        "text, call, output, text: {ks:?}"
    );
    assert!(ks.contains(&"response.completed"), "{ks:?}");

    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes/hello.txt")).unwrap(),
        "hi there"
    );
    let items = server.transcript(&session).await;
    assert_eq!(
        summary(&items),
        [
            "user:write hello",
            "assistant:Let me write it.",
            "call:call_1:write_file",
            "output:call_1:wrote 8 bytes to notes/hello.txt",
            "assistant:Done.",
        ]
    );
    // One response: text, the call and its result share it.
    let response_id = &items[1]["response_id"];
    assert!(response_id.is_string());
    for item in &items[1..] {
        assert_eq!(&item["response_id"], response_id, "{item}");
    }
    assert_eq!(vendor.requests().len(), 2);
}

#[tokio::test]
async fn an_interrupt_mid_stream_ends_the_turn_and_keeps_the_partial_text() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let hold = Arc::new(Notify::new());
    let mut answer = vec![
        oa_text("partial "),
        Step::Wait(hold.clone()),
        oa_text("never shown"),
    ];
    answer.extend(oa_finish("stop"));
    let vendor = FakeVendor::start(vec![answer]).await;
    let vendor_url = vendor.url.clone();
    let mut server = start_server(home.path(), 0, 10_000).await;
    let (token, runner_id) = token_and_id("interrupt");
    let _runner = start_runner(
        home.path(),
        &server.url,
        &token,
        "openai",
        ws.path(),
        &openai_env(&vendor_url),
    );
    let session = server
        .session_on_runner("openai", ws.path(), &runner_id)
        .await;
    let mut sse = server.stream(&session).await;
    let (status, _) = server.message(&session, "talk").await;
    assert_eq!(status, 202);
    sse.until(|k, v| k == "response.output_text.delta" && v["delta"] == "partial ")
        .await;

    let (status, answer) = server
        .post(
            &format!("/v1/sessions/{session}/events"),
            json!({"type": "interrupt", "data": {}}),
        )
        .await;
    assert_eq!((status, answer), (202, json!({"queued": false})));
    let mut events = sse.until(|k, v| is_status(k, v, "idle")).await;
    events.retain(|(k, _)| k != "session.input.consumed");
    let ks = kinds(&events);
    assert_eq!(ks[0], "session.interrupted", "{ks:?}");
    assert!(events[0].1["data"]["requested_at"].is_number());
    let incomplete = ks.iter().position(|k| *k == "response.incomplete").unwrap();
    assert_eq!(
        events[incomplete].1["response"]["incomplete_details"]["reason"],
        "user_interrupt"
    );
    assert!(
        !ks.contains(&"response.output_text.delta"),
        "no output after the interrupt: {ks:?}"
    );
    // Releasing the vendor now changes nothing: the harness is gone.
    hold.notify_one();
    let items = server.transcript(&session).await;
    let texts: Vec<(String, String)> = items
        .iter()
        .map(|i| (i["role"].as_str().unwrap_or("").to_owned(), text_of(i)))
        .collect();
    assert_eq!(
        texts,
        [
            ("user".to_owned(), "talk".to_owned()),
            ("assistant".to_owned(), "partial ".to_owned())
        ]
    );
    let (_, snap) = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "idle");
}

/// A runner SIGKILLed mid-turn: after the grace the turn fails with `runner_disconnected`, and an idle session
/// bound to the same runner stays quiet.
#[tokio::test]
async fn a_runner_killed_mid_turn_fails_the_turn_after_the_grace() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let hold = Arc::new(Notify::new());
    let vendor = FakeVendor::start(vec![vec![oa_text("working "), Step::Wait(hold.clone())]]).await;
    let vendor_url = vendor.url.clone();
    let mut server = start_server(home.path(), 0, 300).await;
    let (token, runner_id) = token_and_id("killed");
    let mut runner = start_runner(
        home.path(),
        &server.url,
        &token,
        "openai",
        ws.path(),
        &openai_env(&vendor_url),
    );
    let session = server
        .session_on_runner("openai", ws.path(), &runner_id)
        .await;
    let quiet = server.bound_session("echo", ws.path(), &runner_id).await;
    let mut quiet_sse = server.stream(&quiet).await;
    let (status, _) = server.message(&quiet, "one quick turn").await;
    assert_eq!(status, 202);
    turn_done(&mut quiet_sse).await;

    let mut sse = server.stream(&session).await;
    let (status, _) = server.message(&session, "long job").await;
    assert_eq!(status, 202);
    sse.until(|k, v| k == "response.output_text.delta" && v["delta"] == "working ")
        .await;
    runner.kill();
    let events = sse
        .until(|k, v| k == "session.status" && v["status"] != "running")
        .await;
    let (_, last) = events.last().unwrap();
    assert_eq!(last["status"], "failed", "{events:?}");
    assert_eq!(
        last["error"],
        json!({"code": "runner_disconnected", "message": "Runner disconnected unexpectedly."})
    );
    let (_, snap) = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "failed");
    assert_eq!(snap["runner_online"], false);
    let items = server.transcript(&session).await;
    let kinds: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message", "message", "error"], "{items:?}");
    assert_eq!(text_of(&items[1]), "working ");
    assert_eq!(
        items[1]["status"], "incomplete",
        "a reply cut short is never `completed`"
    );
    assert_eq!(items[2]["error"]["code"], "runner_disconnected");
    // A message now is refused: the runner is gone.
    let (status, err) = server.message(&session, "hello?").await;
    assert_eq!(status, 503, "{err}");

    // The idle session saw nothing at all: it only reads as offline.
    let (_, snap) = server.get(&format!("/v1/sessions/{quiet}")).await;
    assert_eq!(snap["status"], "idle");
    assert_eq!(snap["runner_online"], false);
    let (status, _) = server
        .post(
            &format!("/v1/sessions/{quiet}/events"),
            json!({"type": "external_output_text_delta", "data": {"delta": "marker"}}),
        )
        .await;
    assert_eq!(status, 202);
    let next = quiet_sse.until(|_, _| true).await;
    assert_eq!(next[0].0, "response.output_text.delta", "{next:?}");
    assert_eq!(next[0].1["delta"], "marker");
}

/// A runner restarted within the grace: the session does not fail, nothing persisted is lost, the relay
/// re-opens on the new process and the next turn runs there.
#[tokio::test]
async fn a_runner_restarted_within_the_grace_loses_nothing() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let hold = Arc::new(Notify::new());
    let mut after = vec![oa_text("second answer")];
    after.extend(oa_finish("stop"));
    let vendor = FakeVendor::start(vec![
        vec![oa_text("first "), Step::Wait(hold.clone())],
        after,
    ])
    .await;
    let vendor_url = vendor.url.clone();
    let mut server = start_server(home.path(), 0, 30_000).await;
    let (token, runner_id) = token_and_id("restarted");
    let env = openai_env(&vendor_url);
    let mut runner = start_runner(home.path(), &server.url, &token, "openai", ws.path(), &env);
    let session = server
        .session_on_runner("openai", ws.path(), &runner_id)
        .await;
    let mut sse = server.stream(&session).await;
    let (status, _) = server.message(&session, "first question").await;
    assert_eq!(status, 202);
    sse.until(|k, v| k == "response.output_text.delta" && v["delta"] == "first ")
        .await;
    runner.kill();
    server
        .proc
        .wait_log(&[omnigent_tunnel::server::RUNNER_DISCONNECTED, &runner_id])
        .await;

    let _again = start_runner(home.path(), &server.url, &token, "openai", ws.path(), &env);
    // The new process knows of no running turn: the session settles to idle, not failed.
    let events = sse
        .until(|k, v| k == "session.status" && v["status"] != "running")
        .await;
    assert_eq!(events.last().unwrap().1["status"], "idle", "{events:?}");
    let items = server.transcript(&session).await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(text_of(&items[0]), "first question");
    // What was streamed is kept, marked incomplete, and an error item says why.
    assert_eq!(text_of(&items[1]), "first ");
    assert_eq!(items[1]["status"], "incomplete");
    assert_eq!(items[2]["error"]["code"], "turn_lost");

    let (status, err) = server.message(&session, "second question").await;
    assert_eq!(status, 202, "{err}");
    let events = turn_done(&mut sse).await;
    assert!(
        !events.iter().any(|(k, v)| is_status(k, v, "failed")),
        "{events:?}"
    );
    let items = server.transcript(&session).await;
    let texts: Vec<String> = items.iter().map(text_of).collect();
    assert_eq!(
        texts,
        [
            "first question",
            "first ",
            "",
            "second question",
            "second answer"
        ]
    );
}

/// The server SIGKILLed mid-turn and restarted on the same port: the runner reconnects, the server re-opens
/// the relay of the session bound to it, the turn's remaining output is relayed and persisted, and what was
/// persisted before the crash is intact.
#[tokio::test]
async fn a_server_killed_mid_turn_and_restarted_gets_its_runner_back() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let hold = Arc::new(Notify::new());
    let mut answer = vec![
        oa_text("before "),
        Step::Wait(hold.clone()),
        oa_text("after"),
    ];
    answer.extend(oa_finish("stop"));
    let vendor = FakeVendor::start(vec![answer]).await;
    let vendor_url = vendor.url.clone();
    // The port is held for the server across its restart (nothing else can take it in between).
    let reserved = omnigent_testkit::net::PortReservation::new();
    let port = reserved.port;
    let mut server = start_server(home.path(), port, 10_000).await;
    let (token, runner_id) = token_and_id("server-restart");
    let _runner = start_runner(
        home.path(),
        &server.url,
        &token,
        "openai",
        ws.path(),
        &openai_env(&vendor_url),
    );
    let session = server
        .session_on_runner("openai", ws.path(), &runner_id)
        .await;
    let mut sse = server.stream(&session).await;
    let (status, accepted) = server.message(&session, "survive this").await;
    assert_eq!(status, 202);
    let user_item = accepted["item_id"].clone();
    sse.until(|k, v| k == "response.output_text.delta" && v["delta"] == "before ")
        .await;
    server.proc.kill();
    drop(sse);

    let mut server = start_server(home.path(), port, 10_000).await;
    server
        .proc
        .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED, &runner_id])
        .await;
    server
        .proc
        .wait_log(&[omnigent_server::relay::RELAY_SUBSCRIBED, &session])
        .await;
    let items = server.transcript(&session).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["id"], user_item);
    let (_, snap) = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "running");
    assert_eq!(snap["runner_online"], true);

    let mut sse = server.stream(&session).await;
    hold.notify_one();
    let events = sse.until(|k, v| is_status(k, v, "idle")).await;
    assert!(
        events
            .iter()
            .any(|(k, v)| k == "response.output_text.delta" && v["delta"] == "after"),
        "{events:?}"
    );
    let items = server.transcript(&session).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0]["id"], user_item);
    assert_eq!(items[1]["role"], "assistant");
    assert_eq!(text_of(&items[1]), "before after", "{items:?}");
    assert_eq!(items[1]["status"], "completed");
}

/// A second tunnel with the same runner id replaces the first: the first is closed with 4000 "tunnel
/// replaced" and turns go through the newest.
#[tokio::test]
async fn a_second_tunnel_with_the_same_id_replaces_the_first() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let mut server = start_server(home.path(), 0, 10_000).await;
    let (token, runner_id) = token_and_id("replaced");

    // The first "runner" is a bare WebSocket that says hello and nothing else.
    let url = format!(
        "{}/v1/runners/{runner_id}/tunnel",
        server.url.replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-omnigent-runner-tunnel-token", token.parse().unwrap());
    let (mut first, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = json!({"kind": "hello", "runner_version": "test", "frame_protocol_version": 1,
        "harnesses": ["echo"], "envs": [], "telemetry_opt_out": true});
    futures_util::SinkExt::send(&mut first, Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    server
        .proc
        .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED, &runner_id])
        .await;

    // A wrong token for the path's id is refused with 4004.
    let mut bad = format!(
        "{}/v1/runners/{runner_id}/tunnel",
        server.url.replace("http://", "ws://")
    )
    .into_client_request()
    .unwrap();
    bad.headers_mut()
        .insert("x-omnigent-runner-tunnel-token", "other".parse().unwrap());
    let (mut refused, _) = tokio_tungstenite::connect_async(bad).await.unwrap();
    let close = tokio::time::timeout(WAIT, refused.next()).await.unwrap();
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4004),
        other => panic!("expected a 4004 close, got {other:?}"),
    }

    let _runner = start_runner(home.path(), &server.url, &token, "echo", ws.path(), &[]);
    server
        .proc
        .wait_log(&[omnigent_tunnel::registry::TUNNEL_REPLACED, &runner_id])
        .await;
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(frame) = first.next().await {
            if let Ok(Message::Close(frame)) = frame {
                return frame;
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("a close frame");
    assert_eq!(u16::from(closed.code), 4000);
    assert_eq!(closed.reason.as_str(), "tunnel replaced");

    let (_, runners) = server.get("/v1/runners").await;
    assert_eq!(runners["data"].as_array().unwrap().len(), 1, "{runners}");
    let session = server.bound_session("echo", ws.path(), &runner_id).await;
    let mut sse = server.stream(&session).await;
    let (status, err) = server.message(&session, "via the newest").await;
    assert_eq!(status, 202, "{err}");
    turn_done(&mut sse).await;
    let items = server.transcript(&session).await;
    assert_eq!(text_of(&items[1]), "via the newest");
}

fn an_event(payload: Value) -> Step {
    Step::Chunk(format!(
        "event: {}\ndata: {payload}\n\n",
        payload["type"].as_str().unwrap()
    ))
}

/// One Anthropic Messages stream: optional text, optional tool_use, then the stop.
fn an_message(text: &[&str], tool: Option<(&str, &str, &str)>, stop: &str) -> Vec<Step> {
    let mut steps = vec![an_event(json!({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-test",
        "stop_reason": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}))];
    let mut index = 0;
    if !text.is_empty() {
        steps.push(an_event(
            json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "text", "text": ""}}),
        ));
        for part in text {
            steps.push(an_event(
                json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": part}}),
            ));
        }
        steps.push(an_event(
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    if let Some((id, name, input)) = tool {
        steps.push(an_event(
            json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
        ));
        steps.push(an_event(
            json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": input}}),
        ));
        steps.push(an_event(
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    steps.push(an_event(json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}})));
    steps.push(an_event(json!({"type": "message_stop"})));
    steps
}

#[tokio::test]
async fn an_anthropic_turn_runs_a_shell_tool_in_the_workspace_and_persists_in_order() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let command = r#"{"command": "echo made > made.txt && cat made.txt"}"#;
    let vendor = FakeVendor::start(vec![
        an_message(
            &["I'll run ", "it."],
            Some(("toolu_1", "shell", command)),
            "tool_use",
        ),
        an_message(&["Made."], None, "end_turn"),
    ])
    .await;
    let vendor_url = vendor.url.clone();
    let mut server = start_server(home.path(), 0, 10_000).await;
    let (token, runner_id) = token_and_id("anthropic");
    let _runner = start_runner(
        home.path(),
        &server.url,
        &token,
        "echo",
        ws.path(),
        &[
            ("ANTHROPIC_BASE_URL", vendor_url.clone()),
            ("ANTHROPIC_API_KEY", "sk-ant-test".into()),
            ("OMNIGENT_MODEL", "claude-test".into()),
        ],
    );
    server
        .proc
        .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED, &runner_id])
        .await;
    let session = server
        .bound_session("anthropic", ws.path(), &runner_id)
        .await;
    let mut sse = server.stream(&session).await;
    let (status, accepted) = server.message(&session, "make it").await;
    assert_eq!(status, 202, "{accepted}");
    turn_done(&mut sse).await;

    assert_eq!(
        std::fs::read_to_string(ws.path().join("made.txt")).unwrap(),
        "made\n"
    );
    let items = server.transcript(&session).await;
    let summary: Vec<String> = items
        .iter()
        .map(|i| match i["type"].as_str().unwrap() {
            "message" => format!("{}:{}", i["role"].as_str().unwrap(), text_of(i)),
            other => format!("{other}:{}", i["call_id"].as_str().unwrap_or("")),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "user:make it",
            "assistant:I'll run it.",
            "function_call:toolu_1",
            "function_call_output:toolu_1",
            "assistant:Made.",
        ]
    );
    assert!(
        items[3]["output"].as_str().unwrap().contains("made"),
        "{}",
        items[3]
    );
    let response_id = &items[1]["response_id"];
    for item in &items[1..] {
        assert_eq!(&item["response_id"], response_id, "{item}");
    }
    assert_eq!(vendor.requests().len(), 2);
}
