//! The turn relay against a scripted runner: the server runs in-process on 127.0.0.1:0 over a real SQLite file;
//! the "runner" is a real WebSocket client speaking the runner tunnel frames, whose SSE stream the test writes
//! event by event, so the relay's rules (persistence at tool boundaries, the interrupt fence, rejected inputs,
//! the disconnect grace) are checked exactly.

mod common;

use std::time::Duration;

use common::fake_runner::{FakeRunner, Seen};
use common::{TestServer, WAIT, until};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn server(grace: Duration) -> (tempfile::TempDir, TestServer) {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| {
        c.runner_grace = grace;
        c.tunnel.ping_interval = Duration::from_millis(20);
    })
    .await;
    (home, srv)
}

/// A session of the echo agent bound to the runner of `token`.
async fn bound(srv: &TestServer, token: &str) -> String {
    let id = srv.create_session("relay").await;
    let runner_id = omnigent_proto::ids::runner_id_for_token(token);
    let (status, body) = srv
        .patch(
            &format!("/v1/sessions/{id}"),
            json!({"runner_id": runner_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    id
}

fn message(text: &str) -> Value {
    json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": text}]}})
}

fn summary(items: &Value) -> Vec<String> {
    items["data"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            let body = match i["type"].as_str().unwrap_or("") {
                "message" => format!(
                    "{}:{}",
                    i["role"].as_str().unwrap_or(""),
                    i["content"][0]["text"].as_str().unwrap_or("")
                ),
                "function_call" | "function_call_output" => {
                    i["call_id"].as_str().unwrap_or("").to_owned()
                }
                "error" => i["error"]["code"].as_str().unwrap_or("").to_owned(),
                _ => String::new(),
            };
            format!(
                "{}|{}|{}",
                i["type"].as_str().unwrap_or(""),
                body,
                i["response_id"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

/// The runner of `token` reconnects still running its turn, and finishes it with `delta`: the session's stream
/// shows the turn ending idle, never failed.
async fn comes_back_and_finishes(
    srv: &TestServer,
    token: &str,
    sse: &mut common::Sse,
    delta: &str,
    response_id: &str,
) {
    let mut back = FakeRunner::connect(srv, token, "running").await;
    back.stream_opened().await;
    assert!(matches!(back.next_seen().await, Seen::Init(_)));
    back.push(json!({"type": "response.output_text.delta", "delta": delta}));
    back.push(json!({"type": "response.completed", "response": {"id": response_id}}));
    back.push(json!({"type": "session.status", "status": "idle"}));
    let events = until(sse, |k, v| k == "session.status" && v["status"] == "idle").await;
    assert!(
        !events
            .iter()
            .any(|(k, v)| k == "session.status" && v["status"] == "failed"),
        "{events:?}"
    );
}

/// Post a message and take it through the runner: returns the persisted user item id.
async fn start_turn(
    srv: &TestServer,
    runner: &mut FakeRunner,
    session: &str,
    text: &str,
) -> String {
    let path = format!("/v1/sessions/{session}/events");
    let post = srv.post(&path, message(text));
    let (accepted, seen) = tokio::join!(post, async {
        if runner.stream_id.is_none() {
            runner.stream_opened().await;
            match runner.next_seen().await {
                Seen::Init(init) => {
                    assert_eq!(init["session_id"], session);
                    assert_eq!(init["session_init"]["protocol_version"], 2);
                    assert_eq!(init["session_init"]["session_id"], session);
                    assert_eq!(init["harness"], "echo");
                }
                other => panic!("expected the session init first, got {other:?}"),
            }
        }
        runner.next_seen().await
    });
    let (status, body) = accepted;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued"], true);
    let item_id = body["item_id"].as_str().expect("item_id").to_owned();
    match seen {
        Seen::Event(event) => {
            // The flattened body of reference §3.4 step 4.
            assert_eq!(event["type"], "message");
            assert_eq!(event["role"], "user");
            assert_eq!(event["content"][0]["text"], text);
            assert_eq!(event["model"], "echo");
            assert_eq!(event["persisted_item_id"], item_id.as_str());
            assert!(event["agent_id"].is_string());
        }
        other => panic!("expected the forwarded message, got {other:?}"),
    }
    item_id
}

#[tokio::test]
async fn text_is_flushed_at_tool_boundaries_and_a_result_joins_its_calls_response() {
    let (_home, srv) = server(Duration::from_secs(10)).await;
    let mut runner = FakeRunner::connect(&srv, "tok-tools", "idle").await;
    let session = bound(&srv, "tok-tools").await;
    let mut sse = srv.stream(&session, None).await;
    sse.expect().await; // ready heartbeat
    start_turn(&srv, &mut runner, &session, "go").await;

    runner.push(json!({"type": "session.status", "status": "running"}));
    runner.push(json!({"type": "response.in_progress", "response": {"id": "resp_A", "model": "echo-model"}}));
    runner.push(
        json!({"sequence_number": 2, "type": "response.output_text.delta", "delta": "Let me "}),
    );
    runner.push(json!({"type": "response.output_text.delta", "delta": "look."}));
    runner.push(json!({"type": "response.output_item.done", "item": {"id": "fc_0123456789abcdef0123456789abcdef",
        "type": "function_call", "status": "completed", "response_id": "resp_A", "call_id": "c1",
        "name": "shell", "arguments": "{}"}}));
    // The harness gave the result another response id: it must join its call's.
    runner.push(
        json!({"type": "response.output_item.done", "item": {"type": "function_call_output",
        "status": "completed", "response_id": "resp_other", "call_id": "c1", "output": "ok"}}),
    );
    runner.push(json!({"type": "response.output_text.delta", "delta": "Done."}));
    // A delta with a message id is the item's own business: not assembled by the server.
    runner.push(
        json!({"type": "response.output_text.delta", "delta": "ignored", "message_id": "m1"}),
    );
    runner.push(json!({"type": "response.completed", "response": {"id": "resp_A"}}));
    runner.push(json!({"type": "session.status", "status": "idle"}));

    let mut events = until(&mut sse, |k, v| {
        k == "session.status" && v["status"] == "idle"
    })
    .await;
    events.retain(|(k, _)| k != "session.input.consumed");
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "session.status",
            "response.in_progress",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_item.done",
            "response.output_item.done",
            "response.output_item.done",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_item.done",
            "response.completed",
            "session.status",
        ]
    );
    let running = &events[0].1;
    assert_eq!(running["conversation_id"], session.as_str());
    // Runner events keep their own fields.
    assert_eq!(events[2].1["sequence_number"], 2);

    let (_, items) = srv
        .get(&format!("/v1/sessions/{session}/items?limit=100"))
        .await;
    assert_eq!(
        summary(&items),
        [
            "message|user:go|-",
            "message|assistant:Let me look.|resp_A",
            "function_call|c1|resp_A",
            "function_call_output|c1|resp_A",
            "message|assistant:Done.|resp_A",
        ]
    );
    assert_eq!(items["data"][1]["model"], "echo-model");
    assert_eq!(
        items["data"][2]["id"], "0123456789abcdef0123456789abcdef",
        "the runner's item id is kept"
    );
    let (_, snap) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "idle");
}

#[tokio::test]
async fn an_interrupt_fences_the_cancelled_turns_trailing_output() {
    let (_home, srv) = server(Duration::from_secs(10)).await;
    let mut runner = FakeRunner::connect(&srv, "tok-fence", "idle").await;
    let session = bound(&srv, "tok-fence").await;
    let mut sse = srv.stream(&session, None).await;
    sse.expect().await;
    start_turn(&srv, &mut runner, &session, "talk").await;
    runner.push(json!({"type": "session.status", "status": "running"}));
    runner.push(json!({"type": "response.in_progress", "response": {"id": "resp_1"}}));
    runner.push(json!({"type": "response.output_text.delta", "delta": "before"}));
    until(&mut sse, |k, _| k == "response.output_text.delta").await;

    let (status, body) = srv
        .post(
            &format!("/v1/sessions/{session}/events"),
            json!({"type": "interrupt", "data": {}}),
        )
        .await;
    assert_eq!((status, body), (202, json!({"queued": false})));
    match runner.next_seen().await {
        Seen::Event(e) => assert_eq!(e["type"], "interrupt"),
        other => panic!("expected the interrupt, got {other:?}"),
    }
    // What the harness still had in flight: dropped. The terminal event passes and lifts the fence.
    runner.push(json!({"type": "response.output_text.delta", "delta": " late"}));
    runner.push(
        json!({"type": "response.output_item.done", "item": {"type": "function_call",
        "status": "completed", "call_id": "late", "name": "shell", "arguments": "{}"}}),
    );
    runner.push(
        json!({"type": "response.incomplete", "response": {"id": "resp_1",
        "incomplete_details": {"reason": "user_interrupt"}}}),
    );
    runner.push(json!({"type": "session.status", "status": "idle"}));
    let events = until(&mut sse, |k, v| {
        k == "session.status" && v["status"] == "idle"
    })
    .await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "session.input.consumed")
        .collect();
    assert_eq!(
        kinds,
        [
            "session.interrupted",
            "response.output_item.done",
            "response.incomplete",
            "session.status"
        ]
    );
    assert_eq!(events[0].1["data"]["response_id"], "resp_1");

    // The next turn's running lifts any fence: its output flows.
    start_turn(&srv, &mut runner, &session, "again").await;
    runner.push(json!({"type": "session.status", "status": "running"}));
    runner.push(json!({"type": "response.output_text.delta", "delta": "fresh"}));
    let events = until(&mut sse, |k, _| k == "response.output_text.delta").await;
    assert_eq!(events.last().expect("delta").1["delta"], "fresh");

    // An interrupt that cannot be delivered lifts the fence at once.
    runner.answer("interrupt", 500);
    let (status, _) = srv
        .post(
            &format!("/v1/sessions/{session}/events"),
            json!({"type": "interrupt"}),
        )
        .await;
    assert_eq!(status, 202);
    runner.push(json!({"type": "response.output_text.delta", "delta": "still flowing"}));
    let events = until(&mut sse, |k, _| k == "response.output_text.delta").await;
    assert_eq!(events.last().expect("delta").1["delta"], "still flowing");

    let (_, items) = srv
        .get(&format!("/v1/sessions/{session}/items?limit=100"))
        .await;
    assert_eq!(
        summary(&items),
        [
            "message|user:talk|-",
            "message|assistant:before|resp_1",
            "message|user:again|-"
        ]
    );
}

#[tokio::test]
async fn a_runner_that_refuses_the_input_fails_the_session_and_answers_503() {
    let (_home, srv) = server(Duration::from_secs(10)).await;
    let runner = FakeRunner::connect(&srv, "tok-refuse", "idle").await;
    let session = bound(&srv, "tok-refuse").await;
    let mut sse = srv.stream(&session, None).await;
    sse.expect().await;
    runner.answer("message", 500);
    let (status, body) = srv
        .post(
            &format!("/v1/sessions/{session}/events"),
            message("refused"),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "runner_unavailable");
    let events = until(&mut sse, |k, _| k == "session.status").await;
    let (_, failed) = events.last().expect("status");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "runner_rejected_event");
    // Persisted before it was forwarded: the input is not lost.
    let (_, items) = srv.get(&format!("/v1/sessions/{session}/items")).await;
    assert_eq!(summary(&items), ["message|user:refused|-"]);
    drop(runner);
}

#[tokio::test]
async fn a_runner_lost_mid_turn_fails_after_the_grace_and_an_idle_one_stays_quiet() {
    let (_home, srv) = server(Duration::from_millis(200)).await;
    let mut runner = FakeRunner::connect(&srv, "tok-lost", "running").await;
    let busy = bound(&srv, "tok-lost").await;
    let idle = bound(&srv, "tok-lost").await;
    let mut idle_sse = srv.stream(&idle, None).await;
    idle_sse.expect().await;
    let mut sse = srv.stream(&busy, None).await;
    sse.expect().await;
    start_turn(&srv, &mut runner, &busy, "work").await;
    runner.push(json!({"type": "session.status", "status": "running"}));
    runner.push(json!({"type": "response.output_text.delta", "delta": "half"}));
    until(&mut sse, |k, _| k == "response.output_text.delta").await;
    runner.crash();

    let events = until(&mut sse, |k, _| k == "session.status").await;
    let (_, status) = events.last().expect("status");
    assert_eq!(status["status"], "failed");
    assert_eq!(
        status["error"],
        json!({"code": "runner_disconnected", "message": "Runner disconnected unexpectedly."})
    );
    let (_, items) = srv
        .get(&format!("/v1/sessions/{busy}/items?limit=100"))
        .await;
    assert_eq!(
        summary(&items),
        [
            "message|user:work|-",
            "message|assistant:half|-",
            "error|runner_disconnected|-"
        ]
    );
    let (_, health) = srv.get(&format!("/health?session_id={busy}")).await;
    assert_eq!(health["session"]["runner_online"], false);

    // The idle session bound to the same runner published nothing: the next event on its stream is ours.
    srv.delta(&idle, "marker").await;
    let events = until(&mut idle_sse, |_, _| true).await;
    assert_eq!(events[0].0, "response.output_text.delta", "{events:?}");
    assert_eq!(events[0].1["delta"], "marker");
    let (_, snap) = srv.get(&format!("/v1/sessions/{idle}")).await;
    assert_eq!(snap["status"], "idle");
    assert_eq!(snap["runner_online"], false);
}

#[tokio::test]
async fn a_runner_back_within_the_grace_continues_the_turn_with_nothing_lost() {
    let (_home, srv) = server(Duration::from_secs(30)).await;
    let mut runner = FakeRunner::connect(&srv, "tok-blip", "running").await;
    let session = bound(&srv, "tok-blip").await;
    let mut sse = srv.stream(&session, None).await;
    sse.expect().await;
    start_turn(&srv, &mut runner, &session, "long").await;
    runner.push(json!({"type": "session.status", "status": "running"}));
    runner.push(json!({"type": "response.in_progress", "response": {"id": "resp_B"}}));
    runner.push(json!({"type": "response.output_text.delta", "delta": "one "}));
    until(&mut sse, |k, _| k == "response.output_text.delta").await;
    runner.crash();

    // The same runner (it still has the turn) reconnects: the server re-opens its stream and re-inits.
    comes_back_and_finishes(&srv, "tok-blip", &mut sse, "two", "resp_B").await;
    let (_, items) = srv
        .get(&format!("/v1/sessions/{session}/items?limit=100"))
        .await;
    assert_eq!(
        summary(&items),
        ["message|user:long|-", "message|assistant:one two|resp_B"]
    );
}

/// A turn that ends on the runner while the server re-subscribes ends by its own events. The runner's status
/// comes on a request of its own and may already say `idle` while the turn's last events are still on their way
/// on the stream; the record at the stream's start said the turn was running, so the server waits for them
/// instead of settling the turn as lost (which left the reply `incomplete`, with a `turn_lost` error).
#[tokio::test]
async fn a_turn_that_ends_while_the_relay_resubscribes_ends_by_its_own_events() {
    let (_home, srv) = server(Duration::from_secs(30)).await;
    let mut runner = FakeRunner::connect(&srv, "tok-race", "running").await;
    let session = bound(&srv, "tok-race").await;
    let mut sse = srv.stream(&session, None).await;
    sse.expect().await;
    start_turn(&srv, &mut runner, &session, "long").await;
    runner.push(json!({"type": "session.status", "status": "running"}));
    runner.push(json!({"type": "response.in_progress", "response": {"id": "resp_R"}}));
    // Deltas as our runner sends them: of one assistant message, numbered.
    runner.push(
        json!({"type": "response.output_text.delta", "delta": "one ", "message_id": "msg_R",
        "index": 0}),
    );
    until(&mut sse, |k, _| k == "response.output_text.delta").await;
    runner.crash();

    // Back with the turn's record (the turn runs), while its status answer says idle (the turn just ended).
    let resync = vec![
        json!({"type": "session.status", "status": "running"}),
        json!({"type": "response.in_progress", "response": {"id": "resp_R"}}),
        json!({"type": "response.output_text.delta", "delta": "one ", "message_id": "msg_R", "index": 0,
            "snapshot": true}),
    ];
    let mut back = FakeRunner::connect_resyncing(&srv, "tok-race", "idle", resync).await;
    back.stream_opened().await;
    assert!(matches!(back.next_seen().await, Seen::Init(_)));
    // An input waits for the relay and is forwarded once the server has judged the runner's status: the turn's
    // last events come after that judgement.
    start_turn(&srv, &mut back, &session, "more").await;
    back.push(
        json!({"type": "response.output_text.delta", "delta": "two", "message_id": "msg_R",
        "index": 1}),
    );
    back.push(json!({"type": "response.output_item.done", "item": {"id": "msg_R", "type": "message",
        "role": "assistant", "status": "completed", "response_id": "resp_R", "model": "echo", "agent": "echo",
        "content": [{"type": "output_text", "text": "one two"}]}}));
    back.push(json!({"type": "response.completed", "response": {"id": "resp_R"}}));
    back.push(json!({"type": "session.status", "status": "idle"}));
    let events = until(&mut sse, |k, v| {
        k == "response.completed" || (k == "session.status" && v["status"] == "idle")
    })
    .await;
    assert_eq!(
        events.last().expect("events").0,
        "response.completed",
        "{events:?}"
    );
    let (_, items) = srv
        .get(&format!("/v1/sessions/{session}/items?limit=100"))
        .await;
    let items = summary(&items);
    assert!(
        items
            .iter()
            .any(|i| i == "message|assistant:one two|resp_R"),
        "{items:?}"
    );
    assert!(!items.iter().any(|i| i.starts_with("error|")), "{items:?}");
}

/// A server that stopped mid-turn does not leave the turn `running` forever: after a restart, a turn whose runner
/// never returns fails after the grace; one whose runner comes back (still running it) continues.
#[tokio::test]
async fn turns_under_way_when_the_server_stopped_fail_after_the_grace_unless_their_runner_returns()
{
    let home = tempfile::tempdir().expect("tmp");
    let config = |c: &mut omnigent_server::ServerConfig| {
        c.runner_grace = Duration::from_secs(2);
        c.tunnel.ping_interval = Duration::from_millis(20);
    };
    let srv = TestServer::start_with(home.path(), config).await;
    let mut gone = FakeRunner::connect(&srv, "tok-gone", "running").await;
    let mut back = FakeRunner::connect(&srv, "tok-back", "running").await;
    let lost = bound(&srv, "tok-gone").await;
    let kept = bound(&srv, "tok-back").await;
    for (runner, session) in [(&mut gone, &lost), (&mut back, &kept)] {
        let mut sse = srv.stream(session, None).await;
        sse.expect().await;
        start_turn(&srv, runner, session, "work").await;
        runner.push(json!({"type": "session.status", "status": "running"}));
        until(&mut sse, |k, v| {
            k == "session.status" && v["status"] == "running"
        })
        .await;
    }
    let (stopped, _) = srv.shutdown().await;
    stopped.expect("clean stop");
    drop(gone);
    drop(back);

    let srv = TestServer::start_with(home.path(), config).await;
    let mut lost_sse = srv.stream(&lost, None).await;
    lost_sse.expect().await;
    let mut kept_sse = srv.stream(&kept, None).await;
    kept_sse.expect().await;
    // One runner comes back, still running its turn, and finishes it.
    comes_back_and_finishes(&srv, "tok-back", &mut kept_sse, "done", "resp_K").await;
    // The other never does: its turn fails once the grace is over.
    let events = until(&mut lost_sse, |k, _| k == "session.status").await;
    let (_, status) = events.last().expect("status");
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"]["code"], "runner_disconnected");
    let (_, items) = srv
        .get(&format!("/v1/sessions/{lost}/items?limit=100"))
        .await;
    assert_eq!(
        summary(&items),
        ["message|user:work|-", "error|runner_disconnected|-"]
    );
    let (_, items) = srv
        .get(&format!("/v1/sessions/{kept}/items?limit=100"))
        .await;
    assert_eq!(
        summary(&items),
        ["message|user:work|-", "message|assistant:done|resp_K"]
    );
    let (_, snap) = srv.get(&format!("/v1/sessions/{kept}")).await;
    assert_eq!(snap["status"], "idle");
}

#[tokio::test]
async fn runners_are_listed_and_bindings_checked() {
    let (_home, srv) = server(Duration::from_secs(10)).await;
    assert_eq!(srv.get("/v1/runners").await, (200, json!({"data": []})));
    let runner = FakeRunner::connect(&srv, "tok-list", "idle").await;
    let id = omnigent_proto::ids::runner_id_for_token("tok-list");
    assert_eq!(
        srv.get("/v1/runners").await,
        (
            200,
            json!({"data": [{"runner_id": id, "online": true, "harnesses": ["echo"]}]})
        )
    );
    assert_eq!(
        srv.get(&format!("/v1/runners/{id}/status")).await,
        (200, json!({"runner_id": id, "online": true}))
    );
    let session = srv.create_session("bind").await;
    let (status, err) = srv
        .patch(
            &format!("/v1/sessions/{session}"),
            json!({"runner_id": "runner_not_here"}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "invalid_input");
    let (status, snap) = srv
        .patch(&format!("/v1/sessions/{session}"), json!({"runner_id": id}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(snap["runner_online"], true);
    let (_, list) = srv.get("/v1/sessions").await;
    assert_eq!(list["data"][0]["runner_online"], true);
    let (status, err) = srv
        .post(&format!("/v1/runners/{id}/token"), json!({}))
        .await;
    assert_eq!(status, 400, "{err}");
    runner.crash();
}

#[tokio::test]
async fn a_graceful_shutdown_closes_runner_tunnels_with_1012() {
    let (_home, srv) = server(Duration::from_secs(10)).await;
    let token = "tok-restart";
    let runner_id = omnigent_proto::ids::runner_id_for_token(token);
    let mut request = format!(
        "{}/v1/runners/{runner_id}/tunnel",
        srv.url.replace("http://", "ws://")
    )
    .into_client_request()
    .expect("request");
    request.headers_mut().insert(
        "x-omnigent-runner-tunnel-token",
        token.parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    let hello = json!({"kind": "hello", "runner_version": "fake", "frame_protocol_version": 1,
        "harnesses": [], "envs": [], "telemetry_opt_out": true});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .expect("hello");
    // The first ping proves the tunnel is registered.
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time");
        if let Some(Ok(Message::Text(t))) = frame
            && t.as_str().contains("\"ping\"")
        {
            break;
        }
    }
    let stopping = tokio::spawn(srv.shutdown());
    let close = tokio::time::timeout(WAIT, async {
        while let Some(frame) = ws.next().await {
            if let Ok(Message::Close(frame)) = frame {
                return frame;
            }
        }
        None
    })
    .await
    .expect("closed in time")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1012);
    assert_eq!(close.reason.as_str(), "service restart");
    let (result, _) = stopping.await.expect("shutdown task");
    assert!(result.is_ok());
}

/// Events of a stream, as (id, type, JSON), until `stop` holds (inclusive); heartbeats skipped.
async fn with_ids(
    sse: &mut common::Sse,
    stop: impl Fn(&str, &Value) -> bool,
) -> Vec<(u64, String, Value)> {
    let mut out = Vec::new();
    loop {
        let m = sse.next_non_heartbeat().await.expect("stream open");
        let kind = m.event.clone().unwrap_or_default();
        let v = common::json_of(&m);
        let done = stop(&kind, &v);
        out.push((common::id_of(&m), kind, v));
        if done {
            return out;
        }
    }
}

/// The item an event is about: the announced input, or the item of `response.output_item.done`.
fn item_of(kind: &str, v: &Value) -> Option<String> {
    match kind {
        "session.input.consumed" => v["data"]["item_id"].as_str().map(str::to_owned),
        "response.output_item.done" => v["item"]["id"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// A turn whose runner streams it before even answering the forward: the input is announced before any of
/// its events, the live stream's ids have no gap, a stream resumed from the feed is the same sequence, and one
/// resumed after a restart (from the store) gets each item under the id it had live.
#[tokio::test]
async fn a_fast_turn_is_announced_first_and_live_and_resumed_streams_are_the_same_sequence() {
    let home = tempfile::tempdir().expect("tmp");
    let config = |c: &mut omnigent_server::ServerConfig| {
        c.runner_grace = Duration::from_secs(10);
        c.tunnel.ping_interval = Duration::from_millis(20);
    };
    let srv = TestServer::start_with(home.path(), config).await;
    let mut runner = FakeRunner::connect(&srv, "tok-fast", "idle").await;
    let session = bound(&srv, "tok-fast").await;
    let mut sse = srv.stream(&session, None).await;
    let ready = common::id_of(&sse.expect().await);
    runner.before_answer(vec![
        json!({"type": "session.status", "status": "running"}),
        json!({"type": "response.in_progress", "response": {"id": "resp_F", "model": "m"}}),
        json!({"type": "response.output_text.delta", "delta": "quick"}),
        json!({"type": "response.completed", "response": {"id": "resp_F"}}),
        json!({"type": "session.status", "status": "idle"}),
    ]);
    let user_item = start_turn(&srv, &mut runner, &session, "fast").await;
    let idle = |k: &str, v: &Value| k == "session.status" && v["status"] == "idle";
    let live = with_ids(&mut sse, idle).await;
    let kinds: Vec<&str> = live.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds[0], "session.input.consumed", "{kinds:?}");
    assert_eq!(live[0].2["data"]["item_id"], user_item.as_str());
    let ids: Vec<u64> = live.iter().map(|(id, _, _)| *id).collect();
    let gapless: Vec<u64> = (ready + 1..ready + 1 + ids.len() as u64).collect();
    assert_eq!(ids, gapless, "live ids skip none: {kinds:?}");

    // Resumed from the feed: the same events under the same ids.
    let mut resumed = srv.stream(&session, Some(ready)).await;
    resumed.expect().await;
    let again = with_ids(&mut resumed, idle).await;
    let key = |e: &[(u64, String, Value)]| -> Vec<(u64, String)> {
        e.iter().map(|(id, k, _)| (*id, k.clone())).collect()
    };
    assert_eq!(key(&again), key(&live));
    drop((sse, resumed, runner));

    // Resumed after a restart, from the store: each durable item under the id it was announced with live.
    let (stopped, _) = srv.shutdown().await;
    stopped.expect("clean stop");
    let srv = TestServer::start_with(home.path(), config).await;
    let mut from_store = srv.stream(&session, Some(ready)).await;
    from_store.expect().await;
    let stored = with_ids(&mut from_store, |k, v| {
        k == "response.output_item.done" && v["item"]["role"] == "assistant"
    })
    .await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    for (id, kind, v) in &stored {
        let item = item_of(kind, v).expect("an item");
        let (_, live_kind, live_v) = live
            .iter()
            .find(|(live_id, _, _)| live_id == id)
            .unwrap_or_else(|| panic!("id {id} ({kind}) was never sent live: {kinds:?}"));
        assert_eq!(item_of(live_kind, live_v).as_deref(), Some(item.as_str()));
    }
}

/// After a server restart the runner re-sends what its turn produced so far (its items, and the message
/// being streamed as a `snapshot` delta): items the server has are neither stored nor shown twice; when the
/// turn then cannot finish, the message is stored with all its text so far, as `incomplete`, beside an error.
#[tokio::test]
async fn a_turn_re_sent_by_its_runner_is_stored_once_and_an_unfinished_message_as_incomplete() {
    let home = tempfile::tempdir().expect("tmp");
    let config = |c: &mut omnigent_server::ServerConfig| {
        c.runner_grace = Duration::from_millis(500);
        c.tunnel.ping_interval = Duration::from_millis(20);
    };
    let srv = TestServer::start_with(home.path(), config).await;
    let mut runner = FakeRunner::connect(&srv, "tok-resend", "running").await;
    let session = bound(&srv, "tok-resend").await;
    let mut sse = srv.stream(&session, None).await;
    sse.expect().await;
    start_turn(&srv, &mut runner, &session, "long").await;
    let m1 = "1".repeat(32);
    let m2 = "2".repeat(32);
    let first = json!({"type": "response.output_item.done", "item": {"id": m1, "type": "message",
        "role": "assistant", "status": "completed", "response_id": "resp_R",
        "content": [{"type": "output_text", "text": "Hello world"}]}});
    let call = json!({"type": "response.output_item.done", "item": {"id": "c".repeat(32),
        "type": "function_call", "status": "completed", "response_id": "resp_R", "call_id": "c1",
        "name": "shell", "arguments": "{}"}});
    runner.push(json!({"type": "session.status", "status": "running"}));
    runner
        .push(json!({"type": "response.in_progress", "response": {"id": "resp_R", "model": "m"}}));
    runner.push(json!({"type": "response.output_text.delta", "delta": "Hello ", "message_id": m1}));
    runner.push(first.clone());
    runner.push(call.clone());
    runner.push(json!({"type": "response.output_text.delta", "delta": "par", "message_id": m2}));
    until(&mut sse, |k, v| {
        k == "response.output_text.delta" && v["delta"] == "par"
    })
    .await;
    let (stopped, _) = srv.shutdown().await;
    stopped.expect("clean stop");
    drop((sse, runner));

    let srv = TestServer::start_with(home.path(), config).await;
    let mut sse = srv.stream(&session, None).await;
    sse.expect().await;
    let mut back = FakeRunner::connect(&srv, "tok-resend", "running").await;
    back.stream_opened().await;
    assert!(
        back.asked_record,
        "the relay asks the runner for the turn's record"
    );
    assert!(matches!(back.next_seen().await, Seen::Init(_)));
    back.push(first);
    back.push(call);
    back.push(
        json!({"type": "response.output_text.delta", "delta": "partial text", "message_id": m2,
        "index": 3, "snapshot": true}),
    );
    back.push(
        json!({"type": "response.output_text.delta", "delta": " and more", "message_id": m2}),
    );
    until(&mut sse, |k, v| {
        k == "response.output_text.delta" && v["delta"] == " and more"
    })
    .await;
    back.crash();
    let events = until(&mut sse, |k, v| {
        k == "session.status" && v["status"] == "failed"
    })
    .await;
    let shown: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        shown,
        [
            "response.output_item.done",
            "response.output_item.done",
            "session.status"
        ],
        "only the unfinished message and the error are new: {events:?}"
    );
    let (_, items) = srv
        .get(&format!("/v1/sessions/{session}/items?limit=100"))
        .await;
    assert_eq!(
        summary(&items),
        [
            "message|user:long|-",
            "message|assistant:Hello world|resp_R",
            "function_call|c1|resp_R",
            "message|assistant:partial text and more|resp_R",
            "error|runner_disconnected|resp_R",
        ]
    );
    let data = items["data"].as_array().expect("items");
    assert_eq!(data[1]["status"], "completed");
    assert_eq!(data[3]["status"], "incomplete");
    assert_eq!(data[3]["id"], m2.as_str());
}
