//! Helpers shared by the black-box tests of the `omnigent` binary (`runner_e2e`, `runner_blip`,
//! `storage_full`): child processes and their logs, the server's HTTP API and session stream, a small tmpfs,
//! and a scripted fake OpenAI-compatible vendor on 127.0.0.1.
// Each test binary compiles this module on its own and uses a different subset of it.
#![allow(dead_code)]

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
pub const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------------------
// Processes

/// A child process whose stderr lines are collected; killed when dropped.
pub struct Proc {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> (Proc, std::process::ChildStdout) {
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
    pub async fn wait_log(&mut self, needles: &[&str]) -> String {
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

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    /// SIGKILL the process, reap it, and return everything it wrote to stderr.
    pub async fn kill_and_read_log(&mut self) -> Vec<String> {
        self.kill();
        let mut all = std::mem::take(&mut self.seen);
        // The reader thread ends at the pipe's EOF, which the kill brings.
        while let Ok(Some(line)) = tokio::time::timeout(WAIT, self.lines.recv()).await {
            all.push(line);
        }
        all
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `omnigent` binary under test, with `home` as its `OMNIGENT_HOME` and none of the caller's settings.
pub fn omnigent(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_omnigent"));
    cmd.env("OMNIGENT_HOME", home)
        .env_remove("OMNIGENT_DATABASE_URL")
        .env_remove("OMNIGENT_SERVER")
        .env_remove("OMNIGENT_RUNNER_TOKEN")
        .env("RUST_LOG", "info,sqlx=warn")
        .env("OMNIGENT_LOG", "info");
    cmd
}

pub struct Server {
    pub proc: Proc,
    pub url: String,
    http: reqwest::Client,
}

/// `omnigent server run` on `port` (0: any), with the runner grace `grace_ms`; waits for its ready line.
pub async fn start_server(home: &Path, port: u16, grace_ms: u64) -> Server {
    start_server_env(home, port, grace_ms, &[]).await
}

/// [`start_server`] with the extra environment `env` (say, `OMNIGENT_LOG=trace`).
pub async fn start_server_env(
    home: &Path,
    port: u16,
    grace_ms: u64,
    env: &[(&str, &str)],
) -> Server {
    let mut cmd = omnigent(home);
    cmd.args(["server", "run", "--port", &port.to_string()])
        .env("OMNIGENT_RUNNER_GRACE_MS", grace_ms.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    start_server_cmd(cmd).await
}

/// Spawn `cmd` (an `omnigent server run`, possibly under a wrapper such as `prlimit`) and wait for its ready line.
pub async fn start_server_cmd(cmd: Command) -> Server {
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
    pub fn addr(&self) -> SocketAddr {
        self.url.trim_start_matches("http://").parse().unwrap()
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
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

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    /// Create a session on `agent` working in `workspace` and bind it to `runner_id`.
    /// Wait until `runner_id`'s tunnel is up (the server's log says so), then [`Server::bound_session`].
    pub async fn session_on_runner(
        &mut self,
        agent: &str,
        workspace: &Path,
        runner_id: &str,
    ) -> String {
        self.proc.wait_log(&["runner connected", runner_id]).await;
        self.bound_session(agent, workspace, runner_id).await
    }

    pub async fn bound_session(&self, agent: &str, workspace: &Path, runner_id: &str) -> String {
        let (status, created) = self
            .post(
                "/v1/sessions",
                json!({"agent_id": agent, "workspace": workspace.to_str().unwrap()}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let (status, bound) = self
            .patch(
                &format!("/v1/sessions/{id}"),
                json!({"runner_id": runner_id}),
            )
            .await;
        assert_eq!(status, 200, "{bound}");
        assert_eq!(bound["runner_id"], runner_id);
        assert_eq!(bound["runner_online"], true);
        id
    }

    /// Post a user message to the session; the answer's status and body.
    pub async fn message(&self, session: &str, text: &str) -> (u16, Value) {
        self.post(
            &format!("/v1/sessions/{session}/events"),
            json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": text}]}}),
        )
        .await
    }

    /// The session's persisted items, oldest first.
    pub async fn transcript(&self, session: &str) -> Vec<Value> {
        let (status, items) = self
            .get(&format!(
                "/v1/sessions/{session}/items?order=asc&limit=1000"
            ))
            .await;
        assert_eq!(status, 200, "{items}");
        items["data"].as_array().unwrap().clone()
    }

    /// Open the session's stream and wait for its ready heartbeat.
    pub async fn stream(&self, session: &str) -> Sse {
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

/// `omnigent runner` with `token`, dialling `server`, serving `harness` in `workspace`, with no vendor settings
/// of the caller's and the extra environment `env`.
pub fn start_runner(
    home: &Path,
    server: &str,
    token: &str,
    harness: &str,
    workspace: &Path,
    env: &[(&str, String)],
) -> Proc {
    let mut cmd = omnigent(home);
    cmd.args([
        "runner",
        "--server",
        server,
        "--token",
        token,
        "--harness",
        harness,
        "--workspace",
        workspace.to_str().unwrap(),
    ])
    .env_remove("OPENAI_BASE_URL")
    .env_remove("OPENAI_API_KEY")
    .env_remove("ANTHROPIC_BASE_URL")
    .env_remove("ANTHROPIC_API_KEY")
    .env_remove("OMNIGENT_MODEL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(cmd).0
}

/// A fresh runner token named after `name`, and the runner id it stands for.
pub fn token_and_id(name: &str) -> (String, String) {
    let token = format!("tok-{name}-{}", omnigent_proto::ids::new_id());
    let id = omnigent_proto::ids::runner_id_for_token(&token);
    (token, id)
}

/// Items as `role:text`, `call:id:name` or `output:id:output`.
pub fn summary(items: &[Value]) -> Vec<String> {
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

/// A free TCP port on 127.0.0.1 (bound and released: for a process that must be told its port up front).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------------------
// A small real file system

/// A tmpfs of a given size mounted on a fresh temp dir (tests run as root in CI), unmounted on drop (lazily,
/// so a process still holding a file there never leaves it mounted).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None`, after saying why, when not root: only root may mount.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs the tests as root)");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("og-fs").tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill it with one file, written until ENOSPC; removing the file frees the space again.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.path().display()),
            }
        }
        // The last partial block: fill to the very last byte.
        for _ in 0..64 {
            if f.write_all(&[0u8; 1024]).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------------------
// SSE

pub struct Sse {
    resp: reqwest::Response,
    parser: SseParser,
    pending: VecDeque<SseMessage>,
}

impl Sse {
    pub async fn next(&mut self) -> Option<SseMessage> {
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
    pub async fn until(&mut self, stop: impl Fn(&str, &Value) -> bool) -> Vec<(String, Value)> {
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

// ---------------------------------------------------------------------------------------------------------
// A scripted fake vendor (OpenAI Chat Completions / Anthropic Messages streaming) on 127.0.0.1.

#[derive(Clone)]
pub enum Step {
    Chunk(String),
    /// Hold the stream until the test notifies.
    Wait(Arc<Notify>),
}

/// Answers each request with the next scripted stream, in order; once the script is used up, with its
/// refusal (500 "no more canned answers" unless started with [`Vendor::refusing`]).
#[derive(Clone, Default)]
pub struct Vendor {
    script: Arc<Mutex<VecDeque<Vec<Step>>>>,
    refusal: Arc<(u16, String)>,
    /// The request bodies received, in order (`null` where not JSON).
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// Notified at each request.
    asked: Arc<Notify>,
}

impl Vendor {
    pub async fn start(script: Vec<Vec<Step>>) -> (Vendor, String) {
        Self::start_with(script, 500, "no more canned answers").await
    }

    /// Answers with `script`, then every further request with `status` and the JSON `body` (401: a wrong
    /// API key).
    pub async fn then_refusing(
        script: Vec<Vec<Step>>,
        status: u16,
        body: Value,
    ) -> (Vendor, String) {
        Self::start_with(script, status, &body.to_string()).await
    }

    async fn start_with(script: Vec<Vec<Step>>, status: u16, body: &str) -> (Vendor, String) {
        let vendor = Vendor {
            script: Arc::new(Mutex::new(script.into())),
            refusal: Arc::new((status, body.to_owned())),
            ..Vendor::default()
        };
        let state = vendor.clone();
        let app = axum::Router::new().fallback(move |body: Bytes| {
            let state = state.clone();
            async move {
                state
                    .requests
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                state.asked.notify_one();
                let steps = state.script.lock().unwrap().pop_front();
                let Some(steps) = steps else {
                    let (status, body) = &*state.refusal;
                    return Response::builder()
                        .status(*status)
                        .header("content-type", "application/json")
                        .body(Body::from(body.clone()))
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
    pub async fn asked(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.requests.lock().unwrap().len() < n {
                self.asked.notified().await;
            }
        })
        .await
        .expect("the runner asks the vendor in time");
    }
}

/// One SSE `data:` event carrying `v`.
pub fn data(v: Value) -> Step {
    Step::Chunk(format!("data: {v}\n\n"))
}

/// An OpenAI chunk with the text delta `t`.
pub fn oa_text(t: &str) -> Step {
    data(
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]}),
    )
}

/// An OpenAI chunk with a whole tool call.
pub fn oa_call(id: &str, name: &str, args: &str) -> Step {
    data(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": args}}
    ]}, "finish_reason": null}]}))
}

/// The end of an OpenAI stream: the finish reason, then `[DONE]`.
pub fn oa_finish(reason: &str) -> Vec<Step> {
    vec![
        data(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})),
        Step::Chunk("data: [DONE]\n\n".into()),
    ]
}

/// The runner environment pointing the openai harness at the fake vendor at `url`.
pub fn openai_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_BASE_URL", format!("{url}/v1")),
        ("OPENAI_API_KEY", "sk-test".into()),
        ("OMNIGENT_MODEL", "gpt-test".into()),
    ]
}
