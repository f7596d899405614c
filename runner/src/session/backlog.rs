//! What a session keeps while no stream subscriber is live, for the next one ([`Backlog`]), bounded in events
//! and bytes.

use std::collections::VecDeque;

use serde_json::Value;

/// Events published while a session has no live subscriber, for the next one: at most `max_events` of them
/// and `max_bytes` of JSON, the oldest dropped first (the newest is always kept, even one that alone is larger).
pub(super) struct Backlog {
    /// What the next subscriber gets before the kept events: the durable record of the turn as it stood
    /// when the first of them was kept (see [`super::record::TurnRecord::resync`]).
    pub(super) resync: Option<Vec<Value>>,
    pub(super) events: VecDeque<(Value, usize)>,
    pub(super) bytes: usize,
    pub(super) max_events: usize,
    pub(super) max_bytes: usize,
    /// How many were dropped since the last [`Backlog::take`].
    pub(super) dropped: u64,
}

impl Backlog {
    pub(super) fn new(max_events: usize, max_bytes: usize) -> Self {
        Backlog {
            resync: None,
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
            dropped: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.resync.is_none() && self.events.is_empty()
    }

    pub(super) fn push(&mut self, event: Value) {
        // Consecutive deltas of one message merge: a long reply kept while no subscriber is connected costs
        // one event, not one per word, so the bounds drop what matters last.
        if let Some((last, size)) = self.events.back_mut()
            && let Some(merged) = merge_deltas(last, &event)
        {
            self.bytes += merged;
            *size += merged;
        } else {
            self.push_new(event);
        }
        self.trim();
    }

    pub(super) fn push_new(&mut self, event: Value) {
        let size = json_len(&event);
        self.bytes += size;
        self.events.push_back((event, size));
    }

    pub(super) fn trim(&mut self) {
        while self.events.len() > 1
            && (self.events.len() > self.max_events || self.bytes > self.max_bytes)
        {
            if let Some((_, size)) = self.events.pop_front() {
                self.bytes -= size;
                self.dropped += 1;
            }
        }
    }

    /// The resync captured with the first event kept (if any), everything kept, oldest first, and how many
    /// were dropped to stay within the bounds; empties it.
    pub(super) fn take(&mut self) -> (Option<Vec<Value>>, Vec<Value>, u64) {
        self.bytes = 0;
        let events = self.events.drain(..).map(|(event, _)| event).collect();
        (
            self.resync.take(),
            events,
            std::mem::take(&mut self.dropped),
        )
    }
}

/// Append `next`'s delta to `last` when both are plain text deltas of the same message (nothing but `type`,
/// `delta`, `message_id` and `index`); answers the bytes added.
fn merge_deltas(last: &mut Value, next: &Value) -> Option<usize> {
    let plain = |e: &Value| {
        e.as_object().is_some_and(|o| {
            o.get("type").and_then(Value::as_str) == Some("response.output_text.delta")
                && o.get("delta").is_some_and(Value::is_string)
                && o.keys()
                    .all(|k| matches!(k.as_str(), "type" | "delta" | "message_id" | "index"))
        })
    };
    if !plain(last) || !plain(next) || last.get("message_id") != next.get("message_id") {
        return None;
    }
    let add = next["delta"].as_str()?;
    let Some(Value::String(text)) = last.get_mut("delta") else {
        return None;
    };
    text.push_str(add);
    let added = json_len(&next["delta"]).saturating_sub(2);
    if let Some(index) = next.get("index") {
        last["index"] = index.clone();
    }
    Some(added)
}

/// The length of `value` as compact JSON, without building the string.
pub(super) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
