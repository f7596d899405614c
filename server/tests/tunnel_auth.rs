//! Hostile peers against the real server's tunnel routes (issue 9, hole 2): the server runs in-process on
//! 127.0.0.1:0 over a real SQLite file; the real runner is a scripted tunnel client holding its binding token;
//! the attackers are raw WebSocket clients, as a web page or a local process would open them.

mod common;

use std::time::Duration;

use common::TestServer;
use common::fake_runner::{FakeRunner, Seen};
use omnigent_testkit::ws::{Ws, close_code, hello_then_close_code};
use serde_json::json;

async fn server() -> (tempfile::TempDir, TestServer) {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| {
        c.runner_grace = Duration::from_secs(10);
        c.tunnel.ping_interval = Duration::from_millis(20);
    })
    .await;
    (home, srv)
}

/// Open `path` on `srv` as a WebSocket with exactly these headers; `Err(status)` for an HTTP answer.
async fn dial(
    srv: &TestServer,
    path: &str,
    origin: Option<&str>,
    token: Option<&str>,
) -> Result<Ws, u16> {
    omnigent_testkit::ws::dial(&srv.u(path), origin, token).await
}

#[tokio::test]
async fn no_web_page_or_token_less_peer_takes_over_a_token_bound_runner_which_gets_the_next_prompt()
{
    let (_home, srv) = server().await;
    let token = "tok-the-real-runner";
    let runner_id = omnigent_proto::ids::runner_id_for_token(token);
    let mut runner = FakeRunner::connect(&srv, token, "idle").await;
    let session = srv.create_session("takeover").await;
    let (status, body) = srv
        .patch(
            &format!("/v1/sessions/{session}"),
            json!({"runner_id": runner_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let path = format!("/v1/runners/{runner_id}/tunnel");
    for (origin, token, code) in [
        // A web page, with or without a (guessed) token.
        (Some("http://evil.example"), None, 4403),
        (Some("null"), Some("guess"), 4403),
        // A local process without the token, or with the wrong one.
        (None, None, 4004),
        (Some("omnigent://internal"), None, 4004),
        (Some("omnigent://internal"), Some("guess"), 4004),
    ] {
        let mut impostor = dial(&srv, &path, origin, token).await.expect("upgrade");
        assert_eq!(
            hello_then_close_code(&mut impostor).await,
            code,
            "{origin:?} {token:?}"
        );
    }

    // The next prompt reaches the real runner.
    let events = format!("/v1/sessions/{session}/events");
    let post = srv.post(
        &events,
        json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": "for the real one"}]}}),
    );
    let (accepted, seen) = tokio::join!(post, async {
        runner.stream_opened().await;
        loop {
            if let Seen::Event(event) = runner.next_seen().await {
                return event;
            }
        }
    });
    assert_eq!(accepted.0, 202, "{}", accepted.1);
    assert_eq!(seen["type"], "message");
    assert_eq!(seen["content"][0]["text"], "for the real one");
    let (_, runners) = srv.get("/v1/runners").await;
    assert_eq!(
        runners["data"].as_array().map(Vec::len),
        Some(1),
        "{runners}"
    );
    assert_eq!(runners["data"][0]["harnesses"], json!(["echo"]));
}

#[tokio::test]
async fn a_browser_origin_is_closed_4403_on_the_host_tunnel_too() {
    let (_home, srv) = server().await;
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    for origin in ["http://evil.example", "null"] {
        let mut ws = dial(
            &srv,
            &format!("/v1/hosts/{host_id}/tunnel"),
            Some(origin),
            None,
        )
        .await
        .expect("upgrade");
        assert_eq!(close_code(&mut ws).await, 4403, "{origin}");
    }
    let (_, list) = srv.get("/v1/hosts").await;
    assert_eq!(list, json!({"hosts": []}));
}

#[tokio::test]
async fn a_10_kb_or_path_like_id_is_refused_400_before_the_upgrade_on_both_tunnels() {
    let (_home, srv) = server().await;
    let long = "x".repeat(10_000);
    for id in [long.as_str(), "..%2F..%2Fx"] {
        for route in ["runners", "hosts"] {
            let path = format!("/v1/{route}/{id}/tunnel");
            assert_eq!(
                dial(&srv, &path, Some("omnigent://internal"), None)
                    .await
                    .err(),
                Some(400),
                "{route}"
            );
        }
        let (status, body) = srv.get(&format!("/v1/runners/{id}/status")).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_input");
    }
}
