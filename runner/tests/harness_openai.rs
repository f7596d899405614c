//! The openai harness against a fake Chat Completions server on 127.0.0.1: streaming, tool calls assembled
//! from fragments and really run in the workspace, and every way a vendor can fail.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Canned, End, FakeVendor, user};
use omnigent_runner::harness::{
    self, HarnessConfig, HarnessError, HarnessKind, HistoryEntry, TurnOutcome,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn data(chunk: Value) -> String {
    format!("data: {chunk}\n\n")
}

fn text(t: &str) -> String {
    data(
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]}),
    )
}

fn call_fragment(index: u64, id: Option<&str>, name: Option<&str>, args: &str) -> String {
    let mut fragment = json!({"index": index, "function": {"arguments": args}});
    if let Some(id) = id {
        fragment["id"] = json!(id);
        fragment["type"] = json!("function");
    }
    if let Some(name) = name {
        fragment["function"]["name"] = json!(name);
    }
    data(
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [fragment]}, "finish_reason": null}]}),
    )
}

fn finish(reason: &str) -> String {
    data(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))
}

fn usage(prompt: u64, completion: u64) -> String {
    data(
        json!({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}),
    )
}

const DONE: &str = "data: [DONE]\n\n";

fn config(vendor: &FakeVendor) -> HarnessConfig {
    HarnessConfig {
        model: Some("gpt-test".into()),
        // A trailing slash is tolerated.
        base_url: Some(format!("{}/v1/", vendor.url)),
        api_key: Some("sk-test".into()),
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
        harness::run_turn(HarnessKind::OpenAi, &turn, &sink, &CancellationToken::new()),
    )
    .await;
    let events = common::drain(&mut rx);
    (ws, result, events)
}

#[tokio::test]
async fn a_tool_call_is_assembled_run_and_answered() {
    let args = r#"{"path": "notes/hello.txt", "content": "hi there"}"#;
    let vendor = FakeVendor::start(vec![
        Canned::stream(vec![
            text("Let me "),
            text("write it."),
            call_fragment(0, Some("call_1"), Some("write_file"), ""),
            call_fragment(0, None, None, &args[..10]),
            call_fragment(0, None, None, &args[10..30]),
            call_fragment(0, None, None, &args[30..]),
            // Servers that repeat a running usage: the last one counts.
            usage(90, 10),
            finish("tool_calls"),
            usage(100, 20),
            DONE.into(),
        ]),
        Canned::stream(vec![
            text("Done."),
            finish("stop"),
            usage(150, 5),
            DONE.into(),
        ]),
    ])
    .await;
    let (ws, result, events) = run(config(&vendor), vec![user("write hello")]).await;
    let outcome = result.unwrap();

    assert_eq!(
        common::summarize(&events),
        [
            "delta:Let me ".to_owned(),
            "delta:write it.".into(),
            format!("call:call_1:write_file:{args}"),
            "output:call_1:wrote 8 bytes to notes/hello.txt".into(),
            "delta:Done.".into(),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes/hello.txt")).unwrap(),
        "hi there"
    );
    assert_eq!(
        outcome.new_history,
        [
            HistoryEntry::Assistant {
                text: "Let me write it.".into()
            },
            HistoryEntry::ToolCall {
                call_id: "call_1".into(),
                name: "write_file".into(),
                arguments: args.into()
            },
            HistoryEntry::ToolResult {
                call_id: "call_1".into(),
                output: "wrote 8 bytes to notes/hello.txt".into()
            },
            HistoryEntry::Assistant {
                text: "Done.".into()
            },
        ]
    );
    assert_eq!(
        outcome.usage,
        Some(json!({"input_tokens": 250, "output_tokens": 25}))
    );

    let requests = vendor.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.headers["authorization"], "Bearer sk-test");
        assert_eq!(request.body["model"], "gpt-test");
        assert_eq!(request.body["stream"], true);
        assert_eq!(request.body["stream_options"]["include_usage"], true);
        assert_eq!(request.body["tools"][2]["function"]["name"], "write_file");
    }
    let messages = requests[1].body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(
        messages[1],
        json!({"role": "user", "content": "write hello"})
    );
    assert_eq!(
        messages[2],
        json!({"role": "assistant", "content": "Let me write it.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "write_file", "arguments": args}}
        ]})
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "wrote 8 bytes to notes/hello.txt"})
    );
    assert_eq!(messages.len(), 4);
}

#[tokio::test]
async fn parallel_calls_are_kept_apart_even_on_one_index() {
    // OpenAI numbers parallel calls by index; Ollama sends index 0 for each and only the id differs.
    let vendor = FakeVendor::start(vec![
        Canned::stream(vec![
            call_fragment(0, Some("call_a"), Some("read_file"), r#"{"path":"#),
            call_fragment(0, None, None, r#""a.txt"}"#),
            call_fragment(0, Some("call_b"), Some("list_dir"), "{}"),
            call_fragment(
                1,
                Some("call_c"),
                Some("shell"),
                r#"{"command":"cat a.txt a.txt"}"#,
            ),
            finish("tool_calls"),
            DONE.into(),
        ]),
        Canned::stream(vec![text("ok"), DONE.into()]),
    ])
    .await;
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("a.txt"), "A").unwrap();
    let turn = common::turn(ws.path(), config(&vendor), vec![user("go")]);
    let (sink, mut rx) = common::sink();
    let outcome = common::within(
        10,
        harness::run_turn(HarnessKind::OpenAi, &turn, &sink, &CancellationToken::new()),
    )
    .await
    .unwrap();
    assert_eq!(
        common::summarize(&common::drain(&mut rx)),
        [
            r#"call:call_a:read_file:{"path":"a.txt"}"#,
            "call:call_b:list_dir:{}",
            r#"call:call_c:shell:{"command":"cat a.txt a.txt"}"#,
            "output:call_a:A",
            "output:call_b:a.txt",
            "output:call_c:AA\n[exit code 0]",
            "delta:ok",
        ]
    );
    assert_eq!(outcome.new_history.len(), 7);
    assert_eq!(outcome.usage, None);
    let messages = vendor.requests()[1].body["messages"].clone();
    assert_eq!(messages[2]["tool_calls"].as_array().unwrap().len(), 3);
    assert_eq!(messages[3]["tool_call_id"], "call_a");
    assert_eq!(messages[5]["tool_call_id"], "call_c");
}

#[tokio::test]
async fn history_becomes_chat_messages_and_orphans_are_dropped() {
    let vendor = FakeVendor::start(vec![Canned::stream(vec![text("fine"), DONE.into()])]).await;
    let history = vec![
        user("first"),
        HistoryEntry::Assistant {
            text: "checking".into(),
        },
        HistoryEntry::ToolCall {
            call_id: "c1".into(),
            name: "list_dir".into(),
            arguments: "{}".into(),
        },
        HistoryEntry::ToolResult {
            call_id: "c1".into(),
            output: "x".into(),
        },
        HistoryEntry::Assistant {
            text: "there is x".into(),
        },
        user("again"),
        // An interrupted turn left a call without its result.
        HistoryEntry::ToolCall {
            call_id: "c2".into(),
            name: "shell".into(),
            arguments: "{}".into(),
        },
        user("third"),
    ];
    let mut config = config(&vendor);
    config.api_key = None; // Ollama needs none
    let (_ws, result, events) = run(config, history).await;
    assert_eq!(
        result.unwrap().new_history,
        [HistoryEntry::Assistant {
            text: "fine".into()
        }]
    );
    assert_eq!(common::summarize(&events), ["delta:fine"]);
    let request = &vendor.requests()[0];
    assert!(request.headers.get("authorization").is_none());
    let messages = &request.body["messages"];
    assert_eq!(
        messages.as_array().unwrap()[1..],
        [
            json!({"role": "user", "content": "first"}),
            json!({"role": "assistant", "content": "checking", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "list_dir", "arguments": "{}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "x"}),
            json!({"role": "assistant", "content": "there is x"}),
            json!({"role": "user", "content": "again"}),
            json!({"role": "user", "content": "third"}),
        ]
    );
}

#[tokio::test]
async fn no_model_is_not_configured() {
    let (_ws, result, events) = run(HarnessConfig::default(), vec![user("hi")]).await;
    match result {
        Err(HarnessError::NotConfigured(message)) => {
            assert!(message.contains("OMNIGENT_MODEL"), "{message}")
        }
        other => panic!("expected NotConfigured, got {other:?}"),
    }
    assert!(events.is_empty());
}

async fn expect_vendor_error(canned: Canned) -> (u16, String, Option<u64>, String) {
    let vendor = FakeVendor::start(vec![canned]).await;
    let (_ws, result, events) = run(config(&vendor), vec![user("hi")]).await;
    assert!(events.is_empty(), "{events:?}");
    match result {
        Err(e @ HarnessError::Vendor { .. }) => {
            let shown = e.to_string();
            let HarnessError::Vendor {
                vendor,
                status,
                message,
                retry_after,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(vendor, "openai");
            (status, message, retry_after, shown)
        }
        other => panic!("expected a vendor error, got {other:?}"),
    }
}

#[tokio::test]
async fn unauthorized_carries_the_vendor_message_with_the_key_redacted() {
    let (status, message, retry_after, shown) = expect_vendor_error(Canned::status(
        401,
        r#"{"error": {"message": "Incorrect API key provided: sk-test.", "type": "invalid_request_error", "code": "invalid_api_key"}}"#,
    ))
    .await;
    assert_eq!((status, retry_after), (401, None));
    // The vendor echoed the key: what the session stores and the runner logs must not hold it.
    assert_eq!(message, "Incorrect API key provided: [redacted].");
    assert_eq!(
        shown,
        "openai returned HTTP 401: Incorrect API key provided: [redacted]."
    );
}

#[tokio::test]
async fn rate_limited_carries_retry_after() {
    let (status, message, retry_after, _) = expect_vendor_error(Canned::Status {
        status: 429,
        headers: vec![("retry-after", "7".into())],
        body: r#"{"error": {"message": "Rate limit reached for gpt-test", "type": "requests"}}"#
            .into(),
    })
    .await;
    assert_eq!((status, retry_after), (429, Some(7)));
    assert_eq!(message, "Rate limit reached for gpt-test");
}

#[tokio::test]
async fn server_errors_without_json_keep_the_body_text() {
    let (status, message, _, _) =
        expect_vendor_error(Canned::status(502, "upstream exploded")).await;
    assert_eq!((status, message.as_str()), (502, "upstream exploded"));
    // Ollama's shape: {"error": "…"}.
    let (status, message, _, _) = expect_vendor_error(Canned::status(
        500,
        r#"{"error": "model 'gpt-test' not found"}"#,
    ))
    .await;
    assert_eq!(
        (status, message.as_str()),
        (500, "model 'gpt-test' not found")
    );
    let (_, message, _, _) = expect_vendor_error(Canned::status(503, "")).await;
    assert_eq!(message, "Service Unavailable");
}

async fn expect_stream_error(
    canned: Canned,
    config_edit: impl FnOnce(&mut HarnessConfig),
) -> (String, Vec<String>) {
    let vendor = FakeVendor::start(vec![canned]).await;
    let mut config = config(&vendor);
    config_edit(&mut config);
    let (_ws, result, events) = run(config, vec![user("hi")]).await;
    match result {
        Err(HarnessError::Stream {
            vendor: "openai",
            message,
        }) => (message, common::summarize(&events)),
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_cut_mid_way_fails_the_turn() {
    let cut = std::sync::Arc::new(tokio::sync::Notify::new());
    let vendor = FakeVendor::start(vec![Canned::stream_ending(
        vec![text("Hel")],
        End::Cut(cut.clone()),
    )])
    .await;
    let ws = tempfile::tempdir().unwrap();
    let turn = common::turn(ws.path(), config(&vendor), vec![user("hi")]);
    let (sink, mut rx) = common::sink();
    let task = tokio::spawn(async move {
        harness::run_turn(HarnessKind::OpenAi, &turn, &sink, &CancellationToken::new()).await
    });
    assert_eq!(common::next_event(&mut rx).await["delta"], "Hel");
    cut.notify_one();
    match common::within(10, task).await.unwrap() {
        Err(HarnessError::Stream {
            vendor: "openai",
            message,
        }) => {
            assert!(message.contains("broke off mid-stream"), "{message}")
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_without_done_fails_the_turn() {
    let (message, events) =
        expect_stream_error(Canned::stream(vec![text("Hel"), finish("stop")]), |_| {}).await;
    assert!(message.contains("[DONE]"), "{message}");
    assert_eq!(events, ["delta:Hel"]);
}

#[tokio::test]
async fn a_malformed_chunk_fails_the_turn() {
    let (message, _) = expect_stream_error(
        Canned::stream(vec![
            text("a"),
            "data: {\"choices\": [\n\n".into(),
            DONE.into(),
        ]),
        |_| {},
    )
    .await;
    assert!(
        message.contains("not valid JSON") && message.contains("{\"choices\": ["),
        "{message}"
    );
}

#[tokio::test]
async fn an_error_object_mid_stream_fails_the_turn() {
    let (message, _) = expect_stream_error(
        Canned::stream(vec![
            data(json!({"error": {"message": "The server had an error while processing"}})),
            DONE.into(),
        ]),
        |_| {},
    )
    .await;
    assert!(
        message.contains("The server had an error while processing"),
        "{message}"
    );
}

#[tokio::test]
async fn a_stalled_stream_hits_the_idle_timeout() {
    let (message, events) = expect_stream_error(
        Canned::stream_ending(vec![text("thinking")], End::Stall),
        |c| c.idle_timeout = Some(Duration::from_millis(300)),
    )
    .await;
    assert!(message.contains("idle timeout"), "{message}");
    assert_eq!(events, ["delta:thinking"]);
}

#[tokio::test]
async fn a_vendor_that_never_answers_hits_the_idle_timeout() {
    let (message, events) = expect_stream_error(Canned::Hang, |c| {
        c.idle_timeout = Some(Duration::from_millis(300))
    })
    .await;
    assert!(message.contains("no response within 0.3 s"), "{message}");
    assert!(events.is_empty());
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_fast() {
    // A held port nobody listens on: every dial is refused (and nothing else can take it meanwhile).
    let unreachable = omnigent_testkit::net::PortReservation::new();
    let url = format!("http://127.0.0.1:{}", unreachable.port);
    let config = HarnessConfig {
        model: Some("m".into()),
        base_url: Some(url),
        ..HarnessConfig::default()
    };
    let (_ws, result, _) = run(config, vec![user("hi")]).await;
    match result {
        Err(HarnessError::Stream { message, .. }) => {
            assert!(
                message.contains("request failed") && message.contains("base URL"),
                "{message}"
            )
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_interrupt_mid_stream_ends_the_turn_promptly() {
    let vendor = FakeVendor::start(vec![Canned::stream_ending(
        vec![text("partial")],
        End::Stall,
    )])
    .await;
    let ws = tempfile::tempdir().unwrap();
    let mut config = config(&vendor);
    config.idle_timeout = Some(Duration::from_secs(600));
    let turn = common::turn(ws.path(), config, vec![user("hi")]);
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { harness::run_turn(HarnessKind::OpenAi, &turn, &sink, &cancel).await }
    });
    assert_eq!(common::next_event(&mut rx).await["delta"], "partial");
    cancel.cancel();
    let result = common::within(5, task).await.unwrap();
    assert!(
        matches!(result, Err(HarnessError::Interrupted)),
        "{result:?}"
    );
}

#[tokio::test]
async fn the_tool_rounds_are_bounded() {
    let ask = || {
        Canned::stream(vec![
            call_fragment(0, Some("call_x"), Some("list_dir"), "{}"),
            finish("tool_calls"),
            DONE.into(),
        ])
    };
    let vendor = FakeVendor::start(vec![ask(), ask(), ask()]).await;
    let mut config = config(&vendor);
    config.max_tool_rounds = Some(2);
    let (_ws, result, events) = run(config, vec![user("loop")]).await;
    let outcome = result.unwrap();
    assert_eq!(vendor.requests().len(), 2);
    let last = common::summarize(&events).pop().unwrap();
    assert!(
        last.starts_with("delta:\n[stopped: the model asked for tools 2 rounds in a row"),
        "{last}"
    );
    assert_eq!(outcome.new_history.len(), 5);
}
