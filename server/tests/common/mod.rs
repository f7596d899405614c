//! Shared helpers: a real server on 127.0.0.1:0 over a real SQLite file in a temp home, a real HTTP
//! client, and the testkit's SSE reader.

#![allow(dead_code)]

pub mod fake_runner;
pub mod raw_host;
pub mod raw_http;

use std::path::{Path, PathBuf};
use std::time::Duration;

use omnigent_server::{ServerConfig, ServerError};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest any single wait in a test may take before the test fails (instead of hanging).
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub url: String,
    pub home: PathBuf,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    pub async fn start(home: &Path) -> TestServer {
        Self::start_with(home, |_| {}).await
    }

    pub async fn start_with(home: &Path, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut config = ServerConfig::for_home(home);
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(omnigent_server::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
        TestServer {
            url,
            home: home.to_owned(),
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Ask the server to stop and wait for `run` to return; answers how long that took.
    pub async fn shutdown(mut self) -> (Result<(), ServerError>, Duration) {
        let started = std::time::Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("task");
        let result = tokio::time::timeout(WAIT, task)
            .await
            .expect("server stops in time")
            .expect("server task does not panic");
        (result, started.elapsed())
    }

    pub fn u(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.client.get(self.u(path)).send().await.expect("GET");
        status_json(resp).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(self.u(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        status_json(resp).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .patch(self.u(path))
            .json(&body)
            .send()
            .await
            .expect("PATCH");
        status_json(resp).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .delete(self.u(path))
            .send()
            .await
            .expect("DELETE");
        status_json(resp).await
    }

    /// Create a session on the echo agent and return its id.
    pub async fn create_session(&self, title: &str) -> String {
        let (status, body) = self
            .post("/v1/sessions", json!({"agent_id": "echo", "title": title}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    /// Append a durable item through `external_conversation_item`; returns the item id.
    pub async fn append_text(&self, session: &str, text: &str) -> String {
        let (status, body) = self
            .post(
                &format!("/v1/sessions/{session}/events"),
                json!({"type": "external_conversation_item", "data": {
                    "type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": text}]
                }}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["item_id"].as_str().expect("item_id").to_owned()
    }

    /// Publish a transient text delta.
    pub async fn delta(&self, session: &str, text: &str) {
        let (status, body) = self
            .post(
                &format!("/v1/sessions/{session}/events"),
                json!({"type": "external_output_text_delta", "data": {"delta": text}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    pub async fn stream(&self, session: &str, last_event_id: Option<u64>) -> Sse {
        let url = self.u(&format!("/v1/sessions/{session}/stream"));
        Sse::open(&self.client, &url, last_event_id).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn status_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"))
    };
    (status, value)
}

#[allow(unused_imports)]
pub use omnigent_testkit::sse::{Sse, id_of, item_text, json_of};

/// Events of the client stream (type, JSON) until `stop` holds (inclusive); heartbeats skipped.
pub async fn until(sse: &mut Sse, stop: impl Fn(&str, &Value) -> bool) -> Vec<(String, Value)> {
    sse.until(stop).await
}
