//! `GET /v1/sessions/{id}/stream`: SSE. The ready `session.heartbeat` first, then (with `Last-Event-ID`)
//! what the client missed, then the live tail; `session.heartbeat` every interval; `data: [DONE]` when the
//! session is deleted or the server shuts down. A subscriber dropped for falling behind sees the stream
//! end without `[DONE]` and should reconnect with `Last-Event-ID`.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use omnigent_proto::events::{SSE_CONTENT_TYPE, SSE_DONE, ServerEvent, sse_frame};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState, session_id};
use crate::actor::Outbound;

pub async fn stream(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = session_id(&raw)?;
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => {
            let text = v.to_str().unwrap_or("").trim();
            if text.is_empty() {
                None
            } else {
                Some(text.parse::<u64>().map_err(|_| {
                    ApiError::invalid(format!(
                        "Last-Event-ID `{text}` is not an event id; send the `id:` of the last event you received"
                    ))
                })?)
            }
        }
    };
    let sub = st.sessions.subscribe(&id, after).await?;
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + st.heartbeat_interval,
        st.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = StreamState {
        backlog: sub.backlog.into(),
        live: sub.live,
        heartbeat,
        stop: st.stop.clone(),
        last_seq: sub.ready_seq,
        finished: false,
    };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        s.next()
            .await
            .map(|bytes| (Ok::<Bytes, Infallible>(bytes), s))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(SSE_CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct StreamState {
    backlog: VecDeque<Outbound>,
    live: mpsc::Receiver<Outbound>,
    heartbeat: Interval,
    stop: CancellationToken,
    /// Id of the last event written (heartbeats repeat it so `Last-Event-ID` stays right).
    last_seq: u64,
    finished: bool,
}

impl StreamState {
    /// The next chunk to write, or `None` to end the response.
    async fn next(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        if self.stop.is_cancelled() {
            return self.done();
        }
        if let Some(out) = self.backlog.pop_front() {
            return self.write(out);
        }
        tokio::select! {
            biased;
            () = self.stop.cancelled() => self.done(),
            msg = self.live.recv() => match msg {
                Some(out) => self.write(out),
                // Dropped for falling behind (or the actor ended): end without [DONE].
                None => None,
            },
            _ = self.heartbeat.tick() => {
                let event = ServerEvent::heartbeat(Some(crate::now_secs_f64()));
                let json = serde_json::to_string(&event).unwrap_or_else(|_| String::from("{}"));
                Some(Bytes::from(sse_frame(event.event_type(), self.last_seq, &json)))
            }
        }
    }

    fn write(&mut self, out: Outbound) -> Option<Bytes> {
        match out {
            Outbound::Event { seq, frame } => {
                self.last_seq = self.last_seq.max(seq);
                Some(frame)
            }
            Outbound::Done => self.done(),
        }
    }

    fn done(&mut self) -> Option<Bytes> {
        self.finished = true;
        Some(Bytes::from_static(SSE_DONE.as_bytes()))
    }
}
