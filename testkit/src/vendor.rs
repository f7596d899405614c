//! A scripted fake vendor API on 127.0.0.1:0 (OpenAI Chat Completions or Anthropic Messages streaming: the
//! script says which): each request, on any path, is recorded and answered with the next canned answer, in
//! order; once the script is used up, with its refusal. [`responses`] builds the chunks of a Responses API stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::sync::Notify;

use crate::WAIT;

pub mod anthropic;
pub mod responses;

/// One piece of a streamed body.
#[derive(Clone, Debug)]
pub enum Step {
    Chunk(String),
    /// Hold the stream until the test notifies.
    Wait(Arc<Notify>),
}

/// How a canned streaming body ends.
#[derive(Clone, Debug)]
pub enum End {
    /// The body ends cleanly.
    Close,
    /// The connection is aborted mid-body once the test notifies (after it saw the first chunks arrive;
    /// aborting at once would abort before the response head is even sent).
    Cut(Arc<Notify>),
    /// The body never sends another byte.
    Stall,
}

/// One scripted answer of the fake vendor.
#[derive(Clone, Debug)]
pub enum Canned {
    /// A whole JSON answer (`content-type: application/json`) with extra headers.
    Status {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// A `text/event-stream` body.
    Stream { steps: Vec<Step>, end: End },
    /// Never answers (no response head).
    Hang,
}

impl Canned {
    /// A stream of `chunks` that ends cleanly.
    pub fn stream(chunks: Vec<String>) -> Canned {
        Canned::Stream {
            steps: chunks.into_iter().map(Step::Chunk).collect(),
            end: End::Close,
        }
    }

    /// A stream of `chunks` that ends as `end` says.
    pub fn stream_ending(chunks: Vec<String>, end: End) -> Canned {
        Canned::Stream {
            steps: chunks.into_iter().map(Step::Chunk).collect(),
            end,
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

impl From<Vec<Step>> for Canned {
    fn from(steps: Vec<Step>) -> Canned {
        Canned::Stream {
            steps,
            end: End::Close,
        }
    }
}

/// A request the fake vendor received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    /// The body as JSON (`null` where it is not JSON).
    pub body: Value,
}

#[derive(Clone)]
struct Shared {
    script: Arc<Mutex<VecDeque<Canned>>>,
    refusal: Arc<Canned>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Notified at each request.
    asked: Arc<Notify>,
}

pub struct FakeVendor {
    /// `http://127.0.0.1:port`
    pub url: String,
    shared: Shared,
}

impl FakeVendor {
    /// Serve `script`, one canned answer per request, in order; then 500 "no more canned answers".
    pub async fn start(script: Vec<impl Into<Canned>>) -> FakeVendor {
        Self::start_then(
            script,
            Canned::status(500, "the fake vendor has no more canned answers"),
        )
        .await
    }

    /// Serve `script`, then every further request with `status` and the JSON `body` (401: a wrong API key).
    pub async fn then_refusing(
        script: Vec<impl Into<Canned>>,
        status: u16,
        body: Value,
    ) -> FakeVendor {
        Self::start_then(script, Canned::status(status, &body.to_string())).await
    }

    async fn start_then(script: Vec<impl Into<Canned>>, refusal: Canned) -> FakeVendor {
        let shared = Shared {
            script: Arc::new(Mutex::new(script.into_iter().map(Into::into).collect())),
            refusal: Arc::new(refusal),
            requests: Arc::default(),
            asked: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        let served = crate::net::serve(app).await;
        FakeVendor {
            url: served.url,
            shared,
        }
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Wait until the vendor has received `n` requests in all; fails the test after [`WAIT`].
    pub async fn asked(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.shared.asked.notified();
                if self.shared.requests.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("the vendor is asked in time");
    }
}

async fn answer(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.requests.lock().unwrap().push(Recorded {
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    state.asked.notify_waiters();
    let next = state.script.lock().unwrap().pop_front();
    match next.unwrap_or_else(|| (*state.refusal).clone()) {
        Canned::Hang => std::future::pending().await,
        Canned::Status {
            status,
            headers,
            body,
        } => {
            let mut response = Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json");
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(Body::from(body)).unwrap()
        }
        Canned::Stream { steps, end } => {
            let steps = futures_util::stream::iter(steps).then(|step| async move {
                match step {
                    Step::Chunk(c) => Ok::<Bytes, std::io::Error>(Bytes::from(c)),
                    Step::Wait(n) => {
                        n.notified().await;
                        Ok(Bytes::new())
                    }
                }
            });
            let body = match end {
                End::Close => Body::from_stream(steps),
                End::Cut(trigger) => {
                    Body::from_stream(steps.chain(futures_util::stream::once(async move {
                        trigger.notified().await;
                        Err(std::io::Error::other("cut by the test"))
                    })))
                }
                End::Stall => Body::from_stream(steps.chain(futures_util::stream::pending())),
            };
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    }
}
