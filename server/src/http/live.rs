//! Routes a live web client needs (reference §1.2, §7): `WS /v1/sessions/updates`, `PUT …/read-state`,
//! `GET …/agent`, `GET …/child_sessions`, `GET …/resources/terminals`.
//!
//! The updates socket: the client names the sessions it shows (`watch`), gets a `snapshot` of them, then
//! `changed` / `removed` as they happen (the store's change notices, runner and host liveness events, and a
//! re-read every [`UPDATES_RESCAN_SECS`] as a backstop), sessions created anywhere as `changed`, and a
//! `heartbeat` after twice the SSE heartbeat interval (30 s by default) without a frame.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use omnigent_proto::api::{
    DEFAULT_SESSIONS_LIMIT, ErrorCode, ListEnvelope, Order, PageQuery, SessionListItem,
};
use omnigent_proto::ids::canonical_id;
use omnigent_proto::live::{
    ChildSessionSummary, MAX_UPDATES_FRAME_BYTES, MAX_WATCHED, ReadStatePut, UPDATES_RESCAN_SECS,
    UpdatesServerFrame,
};
use serde_json::Value;
use tokio::time::{Instant, MissedTickBehavior};

use super::sessions::{check_limit, live_list_items};
use super::{ApiError, AppState, JsonBody, Q, json, session_id};
use crate::store::SessionRow;
use crate::updates::{Change, Notice};

/// Close code for a page from another site (the tunnels' 4403).
const FORBIDDEN_ORIGIN: u16 = 4403;
/// Most sub-agents of one session listed.
const MAX_CHILDREN: u32 = 10_000;

// ---------------------------------------------------------------------------------------------------------
// WS /v1/sessions/updates

/// `WS /v1/sessions/updates`. A request that is not a WebSocket upgrade gets a JSON 400; a page from another
/// site (an `Origin` that is not loopback or `omnigent://internal`) is upgraded and closed 4403 before any
/// frame is read, as the tunnels do.
pub async fn updates(
    State(st): State<AppState>,
    headers: HeaderMap,
    axum::Extension(caller): axum::Extension<super::auth::Caller>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::invalid(format!(
                "/v1/sessions/updates is a WebSocket: open it with a WebSocket client ({e})"
            ))
            .into_response();
        }
    };
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("?").to_owned());
    // Loopback or `omnigent://internal`, or with a device token this server's own origin (http/auth.rs).
    let allowed = caller.origin_ok;
    let revoked = caller.device.map(|d| d.revoked);
    ws.max_message_size(MAX_UPDATES_FRAME_BYTES)
        .max_frame_size(MAX_UPDATES_FRAME_BYTES)
        .on_upgrade(move |mut socket| async move {
            if !allowed {
                tracing::warn!(
                    origin = origin.as_deref().unwrap_or(""),
                    "session updates socket refused: forbidden origin"
                );
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: FORBIDDEN_ORIGIN,
                        reason: "forbidden origin".into(),
                    })))
                    .await;
                return;
            }
            match revoked {
                // A revoked device's socket closes at once (dropping it closes the connection).
                Some(revoked) => {
                    tokio::select! {
                        () = revoked.cancelled() => {}
                        () = Watcher::new(st, socket).run() => {}
                    }
                }
                None => Watcher::new(st, socket).run().await,
            }
        })
}

/// One updates socket.
struct Watcher {
    st: AppState,
    /// Behind a lock only so the watcher is `Sync` (never contended: the loop owns it).
    socket: tokio::sync::Mutex<WebSocket>,
    /// What the client watches, in its order (deduplicated, at most [`MAX_WATCHED`]).
    watched: Vec<String>,
    /// The last entry sent per watched id.
    last_sent: HashMap<String, SessionListItem>,
    last_frame: Instant,
    heartbeat_after: Duration,
}

/// Why the socket loop ends.
struct Gone;

impl Watcher {
    fn new(st: AppState, socket: WebSocket) -> Self {
        let heartbeat_after = st.heartbeat_interval.saturating_mul(2);
        Watcher {
            st,
            socket: tokio::sync::Mutex::new(socket),
            watched: Vec::new(),
            last_sent: HashMap::new(),
            last_frame: Instant::now(),
            heartbeat_after,
        }
    }

    async fn run(mut self) {
        let mut changes = self.st.store.updates().subscribe();
        let mut runners = self.st.sessions.runners().subscribe();
        let mut hosts = self.st.hosts.registry().subscribe();
        let mut rescan = tokio::time::interval(Duration::from_secs(UPDATES_RESCAN_SECS));
        rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        rescan.reset();
        let stop = self.st.stop.clone();
        loop {
            let heartbeat_at = self.last_frame + self.heartbeat_after;
            let step = tokio::select! {
                () = stop.cancelled() => {
                    let _ = self.socket.get_mut().send(Message::Close(Some(CloseFrame {
                        code: 1001,
                        reason: "server shutting down".into(),
                    }))).await;
                    return;
                }
                msg = self.socket.get_mut().recv() => match msg {
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        self.error("send JSON text frames, not binary ones").await
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                },
                notice = changes.next() => match notice {
                    Notice::Change(Change::Created(id)) => self.on_created(id).await,
                    Notice::Change(Change::Changed(id) | Change::Removed(id)) => {
                        if self.watched.contains(&id) {
                            self.diff(std::slice::from_ref(&id)).await
                        } else {
                            Ok(())
                        }
                    }
                    Notice::Lagged => self.diff_all().await,
                    Notice::Closed => return,
                },
                // A runner or host came or went: the liveness of the sessions bound to it changed.
                _ = runners.recv() => self.diff_all().await,
                _ = hosts.recv() => self.diff_all().await,
                _ = rescan.tick() => self.diff_all().await,
                () = tokio::time::sleep_until(heartbeat_at) => {
                    self.send(&UpdatesServerFrame::Heartbeat).await
                }
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&mut self, frame: &UpdatesServerFrame) -> Result<(), Gone> {
        let text = serde_json::to_string(frame).map_err(|_| Gone)?;
        self.socket
            .get_mut()
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| Gone)?;
        self.last_frame = Instant::now();
        Ok(())
    }

    async fn error(&mut self, message: impl Into<String>) -> Result<(), Gone> {
        self.send(&UpdatesServerFrame::Error {
            code: "invalid_input".to_owned(),
            message: message.into(),
        })
        .await
    }

    /// A client frame: only `watch` is understood; anything else gets an `error` frame and changes nothing.
    async fn on_text(&mut self, text: &str) -> Result<(), Gone> {
        const SHAPE: &str = r#"send {"type":"watch","session_ids":["<id>", …]}"#;
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return self
                    .error(format!("the frame is not JSON ({e}); {SHAPE}"))
                    .await;
            }
        };
        match value.get("type").and_then(Value::as_str) {
            Some("watch") => {}
            Some(other) => {
                return self
                    .error(format!("unknown frame type `{other}`; {SHAPE}"))
                    .await;
            }
            None => {
                return self
                    .error(format!("the frame has no string `type`; {SHAPE}"))
                    .await;
            }
        }
        let Some(ids) = value.get("session_ids").and_then(Value::as_array) else {
            return self
                .error(format!(
                    "`session_ids` must be a list of session ids; {SHAPE}"
                ))
                .await;
        };
        let mut seen = HashSet::new();
        let mut watched = Vec::new();
        let mut not_ids = 0usize;
        let mut first_bad = None;
        for raw in ids {
            match raw.as_str().and_then(canonical_id) {
                Some(id) => {
                    if seen.insert(id.clone()) {
                        watched.push(id);
                    }
                }
                None => {
                    not_ids += 1;
                    first_bad.get_or_insert_with(|| raw.to_string());
                }
            }
        }
        let distinct = watched.len();
        watched.truncate(MAX_WATCHED);
        self.watched = watched;
        self.last_sent.clear();
        let rows = self.rows(&self.watched.clone()).await;
        let items = match rows {
            Ok(rows) => self.entries(&rows).await,
            Err(e) => Err(e),
        };
        let items = match items {
            Ok(items) => items,
            Err(e) => {
                return self
                    .error(format!("cannot read the watched sessions: {}", e.message))
                    .await;
            }
        };
        for item in &items {
            self.last_sent.insert(item.id.clone(), item.clone());
        }
        self.send(&UpdatesServerFrame::Snapshot { items }).await?;
        if distinct > MAX_WATCHED {
            self.error(format!(
                "a watch may name at most {MAX_WATCHED} sessions; it named {distinct}, so only the first \
                 {MAX_WATCHED} are watched"
            ))
            .await?;
        }
        if let Some(bad) = first_bad {
            self.error(format!(
                "{not_ids} of session_ids are not session ids (32 hex; the first is {bad}); they are not watched"
            ))
            .await?;
        }
        Ok(())
    }

    /// A session created anywhere: pushed as `changed` even when not watched (the client adds it and watches
    /// it with its next `watch`).
    async fn on_created(&mut self, id: String) -> Result<(), Gone> {
        if self.watched.contains(&id) {
            return self.diff(std::slice::from_ref(&id)).await;
        }
        let Ok(rows) = self.rows(std::slice::from_ref(&id)).await else {
            return Ok(());
        };
        match self.entries(&rows).await {
            Ok(items) if !items.is_empty() => {
                self.send(&UpdatesServerFrame::Changed { items }).await
            }
            _ => Ok(()),
        }
    }

    async fn diff_all(&mut self) -> Result<(), Gone> {
        if self.watched.is_empty() {
            return Ok(());
        }
        let ids = self.watched.clone();
        self.diff(&ids).await
    }

    /// Re-read `ids` (watched) and send what differs from what the client last got.
    async fn diff(&mut self, ids: &[String]) -> Result<(), Gone> {
        let Ok(rows) = self.rows(ids).await else {
            // A failed read is retried at the next notice or rescan.
            return Ok(());
        };
        let Ok(items) = self.entries(&rows).await else {
            return Ok(());
        };
        let mut current: HashMap<String, SessionListItem> =
            items.into_iter().map(|i| (i.id.clone(), i)).collect();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for id in ids {
            match current.remove(id) {
                Some(item) => {
                    if self.last_sent.get(id) != Some(&item) {
                        self.last_sent.insert(id.clone(), item.clone());
                        changed.push(item);
                    }
                }
                None => {
                    if self.last_sent.remove(id).is_some() {
                        removed.push(id.clone());
                    }
                }
            }
        }
        if !changed.is_empty() {
            self.send(&UpdatesServerFrame::Changed { items: changed })
                .await?;
        }
        if !removed.is_empty() {
            self.send(&UpdatesServerFrame::Removed { ids: removed })
                .await?;
        }
        Ok(())
    }

    async fn rows(&self, ids: &[String]) -> Result<Vec<SessionRow>, ApiError> {
        let mut rows = self.st.store.existing_sessions(ids).await?;
        let order: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        rows.sort_by_key(|r| order.get(r.id.as_str()).copied().unwrap_or(usize::MAX));
        Ok(rows)
    }

    async fn entries(&self, rows: &[SessionRow]) -> Result<Vec<SessionListItem>, ApiError> {
        live_list_items(&self.st, rows).await
    }
}

// ---------------------------------------------------------------------------------------------------------
// Per-session routes

/// `PUT /v1/sessions/{id}/read-state`: 204. Stored (0.19.1 keeps it in memory only); read back as
/// `viewer_last_seen` / `viewer_unread` of the list entries. 404 for an unknown session (0.19.1 answers 204).
pub async fn put_read_state(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<ReadStatePut>,
) -> Result<Response, ApiError> {
    let id = session_id(&raw)?;
    if !st.store.set_read_state(&id, body).await? {
        return Err(ApiError::session_not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/sessions/{id}/agent`: the session's agent, as `GET /v1/agents` lists it.
pub async fn agent(
    State(st): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let row = session_row(&st, &raw).await?;
    if let Some(agent) = crate::agents::find(&row.agent_id) {
        return Ok(json(StatusCode::OK, agent));
    }
    let uploaded = st.store.get_agent(&row.agent_id).await?;
    let agent = uploaded.as_ref().map(super::agents::wire_agent).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!(
                "the agent `{}` of this session is not one this server knows; GET /v1/agents lists them",
                row.agent_id
            ),
        )
    })?;
    Ok(json(StatusCode::OK, &agent))
}

/// `GET /v1/sessions/{id}/child_sessions`: the session's sub-agent sessions, newest first by default,
/// paginated like the other lists (`limit` default 20, `after`, `before`, `order`).
pub async fn child_sessions(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    Q(q): Q<PageQuery>,
) -> Result<Response, ApiError> {
    let parent = session_row(&st, &raw).await?;
    let limit = check_limit(q.limit, DEFAULT_SESSIONS_LIMIT)? as usize;
    let mut rows = st.store.child_sessions(&parent.id, MAX_CHILDREN).await?;
    if q.order.unwrap_or(Order::Desc) == Order::Desc {
        rows.reverse();
    }
    let position = |name: &str, cursor: &str| {
        let id = canonical_id(cursor);
        rows.iter()
            .position(|r| Some(&r.id) == id.as_ref())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "{name}=`{cursor}` names no sub-agent session of this session; start from the first page"
                ))
            })
    };
    let start = match q.after.as_deref() {
        Some(c) => position("after", c)? + 1,
        None => 0,
    };
    let end = match q.before.as_deref() {
        Some(c) => position("before", c)?,
        None => rows.len(),
    };
    let window = rows.get(start..end.max(start)).unwrap_or(&[]);
    // With only `before`, the page is the one just before the cursor.
    let page = if q.before.is_some() && q.after.is_none() {
        &window[window.len().saturating_sub(limit)..]
    } else {
        &window[..window.len().min(limit)]
    };
    let has_more = page.len() < window.len();
    let data: Vec<ChildSessionSummary> = page
        .iter()
        .map(|row| ChildSessionSummary {
            pending_elicitations_count: st.sessions.pending().count(&row.id),
            ..child_summary(row)
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &ListEnvelope::new(data, has_more, |c| c.id.as_str()),
    ))
}

fn child_summary(row: &SessionRow) -> ChildSessionSummary {
    let (tool, session_name) = match row.title.as_deref().and_then(|t| t.split_once(':')) {
        Some((tool, name)) => (Some(tool.to_owned()), Some(name.to_owned())),
        None => (None, row.sub_agent_name.clone()),
    };
    ChildSessionSummary {
        id: row.id.clone(),
        object: "child_session".to_owned(),
        parent_session_id: row.parent_session_id.clone().unwrap_or_default(),
        title: row.title.clone(),
        task_summary: None,
        tool,
        session_name,
        kind: row.kind.clone(),
        created_at: row.created_at_ms / 1000,
        updated_at: row.updated_at_ms / 1000,
        agent_id: Some(row.agent_id.clone()),
        agent_name: row.agent_name().map(str::to_owned),
        current_task_id: None,
        current_task_status: None,
        busy: matches!(row.status.as_str(), "running" | "waiting"),
        labels: row.labels.clone(),
        last_task_error: None,
        last_message_preview: None,
        pending_elicitations_count: 0,
        routed_model: row.model_override.clone(),
        routing_decision_id: None,
    }
}

/// `GET /v1/sessions/{id}/resources/terminals`: an empty list (this server has no terminals yet; 0.19.1
/// proxies the call to the runner and answers 409 when none is bound).
pub async fn terminals(
    State(st): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    session_row(&st, &raw).await?;
    Ok(json(
        StatusCode::OK,
        &ListEnvelope::<Value>::new(Vec::new(), false, |_| ""),
    ))
}

async fn session_row(st: &AppState, raw: &str) -> Result<SessionRow, ApiError> {
    let id = session_id(raw)?;
    st.store
        .get_session(&id)
        .await?
        .ok_or_else(ApiError::session_not_found)
}

/// `GET /v1/sessions/{id}/stream` query: `idle=true` from a backgrounded tab (shown in `session.presence`);
/// `presence=true` (ours) to receive `session.presence` (see `crate::presence`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct StreamQuery {
    pub idle: Option<bool>,
    pub presence: Option<bool>,
}

/// The item of an `external_conversation_item` in 0.19.1's shape, `data: {item_type, item_data,
/// response_id?}`, as one item object (`item_data`'s fields with `type` and `response_id`, a fresh
/// `resp_…` when none is given); `None` when `data` has no `item_type` (our older shapes: `data.item` or
/// the item itself). `message_id` and `source_id` are accepted and not used.
pub(super) fn python_external_item(
    data: &serde_json::Map<String, Value>,
) -> Result<Option<Value>, ApiError> {
    let Some(kind) = data.get("item_type") else {
        return Ok(None);
    };
    let kind = kind.as_str().ok_or_else(|| {
        ApiError::invalid("external_conversation_item requires a string data.item_type")
    })?;
    let Some(Value::Object(fields)) = data.get("item_data") else {
        return Err(ApiError::invalid(
            "external_conversation_item requires object data.item_data",
        ));
    };
    let response_id = match data.get("response_id") {
        None | Some(Value::Null) => format!("resp_{}", omnigent_proto::ids::new_id()),
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(_) => {
            return Err(ApiError::invalid(
                "external_conversation_item data.response_id must be a non-empty string",
            ));
        }
    };
    let mut item = fields.clone();
    item.insert("type".to_owned(), Value::from(kind));
    item.insert("response_id".to_owned(), Value::from(response_id));
    Ok(Some(Value::Object(item)))
}
