//! Shared by the harness tests (the fake vendor is the testkit's): turns over a temp workspace, an
//! event sink over a channel, and (from the testkit) a way to wait, by signal, for a process to be gone.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use omnigent_runner::harness::{EventSink, HarnessConfig, HistoryEntry, Turn};
use serde_json::Value;
use tokio::sync::mpsc;

#[allow(unused_imports)]
pub use omnigent_testkit::process::{ProcessWatch, watch};
#[allow(unused_imports)]
pub use omnigent_testkit::vendor::{Canned, End, FakeVendor, Recorded};
pub use omnigent_testkit::within;

pub fn user(text: &str) -> HistoryEntry {
    HistoryEntry::User {
        text: text.to_owned(),
    }
}

pub fn turn(workspace: &Path, config: HarnessConfig, history: Vec<HistoryEntry>) -> Turn {
    Turn {
        session_id: "conv_test".into(),
        response_id: "resp_test".into(),
        workspace: workspace.to_owned(),
        history,
        config,
        mcp: None,
        codex: None,
        pi: None,
        exec: None,
        claude_code: None,
        approvals: Default::default(),
    }
}

pub fn sink() -> (EventSink, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (EventSink::new(tx), rx)
}

/// Every event sent so far.
pub fn drain(rx: &mut mpsc::UnboundedReceiver<Value>) -> Vec<Value> {
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    events
}

/// Events in a compact form: `delta:<text>`, `call:<call_id>:<name>:<arguments>`, `output:<call_id>:<output>`,
/// or the event type.
pub fn summarize(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "response.output_text.delta" => format!("delta:{}", e["delta"].as_str().unwrap()),
            "response.output_item.done" => {
                let item = &e["item"];
                assert_eq!(item["response_id"], "resp_test");
                assert_eq!(item["status"], "completed");
                match item["type"].as_str().unwrap() {
                    "function_call" => format!(
                        "call:{}:{}:{}",
                        item["call_id"].as_str().unwrap(),
                        item["name"].as_str().unwrap(),
                        item["arguments"].as_str().unwrap()
                    ),
                    "function_call_output" => format!(
                        "output:{}:{}",
                        item["call_id"].as_str().unwrap(),
                        item["output"].as_str().unwrap()
                    ),
                    other => panic!("unexpected item type {other}"),
                }
            }
            other => other.to_owned(),
        })
        .collect()
}

/// The next event, failing the test if none comes within `testkit::WAIT` (a CLI that starts on a loaded
/// machine can take seconds).
pub async fn next_event(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(omnigent_testkit::WAIT, rx.recv())
        .await
        .expect("no event within testkit::WAIT")
        .expect("the sink was dropped")
}

/// Make a FIFO at `dir/name`, for a child process to tell the test something (e.g. its pid) without the
/// test polling.
pub fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    path
}

/// The first line written to the FIFO `path`; fails the test if none comes within 10 s.
pub async fn read_line(path: std::path::PathBuf) -> String {
    use tokio::io::AsyncBufReadExt as _;
    // Read-write, so the open neither blocks nor sees end-of-file before the writer comes.
    let receiver = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .unwrap();
    let mut line = String::new();
    within(10, tokio::io::BufReader::new(receiver).read_line(&mut line))
        .await
        .unwrap();
    line.trim().to_owned()
}

/// The first event of type `kind`; fails the test if there is none.
pub fn first<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {events:?}"))
}

/// The output of the first `function_call_output` item.
pub fn tool_output(events: &[Value]) -> &str {
    events
        .iter()
        .find(|e| e["item"]["type"] == "function_call_output")
        .and_then(|e| e["item"]["output"].as_str())
        .unwrap_or_else(|| panic!("no function_call_output in {events:?}"))
}
