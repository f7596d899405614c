//! Runner tunnel v1 frames (runner ⇄ server), omnigent-compatible (reference/omnigent-server-v1.md §3.2).
//!
//! Every frame is one JSON text WebSocket message with a `kind`. Optional fields default when absent, fields we
//! do not model are kept in each frame's `extra` map so a decoded frame re-encodes field for field, and an
//! unknown `kind` decodes to [`RunnerFrame::Unknown`] so the caller skips it instead of dropping the tunnel.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::MAX_FRAME_BYTES;

/// Fields a frame carried that this version does not model; re-encoded as they came.
pub type Extra = Map<String, Value>;

/// Close codes of the runner tunnel (reference §3.1, §3.5, §3.6).
pub mod close {
    /// A newer tunnel for the same runner id replaced this one.
    pub const REPLACED: u16 = 4000;
    /// The first frame was not a `hello`.
    pub const HELLO_EXPECTED: u16 = 4001;
    /// `hello.frame_protocol_version` is not ours.
    pub const PROTOCOL_MISMATCH: u16 = 4002;
    /// The tunnel ended (`"tunnel closed"`) or went silent (`"ping timeout"`).
    pub const TUNNEL_CLOSED: u16 = 4003;
    /// The tunnel token is missing, wrong, or does not match the runner id.
    pub const UNAUTHENTICATED: u16 = 4004;
    /// The upgrade carried an `Origin` that may not open a tunnel (a browser page): refused before any frame.
    pub const FORBIDDEN_ORIGIN: u16 = 4403;
    /// WS channel: the terminal does not exist (or this runner serves no channels).
    pub const CHANNEL_NOT_FOUND: u16 = 4404;
    /// The runner is unavailable.
    pub const RUNNER_UNAVAILABLE: u16 = 4500;
    /// The peer goes away (server restart): reconnect at once.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame above the size cap.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Service restart: reconnect at once.
    pub const SERVICE_RESTART: u16 = 1012;

    /// Close codes after which a runner must not reconnect (reference §3.5).
    pub fn is_fatal_for_runner(code: u16) -> bool {
        matches!(
            code,
            HELLO_EXPECTED | PROTOCOL_MISMATCH | UNAUTHENTICATED | RUNNER_UNAVAILABLE
        )
    }
}

/// One runner tunnel frame, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum RunnerFrame {
    #[serde(rename = "hello")]
    Hello(Hello),
    #[serde(rename = "request")]
    Request(Request),
    #[serde(rename = "response.head")]
    ResponseHead(ResponseHead),
    #[serde(rename = "response.body")]
    ResponseBody(ResponseBody),
    #[serde(rename = "response.end")]
    ResponseEnd(ResponseEnd),
    #[serde(rename = "request.cancel")]
    RequestCancel(RequestCancel),
    #[serde(rename = "ping")]
    Ping(Ping),
    #[serde(rename = "pong")]
    Pong(Ping),
    #[serde(rename = "ws.open")]
    WsOpen(WsOpen),
    #[serde(rename = "ws.frame")]
    WsFrame(WsFrame),
    #[serde(rename = "ws.close")]
    WsClose(WsClose),
    /// Server → runner (0.19.1): the server accepts `event.batch` pushes. We never ask for it (we do not list
    /// `session-event-ingest-v1`), but tolerate it.
    #[serde(rename = "event.ready")]
    EventReady(EventReady),
    /// Any kind this version does not know; skipped by every receiver. Re-encodes as `{"kind":"unknown"}`.
    #[serde(other, rename = "unknown")]
    Unknown,
}

/// R→S, first frame of a tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    #[serde(default)]
    pub runner_version: String,
    #[serde(default)]
    pub frame_protocol_version: u32,
    #[serde(default)]
    pub harnesses: Vec<String>,
    #[serde(default)]
    pub envs: Vec<String>,
    #[serde(default)]
    pub telemetry_opt_out: bool,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Loopback terminal attach port; only counts together with `direct_attach_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_attach_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_attach_token: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// S→R: one HTTP request. The body is sent whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query_string: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub encoding: BodyEncoding,
    #[serde(default)]
    pub stream: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

/// R→S: status and headers of the answer to request `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseHead {
    pub id: String,
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// R→S: one chunk of the body of request `id`, as the runner produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseBody {
    pub id: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub encoding: BodyEncoding,
    #[serde(flatten)]
    pub extra: Extra,
}

/// R→S: the body of request `id` is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseEnd {
    pub id: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// S→R: the client of request `id` went away; abort its handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestCancel {
    pub id: String,
    #[serde(default = "default_cancel_reason")]
    pub reason: String,
    #[serde(flatten)]
    pub extra: Extra,
}

fn zero() -> serde_json::Number {
    serde_json::Number::from(0)
}

fn default_cancel_reason() -> String {
    "client_disconnected".to_owned()
}

/// `ping` and `pong` (both directions): `ts` is epoch milliseconds; a pong echoes the ping's `ts` exactly (kept
/// as a JSON number so an integer or a float from any peer goes back unchanged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    #[serde(default = "zero")]
    pub ts: serde_json::Number,
    #[serde(flatten)]
    pub extra: Extra,
}

/// S→R: open WS channel `ch_id` (8 hex) to `path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsOpen {
    pub ch_id: String,
    pub path: String,
    #[serde(default)]
    pub query_string: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Both directions: one WebSocket message on channel `ch_id`; utf-8 is a text message, base64 a binary one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsFrame {
    pub ch_id: String,
    #[serde(default)]
    pub data: String,
    #[serde(default)]
    pub encoding: BodyEncoding,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Both directions: channel `ch_id` is closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsClose {
    pub ch_id: String,
    #[serde(default = "default_ws_close_code")]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
    #[serde(flatten)]
    pub extra: Extra,
}

fn default_ws_close_code() -> u16 {
    1000
}

/// S→R (0.19.1): `{"kind":"event.ready"}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EventReady {
    #[serde(flatten)]
    pub extra: Extra,
}

/// How a body string is encoded in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BodyEncoding {
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "base64")]
    Base64,
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(
        "tunnel frame of {size} bytes exceeds the {cap}-byte cap; the peer must send smaller bodies"
    )]
    TooLarge { size: usize, cap: usize },
    #[error("malformed tunnel frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("frame body is not valid base64: {0}")]
    BadBase64(#[from] base64::DecodeError),
}

impl RunnerFrame {
    /// The wire `kind` of this frame (`"unknown"` for [`RunnerFrame::Unknown`]).
    pub fn kind(&self) -> &'static str {
        match self {
            RunnerFrame::Hello(_) => "hello",
            RunnerFrame::Request(_) => "request",
            RunnerFrame::ResponseHead(_) => "response.head",
            RunnerFrame::ResponseBody(_) => "response.body",
            RunnerFrame::ResponseEnd(_) => "response.end",
            RunnerFrame::RequestCancel(_) => "request.cancel",
            RunnerFrame::Ping(_) => "ping",
            RunnerFrame::Pong(_) => "pong",
            RunnerFrame::WsOpen(_) => "ws.open",
            RunnerFrame::WsFrame(_) => "ws.frame",
            RunnerFrame::WsClose(_) => "ws.close",
            RunnerFrame::EventReady(_) => "event.ready",
            RunnerFrame::Unknown => "unknown",
        }
    }

    /// Decode one text message with the protocol cap ([`MAX_FRAME_BYTES`]).
    pub fn decode(text: &str) -> Result<RunnerFrame, FrameError> {
        Self::decode_capped(text, MAX_FRAME_BYTES)
    }

    /// Decode one text message, refusing it before parsing when it is larger than `cap` bytes.
    pub fn decode_capped(text: &str, cap: usize) -> Result<RunnerFrame, FrameError> {
        if text.len() > cap {
            return Err(FrameError::TooLarge {
                size: text.len(),
                cap,
            });
        }
        Ok(serde_json::from_str(text)?)
    }

    /// Encode as one text message.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and every value is plain data.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"kind\":\"unknown\"}"))
    }
}

/// The `kind` of a frame that decoded to [`RunnerFrame::Unknown`], for logging.
pub fn peek_kind(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct KindOnly {
        kind: String,
    }
    serde_json::from_str::<KindOnly>(text).ok().map(|k| k.kind)
}

/// Whether a body of this content type travels inline as utf-8 (reference §3.2).
pub fn is_text_content_type(content_type: &str) -> bool {
    let ct = content_type.trim().to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.starts_with("application/json")
        || ct.starts_with("application/jsonl")
        || ct.starts_with("application/x-ndjson")
        || ct.starts_with("text/event-stream")
}

/// Encode body bytes for a frame: utf-8 inline for text content types (when the bytes are valid utf-8, which a
/// chunk split inside a character is not), base64 otherwise.
pub fn encode_body(content_type: Option<&str>, bytes: &[u8]) -> (String, BodyEncoding) {
    if content_type.is_some_and(is_text_content_type)
        && let Ok(text) = std::str::from_utf8(bytes)
    {
        return (text.to_owned(), BodyEncoding::Utf8);
    }
    (
        base64::engine::general_purpose::STANDARD.encode(bytes),
        BodyEncoding::Base64,
    )
}

/// Decode a frame body string back to bytes.
pub fn decode_body(body: &str, encoding: BodyEncoding) -> Result<Vec<u8>, FrameError> {
    match encoding {
        BodyEncoding::Utf8 => Ok(body.as_bytes().to_vec()),
        BodyEncoding::Base64 => Ok(base64::engine::general_purpose::STANDARD.decode(body)?),
    }
}

impl fmt::Display for BodyEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyEncoding::Utf8 => "utf-8",
            BodyEncoding::Base64 => "base64",
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kind_decodes_to_unknown() {
        let frame = RunnerFrame::decode(r#"{"kind":"event.batch","id":"x","events":[]}"#).unwrap();
        assert_eq!(frame, RunnerFrame::Unknown);
        assert_eq!(
            peek_kind(r#"{"kind":"event.batch"}"#).as_deref(),
            Some("event.batch")
        );
    }

    #[test]
    fn missing_kind_is_malformed() {
        assert!(matches!(
            RunnerFrame::decode(r#"{"id":"x"}"#),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            RunnerFrame::decode("not json"),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_frame_is_refused_before_parsing() {
        let err = RunnerFrame::decode_capped("not json at all, but too long", 8).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { size: 29, cap: 8 }));
    }

    #[test]
    fn defaults_apply() {
        let frame = RunnerFrame::decode(r#"{"kind":"request.cancel","id":"a"}"#).unwrap();
        let RunnerFrame::RequestCancel(cancel) = frame else {
            panic!("wrong kind")
        };
        assert_eq!(cancel.reason, "client_disconnected");
        let RunnerFrame::WsClose(close) =
            RunnerFrame::decode(r#"{"kind":"ws.close","ch_id":"0a0b0c0d"}"#).unwrap()
        else {
            panic!("wrong kind")
        };
        assert_eq!(close.code, 1000);
    }

    #[test]
    fn ping_ts_is_echoed_exactly() {
        for text in [
            r#"{"kind":"ping","ts":1795620918123}"#,
            r#"{"kind":"ping","ts":1795620918.5}"#,
        ] {
            let RunnerFrame::Ping(ping) = RunnerFrame::decode(text).unwrap() else {
                panic!("not a ping")
            };
            assert_eq!(RunnerFrame::Ping(ping).encode(), text);
        }
        let RunnerFrame::Ping(ping) = RunnerFrame::decode(r#"{"kind":"ping"}"#).unwrap() else {
            panic!("not a ping")
        };
        assert_eq!(ping.ts.as_i64(), Some(0));
    }

    #[test]
    fn body_encoding_rule() {
        for ct in [
            "text/plain",
            "application/json",
            "application/jsonl",
            "application/x-ndjson",
            "text/event-stream; charset=utf-8",
        ] {
            assert_eq!(encode_body(Some(ct), b"hi").1, BodyEncoding::Utf8, "{ct}");
        }
        let (b64, enc) = encode_body(Some("application/gzip"), b"\x1f\x8b");
        assert_eq!(enc, BodyEncoding::Base64);
        assert_eq!(decode_body(&b64, enc).unwrap(), b"\x1f\x8b");
        assert_eq!(encode_body(None, b"x").1, BodyEncoding::Base64);
        // A text chunk cut inside a character falls back to base64 rather than corrupting it.
        assert_eq!(
            encode_body(Some("text/plain"), &"é".as_bytes()[..1]).1,
            BodyEncoding::Base64
        );
        assert!(decode_body("***", BodyEncoding::Base64).is_err());
    }
}
