//! One reader of a session stream (`text/event-stream`) for tests: events with their ids, in order, each
//! awaited within [`WAIT`]; and waiting until an event that satisfies a predicate.

use std::collections::VecDeque;

use omnigent_proto::events::{SseMessage, SseParser};
use serde_json::Value;

use crate::WAIT;

/// The heartbeat event type, skipped by [`Sse::next_non_heartbeat`] and [`Sse::until`].
pub const HEARTBEAT: &str = "session.heartbeat";

/// A reader of one SSE response.
pub struct Sse {
    pub resp: reqwest::Response,
    parser: SseParser,
    pending: VecDeque<SseMessage>,
}

impl Sse {
    pub fn new(resp: reqwest::Response) -> Sse {
        Sse {
            resp,
            parser: SseParser::new(8 << 20),
            pending: VecDeque::new(),
        }
    }

    /// `GET url` (with `Last-Event-ID` when given), which must answer 200 in time.
    pub async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<u64>) -> Sse {
        let mut req = client.get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("stream answers in time")
            .expect("stream request");
        assert_eq!(resp.status().as_u16(), 200, "stream status");
        Sse::new(resp)
    }

    /// The next event, or `None` when the response ended. Fails the test after [`WAIT`].
    pub async fn next(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(m);
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("an SSE event arrives in time");
            match chunk {
                Ok(Some(bytes)) => self
                    .pending
                    .extend(self.parser.push(&bytes).expect("event fits")),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next event, which must exist.
    pub async fn expect(&mut self) -> SseMessage {
        self.next().await.expect("the stream ended early")
    }

    /// The next event that is not a heartbeat. Fails the test if none comes within [`WAIT`] (heartbeats
    /// alone do not count as progress).
    pub async fn next_non_heartbeat(&mut self) -> Option<SseMessage> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let m = self.next().await?;
                if m.event.as_deref() != Some(HEARTBEAT) {
                    return Some(m);
                }
            }
        })
        .await;
        found.expect("a non-heartbeat event arrives in time")
    }

    /// Events (type, JSON) up to and including the first for which `stop` holds; heartbeats skipped. Fails
    /// the test if that event does not come within [`WAIT`] (heartbeats alone are no progress), saying what
    /// the stream had.
    pub async fn until(&mut self, stop: impl Fn(&str, &Value) -> bool) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let m = self.expect().await;
                let kind = m.event.clone().unwrap_or_default();
                if kind == HEARTBEAT {
                    continue;
                }
                let value = json_of(&m);
                let done = stop(&kind, &value);
                out.push((kind, value));
                if done {
                    return;
                }
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "the awaited event never came; the stream had: {out:?}"
        );
        out
    }
}

/// An event's data as JSON (which it must be).
pub fn json_of(m: &SseMessage) -> Value {
    serde_json::from_str(&m.data)
        .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", m.data))
}

/// An event's id (which it must have) as a number.
pub fn id_of(m: &SseMessage) -> u64 {
    m.id.as_deref()
        .expect("every event has an id")
        .parse()
        .expect("numeric id")
}

/// The text of a `response.output_item.done` message event.
pub fn item_text(m: &SseMessage) -> String {
    json_of(m)["item"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
