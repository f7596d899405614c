//! Translating a runner's events into what the session stores and publishes (reference §2.4): a pure function
//! over the turn's text state ([`Turn`]), which answers the [`Step`]s the actor applies. It does no I/O: the
//! one fact it needs from the store (was this item stored already?) is asked for by [`stored_lookup`] and
//! passed in.

use std::collections::HashMap;

use omnigent_proto::api::SessionStatus;
use omnigent_proto::events::kind;
use omnigent_proto::ids::{canonical_id, new_id};
use serde_json::{Map, Value, json};

use omnigent_proto::elicitation::{ElicitationRequest, Resolved};

use crate::store::NewItem;

/// Most item-scoped messages a turn assembles at once.
const MAX_OPEN_MESSAGES: usize = 64;
/// Most `call_id → response_id` pairs a turn remembers.
const MAX_TRACKED_CALLS: usize = 10_000;

/// One thing to do for a runner event, in order. A step that fails stops the rest.
#[derive(Debug, Clone)]
pub enum Step {
    /// Publish the event as it is (transient).
    Publish(Value),
    /// Record and publish a status.
    SetStatus {
        status: SessionStatus,
        response_id: Option<String>,
        error: Option<Value>,
    },
    /// Store an item and publish it.
    Store(NewItem),
    /// Store the buffered response-scoped text as a message; when that fails, hand `text` back
    /// ([`Turn::restore_text`]) for the next flush.
    StoreText { item: NewItem, text: String },
    /// Store a message a turn streamed without its item, unless an item with its id is stored already.
    StoreUnlessStored(NewItem),
    /// The agent asks a person (`response.elicitation_request`): keep it pending, the session waits, publish it.
    Ask {
        request: ElicitationRequest,
        event: Value,
    },
    /// The asker's question was answered or dropped (`response.elicitation_resolved`): publish it unless the
    /// server already did (the first answer won here).
    Resolved { resolved: Resolved, event: Value },
}

/// What a turn's translation remembers between events.
#[derive(Debug, Default)]
pub struct Turn {
    /// Response-scoped text deltas not yet stored.
    text: String,
    /// Text of the messages streamed as item-scoped deltas (`message_id`) whose item has not come yet, oldest
    /// first: a turn that ends without it stores what came as an `incomplete` message.
    messages: Vec<(String, String)>,
    /// The response under way.
    pub response_id: Option<String>,
    /// The model of the response under way (kept on assistant messages).
    pub model: Option<String>,
    /// `call_id` → `response_id` of completed function calls.
    calls: HashMap<String, String>,
}

/// Whether `kind` ends a response (these pass the interrupt fence and flush the text buffer).
pub fn is_terminal(kind: &str) -> bool {
    matches!(
        kind,
        kind::RESPONSE_COMPLETED
            | kind::RESPONSE_FAILED
            | kind::RESPONSE_INCOMPLETE
            | kind::RESPONSE_CANCELLED
    )
}

/// The id of the item `event` carries whose storage must be checked first: a final
/// `response.output_item.done` (a runner re-sends its turn's items to every new subscriber, and cannot know
/// what a server that went away had stored).
pub fn stored_lookup(event: &Value) -> Option<String> {
    if event["type"] != kind::RESPONSE_OUTPUT_ITEM_DONE {
        return None;
    }
    let item = &event["item"];
    let id = canonical_id(item["id"].as_str()?)?;
    item["status"]
        .as_str()
        .is_none_or(|s| s != "in_progress")
        .then_some(id)
}

/// The status a runner's `session.status` event sets, if it is one.
pub fn runner_status(event: &Value) -> Option<SessionStatus> {
    if event["type"] != kind::SESSION_STATUS {
        return None;
    }
    event["status"].as_str().and_then(SessionStatus::parse)
}

/// An error item `{error: {code, message}}` of `response_id`, and the error.
pub fn error_item(
    code: &str,
    message: &str,
    response_id: Option<String>,
    now_ms: i64,
) -> (NewItem, Value) {
    let error = json!({"code": code, "message": message});
    let mut data = Map::new();
    data.insert("error".into(), error.clone());
    let item = NewItem {
        id: new_id(),
        kind: "error".into(),
        status: "completed".into(),
        response_id,
        created_at_ms: now_ms,
        created_by: None,
        data,
    };
    (item, error)
}

impl Turn {
    /// The steps for one runner event that passed the fence. `already_stored`: the item [`stored_lookup`]
    /// named is in the store.
    pub fn translate(&mut self, event: Value, already_stored: bool, now_ms: i64) -> Vec<Step> {
        let Some(kind) = event.get("type").and_then(Value::as_str) else {
            return vec![];
        };
        match kind {
            kind::SESSION_STATUS => {
                let Some(status) = runner_status(&event) else {
                    return vec![];
                };
                if status == SessionStatus::Running {
                    self.text.clear();
                    self.messages.clear();
                }
                vec![Step::SetStatus {
                    status,
                    response_id: event["response_id"].as_str().map(str::to_owned),
                    error: event.get("error").filter(|e| !e.is_null()).cloned(),
                }]
            }
            kind::RESPONSE_CREATED | kind::RESPONSE_QUEUED | kind::RESPONSE_IN_PROGRESS => {
                if let Some(id) = event["response"]["id"].as_str() {
                    self.response_id = Some(id.to_owned());
                }
                if let Some(model) = event["response"]["model"].as_str() {
                    self.model = Some(model.to_owned());
                }
                vec![Step::Publish(event)]
            }
            kind::RESPONSE_OUTPUT_TEXT_DELTA => {
                let Some(delta) = event["delta"].as_str() else {
                    return vec![Step::Publish(event)];
                };
                match event["message_id"].as_str() {
                    None => self.text.push_str(delta),
                    Some(message_id) => {
                        // A runner's snapshot (sent to a new subscriber) is the message's whole text so far:
                        // it replaces what we have, and our subscribers already saw it or get the item.
                        let snapshot = event["snapshot"] == true;
                        self.message_text(message_id, delta, snapshot);
                        if snapshot {
                            return vec![];
                        }
                    }
                }
                vec![Step::Publish(event)]
            }
            kind::RESPONSE_OUTPUT_ITEM_DONE => self.item(event, already_stored, now_ms),
            // A malformed question or answer is relayed as it is: clients ignore what they cannot read.
            kind::RESPONSE_ELICITATION_REQUEST => {
                match serde_json::from_value::<ElicitationRequest>(event.clone()) {
                    Ok(request) => vec![Step::Ask { request, event }],
                    Err(_) => vec![Step::Publish(event)],
                }
            }
            kind::RESPONSE_ELICITATION_RESOLVED => {
                match serde_json::from_value::<Resolved>(event.clone()) {
                    Ok(resolved) => vec![Step::Resolved { resolved, event }],
                    Err(_) => vec![Step::Publish(event)],
                }
            }
            kind::RESPONSE_ERROR => {
                let mut data = Map::new();
                for key in ["source", "tool_name", "error"] {
                    if let Some(v) = event.get(key).filter(|v| !v.is_null()) {
                        data.insert(key.into(), v.clone());
                    }
                }
                let item = NewItem {
                    id: new_id(),
                    kind: "error".into(),
                    status: "completed".into(),
                    response_id: self.response_id.clone(),
                    created_at_ms: now_ms,
                    created_by: None,
                    data,
                };
                vec![Step::Publish(event), Step::Store(item)]
            }
            k if is_terminal(k) => {
                if self.response_id.is_none() {
                    // A turn picked up after a server restart: its start was relayed by the previous server.
                    self.response_id = event["response"]["id"].as_str().map(str::to_owned);
                }
                let mut steps = if k == kind::RESPONSE_COMPLETED {
                    let steps = self.flush_text("completed", now_ms);
                    // A completed message comes as its item; deltas whose item never came are not kept.
                    self.messages.clear();
                    steps
                } else {
                    // Cut short (an interrupt, a failure): what came is kept, marked as such.
                    self.flush_partial(now_ms)
                };
                steps.push(Step::Publish(event));
                steps
            }
            _ => vec![Step::Publish(event)],
        }
    }

    /// `response.output_item.done`: the item to store (its stored form is what subscribers get).
    fn item(&mut self, event: Value, already_stored: bool, now_ms: i64) -> Vec<Step> {
        let item = &event["item"];
        let kind = item["type"].as_str().unwrap_or("");
        if self.response_id.is_none() {
            // A turn picked up after a server restart: its items name the response.
            self.response_id = item["response_id"].as_str().map(str::to_owned);
        }
        if let Some(raw_id) = item["id"].as_str() {
            if kind == "message" {
                self.messages.retain(|(id, _)| id != raw_id);
            }
            if already_stored {
                return vec![];
            }
        }
        let call_id = item["call_id"].as_str().map(str::to_owned);
        let own_response = item["response_id"].as_str().map(str::to_owned);
        let mut steps = Vec::new();
        let response_id = match kind {
            "function_call" => {
                if item["status"].as_str().is_some_and(|s| s != "completed") {
                    // Not final yet: show it, store it when it completes.
                    return vec![Step::Publish(event)];
                }
                steps = self.flush_text("completed", now_ms);
                let response_id = own_response.or_else(|| self.response_id.clone());
                if let (Some(call), Some(resp)) = (&call_id, &response_id) {
                    if self.calls.len() >= MAX_TRACKED_CALLS {
                        self.calls.clear();
                    }
                    self.calls.insert(call.clone(), resp.clone());
                }
                response_id
            }
            "function_call_output" => call_id
                .as_ref()
                .and_then(|c| self.calls.get(c).cloned())
                .or(own_response)
                .or_else(|| self.response_id.clone()),
            _ => own_response.or_else(|| self.response_id.clone()),
        };
        let model = (kind == "message").then(|| self.model.clone()).flatten();
        match runner_item(item, response_id, model, now_ms) {
            // An item that could not be stored is not shown either: subscribers see only what a reload shows.
            Some(new) => steps.push(Step::Store(new)),
            None => steps.push(Step::Publish(event)),
        }
        steps
    }

    /// An item-scoped delta of `message_id`: more of its text, or (`snapshot`) all of it so far.
    fn message_text(&mut self, message_id: &str, delta: &str, snapshot: bool) {
        if let Some((_, text)) = self.messages.iter_mut().find(|(id, _)| id == message_id) {
            if snapshot {
                text.clear();
            }
            text.push_str(delta);
            return;
        }
        if self.messages.len() >= MAX_OPEN_MESSAGES {
            self.messages.remove(0);
        }
        self.messages
            .push((message_id.to_owned(), delta.to_owned()));
    }

    /// The buffered response-scoped text as an assistant message with `status` (none when empty).
    fn flush_text(&mut self, status: &str, now_ms: i64) -> Vec<Step> {
        if self.text.is_empty() {
            return vec![];
        }
        let text = std::mem::take(&mut self.text);
        let item = self.assistant(new_id(), &text, status, now_ms);
        vec![Step::StoreText { item, text }]
    }

    /// A failed [`Step::StoreText`]: its text goes back in front of the buffer.
    pub fn restore_text(&mut self, text: String) {
        self.text.insert_str(0, &text);
    }

    /// The turn ends without completing: every text it streamed that no item holds yet (buffered deltas,
    /// messages whose item never came) as `incomplete` messages. Empty when there was none.
    pub fn flush_partial(&mut self, now_ms: i64) -> Vec<Step> {
        let mut steps = self.flush_text("incomplete", now_ms);
        for (message_id, text) in std::mem::take(&mut self.messages) {
            if text.is_empty() {
                continue;
            }
            let id = canonical_id(&message_id).unwrap_or_else(new_id);
            steps.push(Step::StoreUnlessStored(self.assistant(
                id,
                &text,
                "incomplete",
                now_ms,
            )));
        }
        steps
    }

    fn assistant(&self, id: String, text: &str, status: &str, now_ms: i64) -> NewItem {
        let mut data = Map::new();
        data.insert("role".into(), Value::from("assistant"));
        data.insert(
            "content".into(),
            json!([{"type": "output_text", "text": text}]),
        );
        if let Some(model) = &self.model {
            data.insert("model".into(), Value::from(model.clone()));
        }
        NewItem {
            id,
            kind: "message".into(),
            status: status.into(),
            response_id: self.response_id.clone(),
            created_at_ms: now_ms,
            created_by: None,
            data,
        }
    }
}

/// A runner's conversation item (`response.output_item.done`'s `item`) as a row to persist, with the
/// `response_id` the relay decided on and the agent's `model` on assistant messages. `None` when it is not an
/// object with a `type`.
pub fn runner_item(
    item: &Value,
    response_id: Option<String>,
    model: Option<String>,
    now_ms: i64,
) -> Option<NewItem> {
    let mut fields = item.as_object()?.clone();
    let kind = match fields.remove("type") {
        Some(Value::String(kind)) if !kind.is_empty() => kind,
        _ => return None,
    };
    let id = fields
        .remove("id")
        .and_then(|v| v.as_str().and_then(canonical_id))
        .unwrap_or_else(new_id);
    let status = match fields.remove("status") {
        Some(Value::String(s)) => s,
        _ => "completed".to_owned(),
    };
    fields.remove("response_id");
    fields.remove("created_at");
    let created_by = match fields.remove("created_by") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    if let Some(model) = model
        && !fields.contains_key("model")
    {
        fields.insert("model".into(), Value::from(model));
    }
    Some(NewItem {
        id,
        kind,
        status,
        response_id,
        created_at_ms: now_ms,
        created_by,
        data: fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000;

    fn text_of(item: &NewItem) -> &str {
        item.data["content"][0]["text"].as_str().unwrap_or("")
    }

    fn kinds(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .map(|s| match s {
                Step::Publish(_) => "publish",
                Step::SetStatus { .. } => "status",
                Step::Store(_) => "store",
                Step::StoreText { .. } => "store_text",
                Step::StoreUnlessStored(_) => "store_unless_stored",
                Step::Ask { .. } => "ask",
                Step::Resolved { .. } => "resolved",
            })
            .collect()
    }

    #[test]
    fn a_question_and_its_answer_are_steps_of_their_own_and_a_malformed_one_is_relayed() {
        let mut turn = Turn::default();
        let ask = json!({"type": "response.elicitation_request", "elicitation_id": "elicit_1",
            "method": "elicitation/create", "params": {"message": "Allow Bash?"}, "extra": 1});
        let steps = turn.translate(ask.clone(), false, NOW);
        let [Step::Ask { request, event }] = &steps[..] else {
            panic!("{:?}", kinds(&steps));
        };
        assert_eq!(request.elicitation_id, "elicit_1");
        assert_eq!(request.params.message, "Allow Bash?");
        assert_eq!(event, &ask, "relayed field for field");
        let done = json!({"type": "response.elicitation_resolved", "elicitation_id": "elicit_1",
            "reason": "unanswered"});
        assert_eq!(kinds(&turn.translate(done, false, NOW)), ["resolved"]);
        let malformed = json!({"type": "response.elicitation_request", "params": {}});
        assert_eq!(kinds(&turn.translate(malformed, false, NOW)), ["publish"]);
    }

    #[test]
    fn response_text_is_buffered_and_stored_whole_when_the_response_completes() {
        let mut turn = Turn::default();
        let started =
            json!({"type": "response.in_progress", "response": {"id": "resp_1", "model": "m"}});
        assert_eq!(kinds(&turn.translate(started, false, NOW)), ["publish"]);
        for delta in ["Hello, ", "world"] {
            let event = json!({"type": "response.output_text.delta", "delta": delta});
            assert_eq!(kinds(&turn.translate(event, false, NOW)), ["publish"]);
        }
        let steps = turn.translate(json!({"type": "response.completed"}), false, NOW);
        assert_eq!(kinds(&steps), ["store_text", "publish"]);
        let Step::StoreText { item, text } = &steps[0] else {
            unreachable!()
        };
        assert_eq!(
            (text_of(item), text.as_str()),
            ("Hello, world", "Hello, world")
        );
        assert_eq!(
            (item.status.as_str(), item.response_id.as_deref()),
            ("completed", Some("resp_1"))
        );
        assert_eq!(item.data["model"], "m");
        // A failed store hands the text back for the next flush.
        turn.restore_text(text.clone());
        let again = turn.translate(json!({"type": "response.cancelled"}), false, NOW);
        assert_eq!(kinds(&again), ["store_text", "publish"]);
    }

    #[test]
    fn a_cut_short_turn_keeps_item_scoped_text_as_incomplete_and_a_snapshot_replaces_it() {
        let mut turn = Turn::default();
        let mid = "a".repeat(32);
        let delta = |d: &str, snapshot: bool| json!({"type": "response.output_text.delta", "delta": d, "message_id": mid, "snapshot": snapshot});
        assert_eq!(
            kinds(&turn.translate(delta("par", false), false, NOW)),
            ["publish"]
        );
        // A snapshot is not published (subscribers saw it), and replaces what came.
        assert!(
            turn.translate(delta("partial", true), false, NOW)
                .is_empty()
        );
        let steps = turn.translate(json!({"type": "response.failed"}), false, NOW);
        assert_eq!(kinds(&steps), ["store_unless_stored", "publish"]);
        let Step::StoreUnlessStored(item) = &steps[0] else {
            unreachable!()
        };
        assert_eq!(
            (item.id.as_str(), text_of(item), item.status.as_str()),
            (mid.as_str(), "partial", "incomplete")
        );
        assert!(turn.flush_partial(NOW).is_empty());
    }

    #[test]
    fn a_function_call_flushes_the_text_and_its_output_joins_the_call_s_response() {
        let mut turn = Turn::default();
        turn.translate(
            json!({"type": "response.output_text.delta", "delta": "let me look"}),
            false,
            NOW,
        );
        let call = json!({"type": "response.output_item.done", "item": {"type": "function_call", "call_id": "c1",
            "name": "ls", "arguments": "{}", "response_id": "resp_9"}});
        let steps = turn.translate(call, false, NOW);
        assert_eq!(kinds(&steps), ["store_text", "store"]);
        let output = json!({"type": "response.output_item.done", "item": {"type": "function_call_output",
            "call_id": "c1", "output": "x"}});
        let steps = turn.translate(output, false, NOW);
        let [Step::Store(item)] = steps.as_slice() else {
            panic!("{steps:?}")
        };
        assert_eq!(
            (item.kind.as_str(), item.response_id.as_deref()),
            ("function_call_output", Some("resp_9"))
        );
        // An unfinished call is only shown.
        let pending = json!({"type": "response.output_item.done", "item": {"type": "function_call", "status": "in_progress"}});
        assert_eq!(kinds(&turn.translate(pending, false, NOW)), ["publish"]);
    }

    #[test]
    fn an_item_stored_already_is_neither_stored_nor_shown_and_errors_become_items() {
        let id = "b".repeat(32);
        let event = json!({"type": "response.output_item.done", "item": {"type": "message", "id": id,
            "role": "assistant", "content": []}});
        assert_eq!(stored_lookup(&event), Some(id.clone()));
        let mut turn = Turn::default();
        assert!(turn.translate(event.clone(), true, NOW).is_empty());
        assert_eq!(kinds(&turn.translate(event, false, NOW)), ["store"]);
        let error = json!({"type": "response.error", "error": {"code": "x"}, "source": null});
        let steps = turn.translate(error, false, NOW);
        let [Step::Publish(_), Step::Store(item)] = steps.as_slice() else {
            panic!("{steps:?}")
        };
        assert_eq!(item.kind, "error");
        assert!(!item.data.contains_key("source"));
        let status = json!({"type": "session.status", "status": "running", "response_id": "r"});
        assert_eq!(runner_status(&status), Some(SessionStatus::Running));
        assert_eq!(kinds(&turn.translate(status, false, NOW)), ["status"]);
        assert!(
            turn.translate(
                json!({"type": "session.status", "status": "bogus"}),
                false,
                NOW
            )
            .is_empty()
        );
    }
}
