//! A scripted runner for server tests: a real runner tunnel client (tokio-tungstenite) that answers the
//! server's requests the way `omnigent runner` does, and streams exactly the events a test pushes, so relay
//! rules can be checked event by event.

use futures_util::{SinkExt, StreamExt};
use omnigent_proto::headers::{TURN_RECORD_HEADER, TURN_RECORD_WANTED};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{TestServer, WAIT};

/// What the scripted runner saw.
#[derive(Debug)]
pub enum Seen {
    Init(Value),
    Event(Value),
}

/// A runner that answers the server's requests over a real tunnel and streams what the test pushes.
pub struct FakeRunner {
    pub out: mpsc::UnboundedSender<Message>,
    /// Request ids of the session streams the server opened, newest last, and whether each asked for the
    /// turn's record (`TURN_RECORD_HEADER`).
    pub streams: mpsc::UnboundedReceiver<(String, bool)>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    /// Status answers to `POST …/events`, by event type (default 202).
    pub answers: mpsc::UnboundedSender<(String, u16)>,
    /// Events streamed before the answer to the next `POST …/events` (a turn faster than its answer).
    pub before_answer: mpsc::UnboundedSender<Vec<Value>>,
    pub stream_id: Option<String>,
    /// Whether the last stream opened asked for the turn's record.
    pub asked_record: bool,
    pub task: tokio::task::JoinHandle<()>,
}

impl FakeRunner {
    /// Dial `srv` as the runner of `token`; `status` is what it reports for a session (`GET /v1/sessions/{id}`).
    /// Returns once the tunnel is registered (the server's first `ping` proves it).
    pub async fn connect(srv: &TestServer, token: &str, status: &'static str) -> FakeRunner {
        FakeRunner::connect_resyncing(srv, token, status, Vec::new()).await
    }

    /// [`FakeRunner::connect`] whose session streams open with `resync` in the heartbeat's chunk, as a runner
    /// that kept the turn's record sends it.
    pub async fn connect_resyncing(
        srv: &TestServer,
        token: &str,
        status: &'static str,
        resync: Vec<Value>,
    ) -> FakeRunner {
        let runner_id = omnigent_proto::ids::runner_id_for_token(token);
        let url = format!(
            "{}/v1/runners/{runner_id}/tunnel",
            srv.url.replace("http://", "ws://")
        );
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "x-omnigent-runner-tunnel-token",
            token.parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("tunnel upgrade");
        let (mut sink, mut source) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (answers, mut answers_rx) = mpsc::unbounded_channel::<(String, u16)>();
        let (before_answer, mut before_rx) = mpsc::unbounded_channel::<Vec<Value>>();
        let (registered_tx, registered) = tokio::sync::oneshot::channel::<()>();
        let hello = json!({"kind": "hello", "runner_version": "fake", "frame_protocol_version": 1,
            "harnesses": ["echo"], "envs": [], "telemetry_opt_out": true});
        sink.send(Message::Text(hello.to_string().into()))
            .await
            .expect("hello");
        let reply = out.clone();
        let task = tokio::spawn(async move {
            let writer = tokio::spawn(async move {
                while let Some(m) = out_rx.recv().await {
                    if sink.send(m).await.is_err() {
                        return;
                    }
                }
                let _ = sink.close().await;
            });
            let mut registered_tx = Some(registered_tx);
            let mut codes: std::collections::HashMap<String, u16> = Default::default();
            let mut last_stream: Option<String> = None;
            while let Some(Ok(msg)) = source.next().await {
                let Message::Text(text) = msg else { continue };
                let frame: Value = serde_json::from_str(text.as_str()).expect("frame json");
                while let Ok((kind, code)) = answers_rx.try_recv() {
                    codes.insert(kind, code);
                }
                let send = |v: Value| {
                    let _ = reply.send(Message::Text(v.to_string().into()));
                };
                match frame["kind"].as_str().unwrap_or("") {
                    "ping" => {
                        send(json!({"kind": "pong", "ts": frame["ts"]}));
                        if let Some(tx) = registered_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    "request" => {
                        let id = frame["id"].as_str().unwrap_or("").to_owned();
                        let method = frame["method"].as_str().unwrap_or("");
                        let path = frame["path"].as_str().unwrap_or("");
                        let body: Value = frame["body"]
                            .as_str()
                            .and_then(|b| serde_json::from_str(b).ok())
                            .unwrap_or(Value::Null);
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
                            let opening: String =
                                std::iter::once(json!({"type": "session.heartbeat"}))
                                    .chain(resync.iter().cloned())
                                    .map(|event| format!("data: {event}\n\n"))
                                    .collect();
                            send(json!({"kind": "response.body", "id": id, "body": opening,
                                "encoding": "utf-8"}));
                            last_stream = Some(id.clone());
                            let asked = frame["headers"].as_array().is_some_and(|h| {
                                h.iter().any(|pair| {
                                    pair[0]
                                        .as_str()
                                        .is_some_and(|n| n.eq_ignore_ascii_case(TURN_RECORD_HEADER))
                                        && pair[1] == TURN_RECORD_WANTED
                                })
                            });
                            let _ = streams_tx.send((id.clone(), asked));
                        } else if method == "POST" && path == "/v1/sessions" {
                            let _ = seen_tx.send(Seen::Init(body));
                            answer(201, json!({}));
                        } else if method == "GET" {
                            answer(200, json!({"status": status}));
                        } else if method == "POST" && path.ends_with("/events") {
                            let kind = body["type"].as_str().unwrap_or("").to_owned();
                            let code = codes.get(&kind).copied().unwrap_or(202);
                            let _ = seen_tx.send(Seen::Event(body));
                            if let (Ok(events), Some(stream)) = (before_rx.try_recv(), &last_stream)
                            {
                                for event in events {
                                    send(json!({"kind": "response.body", "id": stream,
                                        "body": format!("data: {event}\n\n"), "encoding": "utf-8"}));
                                }
                            }
                            answer(
                                code,
                                json!({"status": "accepted", "detail": "Turn started."}),
                            );
                        } else {
                            answer(404, json!({"code": "not_found"}));
                        }
                    }
                    _ => {}
                }
            }
            writer.abort();
        });
        tokio::time::timeout(WAIT, registered)
            .await
            .expect("registered in time")
            .expect("tunnel alive");
        FakeRunner {
            out,
            streams,
            seen,
            answers,
            before_answer,
            stream_id: None,
            asked_record: false,
            task,
        }
    }

    /// Answer `POST …/events` of `kind` with `status` from now on.
    pub fn answer(&self, kind: &str, status: u16) {
        self.answers
            .send((kind.to_owned(), status))
            .expect("runner task");
    }

    /// Stream `events` just before answering the next `POST …/events`.
    pub fn before_answer(&self, events: Vec<Value>) {
        self.before_answer.send(events).expect("runner task");
    }

    /// Wait until the server has opened (or re-opened) the session stream.
    pub async fn stream_opened(&mut self) {
        let (id, asked) = tokio::time::timeout(WAIT, self.streams.recv())
            .await
            .expect("stream opened in time")
            .expect("runner task");
        self.stream_id = Some(id);
        self.asked_record = asked;
    }

    pub async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("a request in time")
            .expect("runner task")
    }

    /// Stream one event to the server, as the runner's SSE does (`data:` only).
    pub fn push(&self, event: Value) {
        let id = self.stream_id.clone().expect("stream open");
        let frame = json!({"kind": "response.body", "id": id, "body": format!("data: {event}\n\n"), "encoding": "utf-8"});
        self.out
            .send(Message::Text(frame.to_string().into()))
            .expect("runner task");
    }

    /// Drop the connection without a close handshake's courtesy (a crashed runner).
    pub fn crash(self) {
        self.task.abort();
    }
}
