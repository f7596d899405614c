//! The SSE chunks of a realistic OpenAI **Responses API** stream (`POST {base}/responses` with `stream: true`),
//! to script a [`FakeVendor`](super::FakeVendor) with: every event has its `event:` line and a JSON `data:`
//! line carrying `type` and `sequence_number`, in the order OpenAI sends them (`response.created`,
//! `response.in_progress`, per output item `response.output_item.added` … deltas … `response.output_item.done`,
//! then `response.completed` with `usage`, or `response.failed`).
//!
//! Whole streams: [`text`], [`function_call`], [`failed`]. Anything else (text then several calls, a stream
//! cut after some items…) with [`ResponseStream`]:
//!
//! ```ignore
//! let chunks = ResponseStream::new("resp_1")
//!     .text(&["Writing ", "it."])
//!     .function_call("call_1", "write_file", r#"{"path":"a.txt","content":"hi"}"#)
//!     .completed(12, 7);
//! FakeVendor::start(vec![Canned::stream(chunks)]).await;
//! ```

use serde_json::{Value, json};

/// A Responses stream being built, item by item.
#[derive(Debug, Clone)]
pub struct ResponseStream {
    id: String,
    model: String,
    sequence: u64,
    output: Vec<Value>,
    chunks: Vec<String>,
}

impl ResponseStream {
    /// A stream of the response `id` (`resp_…`), opened with `response.created` and `response.in_progress`.
    pub fn new(id: &str) -> ResponseStream {
        let mut stream = ResponseStream {
            id: id.to_owned(),
            model: "gpt-test".to_owned(),
            sequence: 0,
            output: Vec::new(),
            chunks: Vec::new(),
        };
        let response = stream.response("in_progress", None);
        stream.event("response.created", json!({"response": response}));
        let response = stream.response("in_progress", None);
        stream.event("response.in_progress", json!({"response": response}));
        stream
    }

    /// The model name the `response` objects carry (default `gpt-test`).
    pub fn model(mut self, model: &str) -> ResponseStream {
        self.model = model.to_owned();
        self
    }

    /// An assistant `message` item whose text streams as `deltas`.
    pub fn text(mut self, deltas: &[&str]) -> ResponseStream {
        let index = self.output.len();
        let item_id = format!("msg_{}_{index}", self.id);
        let full: String = deltas.concat();
        self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": {
                "id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []
            }}),
        );
        self.event(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": index, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
        );
        for delta in deltas {
            self.event(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
            );
        }
        self.event(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": full, "logprobs": []}),
        );
        let part = json!({"type": "output_text", "text": full, "annotations": []});
        self.event(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}),
        );
        let item = json!({
            "id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]
        });
        self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.output.push(item);
        self
    }

    /// A `function_call` item: the model calls `name` with the JSON `arguments`, which stream in two
    /// `response.function_call_arguments.delta` fragments (as real streams split them).
    pub fn function_call(mut self, call_id: &str, name: &str, arguments: &str) -> ResponseStream {
        let index = self.output.len();
        let item_id = format!("fc_{}_{index}", self.id);
        self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": {
                "id": item_id, "type": "function_call", "status": "in_progress",
                "call_id": call_id, "name": name, "arguments": ""
            }}),
        );
        let cut = arguments
            .char_indices()
            .map(|(i, _)| i)
            .nth(arguments.chars().count() / 2)
            .unwrap_or(0);
        for fragment in [&arguments[..cut], &arguments[cut..]] {
            if fragment.is_empty() {
                continue;
            }
            self.event(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": index, "delta": fragment}),
            );
        }
        self.event(
            "response.function_call_arguments.done",
            json!({"item_id": item_id, "output_index": index, "arguments": arguments}),
        );
        let item = json!({
            "id": item_id, "type": "function_call", "status": "completed",
            "call_id": call_id, "name": name, "arguments": arguments
        });
        self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.output.push(item);
        self
    }

    /// End with `response.completed`, whose `response.usage` counts `input_tokens` and `output_tokens`.
    pub fn completed(mut self, input_tokens: u64, output_tokens: u64) -> Vec<String> {
        let usage = json!({
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        });
        let response = self.response("completed", Some(usage));
        self.event("response.completed", json!({"response": response}));
        self.chunks
    }

    /// End with `response.failed`, whose `response.error` is `{code, message}`.
    pub fn failed(mut self, code: &str, message: &str) -> Vec<String> {
        let mut response = self.response("failed", None);
        response["error"] = json!({"code": code, "message": message});
        self.event("response.failed", json!({"response": response}));
        self.chunks
    }

    /// End with a bare `error` event (what OpenAI sends for a stream-level error), no `response.completed`.
    pub fn error(mut self, code: &str, message: &str) -> Vec<String> {
        self.event(
            "error",
            json!({"code": code, "message": message, "param": null}),
        );
        self.chunks
    }

    /// The chunks so far, unfinished (a stream that breaks off: combine with [`End`](super::End)).
    pub fn unfinished(self) -> Vec<String> {
        self.chunks
    }

    fn response(&self, status: &str, usage: Option<Value>) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": 1_700_000_000,
            "status": status,
            "model": self.model,
            "output": self.output,
            "usage": usage,
            "error": null,
        })
    }

    fn event(&mut self, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        self.chunks.push(format!("event: {kind}\ndata: {data}\n\n"));
    }
}

/// A whole stream answering with text (`deltas`), then `response.completed` with usage 10 in / 5 out.
pub fn text(deltas: &[&str]) -> Vec<String> {
    ResponseStream::new("resp_fake_text")
        .text(deltas)
        .completed(10, 5)
}

/// A whole stream in which the model calls one function, then `response.completed` with usage 10 in / 5 out.
pub fn function_call(call_id: &str, name: &str, arguments: &str) -> Vec<String> {
    ResponseStream::new("resp_fake_call")
        .function_call(call_id, name, arguments)
        .completed(10, 5)
}

/// A whole stream that ends in `response.failed` with `code` and `message`.
pub fn failed(code: &str, message: &str) -> Vec<String> {
    ResponseStream::new("resp_fake_failed").failed(code, message)
}

/// The JSON `data` of every event in `chunks` (to assert on what a builder produced).
pub fn events(chunks: &[String]) -> Vec<Value> {
    chunks
        .iter()
        .filter_map(|c| c.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).expect("data is JSON"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_stream_has_the_events_in_order_with_sequence_numbers() {
        let kinds: Vec<String> = events(&text(&["Hel", "lo"]))
            .iter()
            .enumerate()
            .map(|(i, e)| {
                assert_eq!(e["sequence_number"], i as u64);
                e["type"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let last = events(&text(&["Hel", "lo"])).pop().unwrap();
        assert_eq!(last["response"]["usage"]["output_tokens"], 5);
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "Hello");
    }

    #[test]
    fn a_function_call_streams_its_arguments_in_fragments_that_join() {
        let args = r#"{"path":"a.txt","content":"é"}"#;
        let all = events(&function_call("call_1", "write_file", args));
        let joined: String = all
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(joined, args);
        let done = all
            .iter()
            .find(|e| e["type"] == "response.output_item.done")
            .unwrap();
        assert_eq!(done["item"]["call_id"], "call_1");
        assert_eq!(done["item"]["arguments"], args);
    }
}
