//! The event mapping, on a transcript recorded from the real `pi --mode rpc` 0.73 against a fake Responses
//! API (runner/tests/golden/pi-*.jsonl: every line it wrote to stdout).

use serde_json::{Value, json};

use super::*;
use crate::harness::{HarnessConfig, HistoryEntry};

fn turn() -> Turn {
    Turn {
        session_id: "conv_test".into(),
        response_id: "resp_test".into(),
        workspace: "/tmp".into(),
        history: vec![HistoryEntry::User { text: "hi".into() }],
        config: HarnessConfig::default(),
        codex: None,
        pi: None,
        exec: None,
        claude_code: None,
        approvals: Default::default(),
        mcp: None,
    }
}

/// Feed `events` to a mapper: the events it emitted (compact) and how the turn ended.
fn replay(
    events: impl IntoIterator<Item = Value>,
) -> (Vec<String>, Option<Result<TurnOutcome, HarnessError>>) {
    let turn = turn();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = EventSink::new(tx);
    let mut mapper = Mapper::new(&turn, &sink);
    let mut end = None;
    for event in events {
        if let Some(ended) = mapper.event(&event) {
            assert!(end.is_none(), "two turn ends");
            end = Some(ended);
        }
    }
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(match e["type"].as_str().unwrap() {
            "response.output_text.delta" => format!("delta:{}", e["delta"].as_str().unwrap()),
            "response.output_item.done" => {
                let item = &e["item"];
                assert_eq!(item["response_id"], "resp_test");
                match item["type"].as_str().unwrap() {
                    "function_call" => format!(
                        "call:{}:{}:{}",
                        item["call_id"].as_str().unwrap(),
                        item["name"].as_str().unwrap(),
                        item["arguments"].as_str().unwrap()
                    ),
                    _ => format!(
                        "output:{}:{}",
                        item["call_id"].as_str().unwrap(),
                        item["output"].as_str().unwrap()
                    ),
                }
            }
            other => other.to_owned(),
        });
    }
    (out, end)
}

fn golden(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_bash_call_and_a_streamed_message_map_to_a_call_its_output_and_text() {
    let (events, end) = replay(golden(include_str!("../../../tests/golden/pi-tool.jsonl")));
    assert_eq!(
        events,
        [
            r#"call:call_0|fc_0:bash:{"command":"echo hi > out.txt"}"#,
            "output:call_0|fc_0:(no output)",
            "delta:Hello ",
            "delta:world",
        ]
    );
    let outcome = end.unwrap().unwrap();
    assert_eq!(
        outcome.new_history,
        [
            HistoryEntry::ToolCall {
                call_id: "call_0|fc_0".into(),
                name: "bash".into(),
                arguments: r#"{"command":"echo hi > out.txt"}"#.into(),
            },
            HistoryEntry::ToolResult {
                call_id: "call_0|fc_0".into(),
                output: "(no output)".into(),
            },
            HistoryEntry::Assistant {
                text: "Hello world".into()
            },
        ]
    );
    assert_eq!(
        outcome.usage,
        Some(json!({"input_tokens": 20, "output_tokens": 6}))
    );
}

fn assistant(text: &str, stop: &str, error: Option<&str>) -> Value {
    let mut message = json!({"role": "assistant", "content": [{"type": "text", "text": text}],
        "stopReason": stop, "usage": {"input": 1, "output": 2}});
    if let Some(error) = error {
        message["errorMessage"] = json!(error);
    }
    message
}

#[test]
fn an_unstreamed_message_is_emitted_whole_and_a_failed_tool_is_marked() {
    let (events, end) = replay([
        json!({"type": "message_start", "message": assistant("", "stop", None)}),
        json!({"type": "message_end", "message": assistant("Whole.", "toolUse", None)}),
        json!({"type": "tool_execution_start", "toolCallId": "c1", "toolName": "read", "args": {"path": "x"}}),
        json!({"type": "tool_execution_end", "toolCallId": "c1", "toolName": "read",
            "result": {"content": [{"type": "text", "text": "ENOENT"}]}, "isError": true}),
        json!({"type": "agent_end", "messages": []}),
    ]);
    assert_eq!(
        events,
        [
            "delta:Whole.",
            r#"call:c1:read:{"path":"x"}"#,
            "output:c1:[error] ENOENT"
        ]
    );
    assert!(end.unwrap().is_ok());
}

#[test]
fn a_model_error_fails_the_turn_and_an_aborted_message_ends_it_as_interrupted() {
    let (_, end) = replay([
        json!({"type": "message_end", "message": assistant("", "error", Some("401 Incorrect API key"))}),
        json!({"type": "agent_end", "messages": []}),
    ]);
    let message = end.unwrap().unwrap_err().to_string();
    assert_eq!(message, "pi turn failed: 401 Incorrect API key");

    let (_, end) = replay([
        json!({"type": "message_end", "message": assistant("Hal", "aborted", None)}),
        json!({"type": "agent_end", "messages": []}),
    ]);
    assert!(matches!(end, Some(Err(HarnessError::Interrupted))));
}
