//! HTTP plumbing shared by the `openai` and `anthropic` harnesses: one request that opens a Server-Sent Events
//! stream, vendor error bodies turned into [`HarnessError::Vendor`], and an SSE reader that caps every event,
//! fails on a silent vendor after the idle timeout, and gives way at once to the turn's cancellation.

use std::time::Duration;

use futures_util::StreamExt as _;
use omnigent_proto::events;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{EventSink, HarnessConfig, HarnessError, HistoryEntry, Turn, tools};

/// Time to establish a TCP (and TLS) connection to a vendor.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`HarnessConfig::idle_timeout`].
pub(super) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default for [`HarnessConfig::max_tool_rounds`].
pub(super) const DEFAULT_MAX_TOOL_ROUNDS: u32 = 50;
/// Largest SSE line or event accepted from a vendor.
pub(super) const MAX_EVENT_BYTES: usize = 8 << 20;
/// Largest error body read from a vendor (the message is near the start).
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// The instructions every vendor harness gives its model.
pub(super) const SYSTEM_PROMPT: &str = "You are a coding agent. You work in the user's workspace directory \
through the tools shell, read_file, write_file and list_dir; paths are relative to the workspace and cannot \
leave it. Use the tools to inspect and change files when the request needs it, then answer briefly.";

/// The system prompt of a turn: the agent's instructions, else [`SYSTEM_PROMPT`].
pub(super) fn system_prompt(config: &HarnessConfig) -> &str {
    config
        .instructions
        .as_deref()
        .filter(|i| !i.trim().is_empty())
        .unwrap_or(SYSTEM_PROMPT)
}

pub(super) fn idle_timeout(config: &HarnessConfig) -> Duration {
    config.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT)
}

pub(super) fn max_tool_rounds(config: &HarnessConfig) -> u32 {
    config.max_tool_rounds.unwrap_or(DEFAULT_MAX_TOOL_ROUNDS)
}

/// The end of a turn whose model asked for tools `max_rounds` rounds in a row: the turn completes (not an error)
/// with a note in the transcript that says how to go on.
pub(super) fn rounds_exhausted(
    sink: &EventSink,
    max_rounds: u32,
    mut new_history: Vec<HistoryEntry>,
    usage: Usage,
) -> super::TurnOutcome {
    let note = format!(
        "\n[stopped: the model asked for tools {max_rounds} rounds in a row; send a message to let it continue]"
    );
    sink.text_delta(&note);
    new_history.push(HistoryEntry::Assistant { text: note });
    super::TurnOutcome {
        new_history,
        usage: usage.into_value(),
    }
}

pub(super) fn client(vendor: &'static str) -> Result<reqwest::Client, HarnessError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| HarnessError::Stream {
            vendor,
            message: format!("cannot build the HTTP client: {}", error_chain(&e)),
        })
}

/// `e` and its sources, `: `-separated (reqwest's own message alone says little: "error sending request").
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// History the vendors accept: a tool call without its result (a turn interrupted mid-tool) or a result
/// without its call makes both APIs reject the whole request, so such halves are left out.
pub(super) fn paired_history<'a>(
    history: impl Iterator<Item = &'a HistoryEntry> + Clone,
) -> impl Iterator<Item = &'a HistoryEntry> {
    let calls: std::collections::HashSet<&str> = history
        .clone()
        .filter_map(|e| match e {
            HistoryEntry::ToolCall { call_id, .. } => Some(call_id.as_str()),
            _ => None,
        })
        .collect();
    let results: std::collections::HashSet<&str> = history
        .clone()
        .filter_map(|e| match e {
            HistoryEntry::ToolResult { call_id, .. } => Some(call_id.as_str()),
            _ => None,
        })
        .collect();
    history.filter(move |e| match e {
        HistoryEntry::ToolCall { call_id, .. } => results.contains(call_id.as_str()),
        HistoryEntry::ToolResult { call_id, .. } => calls.contains(call_id.as_str()),
        HistoryEntry::User { .. } | HistoryEntry::Assistant { .. } => true,
    })
}

/// Token usage summed over the rounds of one turn.
#[derive(Debug, Default)]
pub(super) struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub seen: bool,
}

impl Usage {
    pub fn add(&mut self, input: u64, output: u64) {
        self.input_tokens += input;
        self.output_tokens += output;
        self.seen = true;
    }

    pub fn into_value(self) -> Option<Value> {
        self.seen.then(|| {
            serde_json::json!({"input_tokens": self.input_tokens, "output_tokens": self.output_tokens})
        })
    }
}

/// Send `request` and wait for the response head. A non-2xx status becomes [`HarnessError::Vendor`] with the
/// vendor's own message; a vendor that does not answer within `idle` fails the turn. Every credential the
/// request carries (its API key) is redacted from the error, which the session stores and the runner logs.
pub(super) async fn open_stream(
    vendor: &'static str,
    request: reqwest::RequestBuilder,
    idle: Duration,
    cancel: &CancellationToken,
) -> Result<SseStream, HarnessError> {
    let (client, request) = request.build_split();
    let request = request.map_err(|e| HarnessError::Stream {
        vendor,
        message: format!("cannot build the request: {}", error_chain(&e)),
    })?;
    let secrets = Secrets::of(request.headers());
    match open_built(vendor, client, request, idle, cancel).await {
        Ok(mut stream) => {
            stream.secrets = secrets;
            Ok(stream)
        }
        Err(e) => Err(secrets.redact_error(e)),
    }
}

async fn open_built(
    vendor: &'static str,
    client: reqwest::Client,
    request: reqwest::Request,
    idle: Duration,
    cancel: &CancellationToken,
) -> Result<SseStream, HarnessError> {
    let response = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(HarnessError::Interrupted),
        sent = tokio::time::timeout(idle, client.execute(request)) => match sent {
            Err(_) => return Err(HarnessError::Stream {
                vendor,
                message: format!(
                    "no response within {} (idle timeout); the endpoint may be overloaded or down, retry later",
                    seconds(idle)
                ),
            }),
            Ok(Err(e)) => return Err(HarnessError::Stream {
                vendor,
                message: format!("the request failed: {}; check the base URL and that the endpoint is up", error_chain(&e)),
            }),
            Ok(Ok(response)) => response,
        },
    };
    if !response.status().is_success() {
        return Err(vendor_error(vendor, response, idle, cancel).await);
    }
    Ok(SseStream {
        vendor,
        secrets: Secrets(Vec::new()),
        events: events::SseStream::new(Box::pin(response.bytes_stream()), MAX_EVENT_BYTES),
        idle,
    })
}

/// The credential values of a request (`Authorization`, `x-api-key`…), to cut out of anything a vendor echoes.
struct Secrets(Vec<String>);

impl Secrets {
    fn of(headers: &reqwest::header::HeaderMap) -> Self {
        let mut values = Vec::new();
        for (name, value) in headers {
            if !omnigent_proto::headers::is_secret_header(name.as_str()) {
                continue;
            }
            let Ok(value) = value.to_str() else { continue };
            let value = value.trim();
            // `Bearer <key>`: the key alone is what a vendor echoes.
            let key = value.split_once(' ').map_or(value, |(_, key)| key.trim());
            // Shorter values would redact ordinary words; no real API key is that short.
            if key.len() >= 4 {
                values.push(key.to_owned());
            }
        }
        // Longest first, so a key that contains another is cut whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Secrets(values)
    }

    fn redact(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), omnigent_proto::headers::REDACTED)
        })
    }

    fn redact_error(&self, error: HarnessError) -> HarnessError {
        match error {
            HarnessError::Vendor {
                vendor,
                status,
                message,
                retry_after,
            } => HarnessError::Vendor {
                vendor,
                status,
                message: self.redact(&message),
                retry_after,
            },
            HarnessError::Stream { vendor, message } => HarnessError::Stream {
                vendor,
                message: self.redact(&message),
            },
            other => other,
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Build the error for a non-2xx answer: the message from the JSON body (`error.message`, `error` as a string,
/// or `message`), else the start of the body, else the status's reason.
async fn vendor_error(
    vendor: &'static str,
    mut response: reqwest::Response,
    idle: Duration,
    cancel: &CancellationToken,
) -> HarnessError {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut body = Vec::new();
    loop {
        let chunk = tokio::select! {
            biased;
            _ = cancel.cancelled() => return HarnessError::Interrupted,
            chunk = tokio::time::timeout(idle, response.chunk()) => chunk,
        };
        match chunk {
            Ok(Ok(Some(bytes))) => {
                let room = MAX_ERROR_BODY_BYTES - body.len();
                body.extend_from_slice(&bytes[..bytes.len().min(room)]);
                if body.len() >= MAX_ERROR_BODY_BYTES {
                    break;
                }
            }
            // The status is what matters; a body that breaks off or stalls still yields an error.
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
        }
    }
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let message = from_json.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("no message").to_owned()
        } else {
            text.chars().take(500).collect()
        }
    });
    HarnessError::Vendor {
        vendor,
        status: status.as_u16(),
        message,
        retry_after,
    }
}

/// One Server-Sent Event (its `event:` line and joined `data:` lines).
pub(super) type SseEvent = events::SseMessage;

type VendorBody = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>,
>;

/// Reads a streaming response as Server-Sent Events, through the workspace's one SSE parser.
pub(super) struct SseStream {
    vendor: &'static str,
    /// Cut out of every error message (a vendor's error event may echo the key).
    secrets: Secrets,
    events: events::SseStream<VendorBody>,
    idle: Duration,
}

impl SseStream {
    /// The next event, or `None` when the stream ended cleanly (whether the vendor's protocol was complete is
    /// the caller's judgement; a last event not followed by a blank line still counts). Fails when the
    /// connection breaks, the vendor is silent for the idle timeout or an event exceeds [`MAX_EVENT_BYTES`];
    /// gives way to `cancel` at once.
    pub async fn next(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<SseEvent>, HarnessError> {
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(HarnessError::Interrupted),
            item = tokio::time::timeout(self.idle, self.events.next()) => item,
        };
        match item {
            Err(_) => Err(self.error(format!(
                "no data for {} (idle timeout); the vendor stalled mid-stream, retry later",
                seconds(self.idle)
            ))),
            Ok(None) => Ok(None),
            Ok(Some(Ok(event))) => Ok(Some(event)),
            Ok(Some(Err(events::SseError::Body(e)))) => Err(self.error(format!(
                "the connection broke off mid-stream: {}",
                error_chain(&e)
            ))),
            Ok(Some(Err(events::SseError::TooLarge(_)))) => Err(self.error(format!(
                "the stream sent an event larger than {} MiB; refusing it",
                MAX_EVENT_BYTES >> 20
            ))),
        }
    }

    pub fn error(&self, message: String) -> HarnessError {
        HarnessError::Stream {
            vendor: self.vendor,
            message: self.secrets.redact(&message),
        }
    }
}

/// The start of `text`, for error messages that quote what a vendor sent.
pub(super) fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

/// A completed tool call the model asked for.
#[derive(Debug)]
pub(super) struct Call {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Emit every call (the server flushes the text before the first), then run each and emit its output.
pub(super) async fn run_calls(
    calls: Vec<Call>,
    turn: &Turn,
    tools: &tools::Toolset,
    sink: &EventSink,
    cancel: &CancellationToken,
    shell_timeout: std::time::Duration,
    new_history: &mut Vec<HistoryEntry>,
) -> Result<(), HarnessError> {
    for call in &calls {
        sink.function_call(&turn.response_id, &call.id, &call.name, &call.arguments);
        new_history.push(HistoryEntry::ToolCall {
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
        });
    }
    for call in calls {
        let output = tools
            .run(
                &call.name,
                &call.arguments,
                &turn.workspace,
                shell_timeout,
                cancel,
                sink,
            )
            .await?;
        sink.function_call_output(&turn.response_id, &call.id, &output);
        new_history.push(HistoryEntry::ToolResult {
            call_id: call.id,
            output,
        });
    }
    Ok(())
}
