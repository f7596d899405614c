//! A host-launched runner that crashes mid-turn (reference §3.5 and the host tunnel's `host.runner_exited`):
//! the server runs in-process on 127.0.0.1:0, the test plays the host over a raw WebSocket (frame by frame)
//! and the runner with a scripted tunnel client. The turn running on the crashed runner fails with the
//! host's exit report, whether the report comes before or after the relaunched runner's tunnel; an idle
//! session stays quiet; the next message runs on the relaunched runner.

mod common;

use common::fake_runner::{FakeRunner, Seen};
use common::raw_host::{Ws, next_frame, python_hello, send};
use common::{TestServer, WAIT, until};
use omnigent_proto::ids::runner_id_for_token;
use omnigent_tunnel::host::HostRegistry;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A raw host online at `srv`.
async fn raw_host(srv: &TestServer, registry: &HostRegistry) -> (String, Ws) {
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    let url = format!(
        "{}/v1/hosts/{host_id}/tunnel",
        srv.url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("origin", "omnigent://internal".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    send(&mut ws, python_hello()).await;
    registry
        .wait_for_host(&host_id, WAIT)
        .await
        .expect("online");
    (host_id, ws)
}

/// Create an echo session on the host (stat, then launch): its id and the binding token.
async fn host_session(srv: &TestServer, host_id: &str, ws: &mut Ws) -> (String, String) {
    let client = srv.client.clone();
    let url = srv.u("/v1/sessions");
    let body = json!({"agent_id": "echo", "host_id": host_id, "workspace": "/srv/work"});
    let create = tokio::spawn(async move {
        let resp = client.post(url).json(&body).send().await.expect("POST");
        common::status_json(resp).await
    });
    let stat = next_frame(ws).await;
    assert_eq!(stat["kind"], "host.stat", "{stat}");
    send(
        ws,
        json!({"kind": "host.stat_result", "request_id": stat["request_id"], "status": "ok",
               "exists": true, "type": "directory", "canonical_path": "/srv/work", "error": null}),
    )
    .await;
    let launch = next_frame(ws).await;
    assert_eq!(launch["kind"], "host.launch_runner", "{launch}");
    let token = launch["binding_token"].as_str().expect("token").to_owned();
    send(
        ws,
        json!({"kind": "host.launch_runner_result", "request_id": launch["request_id"],
               "status": "launched", "runner_id": runner_id_for_token(&token), "error": null,
               "error_code": null}),
    )
    .await;
    let (s, body) = create.await.expect("task");
    assert_eq!(s, 201, "{body}");
    (body["id"].as_str().expect("id").to_owned(), token)
}

/// The body of a session init the runner saw.
fn init_of(seen: Seen) -> Value {
    match seen {
        Seen::Init(init) => init,
        other => panic!("expected the session init, got {other:?}"),
    }
}

fn message(text: &str) -> Value {
    json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": text}]}})
}

/// Post a message and wait until the runner got it (re-opening its stream first when it is new).
async fn start_turn(srv: &TestServer, runner: &mut FakeRunner, session: &str, text: &str) {
    let path = format!("/v1/sessions/{session}/events");
    let post = srv.post(&path, message(text));
    let (accepted, seen) = tokio::join!(post, async {
        if runner.stream_id.is_none() {
            runner.stream_opened().await;
            assert_eq!(init_of(runner.next_seen().await)["session_id"], session);
        }
        runner.next_seen().await
    });
    let (status, body) = accepted;
    assert_eq!(status, 202, "{body}");
    match seen {
        Seen::Event(event) => assert_eq!(event["content"][0]["text"], text),
        other => panic!("expected the forwarded message, got {other:?}"),
    }
}

/// Run a turn to its `running` status and first text, as the runner streams them.
async fn mid_turn(
    srv: &TestServer,
    runner: &mut FakeRunner,
    sse: &mut common::Sse,
    session: &str,
    text: &str,
) {
    start_turn(srv, runner, session, text).await;
    runner.push(json!({"type": "session.status", "status": "running"}));
    runner.push(json!({"type": "response.output_text.delta", "delta": "half"}));
    until(sse, |k, _| k == "response.output_text.delta").await;
}

fn error_codes(items: &Value) -> Vec<String> {
    items["data"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["type"] == "error")
        .map(|i| i["error"]["code"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn a_runner_crashing_mid_turn_fails_that_turn_with_the_hosts_exit_report_and_the_next_message_works()
 {
    let home = tempfile::tempdir().expect("tmp");
    let registry = HostRegistry::default();
    let shared = registry.clone();
    // A grace far longer than the test: only the exit report can fail the turn.
    let srv = TestServer::start_with(home.path(), move |c| {
        c.host_registry = shared;
        c.runner_grace = std::time::Duration::from_secs(300);
        c.tunnel.ping_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let (host_id, mut host) = raw_host(&srv, &registry).await;
    let (session, token) = host_session(&srv, &host_id, &mut host).await;
    let (quiet, quiet_token) = host_session(&srv, &host_id, &mut host).await;
    let runner_id = runner_id_for_token(&token);
    let mut runner = FakeRunner::connect(&srv, &token, "running").await;
    let mut sse = srv.stream(&session, None).await;
    sse.expect().await;
    mid_turn(&srv, &mut runner, &mut sse, &session, "first").await;
    let (_, status) = srv.get(&format!("/v1/runners/{runner_id}/status")).await;
    assert!(status.get("error").is_none(), "{status}");

    // The exit report comes first (the daemon reaps, reports, then relaunches).
    runner.crash();
    let report = "runner process was killed by signal 9\nlast log lines:\nagent: about to take the runner down";
    send(
        &mut host,
        json!({"kind": "host.runner_exited", "runner_id": runner_id, "error": report}),
    )
    .await;
    let events = until(&mut sse, |k, _| k == "session.status").await;
    let (_, status) = events.last().expect("status");
    assert_eq!(status["status"], "failed", "{events:?}");
    assert_eq!(
        status["error"],
        json!({"code": "runner_crashed", "message": report})
    );
    let (_, items) = srv
        .get(&format!("/v1/sessions/{session}/items?limit=100"))
        .await;
    assert_eq!(error_codes(&items), ["runner_crashed"], "{items}");
    let (_, snap) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "failed");
    // The runner's status carries the last exit report.
    let (s, status) = srv.get(&format!("/v1/runners/{runner_id}/status")).await;
    assert_eq!(s, 200);
    assert_eq!(status["error"], report, "{status}");
    // A session of another runner on the host is not touched.
    let (_, other) = srv.get(&format!("/v1/sessions/{quiet}")).await;
    assert_eq!(other["status"], "idle");
    assert_ne!(runner_id_for_token(&quiet_token), runner_id);

    // The relaunched runner (same token) takes the next message.
    let mut back = FakeRunner::connect(&srv, &token, "idle").await;
    mid_turn(&srv, &mut back, &mut sse, &session, "second").await;

    // This time the relaunched runner's tunnel comes before the exit report: the turn is not settled as if
    // it had completed; the report fails it.
    back.crash();
    let mut again = FakeRunner::connect(&srv, &token, "idle").await;
    again.stream_opened().await;
    assert_eq!(
        init_of(again.next_seen().await)["session_id"],
        session.as_str()
    );
    send(
        &mut host,
        json!({"kind": "host.runner_exited", "runner_id": runner_id, "error": "runner process exited with code 3"}),
    )
    .await;
    let events = until(&mut sse, |k, _| k == "session.status").await;
    let (_, status) = events.last().expect("status");
    assert_eq!(status["status"], "failed", "{events:?}");
    assert_eq!(
        status["error"],
        json!({"code": "runner_crashed", "message": "runner process exited with code 3"})
    );
    start_turn(&srv, &mut again, &session, "third").await;
    again.push(json!({"type": "session.status", "status": "running"}));
    again.push(json!({"type": "response.output_text.delta", "delta": "ok"}));
    again.push(json!({"type": "response.completed", "response": {"id": "resp_C"}}));
    again.push(json!({"type": "session.status", "status": "idle"}));
    let events = until(&mut sse, |k, v| {
        k == "session.status" && v["status"] != "running"
    })
    .await;
    assert_eq!(
        events.last().expect("status").1["status"],
        "idle",
        "{events:?}"
    );

    // An exit report for an idle session publishes nothing: the next event on its stream is ours.
    send(
        &mut host,
        json!({"kind": "host.runner_exited", "runner_id": runner_id, "error": "runner process exited with code 0"}),
    )
    .await;
    // The report is recorded before the next request is served (the runner's status shows it).
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, st) = srv.get(&format!("/v1/runners/{runner_id}/status")).await;
            if st["error"] == "runner process exited with code 0" {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the report is recorded");
    srv.delta(&session, "marker").await;
    let events = until(&mut sse, |_, _| true).await;
    assert_eq!(events[0].0, "response.output_text.delta", "{events:?}");
    let (_, snap) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "idle");
}
