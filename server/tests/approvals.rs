//! Approvals from any device (issue 15 item 6) against a scripted runner: the runner asks
//! (`response.elicitation_request`), every client sees the question in the snapshot, the list and its stream,
//! the first answer wins (from the resolve route or an `approval` event), is published to every stream and
//! forwarded to the runner once; later answers are 409, unknown ids 404, a viewer 403.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::fake_runner::{FakeRunner, Seen};
use common::{TestServer, until};
use omnigent_proto::elicitation::{ElicitationParams, ElicitationRequest};
use omnigent_server::Secret;
use serde_json::{Value, json};

const OWNER: &str = "owner-token-for-approvals-0123456789abcdefgh";

/// A server that trusts no peer (every request carries a token); the test's own client is the owner.
async fn server(home: &std::path::Path) -> TestServer {
    let mut srv = TestServer::start_with(home, |c| {
        c.trust_loopback = false;
        c.owner_token = Some(Secret(OWNER.to_owned()));
        c.tunnel.ping_interval = Duration::from_millis(20);
    })
    .await;
    srv.client = client(OWNER);
    srv
}

fn client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A paired CLI device of `role`: its token.
async fn device(srv: &TestServer, role: &str) -> String {
    let (status, code) = srv.post("/v1/pairing/codes", json!({"role": role})).await;
    assert_eq!(status, 201, "{code}");
    let (status, claim) = srv
        .post(
            "/v1/pairing/claim",
            json!({"code": code["code"], "name": format!("{role} phone"), "client": "cli"}),
        )
        .await;
    assert_eq!(status, 200, "{claim}");
    claim["token"].as_str().unwrap().to_owned()
}

/// A session bound to a fake runner whose stream is open, and a user message forwarded (the turn runs).
async fn running_session(srv: &TestServer, token: &str) -> (String, FakeRunner) {
    let id = srv.create_session("approvals").await;
    let mut runner = FakeRunner::connect(srv, token, "idle").await;
    let runner_id = omnigent_proto::ids::runner_id_for_token(token);
    let (status, body) = srv
        .patch(
            &format!("/v1/sessions/{id}"),
            json!({"runner_id": runner_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let message = json!({"type": "message", "data": {"role": "user",
        "content": [{"type": "input_text", "text": "clean the build"}]}});
    let path = format!("/v1/sessions/{id}/events");
    let (posted, ()) = tokio::join!(srv.post(&path, message), async {
        runner.stream_opened().await;
        assert!(matches!(runner.next_seen().await, Seen::Init(_)));
        assert!(matches!(runner.next_seen().await, Seen::Event(_)));
    });
    assert_eq!(posted.0, 202, "{}", posted.1);
    runner.push(json!({"type": "session.status", "status": "running", "response_id": "resp_1"}));
    (id, runner)
}

fn question(id: &str, command: &str) -> ElicitationRequest {
    let mut request = ElicitationRequest::new(ElicitationParams::tool_approval(
        "claude-code",
        "Bash",
        format!("Allow Bash: `{command}`?"),
        &json!({"command": command}).to_string(),
    ));
    request.elicitation_id = id.to_owned();
    request
}

fn is(kind: &'static str, id: &'static str) -> impl Fn(&str, &Value) -> bool {
    move |k, v| k == kind && v["elicitation_id"] == id
}

#[tokio::test]
async fn the_first_answer_wins_everywhere_and_reaches_the_runner_once() {
    let home = tempfile::tempdir().unwrap();
    let srv = server(home.path()).await;
    let (session, mut runner) = running_session(&srv, "runner_token_approvals").await;
    let mut first = srv.stream(&session, None).await;
    let phone = device(&srv, "driver").await;
    let second_client = client(&phone);
    let mut second = common::Sse::open(
        &second_client,
        &srv.u(&format!("/v1/sessions/{session}/stream")),
        None,
    )
    .await;

    // The runner asks: every stream shows it, the session waits, the snapshot and the list carry it.
    let asked = question("elicit_rm", "rm -rf build");
    runner.push(asked.event());
    runner.push(json!({"type": "session.status", "status": "waiting"}));
    for sse in [&mut first, &mut second] {
        let events = until(sse, is("response.elicitation_request", "elicit_rm")).await;
        let (_, event) = events.last().unwrap();
        assert_eq!(event["params"]["tool_name"], "Bash");
        assert_eq!(
            event["params"]["content_preview"],
            "{\"command\":\"rm -rf build\"}"
        );
    }
    until(&mut first, |k, v| {
        k == "session.status" && v["status"] == "waiting"
    })
    .await;
    let (_, snapshot) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snapshot["status"], "waiting", "{snapshot}");
    assert_eq!(snapshot["pending_elicitations"], json!([asked.event()]));
    let (_, list) = srv.get("/v1/sessions").await;
    assert_eq!(list["data"][0]["pending_elicitations_count"], 1, "{list}");
    let (status, state) = srv
        .get(&format!("/v1/sessions/{session}/elicitations/elicit_rm"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        state,
        json!({"status": "pending", "message": "Allow Bash: `rm -rf build`?", "phase": "pre_tool_use",
            "policy_name": "claude-code", "content_preview": "{\"command\":\"rm -rf build\"}"})
    );

    // The phone answers first: both streams are told at once, the runner gets the nested approval.
    let resolve = format!("/v1/sessions/{session}/elicitations/elicit_rm/resolve");
    let answer = second_client
        .post(srv.u(&resolve))
        .json(&json!({"action": "decline"}))
        .send()
        .await
        .unwrap();
    let (status, body) = common::status_json(answer).await;
    assert_eq!((status, &body), (202, &json!({"queued": false})));
    match runner.next_seen().await {
        Seen::Event(event) => assert_eq!(
            event,
            json!({"type": "approval", "data": {"elicitation_id": "elicit_rm", "action": "decline"}})
        ),
        other => panic!("expected the forwarded answer, got {other:?}"),
    }
    for sse in [&mut first, &mut second] {
        let events = until(sse, is("response.elicitation_resolved", "elicit_rm")).await;
        let (_, event) = events.last().unwrap();
        assert_eq!(event["action"], "decline");
    }

    // The laptop's answer comes second: 409, and nothing more reaches the runner.
    let (status, body) = srv.post(&resolve, json!({"action": "accept"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_resolved");
    let (status, body) = srv
        .post(
            &format!("/v1/sessions/{session}/elicitations/elicit_never/resolve"),
            json!({"action": "accept"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (_, snapshot) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snapshot["pending_elicitations"], json!([]));
    let (_, state) = srv
        .get(&format!("/v1/sessions/{session}/elicitations/elicit_rm"))
        .await;
    assert_eq!(state, json!({"status": "resolved"}));

    // The runner confirms it itself (and runs again): its `resolved` is not shown a second time.
    runner.push(
        json!({"type": "response.elicitation_resolved", "elicitation_id": "elicit_rm",
        "action": "decline"}),
    );
    // A second question, answered by an `approval` event; the runner refuses the forward with 409 (it
    // stopped waiting): still the client's answer won.
    runner.answer("approval", 409);
    runner.push(question("elicit_ls", "ls").event());
    let events = until(&mut first, is("response.elicitation_request", "elicit_ls")).await;
    assert!(
        !events
            .iter()
            .any(|(k, _)| k == "response.elicitation_resolved"),
        "the runner's confirmation was published again: {events:?}"
    );
    let (status, body) = srv
        .post(
            &format!("/v1/sessions/{session}/events"),
            json!({"type": "approval", "data": {"elicitation_id": "elicit_ls", "action": "accept"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    match runner.next_seen().await {
        Seen::Event(event) => {
            assert_eq!(event["type"], "approval");
            assert_eq!(
                event["data"]["elicitation_id"], "elicit_ls",
                "one forward per answer"
            );
        }
        other => panic!("expected the second answer, got {other:?}"),
    }
    until(&mut first, is("response.elicitation_resolved", "elicit_ls")).await;
    let (_, snapshot) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snapshot["status"], "running", "{snapshot}");

    // A question still open when the turn ends expires, and a late answer to it is 409.
    runner.push(question("elicit_late", "make").event());
    until(
        &mut first,
        is("response.elicitation_request", "elicit_late"),
    )
    .await;
    runner.push(json!({"type": "response.completed", "response": {"id": "resp_1"}}));
    runner.push(json!({"type": "session.status", "status": "idle"}));
    let events = until(&mut first, |k, v| {
        k == "session.status" && v["status"] == "idle"
    })
    .await;
    assert!(
        events
            .iter()
            .any(|(k, v)| k == "response.elicitation_resolved"
                && v["elicitation_id"] == "elicit_late"
                && v["reason"] == "unanswered"),
        "{events:?}"
    );
    let (_, list) = srv.get("/v1/sessions").await;
    assert_eq!(list["data"][0]["pending_elicitations_count"], 0, "{list}");
    let (status, _) = srv
        .post(
            &format!("/v1/sessions/{session}/elicitations/elicit_late/resolve"),
            json!({"action": "accept"}),
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn a_viewer_may_not_see_or_answer_a_question_and_nothing_is_forwarded() {
    let home = tempfile::tempdir().unwrap();
    let srv = server(home.path()).await;
    let (session, mut runner) = running_session(&srv, "runner_token_approvals_viewer").await;
    let mut sse = srv.stream(&session, None).await;
    runner.push(question("elicit_rm", "rm -rf /").event());
    until(&mut sse, is("response.elicitation_request", "elicit_rm")).await;

    let viewer = client(&device(&srv, "viewer").await);
    let base = srv.u(&format!("/v1/sessions/{session}"));
    let attempts = [
        viewer
            .post(format!("{base}/elicitations/elicit_rm/resolve"))
            .json(&json!({"action": "accept"})),
        viewer.post(format!("{base}/events")).json(
            &json!({"type": "approval", "data": {"elicitation_id": "elicit_rm", "action": "accept"}}),
        ),
        viewer.get(format!("{base}/elicitations/elicit_rm")),
    ];
    for attempt in attempts {
        let (status, body) = common::status_json(attempt.send().await.unwrap()).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["required_role"], "driver", "{body}");
    }
    // Still pending; the owner's answer is the first (and only) one the runner gets.
    let (_, snapshot) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(
        snapshot["pending_elicitations"][0]["elicitation_id"],
        "elicit_rm"
    );
    let (status, _) = srv
        .post(
            &format!("/v1/sessions/{session}/elicitations/elicit_rm/resolve"),
            json!({"action": "cancel"}),
        )
        .await;
    assert_eq!(status, 202);
    match runner.next_seen().await {
        Seen::Event(event) => assert_eq!(event["data"]["action"], "cancel", "{event}"),
        other => panic!("expected the owner's answer, got {other:?}"),
    }
}
