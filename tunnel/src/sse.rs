//! Reading a runner's SSE stream (`GET /v1/sessions/{id}/stream` through the tunnel): the JSON of each event's
//! `data:` lines, as the server's relay needs it (reference §3.4 step 6), over the one SSE parser of `proto`.

use axum::body::Body;
use futures_util::{Stream, StreamExt};
use omnigent_proto::events::{SseError as ProtoSseError, SseStream};
use serde_json::Value;

/// Why reading a runner's SSE stream failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SseError {
    /// The body failed (tunnel closed, runner gone): reconnect the relay.
    #[error("runner event stream broke: {0}")]
    Body(String),
    /// One event grew past the cap without a blank line: the stream is not SSE; give up on it.
    #[error("runner event larger than {0} bytes; dropping the stream")]
    TooLarge(usize),
    /// One event's data is not JSON: skip it and read on.
    #[error("runner event is not JSON: {0}")]
    BadJson(String),
}

/// The events of an SSE body, one JSON value per event (`data:` lines joined; `event:`, `id:` and comments
/// ignored), read through the workspace's one parser ([`omnigent_proto::events::SseStream`]). `data: [DONE]`
/// ends the stream. A body error or an event above `max_event_bytes` yields one `Err` and ends the stream; an
/// event whose data is not JSON yields an `Err` and reading goes on.
pub fn data_events(
    body: Body,
    max_event_bytes: usize,
) -> impl Stream<Item = Result<Value, SseError>> + Send {
    SseStream::new(body.into_data_stream(), max_event_bytes)
        .take_while(|item| std::future::ready(!matches!(item, Ok(m) if m.is_done())))
        .map(|item| match item {
            Ok(message) => {
                serde_json::from_str(&message.data).map_err(|e| SseError::BadJson(e.to_string()))
            }
            Err(ProtoSseError::Body(e)) => Err(SseError::Body(e.to_string())),
            Err(ProtoSseError::TooLarge(e)) => Err(SseError::TooLarge(e.0)),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    fn body(chunks: Vec<&'static [u8]>) -> Body {
        Body::from_stream(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        ))
    }

    async fn collect(body: Body, max: usize) -> Vec<Result<Value, SseError>> {
        data_events(body, max).collect().await
    }

    #[tokio::test]
    async fn events_split_anywhere_are_reassembled() {
        let events = collect(
            body(vec![
                b"data: {\"type\": \"session.heartbeat\"}\n",
                b"\nevent: x\nid: 3\ndata: {\"delta\":\"\xc3",
                b"\xa9\"}\r\n\r\n: keep-alive\n\n",
                b"data: {\"a\":\ndata: 1}\n\ndata: nope\n\ndata: [DONE]\n\ndata: {\"after\":1}\n\n",
            ]),
            1024,
        )
        .await;
        assert_eq!(events.len(), 4);
        assert_eq!(events[0], Ok(json!({"type": "session.heartbeat"})));
        assert_eq!(events[1], Ok(json!({"delta": "é"})));
        assert_eq!(events[2], Ok(json!({"a": 1})));
        assert!(matches!(events[3], Err(SseError::BadJson(_))));
    }

    #[tokio::test]
    async fn oversized_events_and_broken_bodies_end_the_stream() {
        let events = collect(
            body(vec![
                b"data: {\"x\": \"",
                b"0123456789012345678901234567890123456789",
            ]),
            16,
        )
        .await;
        assert_eq!(events, vec![Err(SseError::TooLarge(16))]);

        let broken = Body::from_stream(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"data: {}\n\n")),
            Err(std::io::Error::other(
                "tunnel closed before request completed",
            )),
        ]));
        let events = collect(broken, 1024).await;
        assert_eq!(events[0], Ok(json!({})));
        assert!(matches!(&events[1], Err(SseError::Body(m)) if m.contains("tunnel closed")));
        assert_eq!(events.len(), 2);
    }
}
