//! `GET /v1/sessions/{id}/stream`: SSE. The ready `session.heartbeat` first, then (with `Last-Event-ID`)
//! what the client missed, then the live tail; `session.heartbeat` every interval; `data: [DONE]` when the
//! session is deleted or the server shuts down. Each stream is a cursor in the session's feed
//! (`crate::feed`): a slow reader is never waited for nor cut off; if it falls behind the feed, it gets the
//! durable items of what it missed from the store and carries on live.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use omnigent_proto::events::kind;
use omnigent_proto::events::{SSE_CONTENT_TYPE, SSE_DONE, ServerEvent, sse_frame};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{ApiError, AppState, session_id};
use crate::actor::item_done_json;
use crate::feed::{Feed, Read};
use crate::store::{Store, StoreError};

pub async fn stream(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    axum::Extension(caller): axum::Extension<super::auth::Caller>,
    super::Q(q): super::Q<super::live::StreamQuery>,
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
    // liveapi hook: listed in `session.presence` while this response lives.
    let (device_id, device_name, role) = caller.presence();
    let who = crate::presence::Viewer {
        device_id,
        device_name,
        role,
    };
    let watching = st.presence.join(
        &id,
        who,
        q.idle.unwrap_or(false),
        q.presence.unwrap_or(false),
    );
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + st.heartbeat_interval,
        st.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = StreamState {
        ready: Some(sub.ready),
        feed: sub.feed,
        wake: sub.wake,
        store: st.store.clone(),
        session_id: id,
        heartbeat,
        stop: st.stop.clone(),
        cursor: sub.ready_seq,
        finished: false,
        watching,
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

/// Largest chunk written at once when a subscriber catches up.
const MAX_CHUNK: usize = 256 * 1024;
/// Durable items read from the store per catch-up step.
const STORE_PAGE: u32 = 1000;

/// One subscriber: a cursor in the session's feed.
struct StreamState {
    /// The ready heartbeat, written first.
    ready: Option<Bytes>,
    feed: Arc<Feed>,
    wake: watch::Receiver<u64>,
    store: Store,
    session_id: String,
    heartbeat: Interval,
    stop: CancellationToken,
    /// Id of the last event written (heartbeats repeat it so `Last-Event-ID` stays right).
    cursor: u64,
    finished: bool,
    /// This stream in the session's presence list (liveapi).
    watching: crate::presence::Watching,
}

impl StreamState {
    /// The next chunk to write, or `None` to end the response.
    async fn next(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        if let Some(ready) = self.ready.take() {
            return Some(ready);
        }
        loop {
            if self.stop.is_cancelled() {
                return self.done();
            }
            match self.feed.read(self.cursor, MAX_CHUNK) {
                Read::Frames { chunk, last } => {
                    self.cursor = last;
                    return Some(chunk);
                }
                Read::Behind { floor } => match self.catch_up_from_store(floor).await {
                    Ok(Some(chunk)) => return Some(chunk),
                    Ok(None) => continue,
                    Err(e) => {
                        // End without [DONE]: the client reconnects with Last-Event-ID and tries again.
                        warn!(session_id = %self.session_id, "cannot replay items from the store: {e}");
                        self.finished = true;
                        return None;
                    }
                },
                Read::Closed => return self.done(),
                Read::UpToDate => {}
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return self.done(),
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        self.finished = true;
                        return None;
                    }
                }
                json = self.watching.changed() => {
                    return Some(Bytes::from(sse_frame(kind::SESSION_PRESENCE, self.cursor, &json)));
                }
                _ = self.heartbeat.tick() => {
                    let event = ServerEvent::heartbeat(Some(crate::clock::now_secs_f64()));
                    let json = serde_json::to_string(&event).unwrap_or_else(|_| String::from("{}"));
                    return Some(Bytes::from(sse_frame(event.event_type(), self.cursor, &json)));
                }
            }
        }
    }

    /// The subscriber is behind the feed's `floor` (a reconnect from long ago, or a reader slower than the
    /// feed is long): the durable items it missed come from the store; the transient events are gone.
    async fn catch_up_from_store(&mut self, floor: u64) -> Result<Option<Bytes>, StoreError> {
        let rows = self
            .store
            .items_between_seq(&self.session_id, self.cursor, floor, STORE_PAGE)
            .await?;
        self.cursor = match rows.last() {
            Some(row) if rows.len() == STORE_PAGE as usize => row.seq,
            _ => floor - 1,
        };
        if rows.is_empty() {
            return Ok(None);
        }
        let mut chunk = String::new();
        for row in &rows {
            chunk.push_str(&sse_frame(
                kind::RESPONSE_OUTPUT_ITEM_DONE,
                row.seq,
                &item_done_json(row),
            ));
        }
        Ok(Some(Bytes::from(chunk)))
    }

    fn done(&mut self) -> Option<Bytes> {
        self.finished = true;
        Some(Bytes::from_static(SSE_DONE.as_bytes()))
    }
}
