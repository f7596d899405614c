#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `omnigent attach` and the agent's questions (issue 15 item 6), through the real binary against a real
//! `omnigent server run`: a scripted runner (a real runner-tunnel client) asks before a tool runs; the CLI
//! prints the question, asks `Allow? [y/N]` on its piped stdin and posts the answer, which reaches the runner;
//! a question another device answers is printed as such; `attach --json` never asks.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{WAIT, omnigent, start_server};
use futures_util::{SinkExt, StreamExt};
use omnigent_proto::elicitation::{ElicitationParams, ElicitationRequest};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A runner that answers the server's requests over a real tunnel and streams what the test pushes.
struct ScriptedRunner {
    out: mpsc::UnboundedSender<Message>,
    /// The id of the session stream the server opened.
    stream: mpsc::UnboundedReceiver<String>,
    stream_id: Option<String>,
    /// The events the server posted.
    posted: mpsc::UnboundedReceiver<Value>,
}

impl ScriptedRunner {
    async fn connect(server: &str, runner_id: &str) -> ScriptedRunner {
        let url = format!(
            "{}/v1/runners/{runner_id}/tunnel",
            server.replace("http://", "ws://")
        );
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", "omnigent://internal".parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let (mut sink, mut source) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (stream_tx, stream) = mpsc::unbounded_channel();
        let (posted_tx, posted) = mpsc::unbounded_channel();
        let hello = json!({"kind": "hello", "runner_version": "scripted", "frame_protocol_version": 1,
            "harnesses": ["echo"], "envs": [], "telemetry_opt_out": true});
        out.send(Message::Text(hello.to_string().into())).unwrap();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
        });
        let reply = out.clone();
        tokio::spawn(async move {
            while let Some(Ok(Message::Text(text))) = source.next().await {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                let send = |v: Value| drop(reply.send(Message::Text(v.to_string().into())));
                if frame["kind"] == "ping" {
                    send(json!({"kind": "pong", "ts": frame["ts"]}));
                    continue;
                }
                if frame["kind"] != "request" {
                    continue;
                }
                let id = frame["id"].as_str().unwrap().to_owned();
                let (method, path) = (
                    frame["method"].as_str().unwrap(),
                    frame["path"].as_str().unwrap(),
                );
                let answer = |status: u16, body: Value| {
                    send(json!({"kind": "response.head", "id": id, "status": status,
                        "headers": [["content-type", "application/json"]]}));
                    send(
                        json!({"kind": "response.body", "id": id, "body": body.to_string(), "encoding": "utf-8"}),
                    );
                    send(json!({"kind": "response.end", "id": id}));
                };
                if method == "GET" && path.ends_with("/stream") {
                    send(json!({"kind": "response.head", "id": id, "status": 200,
                        "headers": [["content-type", "text/event-stream"]]}));
                    send(json!({"kind": "response.body", "id": id,
                        "body": "data: {\"type\": \"session.heartbeat\"}\n\n", "encoding": "utf-8"}));
                    let _ = stream_tx.send(id.clone());
                } else if method == "POST" && path == "/v1/sessions" {
                    answer(201, json!({}));
                } else if method == "POST" && path.ends_with("/events") {
                    let body = frame["body"]
                        .as_str()
                        .and_then(|b| serde_json::from_str(b).ok());
                    let _ = posted_tx.send(body.unwrap_or(Value::Null));
                    answer(202, json!({"status": "accepted"}));
                } else {
                    answer(200, json!({"status": "idle"}));
                }
            }
        });
        let runner = ScriptedRunner {
            out,
            stream,
            stream_id: None,
            posted,
        };
        let status = format!("{server}/v1/runners/{runner_id}/status");
        tokio::time::timeout(WAIT, async {
            loop {
                let s: Value = reqwest::get(&status).await.unwrap().json().await.unwrap();
                if s["online"] == true {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the runner registers in time");
        runner
    }

    async fn next_posted(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.posted.recv())
            .await
            .expect("the server posts in time")
            .unwrap()
    }

    async fn push(&mut self, event: Value) {
        if self.stream_id.is_none() {
            let id = tokio::time::timeout(WAIT, self.stream.recv())
                .await
                .unwrap();
            self.stream_id = id;
        }
        let frame = json!({"kind": "response.body", "id": self.stream_id, "body": format!("data: {event}\n\n"),
            "encoding": "utf-8"});
        self.out
            .send(Message::Text(frame.to_string().into()))
            .unwrap();
    }
}

/// What a child writes on one of its pipes, gathered on a thread; `until` waits for a piece of text.
struct Output {
    text: String,
    chunks: mpsc::UnboundedReceiver<String>,
}

impl Output {
    fn of(mut pipe: impl Read + Send + 'static) -> Output {
        let (tx, chunks) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0
                    || tx
                        .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                        .is_err()
                {
                    return;
                }
            }
        });
        Output {
            text: String::new(),
            chunks,
        }
    }

    /// Wait until `needle` has been written `times` times in all.
    async fn until(&mut self, needle: &str, times: usize) {
        let found = tokio::time::timeout(WAIT, async {
            while self.text.matches(needle).count() < times {
                match self.chunks.recv().await {
                    Some(chunk) => self.text.push_str(&chunk),
                    None => return false,
                }
            }
            true
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "`{needle}` ×{times} never came: {}",
            self.text
        );
    }
}

fn question(id: &str, command: &str) -> Value {
    let mut request = ElicitationRequest::new(ElicitationParams::tool_approval(
        "claude-code",
        "Bash",
        format!("Allow Bash: `{command}`?"),
        &json!({"command": command}).to_string(),
    ));
    request.elicitation_id = id.to_owned();
    request.event()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn attach_asks_on_its_stdin_posts_the_answer_and_says_who_answered_others() {
    let home = tempfile::tempdir().unwrap();
    let server = start_server(home.path(), 0, 30_000).await;
    let runner_id = "runner_cli_questions";
    let mut runner = ScriptedRunner::connect(&server.url, runner_id).await;
    let (status, created) = server
        .post(
            "/v1/sessions",
            json!({"agent_id": "echo", "title": "questions"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let session = created["id"].as_str().unwrap().to_owned();
    let (status, bound) = server
        .patch(
            &format!("/v1/sessions/{session}"),
            json!({"runner_id": runner_id}),
        )
        .await;
    assert_eq!(status, 200, "{bound}");

    let attach = |json_out: bool| {
        let mut cmd = omnigent(home.path());
        cmd.args(["attach", &session, "--server", &server.url]);
        if json_out {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Output::of(child.stdout.take().unwrap());
        let err = Output::of(child.stderr.take().unwrap());
        (Killed(child), out, err)
    };
    let (mut cli, _, mut cli_err) = attach(false);
    let (_json_cli, mut json_out, mut json_err) = attach(true);
    // Both are subscribed once a presence stream lists them (beside itself).
    let mut presence = omnigent_testkit::sse::Sse::open(
        &reqwest::Client::new(),
        &format!("{}/v1/sessions/{session}/stream?presence=true", server.url),
        None,
    )
    .await;
    presence
        .until(|k, v| {
            k == "session.presence" && v["connections"].as_array().is_some_and(|c| c.len() >= 3)
        })
        .await;

    // The CLI sends the first message; the runner asks before it runs a command.
    let stdin = cli.0.stdin.as_mut().unwrap();
    stdin.write_all(b"clean the build\n").unwrap();
    stdin.flush().unwrap();
    let message = runner.next_posted().await;
    assert_eq!(message["type"], "message", "{message}");
    runner
        .push(json!({"type": "session.status", "status": "running", "response_id": "resp_1"}))
        .await;
    runner.push(question("elicit_rm", "rm -rf build")).await;
    cli_err
        .until("? claude-code asks: Allow Bash: `rm -rf build`?", 1)
        .await;
    cli_err
        .until("Bash {\"command\":\"rm -rf build\"}", 1)
        .await;
    cli_err.until("Allow? [y/N] ", 1).await;

    // `y` on stdin: the runner gets the approval, the CLI prints the resolution.
    let stdin = cli.0.stdin.as_mut().unwrap();
    stdin.write_all(b"y\n").unwrap();
    stdin.flush().unwrap();
    let answer = runner.next_posted().await;
    assert_eq!(
        answer,
        json!({"type": "approval", "data": {"elicitation_id": "elicit_rm", "action": "accept"}})
    );
    cli_err.until("→ approved", 1).await;

    // A second question, answered from another device: the CLI says so and stops asking it.
    runner.push(question("elicit_ls", "ls")).await;
    cli_err.until("Allow? [y/N] ", 2).await;
    let (status, body) = server
        .post(
            &format!("/v1/sessions/{session}/elicitations/elicit_ls/resolve"),
            json!({"action": "decline"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    cli_err.until("→ denied by another client", 1).await;
    assert_eq!(
        runner.next_posted().await["data"]["elicitation_id"],
        "elicit_ls"
    );

    // `--json` printed both questions and their resolutions as events, and never asked.
    json_out
        .until("\"type\":\"response.elicitation_resolved\"", 2)
        .await;
    assert_eq!(
        json_out
            .text
            .matches("response.elicitation_request")
            .count(),
        2
    );
    json_err.chunks.close();
    while let Ok(chunk) = json_err.chunks.try_recv() {
        json_err.text.push_str(&chunk);
    }
    assert!(!json_err.text.contains("Allow?"), "{}", json_err.text);

    // The turn ends; stdin closes; the CLI exits cleanly.
    runner
        .push(json!({"type": "response.completed", "response": {"id": "resp_1"}}))
        .await;
    runner
        .push(json!({"type": "session.status", "status": "idle"}))
        .await;
    drop(cli.0.stdin.take());
    let mut child = cli;
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}: {}", cli_err.text);
}
