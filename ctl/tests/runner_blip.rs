//! A runner whose tunnel blips mid-turn (the network drops, the process lives on) loses nothing: what its
//! harness emits while no relay is subscribed waits on the runner and reaches the server once the tunnel is
//! back, in order, once.
//!
//! Real processes over real sockets: `omnigent server run` and `omnigent runner` as children, a TCP proxy of the
//! test's own between them (cutting it drops the tunnel; while cut it refuses the runner's redials), and a
//! scripted fake OpenAI streaming API that holds its answer until the test says. Every wait is on a signal: a
//! log line of a process, an SSE event, a request reaching the fake vendor; never a sleep.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures_util::StreamExt;
use omnigent_proto::events::{SseMessage, SseParser};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// Bound on every wait for a signal; hitting it fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);
/// The runner grace of the server under test: far longer than any blip here.
const GRACE_MS: u64 = 30_000;
/// What the runner logs when a session's last stream subscriber is gone (its events wait from then on).
const NO_SUBSCRIBER_LEFT: &str = "no stream subscriber left; keeping events for the next one";
/// What the runner logs when a new stream subscriber takes the events kept meanwhile.
const BACKLOG_TAKEN: &str = "a stream subscriber takes the events kept while none was connected";

// ---------------------------------------------------------------------------------------------------------
// Processes

/// A child process whose stderr lines are collected; killed when dropped.
struct Proc {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> (Proc, std::process::ChildStdout) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn omnigent");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (
            Proc {
                child,
                lines,
                seen: Vec::new(),
            },
            stdout,
        )
    }

    /// Wait for a log line containing every one of `needles`.
    async fn wait_log(&mut self, needles: &[&str]) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if needles.iter().all(|n| line.contains(n)) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no log line with {needles:?}; the process logged:\n{}",
                self.seen.join("\n")
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn omnigent(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_omnigent"));
    cmd.env("OMNIGENT_HOME", home)
        .env_remove("OMNIGENT_DATABASE_URL")
        .env_remove("OMNIGENT_SERVER")
        .env_remove("OMNIGENT_RUNNER_TOKEN")
        .env("RUST_LOG", "info,sqlx=warn")
        .env("OMNIGENT_LOG", "info");
    cmd
}

struct Server {
    proc: Proc,
    url: String,
    http: reqwest::Client,
}

/// `omnigent server run` on any port with the runner grace [`GRACE_MS`]; waits for its ready line.
async fn start_server(home: &Path) -> Server {
    let mut cmd = omnigent(home);
    cmd.args(["server", "run", "--port", "0"])
        .env("OMNIGENT_RUNNER_GRACE_MS", GRACE_MS.to_string());
    let (proc, stdout) = Proc::spawn(cmd);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        line
    });
    let line = tokio::time::timeout(WAIT, line).await.unwrap().unwrap();
    let ready: Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    Server {
        proc,
        url: ready["url"].as_str().unwrap().to_owned(),
        http: reqwest::Client::new(),
    }
}

impl Server {
    fn addr(&self) -> SocketAddr {
        self.url.trim_start_matches("http://").parse().unwrap()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("answer in time")
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Create a session on the openai agent working in `workspace`, bound to `runner_id`.
    async fn bound_session(&self, workspace: &Path, runner_id: &str) -> String {
        let (status, created) = self
            .post(
                "/v1/sessions",
                json!({"agent_id": "openai", "workspace": workspace.to_str().unwrap()}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let (status, bound) = self
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/sessions/{id}"),
                Some(json!({"runner_id": runner_id})),
            )
            .await;
        assert_eq!(status, 200, "{bound}");
        assert_eq!(bound["runner_online"], true);
        id
    }

    async fn message(&self, session: &str, text: &str) {
        let (status, body) = self
            .post(
                &format!("/v1/sessions/{session}/events"),
                json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": text}]}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    /// The session's persisted items, oldest first.
    async fn transcript(&self, session: &str) -> Vec<Value> {
        let (status, items) = self
            .get(&format!(
                "/v1/sessions/{session}/items?order=asc&limit=1000"
            ))
            .await;
        assert_eq!(status, 200, "{items}");
        items["data"].as_array().unwrap().clone()
    }

    /// Open the session's stream and wait for its ready heartbeat.
    async fn stream(&self, session: &str) -> Sse {
        let resp = tokio::time::timeout(
            WAIT,
            self.http
                .get(format!("{}/v1/sessions/{session}/stream", self.url))
                .send(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let mut sse = Sse {
            resp,
            parser: SseParser::new(8 << 20),
            pending: VecDeque::new(),
        };
        let first = sse.next().await.expect("ready heartbeat");
        assert_eq!(first.event.as_deref(), Some("session.heartbeat"));
        sse
    }
}

/// `omnigent runner` with `token`, dialling `server`, on the openai harness against `vendor_url`.
fn start_runner(
    home: &Path,
    server: &str,
    token: &str,
    workspace: &Path,
    vendor_url: &str,
) -> Proc {
    let mut cmd = omnigent(home);
    cmd.args([
        "runner",
        "--server",
        server,
        "--token",
        token,
        "--harness",
        "openai",
        "--workspace",
        workspace.to_str().unwrap(),
    ])
    .env_remove("ANTHROPIC_BASE_URL")
    .env_remove("ANTHROPIC_API_KEY")
    .env("OPENAI_BASE_URL", format!("{vendor_url}/v1"))
    .env("OPENAI_API_KEY", "sk-test")
    .env("OMNIGENT_MODEL", "gpt-test");
    Proc::spawn(cmd).0
}

fn token_and_id(name: &str) -> (String, String) {
    let token = format!("tok-{name}-{}", omnigent_proto::ids::new_id());
    let id = omnigent_proto::ids::runner_id_for_token(&token);
    (token, id)
}

// ---------------------------------------------------------------------------------------------------------
// The proxy between runner and server

#[derive(Default)]
struct ProxyState {
    open: bool,
    conns: Vec<tokio::task::AbortHandle>,
}

/// A TCP proxy on 127.0.0.1 to one upstream. [`Proxy::cut`] drops every connection through it and refuses
/// new ones (accepted and closed at once, each one reported) until [`Proxy::reopen`].
struct Proxy {
    url: String,
    state: Arc<Mutex<ProxyState>>,
    refused: mpsc::UnboundedReceiver<()>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ProxyState {
            open: true,
            conns: Vec::new(),
        }));
        let (refused_tx, refused) = mpsc::unbounded_channel();
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut downstream, _)) = listener.accept().await else {
                    return;
                };
                // Decided and recorded under the lock, so a cut cannot miss a connection being set up.
                let mut state = shared.lock().unwrap();
                if !state.open {
                    drop(downstream);
                    let _ = refused_tx.send(());
                    continue;
                }
                let task = tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                });
                state.conns.retain(|c| !c.is_finished());
                state.conns.push(task.abort_handle());
            }
        });
        Proxy {
            url,
            state,
            refused,
            accept,
        }
    }

    /// Drop every connection (both ends closed) and refuse new ones.
    fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.open = false;
        for conn in state.conns.drain(..) {
            conn.abort();
        }
    }

    fn reopen(&self) {
        self.state.lock().unwrap().open = true;
    }

    /// Wait until a connection was refused since the cut.
    async fn refused_one(&mut self) {
        tokio::time::timeout(WAIT, self.refused.recv())
            .await
            .expect("a redial reaches the proxy in time")
            .expect("proxy running");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

// ---------------------------------------------------------------------------------------------------------
// SSE

struct Sse {
    resp: reqwest::Response,
    parser: SseParser,
    pending: VecDeque<SseMessage>,
}

impl Sse {
    async fn next(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(m);
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("an SSE event arrives in time");
            match chunk {
                Ok(Some(bytes)) => self.pending.extend(self.parser.push(&bytes).unwrap()),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Events (type, JSON) up to and including the first for which `stop` holds; heartbeats skipped. Fails
    /// the test if that event does not come within [`WAIT`] (heartbeats alone are no progress).
    async fn until(&mut self, stop: impl Fn(&str, &Value) -> bool) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let m = self.next().await.expect("the stream ended early");
                let kind = m.event.clone().unwrap_or_default();
                if kind == "session.heartbeat" {
                    continue;
                }
                let value: Value = serde_json::from_str(&m.data).unwrap();
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

fn is_delta(kind: &str, v: &Value, text: &str) -> bool {
    kind == "response.output_text.delta" && v["delta"] == text
}

/// The session's status events settle: idle, failed or anything else than running.
fn settled(kind: &str, v: &Value) -> bool {
    kind == "session.status" && v["status"] != "running"
}

fn deltas(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, v)| v["delta"].as_str().unwrap().to_owned())
        .collect()
}

fn count(events: &[(String, Value)], kind: &str) -> usize {
    events.iter().filter(|(k, _)| k == kind).count()
}

/// Items as `role:text`, `call:id:name` or `output:id:output`.
fn summary(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i["type"].as_str().unwrap() {
            "message" => format!(
                "{}:{}",
                i["role"].as_str().unwrap(),
                i["content"][0]["text"].as_str().unwrap_or("")
            ),
            "function_call" => format!(
                "call:{}:{}",
                i["call_id"].as_str().unwrap(),
                i["name"].as_str().unwrap()
            ),
            "function_call_output" => format!(
                "output:{}:{}",
                i["call_id"].as_str().unwrap(),
                i["output"].as_str().unwrap()
            ),
            other => other.to_owned(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// A scripted fake OpenAI Chat Completions streaming API on 127.0.0.1.

#[derive(Clone)]
enum Step {
    Chunk(String),
    /// Hold the stream until the test notifies.
    Wait(Arc<Notify>),
}

#[derive(Clone, Default)]
struct Vendor {
    script: Arc<Mutex<VecDeque<Vec<Step>>>>,
    requests: Arc<Mutex<usize>>,
    /// Notified at each request.
    asked: Arc<Notify>,
}

impl Vendor {
    async fn start(script: Vec<Vec<Step>>) -> (Vendor, String) {
        let vendor = Vendor {
            script: Arc::new(Mutex::new(script.into())),
            ..Vendor::default()
        };
        let state = vendor.clone();
        let app = axum::Router::new().fallback(move || {
            let state = state.clone();
            async move {
                *state.requests.lock().unwrap() += 1;
                state.asked.notify_one();
                let steps = state.script.lock().unwrap().pop_front();
                let Some(steps) = steps else {
                    return Response::builder()
                        .status(500)
                        .body(Body::from("no more canned answers"))
                        .unwrap();
                };
                let stream = futures_util::stream::iter(steps).then(|step| async move {
                    match step {
                        Step::Chunk(c) => Ok::<Bytes, std::io::Error>(Bytes::from(c)),
                        Step::Wait(n) => {
                            n.notified().await;
                            Ok(Bytes::new())
                        }
                    }
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (vendor, url)
    }

    /// Wait until the vendor has received `n` requests in all.
    async fn asked(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while *self.requests.lock().unwrap() < n {
                self.asked.notified().await;
            }
        })
        .await
        .expect("the runner asks the vendor in time");
    }
}

fn data(v: Value) -> Step {
    Step::Chunk(format!("data: {v}\n\n"))
}

fn text(t: &str) -> Step {
    data(
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]}),
    )
}

fn call(id: &str, name: &str, args: &str) -> Step {
    data(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": args}}
    ]}, "finish_reason": null}]}))
}

fn finish(reason: &str) -> [Step; 2] {
    [
        data(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})),
        Step::Chunk("data: [DONE]\n\n".into()),
    ]
}

/// A server, a proxy in front of it, and a runner dialling through the proxy, connected.
struct Rig {
    server: Server,
    proxy: Proxy,
    runner: Proc,
    runner_id: String,
}

async fn rig(home: &Path, workspace: &Path, vendor_url: &str, name: &str) -> Rig {
    let mut server = start_server(home).await;
    let proxy = Proxy::start(server.addr()).await;
    let (token, runner_id) = token_and_id(name);
    let runner = start_runner(home, &proxy.url, &token, workspace, vendor_url);
    server
        .proc
        .wait_log(&["runner connected", &runner_id])
        .await;
    Rig {
        server,
        proxy,
        runner,
        runner_id,
    }
}

impl Rig {
    /// Cut the tunnel and wait until the runner has let go of the session's stream (its events wait from
    /// now on) and has tried to dial again (and was refused).
    async fn blip(&mut self, session: &str) {
        self.proxy.cut();
        self.runner.wait_log(&[NO_SUBSCRIBER_LEFT, session]).await;
        self.server
            .proc
            .wait_log(&["runner disconnected", &self.runner_id])
            .await;
        self.proxy.refused_one().await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tests

/// The whole rest of the turn, its end included, happens while the tunnel is down: the server gets it all
/// when the runner is back, before it hears that the runner is idle, so the turn ends by its own events.
#[tokio::test]
async fn a_turn_that_ends_during_a_tunnel_blip_arrives_whole_once_the_runner_is_back() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let hold = Arc::new(Notify::new());
    let mut answer = vec![
        text("one "),
        text("two "),
        Step::Wait(hold.clone()),
        text("three "),
        text("four"),
    ];
    answer.extend(finish("stop"));
    let (_vendor, vendor_url) = Vendor::start(vec![answer]).await;
    let mut rig = rig(home.path(), ws.path(), &vendor_url, "blip-ends").await;
    let session = rig.server.bound_session(ws.path(), &rig.runner_id).await;
    let mut sse = rig.server.stream(&session).await;
    rig.server.message(&session, "count to four").await;
    let mut events = sse.until(|k, v| is_delta(k, v, "two ")).await;

    rig.blip(&session).await;
    hold.notify_one();
    // The runner finished the turn with nobody listening.
    rig.runner.wait_log(&["turn ended", &session]).await;
    rig.proxy.reopen();
    rig.runner.wait_log(&[BACKLOG_TAKEN, &session]).await;

    events.extend(sse.until(settled).await);
    let last = &events.last().unwrap().1;
    assert_eq!(last["status"], "idle", "{events:?}");
    assert_eq!(deltas(&events), ["one ", "two ", "three ", "four"]);
    assert_eq!(count(&events, "response.completed"), 1, "{events:?}");
    assert_eq!(count(&events, "response.failed"), 0, "{events:?}");
    assert_eq!(count(&events, "response.output_item.done"), 1, "{events:?}");
    assert_eq!(
        summary(&rig.server.transcript(&session).await),
        ["user:count to four", "assistant:one two three four"]
    );
    let (_, snap) = rig.server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "idle");
    assert_eq!(snap["runner_online"], true);
}

/// Part of a turn (text, a tool call and its result) happens while the tunnel is down, the rest after it is
/// back: every delta and item arrives once, in order, and the turn ends idle.
#[tokio::test]
async fn a_turn_that_goes_on_across_a_tunnel_blip_loses_nothing_and_repeats_nothing() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let during = Arc::new(Notify::new());
    let after = Arc::new(Notify::new());
    let mut first = vec![
        text("one "),
        text("two "),
        Step::Wait(during.clone()),
        text("three"),
        call(
            "call_1",
            "write_file",
            r#"{"path": "notes/hello.txt", "content": "hi there"}"#,
        ),
    ];
    first.extend(finish("tool_calls"));
    let mut second = vec![text("four "), Step::Wait(after.clone()), text("five")];
    second.extend(finish("stop"));
    let (vendor, vendor_url) = Vendor::start(vec![first, second]).await;
    let mut rig = rig(home.path(), ws.path(), &vendor_url, "blip-goes-on").await;
    let session = rig.server.bound_session(ws.path(), &rig.runner_id).await;
    let mut sse = rig.server.stream(&session).await;
    rig.server.message(&session, "write hello").await;
    let mut events = sse.until(|k, v| is_delta(k, v, "two ")).await;

    rig.blip(&session).await;
    during.notify_one();
    // The second request proves the runner took the rest of the first answer and ran the tool, offline.
    vendor.asked(2).await;
    rig.proxy.reopen();
    rig.runner.wait_log(&[BACKLOG_TAKEN, &session]).await;
    events.extend(sse.until(|k, v| is_delta(k, v, "four ")).await);
    after.notify_one();
    events.extend(sse.until(settled).await);

    let last = &events.last().unwrap().1;
    assert_eq!(last["status"], "idle", "{events:?}");
    assert_eq!(deltas(&events), ["one ", "two ", "three", "four ", "five"]);
    assert_eq!(count(&events, "response.completed"), 1, "{events:?}");
    assert_eq!(
        count(&events, "response.output_item.done"),
        4,
        "text, call, output, text: {events:?}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes/hello.txt")).unwrap(),
        "hi there"
    );
    let items = rig.server.transcript(&session).await;
    assert_eq!(
        summary(&items),
        [
            "user:write hello",
            "assistant:one two three",
            "call:call_1:write_file",
            "output:call_1:wrote 8 bytes to notes/hello.txt",
            "assistant:four five",
        ]
    );
    let mut ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), items.len(), "{items:?}");
    let (_, snap) = rig.server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "idle");
}
