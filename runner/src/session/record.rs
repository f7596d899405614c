//! The durable record of a session's current turn ([`TurnRecord`]): what every new stream subscriber that asks
//! gets first, and how publishing an event changes it.

use omnigent_proto::events::kind;
use serde_json::{Value, json};

use crate::harness;

/// The durable part of a session's current (or last) turn, as its events went out: the items it completed
/// (`response.output_item.done`, the assistant messages included), the message being streamed and the questions
/// its agent waits on. Every new stream subscriber gets it first ([`TurnRecord::resync`]), so a server that
/// restarted, or missed events in flight when its tunnel went, stores the whole reply (items carry their ids
/// and a server skips those it has) and shows the open questions. Reset when the next turn starts.
#[derive(Default)]
pub(super) struct TurnRecord {
    /// The turn's `response.in_progress`, until its response ended.
    pub(super) running: Option<Value>,
    pub(super) response_id: Option<String>,
    pub(super) model: Option<String>,
    /// `response.output_item.done` events of the turn, in order.
    pub(super) items: Vec<Value>,
    /// The assistant message whose deltas are going out.
    pub(super) open: Option<OpenMessage>,
    /// The turn's questions nobody has answered yet (`response.elicitation_request` events), oldest first.
    pub(super) asking: Vec<Value>,
}

pub(super) struct OpenMessage {
    pub(super) id: String,
    pub(super) text: String,
    /// `index` of the last delta sent.
    pub(super) index: u64,
}

/// What publishing one event does to the [`TurnRecord`], worked out before the event is handed on.
pub(super) enum Recorded {
    Nothing,
    Turn {
        started: Value,
        response_id: Option<String>,
        model: Option<String>,
    },
    Ended,
    Text(String),
    Item(Value),
    /// An agent asks (`response.elicitation_request`).
    Asked(Value),
    /// A question is settled (`response.elicitation_resolved`), by elicitation id.
    Settled(String),
}

impl TurnRecord {
    /// The events to publish for `event`: response-scoped text deltas become deltas of one assistant message
    /// (`message_id`, `index`), and that message is completed as a `response.output_item.done` (its whole
    /// text, the runner's word for what the reply is) before the next item or the end of the response.
    pub(super) fn outgoing(&mut self, mut event: Value) -> Vec<Value> {
        let kind = event["type"].as_str().unwrap_or("");
        match kind {
            "response.output_text.delta" if event.get("message_id").is_none_or(Value::is_null) => {
                let open = self.open.get_or_insert_with(|| OpenMessage {
                    id: harness::new_item_id(),
                    text: String::new(),
                    index: 0,
                });
                let index = if open.text.is_empty() {
                    0
                } else {
                    open.index + 1
                };
                event["message_id"] = Value::from(open.id.clone());
                event["index"] = Value::from(index);
                vec![event]
            }
            "response.output_item.done" => {
                let mut out: Vec<Value> = self.close(&event).into_iter().collect();
                out.push(event);
                out
            }
            k if is_terminal(k) => {
                let mut out: Vec<Value> = self.close(&event).into_iter().collect();
                out.push(event);
                out
            }
            _ => vec![event],
        }
    }

    /// The open message as a completed item, if it has text: `completed` unless the response ended otherwise.
    pub(super) fn close(&self, before: &Value) -> Option<Value> {
        let open = self.open.as_ref().filter(|o| !o.text.is_empty())?;
        let status = match before["type"].as_str() {
            Some("response.failed" | "response.incomplete" | "response.cancelled") => "incomplete",
            _ => "completed",
        };
        let mut item = json!({
            "id": open.id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "response_id": self.response_id,
            "content": [{"type": "output_text", "text": open.text}],
        });
        // The agent that spoke, as `model` and `agent`: a 0.19.1 server refuses to store an assistant message
        // without `agent` (it only logs "Failed to parse persistent item from SSE").
        if let Some(model) = &self.model {
            item["model"] = Value::from(model.clone());
            item["agent"] = Value::from(model.clone());
        }
        Some(json!({"type": "response.output_item.done", "item": item}))
    }

    /// What `event` (one of [`TurnRecord::outgoing`]'s) changes in the record.
    pub(super) fn effect(event: &Value) -> Recorded {
        match event["type"].as_str().unwrap_or("") {
            "response.in_progress" => Recorded::Turn {
                started: event.clone(),
                response_id: event["response"]["id"].as_str().map(str::to_owned),
                model: event["response"]["model"].as_str().map(str::to_owned),
            },
            "response.output_text.delta" => match event["delta"].as_str() {
                Some(delta) => Recorded::Text(delta.to_owned()),
                None => Recorded::Nothing,
            },
            "response.output_item.done"
                if event["item"]["status"]
                    .as_str()
                    .is_none_or(|s| s != "in_progress") =>
            {
                Recorded::Item(event.clone())
            }
            kind::RESPONSE_ELICITATION_REQUEST => Recorded::Asked(event.clone()),
            kind::RESPONSE_ELICITATION_RESOLVED => match event["elicitation_id"].as_str() {
                Some(id) => Recorded::Settled(id.to_owned()),
                None => Recorded::Nothing,
            },
            k if is_terminal(k) => Recorded::Ended,
            _ => Recorded::Nothing,
        }
    }

    pub(super) fn apply(&mut self, recorded: Recorded) {
        match recorded {
            Recorded::Nothing => {}
            Recorded::Ended => {
                self.running = None;
                self.asking.clear();
            }
            Recorded::Asked(event) => self.asking.push(event),
            Recorded::Settled(id) => self
                .asking
                .retain(|e| e["elicitation_id"].as_str() != Some(id.as_str())),
            Recorded::Turn {
                started,
                response_id,
                model,
            } => {
                *self = TurnRecord {
                    running: Some(started),
                    response_id,
                    model,
                    ..TurnRecord::default()
                };
            }
            Recorded::Text(delta) => {
                if let Some(open) = &mut self.open {
                    if !open.text.is_empty() {
                        open.index += 1;
                    }
                    open.text.push_str(&delta);
                }
            }
            Recorded::Item(event) => {
                if self
                    .open
                    .as_ref()
                    .is_some_and(|o| event["item"]["id"].as_str() == Some(o.id.as_str()))
                {
                    self.open = None;
                }
                self.items.push(event);
            }
        }
    }

    /// The turn so far, for a new subscriber: while it runs, its `session.status running` and
    /// `response.in_progress`; its completed items; then the open message's text so far as
    /// one delta marked `snapshot` (with the `index` of its last delta), which a server takes as the whole
    /// text streamed so far rather than as more of it.
    pub(super) fn resync(&self) -> Vec<Value> {
        let mut events = Vec::new();
        if let Some(started) = &self.running {
            // A server that missed the turn's start (it died with it in flight) learns it is under way.
            events.push(json!({"type": "session.status", "status": "running"}));
            events.push(started.clone());
        }
        events.extend(self.items.iter().cloned());
        if let Some(open) = self.open.as_ref().filter(|o| !o.text.is_empty()) {
            events.push(json!({
                "type": "response.output_text.delta",
                "delta": open.text,
                "message_id": open.id,
                "index": open.index,
                "snapshot": true,
            }));
        }
        // Its open questions, so a server that restarted still shows them (and knows the session waits).
        if !self.asking.is_empty() {
            events.extend(self.asking.iter().cloned());
            events.push(json!({"type": kind::SESSION_STATUS, "status": "waiting"}));
        }
        events
    }

    /// Whether an agent waits for an answer.
    pub(super) fn waiting(&self) -> bool {
        !self.asking.is_empty()
    }
}

/// Whether `kind` ends a response.
fn is_terminal(kind: &str) -> bool {
    matches!(
        kind,
        "response.completed" | "response.failed" | "response.incomplete" | "response.cancelled"
    )
}
