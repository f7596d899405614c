//! The anthropic harness against a fake Messages API on 127.0.0.1: streaming events, tool_use blocks
//! assembled from input_json_delta and really run in the workspace, tool_result round trips, failures.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Canned, End, FakeVendor, user};
use omnigent_runner::harness::{
    self, HarnessConfig, HarnessError, HarnessKind, HistoryEntry, TurnOutcome,
};
use omnigent_testkit::vendor::anthropic::{
    event, message_end, message_start, ping, text_block, tool_block,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn config(vendor: &FakeVendor) -> HarnessConfig {
    HarnessConfig {
        base_url: Some(format!("{}/", vendor.url)),
        api_key: Some("sk-ant-test".into()),
        idle_timeout: Some(Duration::from_secs(10)),
        ..HarnessConfig::default()
    }
}

async fn run(
    config: HarnessConfig,
    history: Vec<HistoryEntry>,
) -> (
    tempfile::TempDir,
    Result<TurnOutcome, HarnessError>,
    Vec<Value>,
) {
    let ws = tempfile::tempdir().unwrap();
    let turn = common::turn(ws.path(), config, history);
    let (sink, mut rx) = common::sink();
    let result = common::within(
        20,
        harness::run_turn(
            HarnessKind::Anthropic,
            &turn,
            &sink,
            &CancellationToken::new(),
        ),
    )
    .await;
    let events = common::drain(&mut rx);
    (ws, result, events)
}

#[tokio::test]
async fn a_tool_use_is_assembled_run_and_answered() {
    let command = r#"{"command": "echo made > made.txt && cat made.txt"}"#;
    let mut first = vec![message_start("msg_1", 50), ping()];
    first.extend(text_block(0, &["I'll run ", "it."]));
    first.extend(tool_block(
        1,
        "toolu_1",
        "shell",
        &["", &command[..12], &command[12..]],
    ));
    first.extend(message_end("tool_use", 30));
    let mut second = vec![message_start("msg_1", 90)];
    second.extend(text_block(0, &["All done."]));
    second.extend(message_end("end_turn", 4));
    let vendor = FakeVendor::start(vec![Canned::stream(first), Canned::stream(second)]).await;

    let (ws, result, events) = run(config(&vendor), vec![user("make a file")]).await;
    let outcome = result.unwrap();
    let output = "made\n[exit code 0]";
    assert_eq!(
        common::summarize(&events),
        [
            "delta:I'll run ".to_owned(),
            "delta:it.".into(),
            format!("call:toolu_1:shell:{command}"),
            format!("output:toolu_1:{output}"),
            "delta:All done.".into(),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("made.txt")).unwrap(),
        "made\n"
    );
    assert_eq!(
        outcome.new_history,
        [
            HistoryEntry::Assistant {
                text: "I'll run it.".into()
            },
            HistoryEntry::ToolCall {
                call_id: "toolu_1".into(),
                name: "shell".into(),
                arguments: command.into()
            },
            HistoryEntry::ToolResult {
                call_id: "toolu_1".into(),
                output: output.into()
            },
            HistoryEntry::Assistant {
                text: "All done.".into()
            },
        ]
    );
    assert_eq!(
        outcome.usage,
        Some(json!({"input_tokens": 140, "output_tokens": 34}))
    );

    let requests = vendor.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.path, "/v1/messages");
        assert_eq!(request.headers["x-api-key"], "sk-ant-test");
        assert_eq!(request.headers["anthropic-version"], "2023-06-01");
        assert_eq!(request.body["model"], "claude-sonnet-4-5");
        assert_eq!(request.body["stream"], true);
        assert!(request.body["max_tokens"].as_u64().unwrap() > 0);
        assert!(
            request.body["system"]
                .as_str()
                .unwrap()
                .contains("workspace")
        );
        assert_eq!(request.body["tools"][0]["name"], "shell");
    }
    assert_eq!(
        requests[1].body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "make a file"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "I'll run it."},
                {"type": "tool_use", "id": "toolu_1", "name": "shell",
                 "input": {"command": "echo made > made.txt && cat made.txt"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": output}]},
        ])
    );
}

#[tokio::test]
async fn history_alternates_roles_and_drops_orphans() {
    let mut reply = vec![message_start("msg_1", 1)];
    reply.extend(text_block(0, &["ok"]));
    reply.extend(message_end("end_turn", 1));
    let vendor = FakeVendor::start(vec![Canned::stream(reply)]).await;
    let history = vec![
        user("one"),
        HistoryEntry::ToolCall {
            call_id: "t1".into(),
            name: "read_file".into(),
            arguments: r#"{"path":"a"}"#.into(),
        },
        HistoryEntry::ToolResult {
            call_id: "t1".into(),
            output: "A".into(),
        },
        HistoryEntry::ToolCall {
            call_id: "t2".into(),
            name: "shell".into(),
            arguments: "{}".into(),
        },
        user("two"),
    ];
    let mut config = config(&vendor);
    config.model = Some("claude-custom".into());
    let (_ws, result, _) = run(config, history).await;
    assert_eq!(
        result.unwrap().new_history,
        [HistoryEntry::Assistant { text: "ok".into() }]
    );
    let body = &vendor.requests()[0].body;
    assert_eq!(body["model"], "claude-custom");
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "one"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read_file", "input": {"path": "a"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "A"},
                {"type": "text", "text": "two"}]},
        ])
    );
}

#[tokio::test]
async fn no_api_key_is_not_configured() {
    let (_ws, result, _) = run(HarnessConfig::default(), vec![user("hi")]).await;
    match result {
        Err(HarnessError::NotConfigured(message)) => {
            assert!(message.contains("ANTHROPIC_API_KEY"), "{message}")
        }
        other => panic!("expected NotConfigured, got {other:?}"),
    }
}

#[tokio::test]
async fn an_auth_token_alone_is_sent_as_a_bearer_token() {
    let mut reply = vec![message_start("msg_1", 5)];
    reply.extend(text_block(0, &["hi"]));
    reply.extend(message_end("end_turn", 1));
    let vendor = FakeVendor::start(vec![Canned::stream(reply)]).await;
    let config = HarnessConfig {
        api_key: None,
        auth_token: Some("tok-gateway".into()),
        ..config(&vendor)
    };
    let (_ws, result, _) = run(config, vec![user("hi")]).await;
    result.unwrap();
    let requests = vendor.requests();
    assert_eq!(requests[0].headers["authorization"], "Bearer tok-gateway");
    assert!(!requests[0].headers.contains_key("x-api-key"));
}

async fn expect_vendor_error(canned: Canned) -> (u16, String, Option<u64>) {
    let vendor = FakeVendor::start(vec![canned]).await;
    let (_ws, result, events) = run(config(&vendor), vec![user("hi")]).await;
    assert!(events.is_empty());
    match result {
        Err(HarnessError::Vendor {
            vendor: "anthropic",
            status,
            message,
            retry_after,
        }) => (status, message, retry_after),
        other => panic!("expected a vendor error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_vendor_error_that_echoes_the_key_is_redacted() {
    let (status, message, _) = expect_vendor_error(Canned::status(
        401,
        r#"{"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key: sk-ant-test"}}"#,
    ))
    .await;
    assert_eq!(
        (status, message.as_str()),
        (401, "invalid x-api-key: [redacted]")
    );
}

#[tokio::test]
async fn http_errors_carry_the_vendor_message() {
    let (status, message, retry) = expect_vendor_error(Canned::status(
        401,
        r#"{"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}"#,
    ))
    .await;
    assert_eq!(
        (status, message.as_str(), retry),
        (401, "invalid x-api-key", None)
    );

    let (status, message, retry) = expect_vendor_error(Canned::Status {
        status: 429,
        headers: vec![("retry-after", "12".into())],
        body: r#"{"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}}"#.into(),
    })
    .await;
    assert_eq!((status, retry), (429, Some(12)));
    assert!(message.starts_with("Number of request tokens"), "{message}");

    let (status, message, _) = expect_vendor_error(Canned::status(
        529,
        r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#,
    ))
    .await;
    assert_eq!((status, message.as_str()), (529, "Overloaded"));
}

async fn expect_stream_error(canned: Canned, idle: Duration) -> (String, Vec<String>) {
    let vendor = FakeVendor::start(vec![canned]).await;
    let mut config = config(&vendor);
    config.idle_timeout = Some(idle);
    let (_ws, result, events) = run(config, vec![user("hi")]).await;
    match result {
        Err(HarnessError::Stream {
            vendor: "anthropic",
            message,
        }) => (message, common::summarize(&events)),
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_error_event_mid_stream_fails_the_turn() {
    let mut chunks = vec![message_start("msg_1", 1)];
    chunks.extend(text_block(0, &["par"]));
    chunks.push(event(
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ));
    let (message, events) =
        expect_stream_error(Canned::stream(chunks), Duration::from_secs(10)).await;
    assert!(
        message.contains("overloaded_error") && message.contains("Overloaded"),
        "{message}"
    );
    assert_eq!(events, ["delta:par"]);
}

#[tokio::test]
async fn a_stream_without_message_stop_fails_the_turn() {
    let mut chunks = vec![message_start("msg_1", 1)];
    chunks.extend(text_block(0, &["par"]));
    let (message, _) = expect_stream_error(Canned::stream(chunks), Duration::from_secs(10)).await;
    assert!(message.contains("message_stop"), "{message}");
}

#[tokio::test]
async fn a_malformed_event_fails_the_turn() {
    let chunks = vec![
        message_start("msg_1", 1),
        "event: content_block_delta\ndata: {\"type\": \"content_blo\n\n".into(),
    ];
    let (message, _) = expect_stream_error(Canned::stream(chunks), Duration::from_secs(10)).await;
    assert!(message.contains("not valid JSON"), "{message}");
}

#[tokio::test]
async fn a_stalled_stream_hits_the_idle_timeout() {
    let mut chunks = vec![message_start("msg_1", 1)];
    chunks.extend(text_block(0, &["slow"]));
    let (message, events) = expect_stream_error(
        Canned::stream_ending(chunks, End::Stall),
        Duration::from_millis(300),
    )
    .await;
    assert!(message.contains("idle timeout"), "{message}");
    assert_eq!(events, ["delta:slow"]);
}

#[tokio::test]
async fn an_oversized_event_is_refused() {
    // 9 MiB in one data line, over the 8 MiB cap.
    let huge = format!("data: {}\n\n", "x".repeat(9 << 20));
    let (message, _) = expect_stream_error(
        Canned::stream(vec![message_start("msg_1", 1), huge]),
        Duration::from_secs(10),
    )
    .await;
    assert!(message.contains("larger than 8 MiB"), "{message}");
}

#[tokio::test]
async fn an_interrupt_during_a_tool_run_ends_the_turn_promptly() {
    let mut chunks = vec![message_start("msg_1", 1)];
    chunks.extend(tool_block(
        0,
        "toolu_s",
        "shell",
        &[r#"{"command": "sleep 300"}"#],
    ));
    chunks.extend(message_end("tool_use", 1));
    let vendor = FakeVendor::start(vec![Canned::stream(chunks)]).await;
    let ws = tempfile::tempdir().unwrap();
    let turn = common::turn(ws.path(), config(&vendor), vec![user("wait")]);
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { harness::run_turn(HarnessKind::Anthropic, &turn, &sink, &cancel).await }
    });
    let call = common::next_event(&mut rx).await;
    assert_eq!(call["item"]["type"], "function_call");
    cancel.cancel();
    let result = common::within(5, task).await.unwrap();
    assert!(
        matches!(result, Err(HarnessError::Interrupted)),
        "{result:?}"
    );
    assert!(
        common::drain(&mut rx).is_empty(),
        "no output after the interrupt"
    );
}

#[tokio::test]
async fn an_interrupt_mid_stream_ends_the_turn_promptly() {
    let mut chunks = vec![message_start("msg_1", 1)];
    chunks.extend(text_block(0, &["partial"]));
    let vendor = FakeVendor::start(vec![Canned::stream_ending(chunks, End::Stall)]).await;
    let ws = tempfile::tempdir().unwrap();
    let turn = common::turn(ws.path(), config(&vendor), vec![user("hi")]);
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { harness::run_turn(HarnessKind::Anthropic, &turn, &sink, &cancel).await }
    });
    assert_eq!(common::next_event(&mut rx).await["delta"], "partial");
    cancel.cancel();
    let result = common::within(5, task).await.unwrap();
    assert!(
        matches!(result, Err(HarnessError::Interrupted)),
        "{result:?}"
    );
}
