//! Claude Code's `--output-format stream-json --verbose --include-partial-messages` lines → our events and
//! history, one turn at a time. Pure: [`Lines::line`] takes one parsed line and says whether the turn ended.
//!
//! - `system`/`init`: the Claude session id (kept by the agent for `--resume`); other `system` lines: nothing.
//! - `stream_event` with a `content_block_delta`/`text_delta`: `response.output_text.delta`.
//! - `assistant`: (unless it is the CLI's report of an API error) its `text` blocks go to the history (and are streamed here only when no partial deltas came
//!   for them); its `tool_use` blocks become `function_call` items.
//! - `user`: its `tool_result` blocks become `function_call_output` items.
//! - `result`: the turn's end, with its usage; `is_error` (or an `error_*` subtype) fails the turn.
//! - `control_response` and anything else: nothing. `control_request` / `control_cancel_request` are the
//!   control protocol ([`Control`]: permission prompts), which the agent and its turn handle, not this mapping.

use serde_json::{Value, json};

use crate::harness::{EventSink, HistoryEntry};

/// How a turn's lines ended it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// `result` with success.
    Done,
    /// `result` with `is_error` or an error subtype: the CLI's own words.
    Failed(String),
}

/// The mapping state of one turn.
pub struct Lines<'a> {
    response_id: &'a str,
    sink: &'a EventSink,
    /// What the turn added to the conversation so far.
    pub new_history: Vec<HistoryEntry>,
    /// Token usage from `result`: `{"input_tokens":…, "output_tokens":…}`.
    pub usage: Option<Value>,
    /// The Claude session id from `system`/`init`.
    pub session_id: Option<String>,
    /// Text deltas streamed since the last `assistant` line.
    streamed: bool,
}

impl<'a> Lines<'a> {
    pub fn new(response_id: &'a str, sink: &'a EventSink) -> Self {
        Lines {
            response_id,
            sink,
            new_history: Vec::new(),
            usage: None,
            session_id: None,
            streamed: false,
        }
    }

    /// Map one line; `Some` once the turn has ended (its `result`).
    pub fn line(&mut self, value: &Value) -> Option<Ended> {
        match value.get("type").and_then(Value::as_str).unwrap_or("") {
            "system" => {
                if value.get("subtype").and_then(Value::as_str) == Some("init")
                    && let Some(id) = value.get("session_id").and_then(Value::as_str)
                {
                    self.session_id = Some(id.to_owned());
                }
                None
            }
            "stream_event" => {
                self.partial(value);
                None
            }
            "assistant" => {
                self.assistant(value);
                None
            }
            "user" => {
                self.user(value);
                None
            }
            "result" => Some(self.result(value)),
            _ => None,
        }
    }

    fn partial(&mut self, value: &Value) {
        let Some(event) = value.get("event") else {
            return;
        };
        if event.get("type").and_then(Value::as_str) == Some("content_block_delta")
            && event.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta")
            && let Some(text) = event.pointer("/delta/text").and_then(Value::as_str)
            && !text.is_empty()
        {
            self.sink.text_delta(text);
            self.streamed = true;
        }
    }

    fn assistant(&mut self, value: &Value) {
        let emit = !std::mem::take(&mut self.streamed);
        // The CLI's own report of a failed API call ("API Error: 400 …"): the `result` that follows fails the
        // turn with it; it is not the model's text.
        if value.get("is_api_error_message").and_then(Value::as_bool) == Some(true) {
            return;
        }
        let Some(blocks) = value.pointer("/message/content").and_then(Value::as_array) else {
            return;
        };
        for block in blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                    if text.is_empty() {
                        continue;
                    }
                    if emit {
                        self.sink.text_delta(text);
                    }
                    // Consecutive text blocks are one assistant entry.
                    match self.new_history.last_mut() {
                        Some(HistoryEntry::Assistant { text: prev }) => prev.push_str(text),
                        _ => self.new_history.push(HistoryEntry::Assistant {
                            text: text.to_owned(),
                        }),
                    }
                }
                Some("tool_use") => {
                    let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                    let name = block.get("name").and_then(Value::as_str).unwrap_or("tool");
                    let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                    let arguments = input.to_string();
                    self.sink
                        .function_call(self.response_id, id, name, &arguments);
                    self.new_history.push(HistoryEntry::ToolCall {
                        call_id: id.to_owned(),
                        name: name.to_owned(),
                        arguments,
                    });
                }
                _ => {} // thinking, server tool blocks: not shown
            }
        }
    }

    fn user(&mut self, value: &Value) {
        let Some(blocks) = value.pointer("/message/content").and_then(Value::as_array) else {
            return;
        };
        for block in blocks {
            if block.get("type").and_then(Value::as_str) != Some("tool_result") {
                continue;
            }
            let id = block
                .get("tool_use_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            let output = match block.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Some(other) if !other.is_null() => other.to_string(),
                _ => String::new(),
            };
            self.sink
                .function_call_output(self.response_id, id, &output);
            self.new_history.push(HistoryEntry::ToolResult {
                call_id: id.to_owned(),
                output,
            });
        }
    }

    fn result(&mut self, value: &Value) -> Ended {
        if let Some(u) = value.get("usage").filter(|u| u.is_object()) {
            let get = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Some(json!({
                "input_tokens": get("input_tokens")
                    + get("cache_read_input_tokens")
                    + get("cache_creation_input_tokens"),
                "output_tokens": get("output_tokens"),
            }));
        }
        let subtype = value.get("subtype").and_then(Value::as_str).unwrap_or("");
        let is_error = value.get("is_error").and_then(Value::as_bool) == Some(true);
        if !is_error && !subtype.starts_with("error") {
            return Ended::Done;
        }
        let mut message = value
            .get("result")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .or_else(|| {
                value.get("errors").and_then(Value::as_array).map(|e| {
                    e.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("Claude Code ended the turn with {subtype:?}"));
        if let Some(status) = value.get("api_error_status").and_then(Value::as_u64)
            && !message.contains(&status.to_string())
        {
            message = format!("{message} (the model API answered HTTP {status})");
        }
        Ended::Failed(message)
    }
}

/// One `control_request` of subtype `can_use_tool`: Claude Code asks (it was started with
/// `--permission-prompt-tool stdio`, as the Claude Agent SDK starts it for `can_use_tool`) whether it may use a
/// tool. Seen from the 2.1 CLI:
/// `{"type":"control_request","request_id":"…","request":{"subtype":"can_use_tool","tool_name":"Bash",
/// "display_name":"Bash","input":{"command":"…","description":"…"},"description":"…",
/// "permission_suggestions":[…],"decision_reason":"This command requires approval",
/// "decision_reason_type":"other","tool_use_id":"toolu_01"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct PermissionRequest {
    pub request_id: String,
    pub tool_name: String,
    pub input: Value,
    pub tool_use_id: Option<String>,
    /// The CLI's own words for the tool call (`description`), if it gave any.
    pub description: Option<String>,
}

/// What the CLI's control protocol asks of us, on one stdout line.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// `can_use_tool`.
    Permission(PermissionRequest),
    /// Another `control_request` subtype (`hook_callback`, `mcp_message`…), which we never set up.
    Other { request_id: String, subtype: String },
    /// `control_cancel_request`: the CLI withdrew the request `request_id` (an interrupt, say).
    Cancel { request_id: String },
}

impl Control {
    /// The control message on `value`, if it is one.
    pub fn parse(value: &Value) -> Option<Control> {
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let request_id = text(value, "request_id")?;
        match value.get("type").and_then(Value::as_str)? {
            "control_cancel_request" => Some(Control::Cancel { request_id }),
            "control_request" => {
                let request = value.get("request")?;
                let subtype = text(request, "subtype").unwrap_or_default();
                if subtype != "can_use_tool" {
                    return Some(Control::Other {
                        request_id,
                        subtype,
                    });
                }
                Some(Control::Permission(PermissionRequest {
                    request_id,
                    tool_name: text(request, "tool_name").unwrap_or_else(|| "tool".to_owned()),
                    input: request.get("input").cloned().unwrap_or_else(|| json!({})),
                    tool_use_id: text(request, "tool_use_id"),
                    description: text(request, "description").filter(|d| !d.is_empty()),
                }))
            }
            _ => None,
        }
    }
}

impl PermissionRequest {
    /// The question for the session's clients: "Allow Bash: `touch a.txt`?" and the input as the preview.
    pub fn params(&self) -> omnigent_proto::elicitation::ElicitationParams {
        let field = |k: &str| self.input.get(k).and_then(Value::as_str);
        let subject = field("command")
            .or_else(|| field("file_path"))
            .or_else(|| field("url"))
            .or_else(|| field("pattern"))
            .map(str::to_owned)
            .unwrap_or_else(|| self.input.to_string());
        let subject: String = subject.chars().take(200).collect();
        let mut message = format!("Allow {}: `{subject}`?", self.tool_name);
        if let Some(description) = &self.description {
            message.push_str(&format!(" ({description})"));
        }
        omnigent_proto::elicitation::ElicitationParams::tool_approval(
            "claude-code",
            &self.tool_name,
            message,
            &self.input.to_string(),
        )
    }

    /// Let the tool run with its input as asked.
    pub fn allow(&self) -> Value {
        control_response(
            &self.request_id,
            json!({"behavior": "allow", "updatedInput": self.input}),
        )
    }

    /// Refuse it, telling the model why (`message` is what its tool result says).
    pub fn deny(&self, message: &str) -> Value {
        control_response(
            &self.request_id,
            json!({"behavior": "deny", "message": message}),
        )
    }

    /// The answer to send for `answer`: allow on `accept`, deny naming who denied otherwise.
    pub fn respond(&self, answer: &omnigent_proto::elicitation::Answer) -> Value {
        use omnigent_proto::elicitation::Action;
        let who = answer
            .meta
            .as_ref()
            .and_then(|m| ["resolved_by", "device_name"].iter().find_map(|k| m.get(k)))
            .and_then(Value::as_str)
            .unwrap_or("a user");
        match answer.action {
            Action::Accept => self.allow(),
            Action::Decline => self.deny(&format!("Denied by {who} from omnigent")),
            Action::Cancel => {
                self.deny("Not approved: the question was dismissed or not answered in omnigent")
            }
        }
    }
}

/// The `control_response` envelope the Claude Agent SDK writes to the CLI's stdin for a successful answer.
pub fn control_response(request_id: &str, response: Value) -> Value {
    json!({
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": response},
    })
}

/// The envelope for a request we do not serve.
pub fn control_error(request_id: &str, error: &str) -> Value {
    json!({
        "type": "control_response",
        "response": {"subtype": "error", "request_id": request_id, "error": error},
    })
}
