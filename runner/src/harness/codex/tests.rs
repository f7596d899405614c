//! The notification mapping, on transcripts recorded from the real `codex app-server` 0.171 against a fake
//! Responses API (runner/tests/golden/codex-*.jsonl: every line it wrote to stdout).

use serde_json::Value;

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

/// Feed every notification of `transcript` to a mapper: the events and how the turn ended.
fn replay(transcript: &str) -> (Vec<Value>, Option<Result<TurnOutcome, HarnessError>>) {
    let turn = turn();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = EventSink::new(tx);
    let mut mapper = Mapper::new(&turn, &sink);
    let mut end = None;
    for line in transcript.lines() {
        let message: Value = serde_json::from_str(line).unwrap();
        if let Incoming::Notification { method, params } = classify(message)
            && let Some(ended) = mapper.notification(&method, &params)
        {
            assert!(end.is_none(), "two turn ends");
            end = Some(ended);
        }
    }
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    (events, end)
}

fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
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
        })
        .collect()
}

#[test]
fn a_command_execution_and_a_message_map_to_a_call_its_output_and_text() {
    let (events, end) = replay(include_str!("../../../tests/golden/codex-tool.jsonl"));
    assert_eq!(
        summary(&events),
        [
            r#"call:call_0:shell:{"command":"/bin/bash -lc 'echo hi > out.txt'"}"#,
            "output:call_0:[exit code 0]",
            "delta:Hello ",
            "delta:world",
        ]
    );
    let outcome = end.unwrap().unwrap();
    assert_eq!(
        outcome.new_history,
        [
            HistoryEntry::ToolCall {
                call_id: "call_0".into(),
                name: "shell".into(),
                arguments: r#"{"command":"/bin/bash -lc 'echo hi > out.txt'"}"#.into(),
            },
            HistoryEntry::ToolResult {
                call_id: "call_0".into(),
                output: "[exit code 0]".into(),
            },
            HistoryEntry::Assistant {
                text: "Hello world".into()
            },
        ]
    );
    // Two model requests of 10 in / 3 out each.
    assert_eq!(
        outcome.usage,
        Some(serde_json::json!({"input_tokens": 20, "output_tokens": 6}))
    );
}

#[test]
fn a_failed_turn_reports_the_final_error_with_the_login_hint() {
    let (events, end) = replay(include_str!("../../../tests/golden/codex-failed.jsonl"));
    assert!(events.is_empty(), "{events:?}");
    let message = end.unwrap().unwrap_err().to_string();
    assert!(
        message.starts_with("codex turn failed: unexpected status 401 Unauthorized"),
        "{message}"
    );
    assert!(!message.contains("Reconnecting"), "{message}");
    assert!(message.contains(LOGIN_HINT), "{message}");
}

#[test]
fn an_interrupted_turn_ends_as_interrupted_and_agent_messages_are_separated() {
    let turn = turn();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = EventSink::new(tx);
    let mut mapper = Mapper::new(&turn, &sink);
    let done = |text: &str, id: &str| serde_json::json!({"item": {"type": "agentMessage", "id": id, "text": text}});
    // Messages that came whole (no deltas), as after a resume.
    assert!(
        mapper
            .notification("item/completed", &done("One.", "m1"))
            .is_none()
    );
    assert!(
        mapper
            .notification("item/completed", &done("Two.", "m2"))
            .is_none()
    );
    let end = mapper.notification(
        "turn/completed",
        &serde_json::json!({"turn": {"status": "interrupted", "error": null}}),
    );
    assert!(matches!(end, Some(Err(HarnessError::Interrupted))));
    let mut deltas = String::new();
    while let Ok(e) = rx.try_recv() {
        deltas.push_str(e["delta"].as_str().unwrap());
    }
    assert_eq!(deltas, "One.\n\nTwo.");
}

#[test]
fn messages_are_classified_as_responses_requests_and_notifications() {
    let m = |s: &str| classify(serde_json::from_str(s).unwrap());
    assert!(matches!(
        m(r#"{"id":3,"result":{"ok":true}}"#),
        Incoming::Response { id, result: Ok(_) } if id == 3
    ));
    assert!(matches!(
        m(r#"{"id":4,"error":{"code":-32600,"message":"no such thread"}}"#),
        Incoming::Response { result: Err(message), .. } if message == "no such thread"
    ));
    assert!(matches!(
        m(r#"{"id":"a","method":"item/commandExecution/requestApproval","params":{}}"#),
        Incoming::Request { method, .. } if method == "item/commandExecution/requestApproval"
    ));
    assert!(matches!(
        m(r#"{"method":"turn/started","params":{"turn":{}}}"#),
        Incoming::Notification { method, .. } if method == "turn/started"
    ));
}
