//! One actor per live session (DESIGN §5.5): a task that owns the session's status, its stream
//! subscribers (a bounded queue each; a subscriber that falls behind is dropped, never waited for), its
//! recent-event buffer for `Last-Event-ID` replay, and every durable write to the session's items, so
//! item positions and event sequence numbers stay gapless and ordered without any global lock.
//!
//! Other parts talk to an actor only through [`SessionHandle`] (commands over a channel). The runner
//! relay, when it lands, calls [`SessionHandle::publish`] for transient runner events and
//! [`SessionHandle::append_item`] for durable ones, and [`SessionHandle::set_status`] for status.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use omnigent_proto::api::{SessionStatus, WireItem};
use omnigent_proto::events::{ServerEvent, sse_frame};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::store::{ItemRow, NewItem, Store, StoreError};

/// Sequence numbers are reserved in the store in blocks this big, so they never repeat across restarts
/// while costing one write per block instead of one per event.
const SEQ_BLOCK: u64 = 1000;
/// Commands queued per actor before senders wait.
const COMMAND_QUEUE: usize = 256;
/// Most durable items replayed from the store for one reconnect.
const MAX_STORE_REPLAY: u32 = 10_000;

/// Sizes an actor works with.
#[derive(Debug, Clone, Copy)]
pub struct ActorLimits {
    /// Recent events kept for `Last-Event-ID` replay.
    pub replay_buffer: usize,
    /// Bytes of recent events kept for replay.
    pub replay_buffer_bytes: usize,
    /// Stop after this long with no subscriber and no command.
    pub idle: std::time::Duration,
    /// Queue per subscriber; a subscriber this far behind is dropped.
    pub subscriber_queue: usize,
}

/// What a stream subscriber receives.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// One SSE frame, already encoded, with its sequence number.
    Event { seq: u64, frame: Bytes },
    /// The session was deleted: write `[DONE]` and end.
    Done,
}

/// A new stream subscription: frames to write first (ready heartbeat, then replay), then the live queue.
#[derive(Debug)]
pub struct Subscription {
    /// The id the ready heartbeat carried (the client's position after it).
    pub ready_seq: u64,
    pub backlog: Vec<Outbound>,
    pub live: mpsc::Receiver<Outbound>,
}

/// Why an actor command failed.
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("Session not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the session's actor stopped (the server is shutting down); retry")]
    Gone,
    #[error("event has no string `type`")]
    Untyped,
}

/// Commands an actor handles, one at a time, in arrival order.
#[derive(Debug)]
pub enum Command {
    /// Register a stream subscriber; replay what it missed after `after`.
    Subscribe {
        after: Option<u64>,
        reply: oneshot::Sender<Result<Subscription, ActorError>>,
    },
    /// Broadcast a transient event (a JSON object with `type`); answers its sequence number.
    Publish {
        event: Value,
        reply: oneshot::Sender<Result<u64, ActorError>>,
    },
    /// Persist an item at the next position and broadcast it as `response.output_item.done`.
    AppendItem {
        item: NewItem,
        reply: oneshot::Sender<Result<(ItemRow, u64), ActorError>>,
    },
    /// Record the status and broadcast `session.status`.
    SetStatus {
        status: SessionStatus,
        response_id: Option<String>,
        error: Option<Value>,
        reply: oneshot::Sender<Result<u64, ActorError>>,
    },
    /// Delete the session: subscribers get `[DONE]`, the actor ends.
    Delete {
        reply: oneshot::Sender<Result<(), ActorError>>,
    },
}

impl Command {
    fn fail(self, err: impl Fn() -> ActorError) {
        // A dropped reply receiver means the caller went away; nothing to do.
        match self {
            Command::Subscribe { reply, .. } => drop(reply.send(Err(err()))),
            Command::Publish { reply, .. } => drop(reply.send(Err(err()))),
            Command::AppendItem { reply, .. } => drop(reply.send(Err(err()))),
            Command::SetStatus { reply, .. } => drop(reply.send(Err(err()))),
            Command::Delete { reply } => drop(reply.send(Err(err()))),
        }
    }
}

/// A cheap, cloneable address of one session's actor.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    generation: u64,
    tx: mpsc::Sender<Command>,
}

/// The registry of live session actors.
#[derive(Debug, Clone)]
pub struct Sessions {
    inner: Arc<SessionsInner>,
}

#[derive(Debug)]
struct SessionsInner {
    store: Store,
    limits: ActorLimits,
    /// Held only for lookups and inserts, never across an await.
    map: Mutex<HashMap<String, SessionHandle>>,
    generation: AtomicU64,
    tracker: TaskTracker,
}

impl Sessions {
    pub fn new(store: Store, limits: ActorLimits) -> Self {
        Sessions {
            inner: Arc::new(SessionsInner {
                store,
                limits,
                map: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// Number of live actors.
    pub fn live(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionHandle>> {
        // A panic while holding this lock cannot leave the map half-updated (single insert/remove).
        self.inner.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The actor of `session_id`, started if none is running. The id must be canonical.
    fn handle(&self, session_id: &str) -> SessionHandle {
        let mut map = self.lock();
        if let Some(h) = map.get(session_id).filter(|h| !h.tx.is_closed()) {
            return h.clone();
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let handle = SessionHandle { generation, tx };
        map.insert(session_id.to_owned(), handle.clone());
        drop(map);
        let actor = Actor {
            id: session_id.to_owned(),
            generation,
            store: self.inner.store.clone(),
            limits: self.inner.limits,
            registry: self.clone(),
            status: SessionStatus::Idle,
            next_seq: 1,
            reserved: 0,
            floor: 1,
            buffer: VecDeque::new(),
            buffer_bytes: 0,
            subscribers: Vec::new(),
        };
        self.inner.tracker.spawn(actor.run(rx));
        handle
    }

    fn forget(&self, session_id: &str, generation: u64) {
        let mut map = self.lock();
        if map
            .get(session_id)
            .is_some_and(|h| h.generation == generation)
        {
            map.remove(session_id);
        }
    }

    /// Send one command to the session's actor, restarting it once if it had just stopped.
    async fn call<T>(
        &self,
        session_id: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, ActorError>>) -> Command,
    ) -> Result<T, ActorError> {
        let (reply, answer) = oneshot::channel();
        let mut cmd = make(reply);
        for _ in 0..2 {
            match self.handle(session_id).tx.send(cmd).await {
                Ok(()) => return answer.await.map_err(|_| ActorError::Gone)?,
                Err(mpsc::error::SendError(back)) => cmd = back,
            }
        }
        Err(ActorError::Gone)
    }

    /// Subscribe to a session's stream, replaying what came after `after`.
    pub async fn subscribe(
        &self,
        session_id: &str,
        after: Option<u64>,
    ) -> Result<Subscription, ActorError> {
        self.call(session_id, |reply| Command::Subscribe { after, reply })
            .await
    }

    /// Broadcast a transient event (a JSON object with a string `type`).
    pub async fn publish(&self, session_id: &str, event: Value) -> Result<u64, ActorError> {
        self.call(session_id, |reply| Command::Publish { event, reply })
            .await
    }

    /// Persist an item and broadcast it; answers the stored row and its sequence number.
    pub async fn append_item(
        &self,
        session_id: &str,
        item: NewItem,
    ) -> Result<(ItemRow, u64), ActorError> {
        self.call(session_id, |reply| Command::AppendItem { item, reply })
            .await
    }

    /// Record and broadcast a status.
    pub async fn set_status(
        &self,
        session_id: &str,
        status: SessionStatus,
        response_id: Option<String>,
        error: Option<Value>,
    ) -> Result<u64, ActorError> {
        self.call(session_id, |reply| Command::SetStatus {
            status,
            response_id,
            error,
            reply,
        })
        .await
    }

    /// Delete a session through its actor, so open streams end with `[DONE]`.
    pub async fn delete(&self, session_id: &str) -> Result<(), ActorError> {
        self.call(session_id, |reply| Command::Delete { reply })
            .await
    }

    /// Stop every actor after it has finished the commands already queued (in-flight writes complete),
    /// waiting at most `grace`.
    pub async fn close(&self, grace: std::time::Duration) {
        self.lock().clear();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            warn!("session actors did not stop within {grace:?}");
        }
    }
}

/// The task behind one session.
struct Actor {
    id: String,
    generation: u64,
    store: Store,
    limits: ActorLimits,
    registry: Sessions,
    status: SessionStatus,
    /// Next sequence number to hand out.
    next_seq: u64,
    /// Highest sequence number recorded in the store as possibly used.
    reserved: u64,
    /// Every event this actor published with a sequence ≥ `floor` is still in `buffer`.
    floor: u64,
    buffer: VecDeque<(u64, Bytes)>,
    buffer_bytes: usize,
    subscribers: Vec<mpsc::Sender<Outbound>>,
}

/// Why an actor's loop ended.
enum Exit {
    /// The session is gone: refuse what is queued.
    Gone,
    /// Idle: hand what is queued to a fresh actor.
    Idle,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let exit = match self.store.actor_state(&self.id).await {
            Ok(Some((status, reserved))) => {
                self.status = SessionStatus::parse(&status).unwrap_or_default();
                self.reserved = reserved;
                self.next_seq = reserved + 1;
                self.floor = self.next_seq;
                debug!(session_id = %self.id, first_seq = self.next_seq, "session actor started");
                self.serve(&mut rx).await
            }
            Ok(None) => Exit::Gone,
            Err(e) => {
                warn!(session_id = %self.id, "session actor cannot load its session: {e}");
                Exit::Gone
            }
        };
        // Leave the registry first, so new commands start a fresh actor, then deal with what is queued.
        self.registry.forget(&self.id, self.generation);
        rx.close();
        while let Some(cmd) = rx.recv().await {
            match exit {
                Exit::Gone => cmd.fail(|| ActorError::NotFound),
                Exit::Idle => {
                    if let Err(mpsc::error::SendError(cmd)) =
                        self.registry.handle(&self.id).tx.send(cmd).await
                    {
                        cmd.fail(|| ActorError::Gone);
                    }
                }
            }
        }
    }

    async fn serve(&mut self, rx: &mut mpsc::Receiver<Command>) -> Exit {
        loop {
            let cmd = if self.subscribers.iter().any(|s| !s.is_closed()) {
                rx.recv().await
            } else {
                match tokio::time::timeout(self.limits.idle, rx.recv()).await {
                    Ok(cmd) => cmd,
                    Err(_) => {
                        debug!(session_id = %self.id, "session actor idle; stopping");
                        return Exit::Idle;
                    }
                }
            };
            let Some(cmd) = cmd else {
                // Every handle is gone: the server is shutting down.
                return Exit::Idle;
            };
            if self.handle(cmd).await.is_break() {
                return Exit::Gone;
            }
        }
    }

    async fn handle(&mut self, cmd: Command) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        match cmd {
            Command::Subscribe { after, reply } => {
                let result = self.subscribe(after).await;
                let _ = reply.send(result);
            }
            Command::Publish { event, reply } => {
                let result = self.publish(event).await;
                let _ = reply.send(result);
            }
            Command::AppendItem { item, reply } => {
                let result = self.append_item(item).await;
                let gone = matches!(result, Err(ActorError::NotFound));
                let _ = reply.send(result);
                if gone {
                    self.end_streams();
                    return Break(());
                }
            }
            Command::SetStatus {
                status,
                response_id,
                error,
                reply,
            } => {
                let result = self.set_status(status, response_id, error).await;
                let _ = reply.send(result);
            }
            Command::Delete { reply } => {
                let result = match self.store.delete_session(&self.id).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(ActorError::NotFound),
                    Err(e) => Err(ActorError::Store(e)),
                };
                let stop = result.is_ok() || matches!(result, Err(ActorError::NotFound));
                let _ = reply.send(result);
                if stop {
                    self.end_streams();
                    return Break(());
                }
            }
        }
        Continue(())
    }

    /// Take the next sequence number, reserving a new block in the store when the last one is used up.
    async fn take_seq(&mut self) -> Result<u64, ActorError> {
        if self.next_seq > self.reserved {
            let upto = self.reserved.max(self.next_seq - 1) + SEQ_BLOCK;
            self.store.reserve_seq(&self.id, upto).await?;
            self.reserved = upto;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Encode, buffer and fan out one event under `seq`.
    fn emit(&mut self, seq: u64, event_type: &str, json: &str) {
        let frame = Bytes::from(sse_frame(event_type, seq, json));
        self.buffer_bytes += frame.len();
        self.buffer.push_back((seq, frame.clone()));
        while self.buffer.len() > self.limits.replay_buffer
            || (self.buffer_bytes > self.limits.replay_buffer_bytes && !self.buffer.is_empty())
        {
            if let Some((old, f)) = self.buffer.pop_front() {
                self.floor = old + 1;
                self.buffer_bytes -= f.len();
            }
        }
        let id = &self.id;
        self.subscribers.retain(|tx| {
            match tx.try_send(Outbound::Event {
                seq,
                frame: frame.clone(),
            }) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(session_id = %id, "dropping a stream subscriber that fell {} events behind", tx.max_capacity());
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    async fn publish(&mut self, event: Value) -> Result<u64, ActorError> {
        let event_type = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or(ActorError::Untyped)?
            .to_owned();
        let seq = self.take_seq().await?;
        self.emit(seq, &event_type, &event.to_string());
        Ok(seq)
    }

    async fn append_item(&mut self, item: NewItem) -> Result<(ItemRow, u64), ActorError> {
        let seq = self.take_seq().await?;
        let row = self
            .store
            .append_item(&self.id, &item, seq)
            .await?
            .ok_or(ActorError::NotFound)?;
        let json = item_done_json(&row);
        self.emit(seq, "response.output_item.done", &json);
        Ok((row, seq))
    }

    async fn set_status(
        &mut self,
        status: SessionStatus,
        response_id: Option<String>,
        error: Option<Value>,
    ) -> Result<u64, ActorError> {
        if status != self.status {
            self.store.set_status(&self.id, status.as_str()).await?;
            self.status = status;
        }
        let mut event = ServerEvent::status(&self.id, status);
        if let ServerEvent::Status {
            response_id: r,
            error: e,
            ..
        } = &mut event
        {
            *r = response_id;
            *e = error;
        }
        let seq = self.take_seq().await?;
        self.emit(seq, event.event_type(), &to_json(&event));
        Ok(seq)
    }

    async fn subscribe(&mut self, after: Option<u64>) -> Result<Subscription, ActorError> {
        let head = self.next_seq - 1;
        let after = after.filter(|n| *n < head);
        let ready_seq = after.unwrap_or(head);
        let mut backlog = Vec::new();
        let heartbeat = ServerEvent::heartbeat(Some(crate::now_secs_f64()));
        backlog.push(Outbound::Event {
            seq: ready_seq,
            frame: Bytes::from(sse_frame(
                heartbeat.event_type(),
                ready_seq,
                &to_json(&heartbeat),
            )),
        });
        if let Some(n) = after {
            if n + 1 < self.floor {
                // Older than the buffer: the durable items from the store (transient events are gone).
                let items = self
                    .store
                    .items_between_seq(&self.id, n, self.floor, MAX_STORE_REPLAY)
                    .await?;
                for row in items {
                    let frame =
                        sse_frame("response.output_item.done", row.seq, &item_done_json(&row));
                    backlog.push(Outbound::Event {
                        seq: row.seq,
                        frame: Bytes::from(frame),
                    });
                }
            }
            for (seq, frame) in self.buffer.iter().filter(|(seq, _)| *seq > n) {
                backlog.push(Outbound::Event {
                    seq: *seq,
                    frame: frame.clone(),
                });
            }
        }
        let (tx, live) = mpsc::channel(self.limits.subscriber_queue.max(1));
        self.subscribers.push(tx);
        Ok(Subscription {
            ready_seq,
            backlog,
            live,
        })
    }

    /// Tell every subscriber the stream is over.
    fn end_streams(&mut self) {
        for tx in self.subscribers.drain(..) {
            let _ = tx.try_send(Outbound::Done);
        }
    }
}

/// `response.output_item.done` for a stored item, as JSON text.
fn item_done_json(row: &ItemRow) -> String {
    let event = ServerEvent::OutputItemDone {
        sequence_number: None,
        item: serde_json::to_value(wire_item(row)).unwrap_or(Value::Null),
    };
    to_json(&event)
}

/// The flat wire form of a stored item.
pub fn wire_item(row: &ItemRow) -> WireItem {
    WireItem {
        id: row.id.clone(),
        response_id: row.response_id.clone(),
        kind: row.kind.clone(),
        status: row.status.clone(),
        created_at: row.created_at_ms / 1000,
        data: row.data.clone(),
    }
}

fn to_json(event: &ServerEvent) -> String {
    // Serializing these plain data types cannot fail (string keys, no non-finite floats from us).
    serde_json::to_string(event).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::store::{DatabaseLocation, NewSession, SessionRow};

    fn row(id: &str) -> SessionRow {
        SessionRow {
            id: id.to_owned(),
            agent_id: "a".repeat(32),
            title: None,
            labels: Default::default(),
            status: "idle".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            archived: false,
            kind: "default".into(),
            parent_session_id: None,
            root_session_id: id.to_owned(),
            sub_agent_name: None,
            runner_id: None,
            host_id: None,
            workspace: None,
            git_branch: None,
            model_override: None,
            reasoning_effort: None,
            cost_control_mode_override: None,
            external_session_id: None,
            terminal_launch_args: None,
        }
    }

    async fn wait_live(sessions: &Sessions, want: usize) {
        for _ in 0..100 {
            if sessions.live() == want {
                return;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(sessions.live(), want);
    }

    #[tokio::test]
    async fn an_idle_actor_stops_unless_watched_and_sequences_never_repeat() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("t.db")), 1)
            .await
            .expect("store");
        let id = omnigent_proto::ids::new_id();
        store
            .create_session(&NewSession { row: row(&id) }, &[])
            .await
            .expect("create");
        let idle = Duration::from_secs(600);
        let sessions = Sessions::new(
            store.clone(),
            ActorLimits {
                replay_buffer: 16,
                replay_buffer_bytes: 1 << 20,
                idle,
                subscriber_queue: 16,
            },
        );
        let first = sessions
            .publish(&id, json!({"type": "x"}))
            .await
            .expect("publish");
        assert_eq!(first, 1);
        assert_eq!(sessions.live(), 1);

        // Idle for longer than the limit: the actor stops and leaves the registry.
        tokio::time::pause();
        tokio::time::advance(idle + Duration::from_secs(1)).await;
        wait_live(&sessions, 0).await;
        tokio::time::resume();

        // A new actor continues after the reserved block: ids never repeat.
        let second = sessions
            .publish(&id, json!({"type": "x"}))
            .await
            .expect("publish");
        assert!(second > SEQ_BLOCK, "{second}");

        // A live subscriber keeps the actor running however long it is quiet.
        let sub = sessions.subscribe(&id, None).await.expect("subscribe");
        tokio::time::pause();
        tokio::time::advance(idle * 3).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sessions.live(), 1);
        tokio::time::resume();
        drop(sub);
        let third = sessions
            .publish(&id, json!({"type": "x"}))
            .await
            .expect("publish");
        assert_eq!(third, second + 1);

        // Publishing to a session that does not exist is NotFound, and the actor goes away.
        let missing = omnigent_proto::ids::new_id();
        let err = sessions
            .publish(&missing, json!({"type": "x"}))
            .await
            .expect_err("missing");
        assert!(matches!(err, ActorError::NotFound));
        wait_live(&sessions, 1).await;
        store.close().await;
    }

    #[tokio::test]
    async fn the_replay_buffer_is_bounded_by_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("t.db")), 1)
            .await
            .expect("store");
        let id = omnigent_proto::ids::new_id();
        store
            .create_session(&NewSession { row: row(&id) }, &[])
            .await
            .expect("create");
        let sessions = Sessions::new(
            store.clone(),
            ActorLimits {
                replay_buffer: 10_000,
                replay_buffer_bytes: 64 * 1024,
                idle: Duration::from_secs(600),
                subscriber_queue: 16,
            },
        );
        let big = "z".repeat(10 * 1024);
        for _ in 0..50 {
            sessions
                .publish(
                    &id,
                    json!({"type": "response.output_text.delta", "delta": big}),
                )
                .await
                .expect("publish");
        }
        // Resuming from the start replays only what fits in 64 KiB (transient events are not in the store).
        let sub = sessions.subscribe(&id, Some(0)).await.expect("subscribe");
        let replayed = sub.backlog.len() - 1;
        assert!((1..=6).contains(&replayed), "{replayed}");
        store.close().await;
    }
}
