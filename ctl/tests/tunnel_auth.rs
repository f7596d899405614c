//! Tunnel authentication against the real binary (issue 9, hole 2 and the secrets-in-logs item): `omnigent
//! server run` and `omnigent runner` as child processes in a temp `OMNIGENT_HOME`, attacked by raw WebSocket
//! clients the way a web page or a local process would; and a whole turn at trace level whose logs are searched
//! for the binding token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{start_runner, start_server, start_server_env, token_and_id};

/// Open the runner tunnel of `runner_id` with exactly these headers, say hello, and return the close code.
async fn impostor_close_code(
    server_url: &str,
    runner_id: &str,
    origin: Option<&str>,
    token: Option<&str>,
) -> u16 {
    let url = format!("{server_url}/v1/runners/{runner_id}/tunnel");
    let mut ws = omnigent_testkit::ws::dial(&url, origin, token)
        .await
        .expect("upgrade");
    omnigent_testkit::ws::hello_then_close_code(&mut ws).await
}

#[tokio::test]
async fn a_web_page_or_a_token_less_process_cannot_take_over_a_runner_that_keeps_answering() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let mut server = start_server(home.path(), 0, 10_000).await;
    let (token, runner_id) = token_and_id("takeover");
    let _runner = start_runner(home.path(), &server.url, &token, "echo", ws.path(), &[]);
    let session = server
        .session_on_runner("echo", ws.path(), &runner_id)
        .await;

    for (origin, token, code) in [
        (Some("http://evil.example"), None, 4403),
        (Some("null"), None, 4403),
        (None, None, 4004),
        (Some("omnigent://internal"), Some("a-guess"), 4004),
    ] {
        assert_eq!(
            impostor_close_code(&server.url, &runner_id, origin, token).await,
            code,
            "{origin:?} {token:?}"
        );
    }

    // The real runner still gets the next prompt and answers it.
    let mut sse = server.stream(&session).await;
    let (status, body) = server.message(&session, "still mine").await;
    assert_eq!(status, 202, "{body}");
    sse.until(|k, v| k == "session.status" && v["status"] == "idle")
        .await;
    let items = server.transcript(&session).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[1]["role"], "assistant");
    assert!(
        items[1]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("still mine"),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_trace_level_turn_logs_no_binding_token() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let trace = [("OMNIGENT_LOG", "trace"), ("RUST_LOG", "trace")];
    let mut server = start_server_env(home.path(), 0, 10_000, &trace).await;
    let (token, runner_id) = token_and_id("trace");
    let mut runner = start_runner(
        home.path(),
        &server.url,
        &token,
        "echo",
        ws.path(),
        &trace.map(|(k, v)| (k, v.to_owned())),
    );
    let session = server
        .session_on_runner("echo", ws.path(), &runner_id)
        .await;
    let mut sse = server.stream(&session).await;
    let (status, body) = server.message(&session, "hello at trace level").await;
    assert_eq!(status, 202, "{body}");
    sse.until(|k, v| k == "session.status" && v["status"] == "idle")
        .await;

    let server_log = server.proc.kill_and_read_log().await;
    let runner_log = runner.kill_and_read_log().await;
    // The logs really are at trace level: the frames went through them.
    assert!(
        runner_log.iter().any(|l| l.contains("TRACE")),
        "the runner logged no trace line"
    );
    for (who, log) in [("server", &server_log), ("runner", &runner_log)] {
        let leaks: Vec<&String> = log.iter().filter(|l| l.contains(&token)).collect();
        assert!(
            leaks.is_empty(),
            "the {who} logged the binding token:\n{}",
            leaks
                .iter()
                .map(|l| l.chars().take(300).collect::<String>())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
