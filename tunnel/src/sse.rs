//! Reading a runner's SSE stream (`GET /v1/sessions/{id}/stream` through the tunnel): the JSON of each event's
//! `data:` lines, as the server's relay needs it (reference §3.4 step 6).

use axum::body::Body;
use futures_util::{Stream, StreamExt};
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
/// ignored). `data: [DONE]` ends the stream. A body error or an event above `max_event_bytes` yields one `Err`
/// and ends the stream; an event whose data is not JSON yields an `Err` and reading goes on.
pub fn data_events(
    body: Body,
    max_event_bytes: usize,
) -> impl Stream<Item = Result<Value, SseError>> + Send {
    let state = Reader {
        body: body.into_data_stream(),
        buffer: Vec::new(),
        done: false,
        max: max_event_bytes,
    };
    futures_util::stream::unfold(state, |mut reader| async move {
        let item = reader.next_event().await?;
        Some((item, reader))
    })
}

struct Reader {
    body: axum::body::BodyDataStream,
    buffer: Vec<u8>,
    done: bool,
    max: usize,
}

impl Reader {
    async fn next_event(&mut self) -> Option<Result<Value, SseError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some((end, separator)) = find_blank_line(&self.buffer) {
                let block: Vec<u8> = self.buffer.drain(..end + separator).collect();
                let block = String::from_utf8_lossy(&block[..end]);
                let Some(data) = event_data(&block) else {
                    continue;
                };
                if data == "[DONE]" {
                    self.done = true;
                    return None;
                }
                return Some(
                    serde_json::from_str(&data).map_err(|e| SseError::BadJson(e.to_string())),
                );
            }
            if self.buffer.len() > self.max {
                self.done = true;
                return Some(Err(SseError::TooLarge(self.max)));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(SseError::Body(e.to_string())));
                }
                None => {
                    self.done = true;
                    // A last event without its blank line still counts.
                    let rest = String::from_utf8_lossy(&self.buffer).into_owned();
                    self.buffer.clear();
                    return event_data(&rest).filter(|d| d != "[DONE]").map(|d| {
                        serde_json::from_str(&d).map_err(|e| SseError::BadJson(e.to_string()))
                    });
                }
            }
        }
    }
}

/// The end of the first event in `buffer` and the length of its separator (`\n\n` or `\r\n\r\n`), in one pass.
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(offset) = buffer[from..].iter().position(|b| *b == b'\n') {
        let at = from + offset;
        if buffer.get(at + 1) == Some(&b'\n') {
            return Some((at, 2));
        }
        if at >= 1 && buffer[at - 1] == b'\r' && buffer[at + 1..].starts_with(b"\r\n") {
            return Some((at - 1, 4));
        }
        from = at + 1;
    }
    None
}

/// The joined `data:` lines of one event block; `None` when it has none (a comment or keep-alive).
fn event_data(block: &str) -> Option<String> {
    let mut data: Option<String> = None;
    for line in block.lines() {
        let Some(value) = line.strip_prefix("data:") else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => data = Some(value.to_owned()),
        }
    }
    data
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
