//! Helpers shared by the black-box tests of the `omnigent` binary (`runner_e2e`, `runner_blip`,
//! `storage_full`): child processes and their logs, the server's HTTP API and session stream, a small tmpfs,
//! and a scripted fake OpenAI-compatible vendor on 127.0.0.1.
// Each test binary compiles this module on its own and uses a different subset of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

/// Bound on every wait for a signal; hitting it fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------------------
// Processes

pub use omnigent_testkit::Proc;

/// The `omnigent` binary under test, with `home` as its `OMNIGENT_HOME` and none of the caller's settings.
pub fn omnigent(home: &Path) -> Command {
    omnigent_testkit::process::omnigent(env!("CARGO_BIN_EXE_omnigent"), home)
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
    let (proc, url) = Proc::spawn_reporting_url(cmd).await;
    Server {
        proc,
        url,
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
        self.proc
            .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED, runner_id])
            .await;
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
        let url = format!("{}/v1/sessions/{session}/stream", self.url);
        let mut sse = Sse::open(&self.http, &url, None).await;
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

#[allow(unused_imports)]
pub use omnigent_testkit::fs::Tmpfs;

// ---------------------------------------------------------------------------------------------------------
// The scripted fake vendor (OpenAI Chat Completions streaming) is the testkit's; these build its answers.

#[allow(unused_imports)]
pub use omnigent_testkit::sse::Sse;
#[allow(unused_imports)]
pub use omnigent_testkit::vendor::{FakeVendor, Step};

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
