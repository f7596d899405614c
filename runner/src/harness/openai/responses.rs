//! The `openai` harness over the **Responses API**: `POST {base}/responses` with `stream: true`.
//!
//! Each request carries the whole conversation as `input` items (`message`s, `function_call`s and their
//! `function_call_output`s), the agent's `instructions`, and the workspace tools in Responses' flat function
//! schema. We never send `previous_response_id`: full history works on every Responses server (OpenAI with or
//! without `store`, open-responses servers, proxies that keep nothing), survives a runner restart, and keeps
//! the runner's history the one truth; the cost is resending the conversation, which Chat Completions pays too.
//!
//! One turn is a loop like the Chat Completions one: stream a response (`response.output_text.delta` goes out
//! as it arrives, function calls are assembled from `response.output_item.added` /
//! `response.function_call_arguments.*` / `response.output_item.done`), run the calls, ask again, until a
//! response asks for none. `response.completed` carries the usage; `response.failed`, `response.incomplete`
//! for a reason other than length, and `error` events fail the turn with the vendor's message.

use std::collections::HashMap;

use omnigent_proto::events::kind;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Endpoint, endpoint_of};
use crate::harness::vendor::{self, Call, SseStream, Usage};
use crate::harness::{EventSink, HarnessError, HistoryEntry, Turn, TurnOutcome, tools};

const VENDOR: &str = "openai";

/// The Responses URL for a base URL (`{base}/responses`, trailing slash tolerated).
pub fn endpoint(base_url: Option<&str>) -> String {
    let base = base_url
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .unwrap_or(super::DEFAULT_BASE_URL);
    format!("{}/responses", base.trim_end_matches('/'))
}

pub async fn run_turn(
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    let config = &turn.config;
    let Endpoint {
        model,
        base_url,
        api_key,
    } = endpoint_of(config)?;
    let url = endpoint(base_url);
    let idle = vendor::idle_timeout(config);
    let shell_timeout = config.tool_timeout.unwrap_or(tools::DEFAULT_SHELL_TIMEOUT);
    let max_rounds = vendor::max_tool_rounds(config);
    let client = vendor::client(VENDOR)?;
    let toolset = tools::Toolset::for_turn(turn, sink, cancel).await?;
    let tools = toolset.responses_definitions();

    let mut new_history = Vec::new();
    let mut usage = Usage::default();
    for _ in 0..max_rounds {
        let body = json!({
            "model": model,
            "stream": true,
            "instructions": vendor::system_prompt(config),
            "input": input(&turn.history, &new_history),
            "tools": tools,
        });
        let mut request = client.post(&url).json(&body);
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        let stream = vendor::open_stream(VENDOR, request, idle, cancel).await?;
        let reply = read_reply(stream, sink, cancel, &mut usage).await?;
        if !reply.text.is_empty() {
            new_history.push(HistoryEntry::Assistant { text: reply.text });
        }
        if reply.calls.is_empty() {
            return Ok(TurnOutcome {
                new_history,
                usage: usage.into_value(),
            });
        }
        vendor::run_calls(
            reply.calls,
            turn,
            &toolset,
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

/// The Responses `input` for the history so far (tool halves without their other half left out).
fn input(history: &[HistoryEntry], new: &[HistoryEntry]) -> Vec<Value> {
    vendor::paired_history(history.iter().chain(new))
        .map(|entry| match entry {
            HistoryEntry::User { text } => {
                json!({"type": "message", "role": "user", "content": text})
            }
            HistoryEntry::Assistant { text } => {
                json!({"type": "message", "role": "assistant", "content": text})
            }
            HistoryEntry::ToolCall {
                call_id,
                name,
                arguments,
            } => json!({
                "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments
            }),
            HistoryEntry::ToolResult { call_id, output } => json!({
                "type": "function_call_output", "call_id": call_id, "output": output
            }),
        })
        .collect()
}

/// What one streamed response produced.
struct Reply {
    text: String,
    calls: Vec<Call>,
}

/// A function call being assembled, by its output item id.
#[derive(Default)]
struct PendingCall {
    call_id: String,
    name: String,
    arguments: String,
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The vendor's message in an `error` object (`{code, message}`), or the object itself.
fn error_text(error: Option<&Value>) -> String {
    match error {
        Some(e) if e.is_object() => {
            let message = str_of(e, "message");
            let code = str_of(e, "code");
            match (code.is_empty(), message.is_empty()) {
                (_, true) => e.to_string(),
                (true, false) => message.to_owned(),
                (false, false) => format!("{message} ({code})"),
            }
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) if !other.is_null() => other.to_string(),
        _ => "no error message".to_owned(),
    }
}

async fn read_reply(
    mut stream: SseStream,
    sink: &EventSink,
    cancel: &CancellationToken,
    usage: &mut Usage,
) -> Result<Reply, HarnessError> {
    let mut text = String::new();
    let mut pending: HashMap<String, PendingCall> = HashMap::new();
    // Message items whose text came as deltas (a server that sends only the finished item still gets shown).
    let mut streamed: std::collections::HashSet<String> = Default::default();
    let mut calls = Vec::new();
    let mut completed = false;
    while let Some(event) = stream.next(cancel).await? {
        let data = event.data.trim();
        if data.is_empty() || data == "[DONE]" {
            continue;
        }
        let value: Value = serde_json::from_str(data).map_err(|e| {
            stream.error(format!(
                "an event is not valid JSON ({e}): {}",
                vendor::excerpt(data)
            ))
        })?;
        // The type is in the data; the `event:` line says the same where a server sends one.
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("");
        match kind {
            "response.output_text.delta" => {
                let delta = str_of(&value, "delta");
                if !delta.is_empty() {
                    streamed.insert(str_of(&value, "item_id").to_owned());
                    sink.text_delta(delta);
                    text.push_str(delta);
                }
            }
            "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => {
                let delta = str_of(&value, "delta");
                if !delta.is_empty() {
                    sink.emit(json!({"type": kind::RESPONSE_REASONING_TEXT_DELTA, "delta": delta}));
                }
            }
            "response.output_item.added" => {
                let item = &value["item"];
                if item["type"] == "function_call" {
                    pending.insert(
                        str_of(item, "id").to_owned(),
                        PendingCall {
                            call_id: str_of(item, "call_id").to_owned(),
                            name: str_of(item, "name").to_owned(),
                            arguments: str_of(item, "arguments").to_owned(),
                        },
                    );
                }
            }
            "response.function_call_arguments.delta" => {
                let id = str_of(&value, "item_id").to_owned();
                pending
                    .entry(id)
                    .or_default()
                    .arguments
                    .push_str(str_of(&value, "delta"));
            }
            "response.function_call_arguments.done" => {
                let id = str_of(&value, "item_id").to_owned();
                if let Some(arguments) = value.get("arguments").and_then(Value::as_str) {
                    pending.entry(id).or_default().arguments = arguments.to_owned();
                }
            }
            "response.output_item.done" => {
                let item = &value["item"];
                let id = str_of(item, "id");
                match item["type"].as_str() {
                    Some("function_call") => {
                        let assembled = pending.remove(id).unwrap_or_default();
                        let pick = |field: &str, fallback: String| {
                            Some(str_of(item, field))
                                .filter(|v| !v.is_empty())
                                .map(str::to_owned)
                                .unwrap_or(fallback)
                        };
                        let call_id = pick("call_id", assembled.call_id);
                        let arguments = pick("arguments", assembled.arguments);
                        calls.push(Call {
                            id: if call_id.is_empty() {
                                format!("call_{}", crate::harness::new_item_id())
                            } else {
                                call_id
                            },
                            name: pick("name", assembled.name),
                            arguments: if arguments.trim().is_empty() {
                                "{}".to_owned()
                            } else {
                                arguments
                            },
                        });
                    }
                    Some("message") if !streamed.contains(id) => {
                        let whole: String = item["content"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|part| part["type"] == "output_text")
                            .map(|part| str_of(part, "text"))
                            .collect();
                        if !whole.is_empty() {
                            sink.text_delta(&whole);
                            text.push_str(&whole);
                        }
                    }
                    _ => {}
                }
            }
            "response.completed" | "response.incomplete" => {
                let response = &value["response"];
                let reason = response
                    .pointer("/incomplete_details/reason")
                    .and_then(Value::as_str);
                if kind == "response.incomplete" && reason != Some("max_output_tokens") {
                    return Err(stream.error(format!(
                        "the response ended incomplete ({})",
                        reason.unwrap_or("no reason given")
                    )));
                }
                if let Some(u) = response.get("usage").filter(|u| u.is_object()) {
                    let get = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                    usage.add(get("input_tokens"), get("output_tokens"));
                }
                completed = true;
                break;
            }
            "response.failed" => {
                return Err(stream.error(format!(
                    "the response failed: {}",
                    error_text(value.pointer("/response/error"))
                )));
            }
            "error" => {
                let error = value.get("error").unwrap_or(&value);
                return Err(stream.error(format!(
                    "the vendor reported an error mid-stream: {}",
                    error_text(Some(error))
                )));
            }
            _ => {}
        }
    }
    if !completed {
        return Err(stream.error(
            "the stream ended before response.completed (the connection was cut); retry the message"
                .to_owned(),
        ));
    }
    Ok(Reply { text, calls })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn input_carries_calls_and_outputs_and_drops_unpaired_halves() {
        let history = [
            HistoryEntry::User { text: "hi".into() },
            HistoryEntry::ToolCall {
                call_id: "c1".into(),
                name: "list_dir".into(),
                arguments: "{}".into(),
            },
            HistoryEntry::ToolResult {
                call_id: "c1".into(),
                output: "a.txt".into(),
            },
            HistoryEntry::ToolCall {
                call_id: "lost".into(),
                name: "shell".into(),
                arguments: "{}".into(),
            },
            HistoryEntry::Assistant { text: "ok".into() },
        ];
        let items = input(&history, &[]);
        let types: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "message",
                "function_call",
                "function_call_output",
                "message"
            ]
        );
        assert_eq!(items[3]["role"], "assistant");
    }

    #[test]
    fn wire_api_names() {
        use super::super::WireApi;
        assert_eq!(WireApi::parse("Responses"), Some(WireApi::Responses));
        assert_eq!(WireApi::parse("chat_completions"), Some(WireApi::Chat));
        assert_eq!(WireApi::parse("grpc"), None);
        assert_eq!(WireApi::default_for("openai-agents"), WireApi::Responses);
        assert_eq!(WireApi::default_for("open-responses"), WireApi::Responses);
        assert_eq!(WireApi::default_for("openai"), WireApi::Chat);
    }
}
