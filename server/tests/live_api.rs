//! The routes a live web client needs (issue 12, deliver 3), against the real server in-process on 127.0.0.1:0
//! over a real SQLite file: the session-list WebSocket, read state, projects, catalogs, sub-agents, terminals,
//! the `external_*` events in 0.19.1's shapes and `session.presence`. Bad input of each route included.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::{TestServer, WAIT, json_of};
use futures_util::{SinkExt, StreamExt};
use omnigent_proto::events::{SseMessage, SseParser};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const UNKNOWN: &str = "0123456789abcdef0123456789abcdef";

async fn server() -> (tempfile::TempDir, TestServer) {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    (home, srv)
}

async fn put(srv: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let resp = srv
        .client
        .put(srv.u(path))
        .json(&body)
        .send()
        .await
        .expect("PUT");
    common::status_json(resp).await
}

async fn create(srv: &TestServer, body: Value) -> String {
    let (status, v) = srv.post("/v1/sessions", body).await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().expect("id").to_owned()
}

// ---------------------------------------------------------------------------------------------------------
// WS /v1/sessions/updates

async fn dial(srv: &TestServer, origin: Option<&str>) -> Result<Ws, u16> {
    let url = format!(
        "{}/v1/sessions/updates",
        srv.url.replace("http://", "ws://")
    );
    let mut request = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("dial: {e}"),
    }
}

/// The next JSON text frame (pings skipped); fails the test after [`WAIT`] or on a close.
async fn frame(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame arrives in time")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next frame that is not a heartbeat.
async fn event(ws: &mut Ws) -> Value {
    loop {
        let v = frame(ws).await;
        if v["type"] != "heartbeat" {
            return v;
        }
    }
}

async fn watch(ws: &mut Ws, ids: Value) {
    ws.send(Message::Text(
        json!({"type": "watch", "session_ids": ids})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
}

fn ids_of(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn updates_snapshot_then_changes_removals_and_new_sessions() {
    let (_home, srv) = server().await;
    let a = srv.create_session("a").await;
    let b = srv.create_session("b").await;
    let mut ws = dial(&srv, None).await.expect("upgrade");
    // Unknown ids are left out of the snapshot; duplicates count once.
    watch(&mut ws, json!([a, UNKNOWN, b, a])).await;
    let snap = event(&mut ws).await;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    assert_eq!(ids_of(&snap["items"]), vec![a.clone(), b.clone()]);
    let first = &snap["items"][0];
    assert_eq!(first["title"], "a");
    assert_eq!(first["status"], "idle");
    assert_eq!(first["runner_online"], false);
    assert_eq!(first["viewer_unread"], false);

    // A watched session changes: `changed` with the new row.
    let (status, _) = srv
        .patch(&format!("/v1/sessions/{a}"), json!({"title": "a2"}))
        .await;
    assert_eq!(status, 200);
    let changed = event(&mut ws).await;
    assert_eq!(changed["type"], "changed", "{changed}");
    assert_eq!(ids_of(&changed["items"]), vec![a.clone()]);
    assert_eq!(changed["items"][0]["title"], "a2");

    // Its status changes (an external status, as a forwarder posts it).
    let (status, body) = srv
        .post(
            &format!("/v1/sessions/{b}/events"),
            json!({"type": "external_session_status", "data": {"status": "running"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let changed = event(&mut ws).await;
    assert_eq!(changed["type"], "changed", "{changed}");
    assert_eq!(changed["items"][0]["id"], b.as_str());
    assert_eq!(changed["items"][0]["status"], "running");

    // A session created elsewhere is pushed although nobody watches it yet.
    let c = srv.create_session("c").await;
    let pushed = event(&mut ws).await;
    assert_eq!(pushed["type"], "changed", "{pushed}");
    assert_eq!(ids_of(&pushed["items"]), vec![c.clone()]);
    assert_eq!(pushed["items"][0]["title"], "c");

    // Read state shows in the entry.
    let (status, _) = put(
        &srv,
        &format!("/v1/sessions/{a}/read-state"),
        json!({"last_seen": 1_700_000_000, "unread": true}),
    )
    .await;
    assert_eq!(status, 204);
    let changed = event(&mut ws).await;
    assert_eq!(changed["type"], "changed", "{changed}");
    assert_eq!(changed["items"][0]["viewer_last_seen"], 1_700_000_000);
    assert_eq!(changed["items"][0]["viewer_unread"], true);

    // A watched session deleted: `removed`.
    let (status, _) = srv.delete(&format!("/v1/sessions/{a}")).await;
    assert_eq!(status, 200);
    let removed = event(&mut ws).await;
    assert_eq!(removed, json!({"type": "removed", "ids": [a]}));

    // A new watch replaces the set and gets its own snapshot.
    watch(&mut ws, json!([c])).await;
    let snap = event(&mut ws).await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(ids_of(&snap["items"]), vec![c]);
}

#[tokio::test]
async fn updates_follow_runner_liveness() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| {
        c.tunnel.ping_interval = Duration::from_millis(20);
    })
    .await;
    let id = srv.create_session("bound").await;
    let mut ws = dial(&srv, None).await.expect("upgrade");
    watch(&mut ws, json!([id])).await;
    let snap = event(&mut ws).await;
    assert_eq!(snap["items"][0]["runner_online"], false);
    let token = "runner_token_live_api_liveness";
    let runner = common::fake_runner::FakeRunner::connect(&srv, token, "idle").await;
    let runner_id = omnigent_proto::ids::runner_id_for_token(token);
    let (status, body) = srv
        .patch(
            &format!("/v1/sessions/{id}"),
            json!({"runner_id": runner_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let changed = event(&mut ws).await;
    assert_eq!(changed["type"], "changed", "{changed}");
    assert_eq!(changed["items"][0]["runner_id"], runner_id.as_str());
    assert_eq!(changed["items"][0]["runner_online"], true);
    // The runner goes away: the entry says so without any write to the session.
    runner.task.abort();
    drop(runner);
    let changed = event(&mut ws).await;
    assert_eq!(changed["type"], "changed", "{changed}");
    assert_eq!(changed["items"][0]["runner_online"], false);
}

#[tokio::test]
async fn updates_bad_frames_get_an_error_frame_and_the_socket_stays_usable() {
    let (_home, srv) = server().await;
    let a = srv.create_session("a").await;
    let mut ws = dial(&srv, None).await.expect("upgrade");
    for bad in [
        "not json".to_owned(),
        json!({"type": "subscribe"}).to_string(),
        json!({"session_ids": [a]}).to_string(),
        json!({"type": "watch", "session_ids": "x"}).to_string(),
    ] {
        ws.send(Message::Text(bad.clone().into()))
            .await
            .expect("send");
        let err = event(&mut ws).await;
        assert_eq!(err["type"], "error", "{bad} → {err}");
        assert_eq!(err["code"], "invalid_input");
        assert!(
            err["message"].as_str().expect("message").contains("watch"),
            "the message says what to send: {err}"
        );
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(event(&mut ws).await["type"], "error");
    // Ids that are not session ids are not watched, and said so after the snapshot.
    watch(&mut ws, json!([a, "bogus", 7])).await;
    let snap = event(&mut ws).await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(ids_of(&snap["items"]), vec![a.clone()]);
    let err = event(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert!(
        err["message"].as_str().expect("message").contains("2 of"),
        "{err}"
    );
}

#[tokio::test]
async fn updates_watch_of_501_ids_watches_the_first_500() {
    let (_home, srv) = server().await;
    let real = srv.create_session("the 501st").await;
    let mut ids: Vec<String> = (0..500u32).map(|i| format!("{i:032x}")).collect();
    ids.push(real.clone());
    let mut ws = dial(&srv, None).await.expect("upgrade");
    watch(&mut ws, json!(ids)).await;
    let snap = event(&mut ws).await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["items"], json!([]), "the 501st id is not watched");
    let err = event(&mut ws).await;
    assert_eq!(err["type"], "error", "{err}");
    let message = err["message"].as_str().expect("message");
    assert!(
        message.contains("501") && message.contains("500"),
        "{message}"
    );
    // So its changes are not sent; a watch of it alone works.
    watch(&mut ws, json!([real])).await;
    let snap = event(&mut ws).await;
    assert_eq!(ids_of(&snap["items"]), vec![real]);
}

#[tokio::test]
async fn updates_origin_is_checked_like_the_tunnels() {
    let (_home, srv) = server().await;
    for origin in [
        "http://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
    ] {
        let mut ws = dial(&srv, Some(origin))
            .await
            .expect("upgraded, then closed");
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
            .expect("a close frame")
            .expect("frame");
        match msg {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4403, "{origin}"),
            other => panic!("{origin}: expected close 4403, got {other:?}"),
        }
    }
    for origin in [
        "http://localhost:5173",
        "http://127.0.0.1:6767",
        "omnigent://internal",
    ] {
        let mut ws = dial(&srv, Some(origin)).await.expect("upgrade");
        watch(&mut ws, json!([])).await;
        assert_eq!(event(&mut ws).await["type"], "snapshot", "{origin}");
    }
    // Not a WebSocket request: a JSON 400.
    let (status, body) = srv.get("/v1/sessions/updates").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_input");
}

#[tokio::test]
async fn updates_heartbeat_when_idle() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| {
        c.heartbeat_interval = Duration::from_millis(50);
    })
    .await;
    let mut ws = dial(&srv, None).await.expect("upgrade");
    watch(&mut ws, json!([])).await;
    assert_eq!(frame(&mut ws).await["type"], "snapshot");
    assert_eq!(frame(&mut ws).await, json!({"type": "heartbeat"}));
}

// ---------------------------------------------------------------------------------------------------------
// Read state, projects

#[tokio::test]
async fn read_state_is_stored_listed_and_kept_across_restarts() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let a = srv.create_session("a").await;
    let path = format!("/v1/sessions/{a}/read-state");
    for bad in [
        json!({"last_seen": "x", "unread": false}),
        json!({"last_seen": 1}),
        json!({"last_seen": 1, "unread": false, "extra": 1}),
    ] {
        let (status, body) = put(&srv, &path, bad.clone()).await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert_eq!(body["error"]["code"], "invalid_input");
    }
    let body = json!({"last_seen": 1_700_000_000, "unread": false});
    for unknown in [UNKNOWN, "not-an-id"] {
        let (status, _) = put(
            &srv,
            &format!("/v1/sessions/{unknown}/read-state"),
            body.clone(),
        )
        .await;
        assert_eq!(status, 404, "{unknown}");
    }
    let (status, none) = put(&srv, &path, body).await;
    assert_eq!((status, none), (204, Value::Null));
    let (status, _) = put(
        &srv,
        &path,
        json!({"last_seen": 1_700_000_001, "unread": true}),
    )
    .await;
    assert_eq!(status, 204);
    srv.shutdown().await.0.expect("clean stop");

    let srv = TestServer::start(home.path()).await;
    let (_, list) = srv.get("/v1/sessions").await;
    assert_eq!(list["data"][0]["viewer_last_seen"], 1_700_000_001);
    assert_eq!(list["data"][0]["viewer_unread"], true);
    let b = srv.create_session("b").await;
    let (_, list) = srv.get("/v1/sessions").await;
    let entry = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|s| s["id"] == b.as_str())
        .expect("b listed");
    assert_eq!(entry["viewer_last_seen"], Value::Null);
    assert_eq!(entry["viewer_unread"], false);
}

#[tokio::test]
async fn projects_come_from_the_project_label_and_their_order_is_kept() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let (status, none) = srv.get("/v1/sessions/projects").await;
    assert_eq!((status, none), (200, json!([])));
    for (title, project) in [("1", "beta"), ("2", "alpha"), ("3", "alpha")] {
        create(
            &srv,
            json!({"agent_id": "echo", "title": title, "labels": {"omni_project": project}}),
        )
        .await;
    }
    create(&srv, json!({"agent_id": "echo", "labels": {"other": "x"}})).await;
    let (_, projects) = srv.get("/v1/sessions/projects").await;
    assert_eq!(
        projects,
        json!([
            {"id": null, "name": "alpha", "icon": null},
            {"id": null, "name": "beta", "icon": null}
        ])
    );

    let (status, order) = srv.get("/v1/projects/order").await;
    assert_eq!(status, 200);
    assert_eq!(
        order,
        json!({"sort_mode": "alphabetical", "ordered_project_ids": null})
    );
    for bad in [
        json!({}),
        json!({"ordered_project_ids": [UNKNOWN]}),
        json!({"ordered_project_ids": "x"}),
    ] {
        let (status, body) = put(&srv, "/v1/projects/order", bad.clone()).await;
        assert_eq!(status, 400, "{bad} → {body}");
    }
    let (status, order) = put(
        &srv,
        "/v1/projects/order",
        json!({"ordered_project_ids": []}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        order,
        json!({"sort_mode": "manual", "ordered_project_ids": []})
    );
    srv.shutdown().await.0.expect("clean stop");

    let srv = TestServer::start(home.path()).await;
    let (_, order) = srv.get("/v1/projects/order").await;
    assert_eq!(
        order,
        json!({"sort_mode": "manual", "ordered_project_ids": []})
    );
    // null: alphabetical, the manual order remembered.
    let (_, order) = put(
        &srv,
        "/v1/projects/order",
        json!({"ordered_project_ids": null}),
    )
    .await;
    assert_eq!(
        order,
        json!({"sort_mode": "alphabetical", "ordered_project_ids": []})
    );
    let (_, again) = srv.get("/v1/projects/order").await;
    assert_eq!(again, order);
}

// ---------------------------------------------------------------------------------------------------------
// Catalogs

#[tokio::test]
async fn catalogs_harnesses_extensions_and_skills() {
    let (_home, srv) = server().await;
    let (status, h) = srv.get("/v1/harnesses").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = h["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        [
            "echo",
            "openai",
            "anthropic",
            "exec",
            "claude-sdk",
            "codex",
            "pi"
        ]
    );
    let openai = &h["data"][1];
    assert_eq!(openai["capabilities"]["interrupt"], true);
    assert_eq!(openai["capabilities"]["streaming"], true);
    assert!(
        openai["setup_steps"][0]["detail"]
            .as_str()
            .expect("detail")
            .contains("OPENAI_API_KEY")
    );
    // Setup steps by every spelling, Python omnigent's included.
    assert_eq!(h["setup_steps"]["claude"], h["setup_steps"]["claude-sdk"]);
    assert_eq!(
        h["setup_steps"]["claude-sdk"][0]["command"],
        "npm install -g @anthropic-ai/claude-code"
    );
    assert!(
        h["setup_steps"]["claude-sdk"][1]["detail"]
            .as_str()
            .expect("detail")
            .contains("claude login")
    );
    assert_eq!(h["setup_steps"]["echo"], json!([]));

    assert_eq!(
        srv.get("/v1/extensions").await,
        (200, json!({"object": "list", "data": []}))
    );

    let a = srv.create_session("a").await;
    assert_eq!(
        srv.get(&format!("/v1/skills?session_id={a}")).await,
        (200, json!({"skills": []}))
    );
    assert_eq!(
        srv.get("/v1/skills?host_id=h&harness=echo&path=/tmp").await,
        (200, json!({"skills": []}))
    );
    for bad in [
        "/v1/skills".to_owned(),
        "/v1/skills?host_id=h&harness=echo".to_owned(),
        format!("/v1/skills?session_id={a}&host_id=h"),
        "/v1/skills?session_id=".to_owned(),
    ] {
        let (status, body) = srv.get(&bad).await;
        assert_eq!(status, 400, "{bad} → {body}");
    }
    assert_eq!(
        srv.get(&format!("/v1/skills?session_id={UNKNOWN}")).await.0,
        404
    );
}

// ---------------------------------------------------------------------------------------------------------
// Per-session routes

#[tokio::test]
async fn agent_child_sessions_and_terminals() {
    let (_home, srv) = server().await;
    let parent = srv.create_session("parent").await;
    let (status, agent) = srv.get(&format!("/v1/sessions/{parent}/agent")).await;
    assert_eq!(status, 200);
    assert_eq!(agent["name"], "echo");
    assert_eq!(agent["object"], "agent");
    let (_, agents) = srv.get("/v1/agents").await;
    assert_eq!(agent, agents["data"][0]);

    let (status, empty) = srv
        .get(&format!("/v1/sessions/{parent}/child_sessions"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        empty,
        json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false})
    );
    let mut children = Vec::new();
    for i in 0..3 {
        children.push(
            create(
                &srv,
                json!({"agent_id": "echo", "title": format!("explorer:c{i}"),
                       "parent_session_id": parent, "sub_agent_name": format!("c{i}")}),
            )
            .await,
        );
    }
    let (_, page) = srv
        .get(&format!("/v1/sessions/{parent}/child_sessions?limit=2"))
        .await;
    assert_eq!(
        ids_of(&page["data"]),
        vec![children[2].clone(), children[1].clone()]
    );
    assert_eq!(page["has_more"], true);
    let first = &page["data"][0];
    assert_eq!(first["object"], "child_session");
    assert_eq!(first["parent_session_id"], parent.as_str());
    assert_eq!(first["tool"], "explorer");
    assert_eq!(first["session_name"], "c2");
    assert_eq!(first["kind"], "sub_agent");
    assert_eq!(first["busy"], false);
    let (_, rest) = srv
        .get(&format!(
            "/v1/sessions/{parent}/child_sessions?limit=2&after={}",
            page["last_id"].as_str().expect("last_id")
        ))
        .await;
    assert_eq!(ids_of(&rest["data"]), vec![children[0].clone()]);
    assert_eq!(rest["has_more"], false);
    let (_, asc) = srv
        .get(&format!("/v1/sessions/{parent}/child_sessions?order=asc"))
        .await;
    assert_eq!(ids_of(&asc["data"]), children);
    for bad in [
        "limit=0",
        "limit=1001",
        "order=sideways",
        &format!("after={UNKNOWN}"),
    ] {
        let (status, body) = srv
            .get(&format!("/v1/sessions/{parent}/child_sessions?{bad}"))
            .await;
        assert_eq!(status, 400, "{bad} → {body}");
    }

    let (status, terminals) = srv
        .get(&format!("/v1/sessions/{parent}/resources/terminals"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(terminals["object"], "list");
    assert_eq!(terminals["data"], json!([]));

    for route in ["agent", "child_sessions", "resources/terminals"] {
        for id in [UNKNOWN, "nope"] {
            let (status, body) = srv.get(&format!("/v1/sessions/{id}/{route}")).await;
            assert_eq!(status, 404, "{route} of {id}");
            assert_eq!(body["error"]["message"], "Session not found");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// external_* events without a runner, in 0.19.1's shapes

#[tokio::test]
async fn external_events_in_python_shapes_work_without_a_runner() {
    let (_home, srv) = server().await;
    let id = srv.create_session("ext").await;
    let events = format!("/v1/sessions/{id}/events");
    let mut sse = srv.stream(&id, None).await;
    sse.expect().await; // ready heartbeat

    // 0.19.1's shape: data.item_type + data.item_data (captured from a live 0.19.1).
    let (status, accepted) = srv
        .post(
            &events,
            json!({"type": "external_conversation_item", "data": {
                "item_type": "message", "response_id": "resp_1",
                "item_data": {"role": "user", "content": [{"type": "input_text", "text": "yo"}]}}}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["queued"], false);
    let item_id = accepted["item_id"].as_str().expect("item_id").to_owned();
    let (status, reply) = srv
        .post(
            &events,
            json!({"type": "external_conversation_item", "data": {
                "item_type": "message",
                "item_data": {"role": "assistant", "agent": "echo",
                              "content": [{"type": "output_text", "text": "hi"}]}}}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    for bad in [
        json!({}),
        json!({"item_type": "message"}),
        json!({"item_type": "nonsense", "item_data": {}}),
        json!({"item_type": 3, "item_data": {}}),
        json!({"item_type": "message", "item_data": {"role": "user"}}),
        json!({"item_type": "message", "response_id": " ", "item_data":
               {"role": "user", "content": "x"}}),
    ] {
        let (status, body) = srv
            .post(
                &events,
                json!({"type": "external_conversation_item", "data": bad.clone()}),
            )
            .await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert_eq!(body["error"]["code"], "invalid_input");
    }
    let (_, items) = srv.get(&format!("/v1/sessions/{id}/items")).await;
    let data = items["data"].as_array().expect("items");
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], item_id.as_str());
    assert_eq!(data[0]["response_id"], "resp_1");
    assert_eq!(data[0]["content"][0]["text"], "yo");
    assert!(
        data[1]["response_id"]
            .as_str()
            .expect("a response id is made up")
            .starts_with("resp_")
    );

    for (kind, data) in [
        ("external_output_text_delta", json!({"delta": "abc"})),
        ("external_session_status", json!({"status": "running"})),
        (
            "external_session_usage",
            json!({"context_tokens": 30, "context_window": 1000}),
        ),
    ] {
        let (status, body) = srv.post(&events, json!({"type": kind, "data": data})).await;
        assert_eq!(status, 202, "{kind}: {body}");
        assert_eq!(body, json!({"queued": false}), "{kind}");
    }
    let seen = common::until(&mut sse, |kind, _| kind == "session.usage").await;
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.contains(&"response.output_text.delta"), "{kinds:?}");
    let status = seen
        .iter()
        .find(|(k, _)| k == "session.status")
        .expect("status event");
    assert_eq!(status.1["status"], "running");
    let usage = &seen.last().expect("usage").1;
    assert_eq!(usage["conversation_id"], id.as_str());
    assert_eq!(usage["context_tokens"], 30);
    let (_, session) = srv.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(session["status"], "running");
}

// ---------------------------------------------------------------------------------------------------------
// session.presence

/// One `GET …/stream?presence=true…` response, read event by event.
struct Stream {
    resp: reqwest::Response,
    parser: SseParser,
    pending: VecDeque<SseMessage>,
}

impl Stream {
    async fn open(srv: &TestServer, id: &str, query: &str) -> Stream {
        let resp = srv
            .client
            .get(srv.u(&format!("/v1/sessions/{id}/stream?{query}")))
            .send()
            .await
            .expect("stream");
        assert_eq!(resp.status(), 200);
        Stream {
            resp,
            parser: SseParser::new(1 << 20),
            pending: VecDeque::new(),
        }
    }

    async fn next(&mut self) -> SseMessage {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return m;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("an event in time")
                .expect("read")
                .expect("the stream is open");
            self.pending
                .extend(self.parser.push(&chunk).expect("event fits"));
        }
    }

    /// The next event that is not a heartbeat.
    async fn event(&mut self) -> SseMessage {
        loop {
            let m = self.next().await;
            if m.event.as_deref() != Some("session.heartbeat") {
                return m;
            }
        }
    }

    /// The connections of the next event, which must be `session.presence`.
    async fn presence(&mut self, session: &str) -> Vec<Value> {
        let m = self.event().await;
        assert_eq!(m.event.as_deref(), Some("session.presence"), "{}", m.data);
        assert!(
            m.id.is_some(),
            "it carries the stream's cursor like a heartbeat"
        );
        let v = json_of(&m);
        assert_eq!(v["conversation_id"], session);
        assert_eq!(v["viewers"], json!([]));
        v["connections"].as_array().expect("connections").clone()
    }
}

#[tokio::test]
async fn presence_lists_the_open_streams_on_join_and_leave() {
    let (_home, srv) = server().await;
    let id = srv.create_session("watched").await;
    // A stream that does not ask gets no presence (the next event after the ready heartbeat is the delta),
    // but is counted.
    let mut plain = srv.stream(&id, None).await;
    plain.expect().await;
    let mut a = Stream::open(&srv, &id, "presence=true").await;
    let joined = a.presence(&id).await;
    assert_eq!(joined.len(), 2, "{joined:?}");
    assert!(
        joined[1]["joined_at"]
            .as_str()
            .expect("joined_at")
            .ends_with('Z')
    );
    assert_eq!(joined[1]["idle"], false);
    srv.delta(&id, "one").await;
    let m = plain.next_non_heartbeat().await.expect("event");
    assert_eq!(m.event.as_deref(), Some("response.output_text.delta"));
    assert_eq!(
        a.event().await.event.as_deref(),
        Some("response.output_text.delta")
    );

    // Another joins (a backgrounded tab): both announcing streams get the list of three.
    let mut b = Stream::open(&srv, &id, "presence=true&idle=true").await;
    for s in [&mut a, &mut b] {
        let list = s.presence(&id).await;
        assert_eq!(list.len(), 3, "{list:?}");
        assert_eq!(list[2]["idle"], true);
    }
    // Leaves: the others are told.
    drop(b);
    assert_eq!(a.presence(&id).await.len(), 2);
    drop(plain);
    let alone = a.presence(&id).await;
    assert_eq!(alone.len(), 1);
    assert_eq!(alone[0], joined[1]);
    let (status, _) = srv
        .get(&format!("/v1/sessions/{id}/stream?idle=maybe"))
        .await;
    assert_eq!(status, 400);
}
