//! Server-sent events of `GET /v1/sessions/{id}/stream` (reference omnigent-server-v1.md §2, wire 0.19.1).
//!
//! Wire format: `event: <type>\nid: <seq>\ndata: <json>\n\n`, the JSON always carrying `"type"`; the stream
//! ends with `data: [DONE]\n\n`. The `id:` line (a per-session sequence) and `Last-Event-ID` resume are ours
//! and additive: omnigent clients ignore them.
//!
//! [`ServerEvent`] models the events a server emits or relays; a relay may also forward an event it does not
//! model as raw JSON, so consumers must tolerate unknown types.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::SessionStatus;

/// Interval between idle `session.heartbeat` events (`_SESSION_STREAM_HEARTBEAT_INTERVAL_S`).
pub const HEARTBEAT_INTERVAL_SECS: u64 = 15;
/// The last line of a stream that ended normally.
pub const SSE_DONE: &str = "data: [DONE]\n\n";
/// Headers of every stream answer.
pub const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";

/// The `type` of every event in [`ServerEvent`], once: the server, the runner and the CLI match on and emit
/// these names (the serde renames on [`ServerEvent`] must agree; a test checks it).
pub mod kind {
    pub const SESSION_HEARTBEAT: &str = "session.heartbeat";
    pub const SESSION_STATUS: &str = "session.status";
    pub const SESSION_INPUT_CONSUMED: &str = "session.input.consumed";
    pub const SESSION_INTERRUPTED: &str = "session.interrupted";
    pub const SESSION_CHANGED_FILES_INVALIDATED: &str = "session.changed_files.invalidated";
    pub const SESSION_PRESENCE: &str = "session.presence";
    pub const SESSION_TERMINAL_PENDING: &str = "session.terminal_pending";
    pub const SESSION_RESOURCE_CREATED: &str = "session.resource.created";
    pub const SESSION_RESOURCE_DELETED: &str = "session.resource.deleted";
    pub const SESSION_MODEL: &str = "session.model";
    pub const SESSION_USAGE: &str = "session.usage";
    pub const RESPONSE_CREATED: &str = "response.created";
    pub const RESPONSE_QUEUED: &str = "response.queued";
    pub const RESPONSE_IN_PROGRESS: &str = "response.in_progress";
    pub const RESPONSE_COMPLETED: &str = "response.completed";
    pub const RESPONSE_FAILED: &str = "response.failed";
    pub const RESPONSE_INCOMPLETE: &str = "response.incomplete";
    pub const RESPONSE_CANCELLED: &str = "response.cancelled";
    pub const RESPONSE_OUTPUT_TEXT_DELTA: &str = "response.output_text.delta";
    pub const RESPONSE_REASONING_TEXT_DELTA: &str = "response.reasoning_text.delta";
    pub const RESPONSE_FUNCTION_CALL_OUTPUT_DELTA: &str = "response.function_call_output.delta";
    pub const RESPONSE_OUTPUT_ITEM_DONE: &str = "response.output_item.done";
    pub const RESPONSE_ERROR: &str = "response.error";
    pub const RESPONSE_ELICITATION_REQUEST: &str = "response.elicitation_request";
    pub const RESPONSE_ELICITATION_RESOLVED: &str = "response.elicitation_resolved";

    /// Not a server event: the first line of `omnigent run --json`, naming the session it created.
    pub const SESSION_CREATED: &str = "session.created";

    /// Every server event kind above.
    pub const ALL: [&str; 25] = [
        SESSION_HEARTBEAT,
        SESSION_STATUS,
        SESSION_INPUT_CONSUMED,
        SESSION_INTERRUPTED,
        SESSION_CHANGED_FILES_INVALIDATED,
        SESSION_PRESENCE,
        SESSION_TERMINAL_PENDING,
        SESSION_RESOURCE_CREATED,
        SESSION_RESOURCE_DELETED,
        SESSION_MODEL,
        SESSION_USAGE,
        RESPONSE_CREATED,
        RESPONSE_QUEUED,
        RESPONSE_IN_PROGRESS,
        RESPONSE_COMPLETED,
        RESPONSE_FAILED,
        RESPONSE_INCOMPLETE,
        RESPONSE_CANCELLED,
        RESPONSE_OUTPUT_TEXT_DELTA,
        RESPONSE_REASONING_TEXT_DELTA,
        RESPONSE_FUNCTION_CALL_OUTPUT_DELTA,
        RESPONSE_OUTPUT_ITEM_DONE,
        RESPONSE_ERROR,
        RESPONSE_ELICITATION_REQUEST,
        RESPONSE_ELICITATION_RESOLVED,
    ];
}

/// One SSE event as written on the wire.
pub fn sse_frame(event_type: &str, seq: u64, json: &str) -> String {
    format!("event: {event_type}\nid: {seq}\ndata: {json}\n\n")
}

/// Events of a session stream. Every variant carries `sequence_number` (null on server-made events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    #[serde(rename = "session.heartbeat")]
    Heartbeat {
        #[serde(default)]
        sequence_number: Option<i64>,
        #[serde(default)]
        server_time: Option<f64>,
    },
    #[serde(rename = "session.status")]
    Status {
        #[serde(default)]
        sequence_number: Option<i64>,
        conversation_id: String,
        status: SessionStatus,
        #[serde(default)]
        response_id: Option<String>,
        #[serde(default)]
        error: Option<Value>,
        #[serde(default)]
        background_task_count: Option<u32>,
        #[serde(default)]
        background_tasks: Option<Value>,
        #[serde(default)]
        blocked_on: Option<Value>,
    },
    #[serde(rename = "session.input.consumed")]
    InputConsumed {
        #[serde(default)]
        sequence_number: Option<i64>,
        data: InputConsumed,
    },
    #[serde(rename = "session.interrupted")]
    Interrupted {
        #[serde(default)]
        sequence_number: Option<i64>,
        data: Interrupted,
    },
    #[serde(rename = "session.changed_files.invalidated")]
    ChangedFilesInvalidated {
        #[serde(default)]
        sequence_number: Option<i64>,
        session_id: String,
        environment_id: String,
    },
    #[serde(rename = "session.presence")]
    Presence {
        #[serde(default)]
        sequence_number: Option<i64>,
        conversation_id: String,
        viewers: Vec<Value>,
        /// Ours: every open stream of the session (`crate::live::PresenceConnection`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        connections: Vec<crate::live::PresenceConnection>,
    },
    #[serde(rename = "session.terminal_pending")]
    TerminalPending {
        #[serde(default)]
        sequence_number: Option<i64>,
        conversation_id: String,
        pending: bool,
    },
    #[serde(rename = "session.resource.created")]
    ResourceCreated {
        #[serde(default)]
        sequence_number: Option<i64>,
        resource: Value,
    },
    #[serde(rename = "session.resource.deleted")]
    ResourceDeleted {
        #[serde(default)]
        sequence_number: Option<i64>,
        resource: Value,
    },
    #[serde(rename = "session.model")]
    Model {
        #[serde(default)]
        sequence_number: Option<i64>,
        conversation_id: String,
        model: Option<String>,
    },
    #[serde(rename = "session.usage")]
    Usage {
        #[serde(default)]
        sequence_number: Option<i64>,
        conversation_id: String,
        #[serde(default)]
        context_tokens: Option<u64>,
        #[serde(default)]
        context_window: Option<u64>,
        #[serde(default)]
        total_cost_usd: Option<f64>,
        #[serde(default)]
        usage_by_model: Option<Map<String, Value>>,
    },
    #[serde(rename = "response.created")]
    ResponseCreated {
        #[serde(default)]
        sequence_number: Option<i64>,
        response: Value,
    },
    #[serde(rename = "response.queued")]
    ResponseQueued {
        #[serde(default)]
        sequence_number: Option<i64>,
        response: Value,
    },
    #[serde(rename = "response.in_progress")]
    ResponseInProgress {
        #[serde(default)]
        sequence_number: Option<i64>,
        response: Value,
    },
    #[serde(rename = "response.completed")]
    ResponseCompleted {
        #[serde(default)]
        sequence_number: Option<i64>,
        response: Value,
    },
    #[serde(rename = "response.failed")]
    ResponseFailed {
        #[serde(default)]
        sequence_number: Option<i64>,
        response: Value,
    },
    #[serde(rename = "response.incomplete")]
    ResponseIncomplete {
        #[serde(default)]
        sequence_number: Option<i64>,
        response: Value,
    },
    #[serde(rename = "response.cancelled")]
    ResponseCancelled {
        #[serde(default)]
        sequence_number: Option<i64>,
        response: Value,
    },
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        #[serde(default)]
        sequence_number: Option<i64>,
        delta: String,
        #[serde(default)]
        message_id: Option<String>,
        #[serde(default)]
        index: Option<i64>,
        #[serde(default)]
        #[serde(rename = "final")]
        is_final: Option<bool>,
    },
    #[serde(rename = "response.reasoning_text.delta")]
    ReasoningTextDelta {
        #[serde(default)]
        sequence_number: Option<i64>,
        delta: String,
    },
    #[serde(rename = "response.function_call_output.delta")]
    FunctionCallOutputDelta {
        #[serde(default)]
        sequence_number: Option<i64>,
        call_id: String,
        delta: String,
    },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        #[serde(default)]
        sequence_number: Option<i64>,
        /// A flat conversation item (see [`crate::api::WireItem`]).
        item: Value,
    },
    #[serde(rename = "response.error")]
    ResponseError {
        #[serde(default)]
        sequence_number: Option<i64>,
        source: String,
        #[serde(default)]
        tool_name: Option<String>,
        error: Value,
    },
    /// An agent asks before it uses a tool ([`crate::elicitation`]).
    #[serde(rename = "response.elicitation_request")]
    ElicitationRequest {
        #[serde(default)]
        sequence_number: Option<i64>,
        #[serde(flatten)]
        request: crate::elicitation::ElicitationRequest,
    },
    /// The question was answered (or the asker stopped waiting).
    #[serde(rename = "response.elicitation_resolved")]
    ElicitationResolved {
        #[serde(default)]
        sequence_number: Option<i64>,
        #[serde(flatten)]
        resolved: crate::elicitation::Resolved,
    },
}

/// `session.input.consumed` `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputConsumed {
    pub item_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub cleared_pending_id: Option<String>,
}

/// `session.interrupted` `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interrupted {
    pub requested_at: f64,
    #[serde(default)]
    pub response_id: Option<String>,
}

impl ServerEvent {
    /// The ready/idle heartbeat the server sends (with `server_time` in epoch seconds).
    pub fn heartbeat(server_time: Option<f64>) -> Self {
        ServerEvent::Heartbeat {
            sequence_number: None,
            server_time,
        }
    }

    /// A server-made `session.status`.
    pub fn status(conversation_id: &str, status: SessionStatus) -> Self {
        ServerEvent::Status {
            sequence_number: None,
            conversation_id: conversation_id.to_owned(),
            status,
            response_id: None,
            error: None,
            background_task_count: None,
            background_tasks: None,
            blocked_on: None,
        }
    }

    /// The wire name of this event (its `type`).
    pub fn event_type(&self) -> &'static str {
        match self {
            ServerEvent::Heartbeat { .. } => kind::SESSION_HEARTBEAT,
            ServerEvent::Status { .. } => kind::SESSION_STATUS,
            ServerEvent::InputConsumed { .. } => kind::SESSION_INPUT_CONSUMED,
            ServerEvent::Interrupted { .. } => kind::SESSION_INTERRUPTED,
            ServerEvent::ChangedFilesInvalidated { .. } => kind::SESSION_CHANGED_FILES_INVALIDATED,
            ServerEvent::Presence { .. } => kind::SESSION_PRESENCE,
            ServerEvent::TerminalPending { .. } => kind::SESSION_TERMINAL_PENDING,
            ServerEvent::ResourceCreated { .. } => kind::SESSION_RESOURCE_CREATED,
            ServerEvent::ResourceDeleted { .. } => kind::SESSION_RESOURCE_DELETED,
            ServerEvent::Model { .. } => kind::SESSION_MODEL,
            ServerEvent::Usage { .. } => kind::SESSION_USAGE,
            ServerEvent::ResponseCreated { .. } => kind::RESPONSE_CREATED,
            ServerEvent::ResponseQueued { .. } => kind::RESPONSE_QUEUED,
            ServerEvent::ResponseInProgress { .. } => kind::RESPONSE_IN_PROGRESS,
            ServerEvent::ResponseCompleted { .. } => kind::RESPONSE_COMPLETED,
            ServerEvent::ResponseFailed { .. } => kind::RESPONSE_FAILED,
            ServerEvent::ResponseIncomplete { .. } => kind::RESPONSE_INCOMPLETE,
            ServerEvent::ResponseCancelled { .. } => kind::RESPONSE_CANCELLED,
            ServerEvent::OutputTextDelta { .. } => kind::RESPONSE_OUTPUT_TEXT_DELTA,
            ServerEvent::ReasoningTextDelta { .. } => kind::RESPONSE_REASONING_TEXT_DELTA,
            ServerEvent::FunctionCallOutputDelta { .. } => {
                kind::RESPONSE_FUNCTION_CALL_OUTPUT_DELTA
            }
            ServerEvent::OutputItemDone { .. } => kind::RESPONSE_OUTPUT_ITEM_DONE,
            ServerEvent::ResponseError { .. } => kind::RESPONSE_ERROR,
            ServerEvent::ElicitationRequest { .. } => kind::RESPONSE_ELICITATION_REQUEST,
            ServerEvent::ElicitationResolved { .. } => kind::RESPONSE_ELICITATION_RESOLVED,
        }
    }
}

/// One parsed SSE event: what a client of the stream reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseMessage {
    /// The `event:` line, if any.
    pub event: Option<String>,
    /// The `id:` line, if any.
    pub id: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

impl SseMessage {
    /// `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

/// Incremental SSE parser, the one of the workspace (the relay, the CLI, the vendor harnesses and the tests
/// all read SSE through it): feed bytes as they arrive, take whole events out. Lines end with LF or CRLF; a
/// blank line ends an event, which is dispatched only when it had a `data:` line (the `data:` lines joined by
/// `\n`); comments (`:`…) and other fields are skipped. Bytes that are not UTF-8 are replaced. An event (or an
/// unfinished line) above `max_event` bytes makes [`SseParser::push`] fail instead of growing without bound.
/// [`SseStream`] is the same parser as a `Stream` adapter over a body.
#[derive(Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a line end (so a large line is scanned once).
    scanned: usize,
    /// The event being assembled.
    current: SseMessage,
    has_data: bool,
    max_event: usize,
}

/// An SSE event grew past the parser's cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an SSE event is larger than {0} bytes; the stream is not an omnigent event stream or is corrupt"
)]
pub struct SseTooLarge(pub usize);

impl SseParser {
    pub fn new(max_event: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            scanned: 0,
            current: SseMessage::default(),
            has_data: false,
            max_event,
        }
    }

    /// Add bytes and return every event now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseMessage>, SseTooLarge> {
        let mut out = Vec::new();
        self.push_into(bytes, &mut out)?;
        Ok(out)
    }

    /// Add bytes and append every event now complete to `out` (those complete before an oversized one too).
    pub fn push_into(
        &mut self,
        bytes: &[u8],
        out: &mut impl Extend<SseMessage>,
    ) -> Result<(), SseTooLarge> {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            let end = self.scanned + offset;
            self.scanned = end + 1;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(message) = self.line(&line) {
                out.extend(Some(message));
            }
            if self.current.data.len() > self.max_event {
                self.buf.drain(..start);
                self.scanned = 0;
                return Err(SseTooLarge(self.max_event));
            }
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len().saturating_add(self.current.data.len()) > self.max_event {
            return Err(SseTooLarge(self.max_event));
        }
        Ok(())
    }

    /// The end of the body: a last event not followed by its blank line still counts.
    pub fn finish(&mut self) -> Option<SseMessage> {
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        if !rest.is_empty() {
            let rest = rest.strip_suffix(b"\r").unwrap_or(&rest);
            if let Some(message) = self.line(&String::from_utf8_lossy(rest)) {
                return Some(message);
            }
        }
        self.line("")
    }

    /// One line of the stream; a blank line dispatches the event when it has data.
    fn line(&mut self, line: &str) -> Option<SseMessage> {
        if line.is_empty() {
            let message = std::mem::take(&mut self.current);
            return std::mem::take(&mut self.has_data).then_some(message);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = Some(value.to_owned()),
            "id" => self.current.id = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// Why reading an SSE body through [`SseStream`] failed; either way the stream ends after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError<E> {
    /// The body failed.
    #[error("the event stream broke: {0}")]
    Body(E),
    /// One event grew past the cap.
    #[error(transparent)]
    TooLarge(SseTooLarge),
}

/// A body (a `Stream` of byte chunks) read as SSE events through one [`SseParser`] capped at `max_event`
/// bytes: each complete event in order, then the last one without its blank line at the end of the body. A
/// body error or an oversized event is yielded once as `Err`, and the stream ends.
pub struct SseStream<S> {
    body: S,
    parser: SseParser,
    ready: std::collections::VecDeque<SseMessage>,
    too_large: Option<SseTooLarge>,
    done: bool,
}

impl<S> SseStream<S> {
    pub fn new(body: S, max_event: usize) -> Self {
        SseStream {
            body,
            parser: SseParser::new(max_event),
            ready: std::collections::VecDeque::new(),
            too_large: None,
            done: false,
        }
    }
}

impl<S, B, E> futures_util::Stream for SseStream<S>
where
    S: futures_util::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
{
    type Item = Result<SseMessage, SseError<E>>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if let Some(message) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(message)));
            }
            if let Some(e) = this.too_large.take() {
                return Poll::Ready(Some(Err(SseError::TooLarge(e))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match std::pin::Pin::new(&mut this.body).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Err(e) = this.parser.push_into(chunk.as_ref(), &mut this.ready) {
                        // What was complete before the oversized event comes first, then the error.
                        this.too_large = Some(e);
                        this.done = true;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(SseError::Body(e))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.ready.extend(this.parser.finish());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_splits_events_across_chunks() {
        let mut p = SseParser::new(1024);
        let wire = format!(
            "{}{}",
            sse_frame("session.heartbeat", 3, r#"{"type":"session.heartbeat"}"#),
            SSE_DONE
        );
        let (a, b) = wire.split_at(17);
        assert!(p.push(a.as_bytes()).expect("small").is_empty());
        let got = p.push(b.as_bytes()).expect("small");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].event.as_deref(), Some("session.heartbeat"));
        assert_eq!(got[0].id.as_deref(), Some("3"));
        assert!(got[1].is_done());
    }

    #[test]
    fn each_variant_is_tagged_with_its_kind_constant() {
        for event in [
            ServerEvent::heartbeat(Some(1.0)),
            ServerEvent::status("conv_1", SessionStatus::Idle),
        ] {
            let json = serde_json::to_value(&event).expect("serializes");
            assert_eq!(json["type"], event.event_type());
            assert!(kind::ALL.contains(&event.event_type()));
        }
        let mut all = kind::ALL.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), kind::ALL.len());
    }

    #[test]
    fn parser_refuses_an_endless_event() {
        let mut p = SseParser::new(16);
        assert!(p.push(b"data: 0123456789abcdefghij").is_err());
        // Many short data lines count as one event too.
        let mut p = SseParser::new(16);
        assert!(p.push(b"data: 0123\n").is_ok());
        assert!(p.push(b"data: 4567\ndata: 89abcdef\n").is_err());
    }

    /// Every item of `chunks` read through [`SseStream`] (the bodies here are always ready).
    fn read<E>(
        chunks: Vec<Result<&'static [u8], E>>,
        max: usize,
    ) -> Vec<Result<SseMessage, SseError<E>>> {
        use futures_util::StreamExt as _;
        let mut stream = SseStream::new(futures_util::stream::iter(chunks), max);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        loop {
            match stream.poll_next_unpin(&mut cx) {
                std::task::Poll::Ready(Some(item)) => out.push(item),
                std::task::Poll::Ready(None) => return out,
                std::task::Poll::Pending => panic!("an always-ready body is never pending"),
            }
        }
    }

    fn data(item: &Result<SseMessage, SseError<()>>) -> &str {
        match item {
            Ok(m) => &m.data,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    #[test]
    fn stream_reassembles_events_split_anywhere_with_crlf_comments_and_multi_line_data() {
        let items = read::<()>(
            vec![
                Ok(b"data: {\"type\": \"session.heartbeat\"}\n"),
                Ok(b"\nevent: x\nid: 3\ndata: {\"delta\":\"\xc3"),
                Ok(b"\xa9\"}\r\n\r\n: keep-alive\n\n"),
                Ok(b"event: only-a-name\n\n"),
                Ok(b"data: {\"a\":\r\ndata:1}\r"),
                Ok(b"\n\r\ndata: last without its blank line"),
            ],
            1024,
        );
        assert_eq!(items.len(), 4, "{items:?}");
        assert_eq!(data(&items[0]), r#"{"type": "session.heartbeat"}"#);
        let second = items[1].as_ref().expect("event");
        assert_eq!(second.event.as_deref(), Some("x"));
        assert_eq!(second.id.as_deref(), Some("3"));
        assert_eq!(second.data, r#"{"delta":"é"}"#);
        // An event with no data line is not dispatched; data lines join with \n; the `:` space is optional.
        assert_eq!(data(&items[2]), "{\"a\":\n1}");
        assert_eq!(data(&items[3]), "last without its blank line");
    }

    #[test]
    fn stream_ends_with_one_error_on_an_oversized_event_or_a_broken_body() {
        let items = read::<()>(
            vec![
                Ok(b"data: ok\n\ndata: 0123456789"),
                Ok(b"0123456789"),
                Ok(b"data: never read\n\n"),
            ],
            16,
        );
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(data(&items[0]), "ok");
        assert_eq!(items[1], Err(SseError::TooLarge(SseTooLarge(16))));
        assert!(SseTooLarge(16).to_string().contains("larger than 16 bytes"));

        let items = read(
            vec![
                Ok(b"data: {}\n\n"),
                Err("tunnel closed"),
                Ok(b"data: x\n\n"),
            ],
            1024,
        );
        assert_eq!(items.len(), 2);
        assert!(matches!(&items[0], Ok(m) if m.data == "{}"));
        assert_eq!(items[1], Err(SseError::Body("tunnel closed")));
    }
}
