//! The openai harness over the Responses API, against the testkit's fake vendor: what a stream may do
//! (text only in the finished item, several calls in one response, `error` events, `response.failed`, a cut or
//! unterminated stream, an incomplete response) and what the request carries.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Canned, End, FakeVendor, user};
use omnigent_runner::harness::openai::WireApi;
use omnigent_runner::harness::{self, HarnessConfig, HarnessError, HarnessKind, TurnOutcome};
use omnigent_testkit::vendor::responses::{self, ResponseStream};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn config(vendor: &FakeVendor) -> HarnessConfig {
    HarnessConfig {
        model: Some("gpt-test".into()),
        base_url: Some(format!("{}/v1/", vendor.url)),
        api_key: Some("sk-responses".into()),
        idle_timeout: Some(Duration::from_secs(10)),
        wire_api: Some(WireApi::Responses),
        ..HarnessConfig::default()
    }
}

async fn run(
    vendor: &FakeVendor,
    config: HarnessConfig,
) -> (
    Result<TurnOutcome, HarnessError>,
    Vec<Value>,
    tempfile::TempDir,
) {
    let workspace = tempfile::tempdir().unwrap();
    let turn = common::turn(workspace.path(), config, vec![user("go")]);
    let (sink, mut rx) = common::sink();
    let result = common::within(
        20,
        harness::run_turn(HarnessKind::OpenAi, &turn, &sink, &CancellationToken::new()),
    )
    .await;
    let _ = vendor;
    (result, common::drain(&mut rx), workspace)
}

fn event(kind: &str, data: Value) -> String {
    let mut data = data;
    data["type"] = json!(kind);
    format!("event: {kind}\ndata: {data}\n\n")
}

#[tokio::test]
async fn text_streams_as_deltas_and_usage_is_reported() {
    let vendor = FakeVendor::start(vec![Canned::stream(
        ResponseStream::new("r1").text(&["a", "b"]).completed(7, 3),
    )])
    .await;
    let (result, events, _ws) = run(&vendor, config(&vendor)).await;
    let outcome = result.unwrap();
    assert_eq!(common::summarize(&events), ["delta:a", "delta:b"]);
    assert_eq!(
        outcome.usage,
        Some(json!({"input_tokens": 7, "output_tokens": 3}))
    );
    let request = &vendor.requests()[0];
    assert_eq!(request.path, "/v1/responses");
    assert_eq!(request.headers["authorization"], "Bearer sk-responses");
    assert!(request.body.get("previous_response_id").is_none());
    assert!(request.body.get("messages").is_none());
    // The built-in prompt when the agent has no instructions.
    assert!(
        request.body["instructions"]
            .as_str()
            .unwrap()
            .contains("coding agent")
    );
}

#[tokio::test]
async fn a_message_sent_only_as_its_finished_item_is_still_shown() {
    let item = json!({"id": "m1", "type": "message", "role": "assistant", "status": "completed",
                      "content": [{"type": "output_text", "text": "whole"}]});
    let vendor = FakeVendor::start(vec![Canned::stream(vec![
        event(
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        ),
        event(
            "response.completed",
            json!({"response": {"id": "r", "status": "completed", "output": []}}),
        ),
    ])])
    .await;
    let (result, events, _ws) = run(&vendor, config(&vendor)).await;
    assert!(result.unwrap().usage.is_none());
    assert_eq!(common::summarize(&events), ["delta:whole"]);
}

#[tokio::test]
async fn several_calls_in_one_response_all_run_in_order() {
    let vendor = FakeVendor::start(vec![
        Canned::stream(
            ResponseStream::new("r1")
                .function_call("c1", "write_file", r#"{"path":"a.txt","content":"A"}"#)
                .function_call("c2", "read_file", r#"{"path":"a.txt"}"#)
                .completed(1, 1),
        ),
        Canned::stream(responses::text(&["ok"])),
    ])
    .await;
    let (result, events, ws) = run(&vendor, config(&vendor)).await;
    result.unwrap();
    let summary = common::summarize(&events);
    assert!(summary[0].starts_with("call:c1:write_file:"), "{summary:?}");
    assert!(summary[1].starts_with("call:c2:read_file:"), "{summary:?}");
    assert!(summary[2].starts_with("output:c1:"), "{summary:?}");
    assert_eq!(summary[3], "output:c2:A");
    assert_eq!(summary[4], "delta:ok");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("a.txt")).unwrap(),
        "A"
    );
    let input = vendor.requests()[1].body["input"].clone();
    let kinds: Vec<&str> = input
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "message",
            "function_call",
            "function_call",
            "function_call_output",
            "function_call_output"
        ]
    );
}

#[tokio::test]
async fn error_events_and_failed_responses_fail_the_turn_with_the_vendor_message() {
    for chunks in [
        ResponseStream::new("r")
            .text(&["par"])
            .error("rate_limit", "slow down"),
        responses::failed("server_error", "slow down"),
    ] {
        let vendor = FakeVendor::start(vec![Canned::stream(chunks)]).await;
        let (result, _, _ws) = run(&vendor, config(&vendor)).await;
        let err = result.unwrap_err();
        assert!(
            matches!(&err, HarnessError::Stream { message, .. } if message.contains("slow down")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_stream_without_response_completed_or_cut_fails_the_turn() {
    let unterminated = FakeVendor::start(vec![Canned::stream(
        ResponseStream::new("r").text(&["half"]).unfinished(),
    )])
    .await;
    let (result, _, _ws) = run(&unterminated, config(&unterminated)).await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("before response.completed"), "{err}");

    let cut = std::sync::Arc::new(tokio::sync::Notify::new());
    cut.notify_one();
    let vendor = FakeVendor::start(vec![Canned::stream_ending(
        ResponseStream::new("r").text(&["half"]).unfinished(),
        End::Cut(cut),
    )])
    .await;
    let (result, _, _ws) = run(&vendor, config(&vendor)).await;
    assert!(matches!(result.unwrap_err(), HarnessError::Stream { .. }));
}

#[tokio::test]
async fn an_incomplete_response_fails_unless_it_hit_the_length_limit() {
    let incomplete = |reason: &str| {
        event(
            "response.incomplete",
            json!({"response": {"status": "incomplete", "incomplete_details": {"reason": reason},
                                "usage": {"input_tokens": 1, "output_tokens": 2}}}),
        )
    };
    let vendor = FakeVendor::start(vec![
        Canned::stream(vec![incomplete("content_filter")]),
        Canned::stream(vec![incomplete("max_output_tokens")]),
    ])
    .await;
    let (result, _, _ws) = run(&vendor, config(&vendor)).await;
    assert!(result.unwrap_err().to_string().contains("content_filter"));
    let (result, _, _ws) = run(&vendor, config(&vendor)).await;
    assert_eq!(
        result.unwrap().usage,
        Some(json!({"input_tokens": 1, "output_tokens": 2}))
    );
}

#[tokio::test]
async fn a_vendor_error_status_is_a_vendor_error_without_the_key() {
    let vendor = FakeVendor::then_refusing(
        Vec::<Canned>::new(),
        401,
        json!({"error": {"message": "bad key sk-responses"}}),
    )
    .await;
    let (result, _, _ws) = run(&vendor, config(&vendor)).await;
    match result.unwrap_err() {
        HarnessError::Vendor {
            status, message, ..
        } => {
            assert_eq!(status, 401);
            assert!(!message.contains("sk-responses"), "{message}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn no_key_and_no_base_url_names_what_to_set() {
    let config = HarnessConfig {
        model: Some("gpt-test".into()),
        wire_api: Some(WireApi::Responses),
        ..HarnessConfig::default()
    };
    let vendor = FakeVendor::start(Vec::<Canned>::new()).await;
    let (result, _, _ws) = run(&vendor, config).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, HarnessError::NotConfigured(m) if m.contains("set OPENAI_API_KEY or executor.auth.api_key")),
        "{err}"
    );
    assert!(vendor.requests().is_empty());
}
