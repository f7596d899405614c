//! A minimal OpenAI Responses API stream for the fake vendor (the testkit gets shared builders later).
#![allow(dead_code, clippy::unwrap_used)]

use omnigent_testkit::vendor::Canned;
use serde_json::{Value, json};

pub fn sse(event: Value) -> String {
    format!(
        "event: {}\ndata: {event}\n\n",
        event["type"].as_str().unwrap()
    )
}

pub fn created(n: &str) -> String {
    sse(json!({"type": "response.created", "response": {"id": format!("resp_{n}")}}))
}

pub fn completed(n: &str) -> String {
    sse(json!({"type": "response.completed", "response": {
        "id": format!("resp_{n}"),
        "usage": {"input_tokens": 10, "output_tokens": 3, "total_tokens": 13},
    }}))
}

pub fn message_start(n: &str) -> Vec<String> {
    vec![
        created(n),
        sse(
            json!({"type": "response.output_item.added", "output_index": 0, "item": {
                "type": "message", "id": format!("msg_{n}"), "role": "assistant", "content": [],
            }}),
        ),
        sse(
            json!({"type": "response.content_part.added", "output_index": 0, "content_index": 0,
            "item_id": format!("msg_{n}"), "part": {"type": "output_text", "text": ""}}),
        ),
    ]
}

pub fn delta(n: &str, text: &str) -> String {
    sse(
        json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
        "item_id": format!("msg_{n}"), "delta": text}),
    )
}

pub fn message_end(n: &str, text: &str) -> Vec<String> {
    vec![
        sse(
            json!({"type": "response.output_item.done", "output_index": 0, "item": {
                "type": "message", "id": format!("msg_{n}"), "role": "assistant",
                "content": [{"type": "output_text", "text": text}],
            }}),
        ),
        completed(n),
    ]
}

/// An answer streaming `text` in two deltas.
pub fn text(n: &str, text: &str) -> Canned {
    let (a, b) = text.split_at(text.len() / 2);
    let mut chunks = message_start(n);
    chunks.push(delta(n, a));
    chunks.push(delta(n, b));
    chunks.extend(message_end(n, text));
    Canned::stream(chunks)
}

/// An answer calling Codex's `exec_command` tool with `cmd`.
pub fn exec_command(n: &str, call_id: &str, cmd: &str) -> Canned {
    function_call(n, call_id, "exec_command", json!({"cmd": cmd}))
}

/// An answer calling the tool `name` with `arguments`.
pub fn function_call(n: &str, call_id: &str, name: &str, arguments: Value) -> Canned {
    let item = json!({"type": "function_call", "id": format!("fc_{n}"), "call_id": call_id,
        "name": name, "arguments": arguments.to_string()});
    let mut added = item.clone();
    added["arguments"] = json!("");
    Canned::stream(vec![
        created(n),
        sse(json!({"type": "response.output_item.added", "output_index": 0, "item": added})),
        sse(json!({"type": "response.output_item.done", "output_index": 0, "item": item})),
        completed(n),
    ])
}
