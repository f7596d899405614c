//! The `anthropic` harness: the Messages API, streamed, with the built-in tools.
//!
//! One turn is a loop: stream a message (text deltas go out as they arrive, `tool_use` blocks are assembled
//! from their `input_json_delta` fragments); if it stopped for `tool_use`, emit each call, run it, emit its
//! output, and send the results back as `tool_result` blocks, until the model stops for another reason.

use omnigent_proto::events::kind;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::vendor::{self, Call, SseStream, Usage};
use super::{EventSink, HarnessError, HistoryEntry, Turn, TurnOutcome, tools};

const VENDOR: &str = "anthropic";
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_MODEL: &str = "claude-sonnet-4-5";
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` of each request.
const MAX_TOKENS: u32 = 8192;

/// The Messages URL for a base URL (`{base}/v1/messages`, trailing slash tolerated).
pub fn endpoint(base_url: Option<&str>) -> String {
    let base = base_url
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .unwrap_or(DEFAULT_BASE_URL);
    format!("{}/v1/messages", base.trim_end_matches('/'))
}

/// How a request authenticates: `x-api-key` with an API key, else `Authorization: Bearer` with an auth token
/// (what Anthropic's own clients do with `ANTHROPIC_AUTH_TOKEN`).
enum Auth<'a> {
    ApiKey(&'a str),
    Bearer(&'a str),
}

fn auth(config: &super::HarnessConfig) -> Result<Auth<'_>, HarnessError> {
    if let Some(key) = set(&config.api_key) {
        return Ok(Auth::ApiKey(key));
    }
    if let Some(token) = set(&config.auth_token) {
        return Ok(Auth::Bearer(token));
    }
    Err(HarnessError::NotConfigured(
        "the anthropic harness has no credential: set ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN for a bearer token), or executor.auth.api_key in the agent spec"
            .into(),
    ))
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|k| !k.is_empty())
}

pub async fn run_turn(
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    let config = &turn.config;
    let auth = auth(config)?;
    let model = config
        .model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or(DEFAULT_MODEL);
    let url = endpoint(config.base_url.as_deref());
    let idle = vendor::idle_timeout(config);
    let shell_timeout = config.tool_timeout.unwrap_or(tools::DEFAULT_SHELL_TIMEOUT);
    let max_rounds = vendor::max_tool_rounds(config);
    let client = vendor::client(VENDOR)?;

    let tools = tools::Toolset::for_turn(turn, sink, cancel).await?;

    let mut new_history = Vec::new();
    let mut usage = Usage::default();
    for _ in 0..max_rounds {
        let body = json!({
            "model": model,
            "max_tokens": MAX_TOKENS,
            "stream": true,
            "system": vendor::system_prompt(config),
            "messages": messages(&turn.history, &new_history),
            "tools": tools.anthropic_definitions(),
        });
        let request = client
            .post(&url)
            .header("anthropic-version", API_VERSION)
            .json(&body);
        let request = match auth {
            Auth::ApiKey(key) => request.header("x-api-key", key),
            Auth::Bearer(token) => request.bearer_auth(token),
        };
        let stream = vendor::open_stream(VENDOR, request, idle, cancel).await?;
        let reply = read_reply(stream, sink, cancel, &mut usage).await?;
        if !reply.text.is_empty() {
            new_history.push(HistoryEntry::Assistant { text: reply.text });
        }
        if reply.calls.is_empty() || reply.stop_reason.as_deref() != Some("tool_use") {
            return Ok(TurnOutcome {
                new_history,
                usage: usage.into_value(),
            });
        }
        vendor::run_calls(
            reply.calls,
            turn,
            &tools,
            sink,
            cancel,
            shell_timeout,
            &mut new_history,
        )
        .await?;
    }
    Ok(vendor::rounds_exhausted(
        sink,
        max_rounds,
        new_history,
        usage,
    ))
}

/// The Messages `messages` for the history so far. Blocks of the same role join one message (the API wants
/// the roles to alternate): text and `tool_use` blocks for the assistant, `tool_result` and text for the user.
fn messages(history: &[HistoryEntry], new: &[HistoryEntry]) -> Vec<Value> {
    let mut messages: Vec<Value> = Vec::new();
    for entry in vendor::paired_history(history.iter().chain(new)) {
        let (role, block) = match entry {
            // The API rejects empty text blocks.
            HistoryEntry::User { text } | HistoryEntry::Assistant { text } if text.is_empty() => {
                continue;
            }
            HistoryEntry::User { text } => ("user", json!({"type": "text", "text": text})),
            HistoryEntry::Assistant { text } => {
                ("assistant", json!({"type": "text", "text": text}))
            }
            HistoryEntry::ToolCall {
                call_id,
                name,
                arguments,
            } => {
                let input = serde_json::from_str::<Value>(arguments)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                (
                    "assistant",
                    json!({"type": "tool_use", "id": call_id, "name": name, "input": input}),
                )
            }
            HistoryEntry::ToolResult { call_id, output } => (
                "user",
                json!({"type": "tool_result", "tool_use_id": call_id, "content": output}),
            ),
        };
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(content) = last.get_mut("content").and_then(Value::as_array_mut) {
                    content.push(block);
                }
            }
            _ => messages.push(json!({"role": role, "content": [block]})),
        }
    }
    messages
}

/// What one streamed message produced.
struct Reply {
    text: String,
    calls: Vec<Call>,
    stop_reason: Option<String>,
}

/// A `tool_use` block being assembled, by content block index.
struct PendingCall {
    index: u64,
    id: String,
    name: String,
    input_json: String,
}

async fn read_reply(
    mut stream: SseStream,
    sink: &EventSink,
    cancel: &CancellationToken,
    usage: &mut Usage,
) -> Result<Reply, HarnessError> {
    let mut text = String::new();
    let mut pending: Vec<PendingCall> = Vec::new();
    let mut stop_reason = None;
    let (mut input_tokens, mut output_tokens, mut saw_usage) = (0u64, 0u64, false);
    let mut stopped = false;
    while let Some(event) = stream.next(cancel).await? {
        let data = event.data.trim();
        if data.is_empty() {
            continue;
        }
        let payload: Value = serde_json::from_str(data).map_err(|e| {
            stream.error(format!(
                "an event is not valid JSON ({e}): {}",
                vendor::excerpt(data)
            ))
        })?;
        let kind = payload
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => {
                if let Some(u) = payload.pointer("/message/usage") {
                    input_tokens = u.get("input_tokens").and_then(Value::as_u64).unwrap_or(0);
                    output_tokens = u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0);
                    saw_usage = true;
                }
            }
            "content_block_start" => {
                let index = payload.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = payload.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = block
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            sink.text_delta(t);
                            text.push_str(t);
                        }
                    }
                    Some("tool_use") => {
                        let field = |k: &str| {
                            block
                                .get(k)
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned()
                        };
                        pending.push(PendingCall {
                            index,
                            id: field("id"),
                            name: field("name"),
                            input_json: String::new(),
                        });
                    }
                    _ => {} // thinking, server tools…: not ours to render
                }
            }
            "content_block_delta" => {
                let index = payload.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = payload.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(t) = delta
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            sink.text_delta(t);
                            text.push_str(t);
                        }
                    }
                    Some("input_json_delta") => {
                        let part = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        if let Some(call) = pending.iter_mut().rev().find(|c| c.index == index) {
                            call.input_json.push_str(part);
                        }
                    }
                    Some("thinking_delta") => {
                        if let Some(t) = delta.get("thinking").and_then(Value::as_str) {
                            sink.emit(
                                json!({"type": kind::RESPONSE_REASONING_TEXT_DELTA, "delta": t}),
                            );
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = payload
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                {
                    stop_reason = Some(reason.to_owned());
                }
                if let Some(u) = payload.get("usage") {
                    // Cumulative for this message.
                    if let Some(n) = u.get("output_tokens").and_then(Value::as_u64) {
                        output_tokens = n;
                        saw_usage = true;
                    }
                    if let Some(n) = u.get("input_tokens").and_then(Value::as_u64) {
                        input_tokens = n;
                    }
                }
            }
            "message_stop" => {
                stopped = true;
                break;
            }
            "error" => {
                let kind = payload
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                let message = payload
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message");
                return Err(
                    stream.error(format!("the vendor reported {kind} mid-stream: {message}"))
                );
            }
            _ => {} // ping, content_block_stop, and event types added later
        }
    }
    if !stopped {
        return Err(stream.error(
            "the stream ended before message_stop (the connection was cut); retry the message"
                .to_owned(),
        ));
    }
    if saw_usage {
        usage.add(input_tokens, output_tokens);
    }
    let calls = pending
        .into_iter()
        .map(|p| Call {
            id: if p.id.is_empty() {
                format!("toolu_{}", super::new_item_id())
            } else {
                p.id
            },
            name: p.name,
            arguments: if p.input_json.trim().is_empty() {
                "{}".to_owned()
            } else {
                p.input_json
            },
        })
        .collect();
    Ok(Reply {
        text,
        calls,
        stop_reason,
    })
}
