//! The `openai` harness: any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, LiteLLM, OpenRouter), streamed,
//! with the built-in tools, over Chat Completions (here) or the Responses API ([`responses`]); [`WireApi`]
//! says which.
//!
//! One turn is a loop: stream a completion (text deltas go out as they arrive, tool calls are assembled from
//! their `delta.tool_calls` fragments), and if the model asked for tools, emit each call, run it, emit its
//! output, and ask again with the results, until the model answers without tool calls.

use omnigent_proto::events::kind;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::vendor::{self, Call, SseStream, Usage};
use super::{EventSink, HarnessError, HistoryEntry, Turn, TurnOutcome, tools};

pub mod responses;

const VENDOR: &str = "openai";
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Which OpenAI API a turn speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireApi {
    /// `POST {base}/chat/completions`: what every OpenAI-compatible server speaks; our `openai`'s default.
    Chat,
    /// `POST {base}/responses`: the default of omnigent's `openai-agents` and `open-responses`.
    Responses,
}

impl WireApi {
    /// `responses`, or `chat` (also `chat_completions`, `chat-completions`, `completions`), any case.
    pub fn parse(value: &str) -> Option<WireApi> {
        match value.trim().to_ascii_lowercase().as_str() {
            "responses" | "response" => Some(WireApi::Responses),
            "chat" | "chat_completions" | "chat-completions" | "completions" => Some(WireApi::Chat),
            _ => None,
        }
    }

    /// The default for a harness name as a session or spec wrote it: Responses for omnigent's
    /// `openai-agents` (and `openai-agents-sdk`) and `open-responses`, Chat Completions for our `openai`.
    pub fn default_for(harness_name: &str) -> WireApi {
        match harness_name.trim().to_ascii_lowercase().as_str() {
            "openai-agents" | "openai-agents-sdk" | "open-responses" | "agents_sdk" => {
                WireApi::Responses
            }
            _ => WireApi::Chat,
        }
    }
}

/// What both APIs need to send a request: the model, the base URL and the key (`None`: a local server that
/// needs none). Fails, naming what to set, when there is no model, or neither a key nor a base URL of one's
/// own (the default api.openai.com always needs a key).
pub(crate) struct Endpoint<'a> {
    pub model: &'a str,
    pub base_url: Option<&'a str>,
    pub api_key: Option<&'a str>,
}

pub(crate) fn endpoint_of(config: &super::HarnessConfig) -> Result<Endpoint<'_>, HarnessError> {
    let model = config
        .model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            HarnessError::NotConfigured(
                "the openai harness has no model: set OMNIGENT_MODEL (e.g. gpt-4o-mini, or llama3.1 for Ollama), \
                 or executor.model in the agent spec"
                    .into(),
            )
        })?;
    let base_url = config
        .base_url
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty());
    let api_key = [&config.api_key, &config.auth_token]
        .into_iter()
        .find_map(|k| k.as_deref().map(str::trim).filter(|k| !k.is_empty()));
    if api_key.is_none() && base_url.is_none() {
        return Err(HarnessError::NotConfigured(
            "the openai harness has no API key: set OPENAI_API_KEY or executor.auth.api_key in the agent spec \
             (or OPENAI_BASE_URL / executor.auth.base_url for a local server that needs no key)"
                .into(),
        ));
    }
    Ok(Endpoint {
        model,
        base_url,
        api_key,
    })
}

/// The completions URL for a base URL (`{base}/chat/completions`, trailing slash tolerated).
pub fn endpoint(base_url: Option<&str>) -> String {
    let base = base_url
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .unwrap_or(DEFAULT_BASE_URL);
    format!("{}/chat/completions", base.trim_end_matches('/'))
}

pub async fn run_turn(
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    let config = &turn.config;
    if config.wire_api == Some(WireApi::Responses) {
        return responses::run_turn(turn, sink, cancel).await;
    }
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

    let tools = tools::Toolset::for_turn(turn, sink, cancel).await?;

    let mut new_history = Vec::new();
    let mut usage = Usage::default();
    for _ in 0..max_rounds {
        let body = json!({
            "model": model,
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": messages(vendor::system_prompt(config), &turn.history, &new_history),
            "tools": tools.openai_definitions(),
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

/// The Chat Completions `messages` for the history so far: consecutive tool calls join one assistant
/// message (with the text before them), each result is a `tool` message.
fn messages(system: &str, history: &[HistoryEntry], new: &[HistoryEntry]) -> Vec<Value> {
    let mut messages = vec![json!({"role": "system", "content": system})];
    for entry in vendor::paired_history(history.iter().chain(new)) {
        match entry {
            HistoryEntry::User { text } => messages.push(json!({"role": "user", "content": text})),
            HistoryEntry::Assistant { text } => {
                messages.push(json!({"role": "assistant", "content": text}))
            }
            HistoryEntry::ToolCall {
                call_id,
                name,
                arguments,
            } => {
                let call = json!({
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                });
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" => {
                        match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                            Some(calls) => calls.push(call),
                            None => last["tool_calls"] = json!([call]),
                        }
                    }
                    _ => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            HistoryEntry::ToolResult { call_id, output } => messages.push(json!({
                "role": "tool", "tool_call_id": call_id, "content": output
            })),
        }
    }
    messages
}

/// What one streamed completion produced.
struct Reply {
    text: String,
    calls: Vec<Call>,
}

/// A tool call being assembled from fragments. Fragments name their call by `index`; Ollama reuses index 0
/// for every call of a parallel batch and tells them apart by `id` only, so a new id opens a new slot.
struct PendingCall {
    index: u64,
    id: String,
    name: String,
    arguments: String,
}

async fn read_reply(
    mut stream: SseStream,
    sink: &EventSink,
    cancel: &CancellationToken,
    usage: &mut Usage,
) -> Result<Reply, HarnessError> {
    let mut text = String::new();
    let mut pending: Vec<PendingCall> = Vec::new();
    let mut done = false;
    let mut reply_usage = None;
    while let Some(event) = stream.next(cancel).await? {
        let data = event.data.trim();
        if data == "[DONE]" {
            done = true;
            break;
        }
        if data.is_empty() {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            stream.error(format!(
                "a chunk is not valid JSON ({e}): {}",
                vendor::excerpt(data)
            ))
        })?;
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| error.to_string());
            return Err(stream.error(format!(
                "the vendor reported an error mid-stream: {message}"
            )));
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            // Some servers repeat the running usage in every chunk: the last one counts.
            let get = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            reply_usage = Some((get("prompt_tokens"), get("completion_tokens")));
        }
        let Some(delta) = chunk.pointer("/choices/0/delta") else {
            continue;
        };
        if let Some(reasoning) = delta
            .get("reasoning_content")
            .or_else(|| delta.get("reasoning"))
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            sink.emit(json!({"type": kind::RESPONSE_REASONING_TEXT_DELTA, "delta": reasoning}));
        }
        if let Some(content) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
        {
            sink.text_delta(content);
            text.push_str(content);
        }
        if let Some(fragments) = delta.get("tool_calls").and_then(Value::as_array) {
            for fragment in fragments {
                add_fragment(&mut pending, fragment);
            }
        }
    }
    if !done {
        return Err(stream.error(
            "the stream ended before its [DONE] terminator (the connection was cut); retry the message"
                .to_owned(),
        ));
    }
    if let Some((input, output)) = reply_usage {
        usage.add(input, output);
    }
    let calls = pending
        .into_iter()
        .map(|p| Call {
            id: if p.id.is_empty() {
                format!("call_{}", super::new_item_id())
            } else {
                p.id
            },
            name: p.name,
            arguments: if p.arguments.trim().is_empty() {
                "{}".to_owned()
            } else {
                p.arguments
            },
        })
        .collect();
    Ok(Reply { text, calls })
}

fn add_fragment(pending: &mut Vec<PendingCall>, fragment: &Value) {
    let index = fragment.get("index").and_then(Value::as_u64).unwrap_or(0);
    let id = fragment.get("id").and_then(Value::as_str).unwrap_or("");
    let function = fragment.get("function");
    let name = function
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let arguments = function
        .and_then(|f| f.get("arguments"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let slot = pending
        .iter()
        .rposition(|p| p.index == index)
        .filter(|&at| id.is_empty() || pending[at].id.is_empty() || pending[at].id == id);
    match slot {
        Some(at) => {
            let call = &mut pending[at];
            if call.id.is_empty() {
                call.id = id.to_owned();
            }
            if call.name.is_empty() {
                call.name = name.to_owned();
            }
            call.arguments.push_str(arguments);
        }
        None => pending.push(PendingCall {
            index,
            id: id.to_owned(),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        }),
    }
}
