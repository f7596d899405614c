//! Shared by the harness tests: a scripted fake vendor API on 127.0.0.1:0, turns over a temp workspace, an
//! event sink over a channel, and a way to wait (by signal, not by sleeping) for a process to be gone.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures_util::StreamExt as _;
use omnigent_runner::harness::{EventSink, HarnessConfig, HistoryEntry, Turn};
use serde_json::Value;
use tokio::sync::mpsc;

/// How a canned streaming body ends.
#[derive(Clone, Debug)]
pub enum End {
    /// The body ends cleanly.
    Close,
    /// The connection is aborted mid-body once the test notifies (after it saw the first chunks arrive;
    /// aborting at once would abort before the response head is even sent).
    Cut(Arc<tokio::sync::Notify>),
    /// The body never sends another byte.
    Stall,
}

/// One scripted answer of the fake vendor.
#[derive(Clone, Debug)]
pub enum Canned {
    Status {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    Stream {
        chunks: Vec<String>,
        end: End,
    },
    /// Never answers (no response head).
    Hang,
}

impl Canned {
    pub fn stream(chunks: Vec<String>) -> Canned {
        Canned::Stream {
            chunks,
            end: End::Close,
        }
    }

    pub fn status(status: u16, body: &str) -> Canned {
        Canned::Status {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }
}

/// A request the fake vendor received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Clone)]
struct State {
    script: Arc<Mutex<VecDeque<Canned>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

pub struct FakeVendor {
    /// `http://127.0.0.1:port`
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeVendor {
    /// Serve `script`, one canned answer per request, in order.
    pub async fn start(script: Vec<Canned>) -> FakeVendor {
        let state = State {
            script: Arc::new(Mutex::new(script.into())),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let requests = state.requests.clone();
        let app = axum::Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeVendor { url, requests }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(
    axum::extract::State(state): axum::extract::State<State>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.requests.lock().unwrap().push(Recorded {
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let next = state.script.lock().unwrap().pop_front();
    match next {
        None => Response::builder()
            .status(500)
            .body(Body::from("the fake vendor has no more canned answers"))
            .unwrap(),
        Some(Canned::Hang) => std::future::pending().await,
        Some(Canned::Status {
            status,
            headers,
            body,
        }) => {
            let mut response = Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json");
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(Body::from(body)).unwrap()
        }
        Some(Canned::Stream { chunks, end }) => {
            let chunks = futures_util::stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Ok::<Bytes, std::io::Error>(Bytes::from(c))),
            );
            let body = match end {
                End::Close => Body::from_stream(chunks),
                End::Cut(trigger) => {
                    Body::from_stream(chunks.chain(futures_util::stream::once(async move {
                        trigger.notified().await;
                        Err(std::io::Error::other("cut by the test"))
                    })))
                }
                End::Stall => Body::from_stream(chunks.chain(futures_util::stream::pending())),
            };
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    }
}

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

/// The next event, failing the test if none comes within 10 s.
pub async fn next_event(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event within 10 s")
        .expect("the sink was dropped")
}

/// Bound on anything a test awaits, so a hang fails the test instead of blocking it.
pub async fn within<F: std::future::Future>(seconds: u64, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {seconds} s"))
}

/// A handle on a process that tells when it has exited (a pidfd; readable once the process is gone).
pub struct ProcessWatch(Option<tokio::io::unix::AsyncFd<OwnedFd>>);

/// Watch `pid`. Open it while the process is alive (it cannot be reused then).
#[allow(unsafe_code)]
pub fn watch(pid: i32) -> ProcessWatch {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1; no memory is shared.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(nix::libc::ESRCH),
            "pidfd_open({pid}): {err}"
        );
        return ProcessWatch(None); // already gone
    }
    // SAFETY: `fd` is a descriptor the call above just opened, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: an OwnedFd keeps its descriptor open and returns the same one until dropped, which the AsyncFd
    // that owns it outlives in no way.
    let watched = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    ProcessWatch(Some(watched.map_err(|e| e.into_parts().1).unwrap()))
}

impl ProcessWatch {
    pub fn is_alive(&self) -> bool {
        self.0.is_some()
    }

    /// Wait until the process has exited; fails the test after 10 s.
    pub async fn gone(self) {
        if let Some(fd) = self.0 {
            let ready = tokio::time::timeout(Duration::from_secs(10), fd.readable()).await;
            assert!(
                ready.is_ok(),
                "the process is still running 10 s after it should have been killed"
            );
        }
    }
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
