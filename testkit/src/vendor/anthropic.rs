//! The SSE chunks of an Anthropic **Messages API** stream (`POST {base}/v1/messages` with `stream: true`), to
//! script a [`FakeVendor`](super::FakeVendor) with: every event has its `event:` line and a JSON `data:` line,
//! in the order Anthropic sends them (`message_start`, per content block `content_block_start` … deltas …
//! `content_block_stop`, then `message_delta` with the stop reason and `message_stop`).
//!
//! Whole answers: [`answer`] (text) and [`tool_use`] (one tool call). Anything else from the pieces:
//!
//! ```ignore
//! let mut chunks = vec![anthropic::message_start("msg_1", 12)];
//! chunks.extend(anthropic::text_block(0, &["Writing ", "it."]));
//! chunks.extend(anthropic::tool_block(1, "toolu_1", "write_file", &[r#"{"path":"a.txt"}"#]));
//! chunks.extend(anthropic::message_end("tool_use", 7));
//! ```

use serde_json::{Value, json};

use super::Canned;

/// One event: `event: <type>` and its JSON `data:`.
pub fn event(payload: Value) -> String {
    let kind = payload["type"].as_str().unwrap_or("message").to_owned();
    format!("event: {kind}\ndata: {payload}\n\n")
}

/// `message_start` of the message `id`, charging `input_tokens`.
pub fn message_start(id: &str, input_tokens: u64) -> String {
    event(json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "content": [], "model": "claude-test",
        "stop_reason": null, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}))
}

/// A text block at `index` streamed as `parts`.
pub fn text_block(index: u64, parts: &[&str]) -> Vec<String> {
    let mut events = vec![event(
        json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
    )];
    for part in parts {
        events.push(event(json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": part}})));
    }
    events.push(event(json!({"type": "content_block_stop", "index": index})));
    events
}

/// A `tool_use` block at `index` whose input JSON is streamed as `input_parts`.
pub fn tool_block(index: u64, id: &str, name: &str, input_parts: &[&str]) -> Vec<String> {
    let mut events = vec![event(json!({"type": "content_block_start", "index": index,
        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}))];
    for part in input_parts {
        events.push(event(json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": part}})));
    }
    events.push(event(json!({"type": "content_block_stop", "index": index})));
    events
}

/// `message_delta` with `stop_reason` and `output_tokens`, then `message_stop`.
pub fn message_end(stop_reason: &str, output_tokens: u64) -> Vec<String> {
    vec![
        event(
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}}),
        ),
        event(json!({"type": "message_stop"})),
    ]
}

/// A `ping` event (Anthropic sends them between others).
pub fn ping() -> String {
    event(json!({"type": "ping"}))
}

/// A whole answer of the message `id`: one text block streamed as `parts`, `end_turn`.
pub fn answer(id: &str, parts: &[&str]) -> Canned {
    let mut chunks = vec![message_start(id, 12)];
    chunks.extend(text_block(0, parts));
    chunks.extend(message_end("end_turn", 7));
    Canned::stream(chunks)
}

/// A whole answer of the message `id` that calls the tool `name` (call id `tool_id`) with `input`.
pub fn tool_use(id: &str, tool_id: &str, name: &str, input: &Value) -> Canned {
    let mut chunks = vec![message_start(id, 12)];
    chunks.extend(tool_block(0, tool_id, name, &[&input.to_string()]));
    chunks.extend(message_end("tool_use", 7));
    Canned::stream(chunks)
}
