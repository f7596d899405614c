//! One actor per live session (DESIGN §5.5): a task that owns the session's status, its event feed (the
//! recent frames every stream subscriber reads at its own cursor, and `Last-Event-ID` replay: see
//! `crate::feed`), and every durable write to the session's items, so item positions and event sequence
//! numbers stay gapless and ordered without any global lock.
//!
//! Other parts talk to an actor only through [`Sessions`] (commands over a channel). The actor also owns its
//! session's runner relay (reference §3.4–3.5): the text buffer, the interrupt fence, the `call_id →
//! response_id` map and the disconnect grace; a child reader task ([`crate::relay::run_reader`]) streams the
//! runner's events to it as [`Command::RunnerEvents`] messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use omnigent_proto::api::{SessionStatus, WireItem};
use omnigent_proto::events::{ServerEvent, sse_frame};
use omnigent_tunnel::RunnerRegistry;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::feed::Feed;
use crate::relay::{self, OpenSpec, ReadyState};
use crate::store::{ItemRow, NewItem, Store, StoreError};

/// Sequence numbers are reserved in the store in blocks this big, so they never repeat across restarts
/// while costing one write per block instead of one per event.
const SEQ_BLOCK: u64 = 1000;
/// Commands queued per actor before senders wait.
const COMMAND_QUEUE: usize = 256;
/// Most queued commands handled before the stream subscribers are woken, and the longest time (short: the
/// first token of a turn must not wait; the subscribers pace their own writes under load).
const WAKE_BATCH: usize = 64;
const WAKE_LATENCY: std::time::Duration = std::time::Duration::from_micros(100);

/// Sizes an actor works with.
#[derive(Debug, Clone, Copy)]
pub struct ActorLimits {
    /// Recent events kept for `Last-Event-ID` replay.
    pub replay_buffer: usize,
    /// Bytes of recent events kept for replay.
    pub replay_buffer_bytes: usize,
    /// Stop after this long with no subscriber and no command.
    pub idle: std::time::Duration,
    /// How long a runner lost mid-turn may take to come back before the turn fails (reference §3.5).
    pub runner_grace: std::time::Duration,
}

/// A new stream subscription: the ready heartbeat to write first, then the feed from `ready_seq` on.
#[derive(Debug)]
pub struct Subscription {
    /// The id the ready heartbeat carried: the subscriber's cursor starts there (with `Last-Event-ID`, at the
    /// client's last event, so the feed and the store replay what it missed).
    pub ready_seq: u64,
    pub ready: Bytes,
    pub feed: Arc<Feed>,
    /// Woken when the feed has news; holding it counts as watching the session.
    pub wake: watch::Receiver<u64>,
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
    /// Persist a turn input and announce it as `session.input.consumed` under the item's own sequence
    /// number, so it comes before any event of the turn it starts and live and resumed streams agree.
    PersistItem {
        item: NewItem,
        reply: oneshot::Sender<Result<ItemRow, ActorError>>,
    },
    /// Make sure the relay to `runner_id` is open (or opening); answers its readiness.
    EnsureRelay {
        runner_id: String,
        reply: oneshot::Sender<Result<watch::Receiver<ReadyState>, ActorError>>,
    },
    /// Interrupt (or stop) the running turn: publish `session.interrupted` and raise the fence.
    Interrupt {
        stop: bool,
        response_id: Option<String>,
        reply: oneshot::Sender<Result<u64, ActorError>>,
    },
    /// The interrupt could not be delivered: lift the fence (and forget an intentional stop).
    LiftFence,
    /// From the relay reader: runner events, in order (those that arrived together, so the subscribers are
    /// woken once for all of them).
    RunnerEvents { epoch: u64, events: Vec<Value> },
    /// From the relay reader: subscribed and initialised on tunnel `generation`.
    RelayReady {
        epoch: u64,
        generation: u64,
        runner_status: Option<String>,
    },
    /// From the relay reader: its stream ended.
    RelayEnded {
        epoch: u64,
        generation: u64,
        why: String,
    },
    /// A tunnel of `runner_id` connected: re-open the relay if this session is bound to it.
    RunnerConnected { runner_id: String, generation: u64 },
    /// The host reported that the process of `runner_id` exited (`host.runner_exited`): a turn running on it
    /// fails with `report` (exit code or signal, and the log tail).
    RunnerExited { runner_id: String, report: String },
    /// The server started and found the session mid-turn (it stopped, or died, during the turn).
    RecoverTurn,
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
            Command::PersistItem { reply, .. } => drop(reply.send(Err(err()))),
            Command::EnsureRelay { reply, .. } => drop(reply.send(Err(err()))),
            Command::Interrupt { reply, .. } => drop(reply.send(Err(err()))),
            Command::LiftFence
            | Command::RunnerEvents { .. }
            | Command::RelayReady { .. }
            | Command::RelayEnded { .. }
            | Command::RunnerConnected { .. }
            | Command::RunnerExited { .. }
            | Command::RecoverTurn => {}
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
    runners: RunnerRegistry,
}

impl Sessions {
    /// Sessions with a runner registry of their own (no runner can connect to it).
    pub fn new(store: Store, limits: ActorLimits) -> Self {
        Self::with_runners(store, limits, RunnerRegistry::default())
    }

    /// Sessions whose relays reach runners through `runners`.
    pub fn with_runners(store: Store, limits: ActorLimits, runners: RunnerRegistry) -> Self {
        Sessions {
            inner: Arc::new(SessionsInner {
                store,
                limits,
                map: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                tracker: TaskTracker::new(),
                runners,
            }),
        }
    }

    /// The runner registry the relays use.
    pub fn runners(&self) -> &RunnerRegistry {
        &self.inner.runners
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
            feed: Arc::new(Feed::new(1, 1, 0)),
            runners: self.inner.runners.clone(),
            weak_self: handle.tx.downgrade(),
            relay: RelayState::default(),
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

    /// Persist a turn input and announce it (`session.input.consumed`); answers the stored row.
    pub async fn persist_item(
        &self,
        session_id: &str,
        item: NewItem,
    ) -> Result<ItemRow, ActorError> {
        self.call(session_id, |reply| Command::PersistItem { item, reply })
            .await
    }

    /// Make sure the session's relay to `runner_id` is open; answers its readiness to wait on.
    pub async fn ensure_relay(
        &self,
        session_id: &str,
        runner_id: &str,
    ) -> Result<watch::Receiver<ReadyState>, ActorError> {
        let runner_id = runner_id.to_owned();
        self.call(session_id, |reply| Command::EnsureRelay {
            runner_id,
            reply,
        })
        .await
    }

    /// Publish `session.interrupted` and fence the cancelled turn's trailing output.
    pub async fn interrupt(
        &self,
        session_id: &str,
        stop: bool,
        response_id: Option<String>,
    ) -> Result<u64, ActorError> {
        self.call(session_id, |reply| Command::Interrupt {
            stop,
            response_id,
            reply,
        })
        .await
    }

    /// Lift the interrupt fence (the interrupt did not reach the runner). Only a live actor has one.
    pub async fn lift_fence(&self, session_id: &str) {
        let handle = self.lock().get(session_id).cloned();
        if let Some(h) = handle {
            let _ = h.tx.send(Command::LiftFence).await;
        }
    }

    /// A tunnel of `runner_id` connected: sessions bound to it re-open their relay (starting their actor).
    pub async fn runner_connected(&self, session_id: &str, runner_id: &str, generation: u64) {
        let cmd = Command::RunnerConnected {
            runner_id: runner_id.to_owned(),
            generation,
        };
        let _ = self.handle(session_id).tx.send(cmd).await;
    }

    /// The process of `runner_id` exited (reported by its host): a turn of this session running on it fails
    /// with `report`; an idle session stays quiet.
    pub async fn runner_exited(&self, session_id: &str, runner_id: &str, report: &str) {
        let cmd = Command::RunnerExited {
            runner_id: runner_id.to_owned(),
            report: report.to_owned(),
        };
        let _ = self.handle(session_id).tx.send(cmd).await;
    }

    /// The server started and found this session mid-turn: its runner gets the grace to come back (and
    /// continue or settle the turn), or the turn fails as `runner_disconnected`.
    pub async fn recover_turn(&self, session_id: &str) {
        let _ = self.handle(session_id).tx.send(Command::RecoverTurn).await;
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
    /// Recent frames, read by the stream subscribers (created once the first sequence number is known).
    feed: Arc<Feed>,
    runners: RunnerRegistry,
    /// The actor's own address, for its relay reader (weak: the reader never keeps the actor alive).
    weak_self: mpsc::WeakSender<Command>,
    relay: RelayState,
}

/// The relay of a session (reference §3.4–3.5, §2.4, §2.6): owned by the actor.
#[derive(Default)]
struct RelayState {
    /// The runner the relay reads from.
    runner_id: Option<String>,
    /// Bumped for every reader, so messages of a replaced reader are ignored.
    epoch: u64,
    /// The current reader task (aborted when dropped) and its readiness.
    reader: Option<Reader>,
    /// Response-scoped text deltas not yet persisted, and their response.
    text: String,
    /// Text of the messages streamed as item-scoped deltas (`message_id`) whose item has not come yet,
    /// oldest first: a turn that ends without it stores what came as an `incomplete` message.
    messages: Vec<(String, String)>,
    response_id: Option<String>,
    model: Option<String>,
    /// `call_id` → `response_id` of completed function calls.
    calls: HashMap<String, String>,
    /// Trailing output of an interrupted turn is dropped while this is up.
    fence: bool,
    /// The turn was stopped on purpose: a lost runner settles to idle, not failed.
    stopping: bool,
    /// When the runner lost mid-turn is given up.
    grace: Option<tokio::time::Instant>,
    /// When to re-open a stream that ended while its runner stayed connected.
    reopen: Option<tokio::time::Instant>,
    /// The session was launched on a host, whose daemon reports every exit of its runner
    /// (`host.runner_exited`).
    host_supervised: bool,
    /// The runner came back without the running turn (a new process): the turn stays open until the host's
    /// exit report fails it, or the grace runs out.
    orphaned: bool,
}

/// Most item-scoped messages a relay assembles at once.
const MAX_OPEN_MESSAGES: usize = 64;

impl RelayState {
    /// An item-scoped delta of `message_id`: more of its text, or (`snapshot`) all of it so far.
    fn message_text(&mut self, message_id: &str, delta: &str, snapshot: bool) {
        if let Some((_, text)) = self.messages.iter_mut().find(|(id, _)| id == message_id) {
            if snapshot {
                text.clear();
            }
            text.push_str(delta);
            return;
        }
        if self.messages.len() >= MAX_OPEN_MESSAGES {
            self.messages.remove(0);
        }
        self.messages
            .push((message_id.to_owned(), delta.to_owned()));
    }
}

struct Reader {
    generation: u64,
    ready: watch::Receiver<ReadyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Actor {
    /// However the actor ends (deleted, idle, the server stopping, a panic), its subscribers are not left
    /// waiting on a feed nobody writes.
    fn drop(&mut self) {
        self.feed.close();
    }
}

/// How soon a stream that ended while its runner stayed connected is re-opened.
const REOPEN_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

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
                self.feed = Arc::new(Feed::new(
                    self.next_seq,
                    self.limits.replay_buffer,
                    self.limits.replay_buffer_bytes,
                ));
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
        let mut batch = 0;
        let mut batch_start = std::time::Instant::now();
        loop {
            // Commands already queued are handled back to back (up to a batch, for at most WAKE_LATENCY) and
            // the subscribers woken once for all of them, not once per event.
            if (batch == 0 || (batch < WAKE_BATCH && batch_start.elapsed() < WAKE_LATENCY))
                && let Ok(cmd) = rx.try_recv()
            {
                if batch == 0 {
                    batch_start = std::time::Instant::now();
                }
                batch += 1;
                if self.handle(cmd).await.is_break() {
                    return Exit::Gone;
                }
                continue;
            }
            batch = 0;
            self.feed.wake();
            let busy = self.feed.subscribers() > 0
                || self.relay.reader.is_some()
                || self.relay.grace.is_some()
                || self.relay.reopen.is_some();
            let idle_at = tokio::time::Instant::now() + self.limits.idle;
            let timer = [self.relay.grace, self.relay.reopen]
                .into_iter()
                .flatten()
                .min()
                .or((!busy).then_some(idle_at));
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                () = sleep_until(timer) => {
                    let now = tokio::time::Instant::now();
                    if self.relay.grace.is_some_and(|t| t <= now) {
                        self.relay.grace = None;
                        self.grace_expired().await;
                    } else if self.relay.reopen.is_some_and(|t| t <= now) {
                        self.relay.reopen = None;
                        self.reopen_relay().await;
                    } else if !busy {
                        debug!(session_id = %self.id, "session actor idle; stopping");
                        return Exit::Idle;
                    }
                    continue;
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
                let _ = reply.send(Ok(self.subscribe(after)));
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
            Command::PersistItem { item, reply } => {
                let result = self.persist_item(item).await;
                let _ = reply.send(result);
            }
            Command::EnsureRelay { runner_id, reply } => {
                let ready = self.ensure_relay(runner_id).await;
                let _ = reply.send(Ok(ready));
            }
            Command::Interrupt {
                stop,
                response_id,
                reply,
            } => {
                let result = self.interrupt(stop, response_id).await;
                let _ = reply.send(result);
            }
            Command::LiftFence => {
                self.relay.fence = false;
                self.relay.stopping = false;
            }
            Command::RunnerEvents { epoch, events } => {
                for event in events {
                    if epoch == self.relay.epoch
                        && let Err(e) = self.relay_event(event).await
                    {
                        warn!(session_id = %self.id, "relaying a runner event failed: {e}");
                    }
                }
            }
            Command::RelayReady {
                epoch,
                generation,
                runner_status,
            } => {
                if epoch == self.relay.epoch {
                    self.relay_ready(generation, runner_status).await;
                }
            }
            Command::RelayEnded {
                epoch,
                generation,
                why,
            } => {
                if epoch == self.relay.epoch {
                    self.relay_ended(generation, &why).await;
                }
            }
            Command::RunnerConnected {
                runner_id,
                generation,
            } => self.runner_connected(runner_id, generation).await,
            Command::RunnerExited { runner_id, report } => {
                self.runner_exited(&runner_id, &report).await;
            }
            Command::RecoverTurn => self.recover_turn(),
        }
        Continue(())
    }

    async fn persist_item(&mut self, item: NewItem) -> Result<ItemRow, ActorError> {
        let (row, seq) = self.store_item(&item).await?;
        let event = ServerEvent::InputConsumed {
            sequence_number: None,
            data: omnigent_proto::events::InputConsumed {
                item_id: row.id.clone(),
                kind: row.kind.clone(),
                data: Value::Object(row.data.clone()),
                created_by: row.created_by.clone(),
                cleared_pending_id: None,
            },
        };
        self.emit(seq, event.event_type(), &to_json(&event));
        Ok(row)
    }

    /// The relay to `runner_id`: the open one, or a new reader. Its readiness tells the caller when it may
    /// forward (subscribed and initialised) or why it cannot.
    async fn ensure_relay(&mut self, runner_id: String) -> watch::Receiver<ReadyState> {
        if self.relay.runner_id.as_deref() != Some(runner_id.as_str()) {
            self.relay.reader = None;
            self.relay.grace = None;
            self.relay.reopen = None;
            self.relay.runner_id = Some(runner_id.clone());
        }
        let Some(conn) = self.runners.get(&runner_id) else {
            return watch::channel(ReadyState::Failed(format!(
                "runner `{runner_id}` is not connected"
            )))
            .1;
        };
        if let Some(reader) = &self.relay.reader
            && reader.generation == conn.generation()
            && !matches!(*reader.ready.borrow(), ReadyState::Failed(_))
        {
            return reader.ready.clone();
        }
        self.open_relay(conn).await
    }

    /// Start a reader on `conn` (replacing any other).
    async fn open_relay(
        &mut self,
        conn: omnigent_tunnel::RunnerConnection,
    ) -> watch::Receiver<ReadyState> {
        self.relay.reader = None;
        self.relay.reopen = None;
        self.relay.epoch += 1;
        let row = match self.store.get_session(&self.id).await {
            Ok(Some(row)) => row,
            Ok(None) => return watch::channel(ReadyState::Failed("Session not found".into())).1,
            Err(e) => return watch::channel(ReadyState::Failed(e.to_string())).1,
        };
        self.relay.host_supervised = row.host_id.is_some();
        let harness = crate::agents::find(&row.agent_id).map(|a| a.harness.as_str());
        let init = relay::init_body(
            &self.id,
            &row.agent_id,
            harness,
            row.sub_agent_name.as_deref(),
            row.workspace.as_deref(),
            &row.labels,
        );
        let (tx, rx) = watch::channel(ReadyState::Opening);
        let generation = conn.generation();
        let spec = OpenSpec {
            session_id: self.id.clone(),
            epoch: self.relay.epoch,
            conn,
            init,
        };
        let task = tokio::spawn(relay::run_reader(spec, self.weak_self.clone(), tx));
        self.relay.reader = Some(Reader {
            generation,
            ready: rx.clone(),
            task,
        });
        rx
    }

    /// Re-open the relay on the runner's current tunnel, or treat the runner as lost.
    async fn reopen_relay(&mut self) {
        let Some(runner_id) = self.relay.runner_id.clone() else {
            return;
        };
        match self.runners.get(&runner_id) {
            Some(conn) if !conn.is_closed() => {
                self.open_relay(conn).await;
            }
            _ => self.runner_lost().await,
        }
    }

    /// The runner is gone: mid-turn, give it the grace; a stopped turn settles to idle; idle stays quiet.
    async fn runner_lost(&mut self) {
        if !self.mid_turn() {
            return;
        }
        if self.relay.stopping {
            self.relay.stopping = false;
            self.relay.fence = false;
            if let Err(e) = self.set_status(SessionStatus::Idle, None, None).await {
                warn!(session_id = %self.id, "cannot settle a stopped session: {e}");
            }
            return;
        }
        if self.relay.grace.is_none() {
            info!(session_id = %self.id, grace = ?self.limits.runner_grace, "runner lost mid-turn; waiting for it to come back");
            self.relay.grace = Some(tokio::time::Instant::now() + self.limits.runner_grace);
        }
    }

    /// A turn the store says is under way, with no relay to its runner yet (the server restarted): the
    /// runner gets the grace to reconnect; `grace_expired` fails the turn if it does not.
    fn recover_turn(&mut self) {
        if self.mid_turn() && self.relay.reader.is_none() && self.relay.grace.is_none() {
            info!(session_id = %self.id, grace = ?self.limits.runner_grace, "a turn was under way when the server stopped; waiting for its runner");
            self.relay.grace = Some(tokio::time::Instant::now() + self.limits.runner_grace);
        }
    }

    fn mid_turn(&self) -> bool {
        matches!(self.status, SessionStatus::Running | SessionStatus::Waiting)
    }

    async fn grace_expired(&mut self) {
        let online = self
            .relay
            .runner_id
            .as_deref()
            .is_some_and(|r| self.runners.is_online(r));
        let orphaned = std::mem::take(&mut self.relay.orphaned);
        if !self.mid_turn() || (online && self.relay.reader.is_some() && !orphaned) {
            return;
        }
        warn!(session_id = %self.id, "runner did not come back within the grace; the turn failed");
        if let Err(e) = self
            .fail_turn("runner_disconnected", "Runner disconnected unexpectedly.")
            .await
        {
            warn!(session_id = %self.id, "cannot record the lost runner: {e}");
        }
    }

    /// End the running turn as failed: flush its text, persist the error, publish `session.status failed`.
    async fn fail_turn(&mut self, code: &str, message: &str) -> Result<(), ActorError> {
        self.flush_partial().await?;
        let error = self.append_error(code, message).await?;
        self.set_status(SessionStatus::Failed, None, Some(error))
            .await?;
        Ok(())
    }

    /// Persist an error item `{code, message}` for the current response; answers the error.
    async fn append_error(&mut self, code: &str, message: &str) -> Result<Value, ActorError> {
        let error = serde_json::json!({"code": code, "message": message});
        let mut data = serde_json::Map::new();
        data.insert("error".into(), error.clone());
        self.append_item(NewItem {
            id: omnigent_proto::ids::new_id(),
            kind: "error".into(),
            status: "completed".into(),
            response_id: self.relay.response_id.clone(),
            created_at_ms: crate::now_ms(),
            created_by: None,
            data,
        })
        .await?;
        Ok(error)
    }

    async fn relay_ready(&mut self, _generation: u64, runner_status: Option<String>) {
        self.relay.grace = None;
        self.relay.orphaned = false;
        if self.mid_turn()
            && runner_status.as_deref() == Some("idle")
            && self.relay.host_supervised
            && !self.relay.stopping
        {
            // A new process on a host: the old one crashed or was killed, and its host's exit report (which
            // carries why, and the log tail) is on its way; fail the turn with it, or when the grace is over.
            info!(session_id = %self.id, "the runner came back without the running turn; waiting for its exit report");
            self.relay.orphaned = true;
            self.relay.grace = Some(tokio::time::Instant::now() + self.limits.runner_grace);
        } else if self.mid_turn() && runner_status.as_deref() == Some("idle") {
            // A restarted runner knows of no turn: the one we relayed is over. Keep what we have, settle.
            info!(session_id = %self.id, "the runner came back without the running turn; settling to idle");
            let settled = async {
                if self.flush_partial().await? {
                    // What was streamed of the reply is kept as incomplete; say why.
                    self.append_error(
                        "turn_lost",
                        "The runner restarted during the turn and does not know of it: the reply is \
                         incomplete. Send the message again to retry.",
                    )
                    .await?;
                }
                self.set_status(SessionStatus::Idle, None, None).await
            };
            if let Err(e) = settled.await {
                warn!(session_id = %self.id, "cannot settle after the runner came back: {e}");
            }
            self.relay.fence = false;
            self.relay.stopping = false;
        }
    }

    async fn relay_ended(&mut self, generation: u64, why: &str) {
        self.relay.reader = None;
        debug!(session_id = %self.id, generation, why, "relay ended");
        let Some(runner_id) = self.relay.runner_id.clone() else {
            return;
        };
        match self.runners.get(&runner_id) {
            Some(conn) if conn.generation() != generation && !conn.is_closed() => {
                self.open_relay(conn).await;
            }
            Some(conn) if !conn.is_closed() => {
                self.relay.reopen = Some(tokio::time::Instant::now() + REOPEN_DELAY);
            }
            _ => self.runner_lost().await,
        }
    }

    async fn runner_connected(&mut self, runner_id: String, generation: u64) {
        if self.relay.runner_id.as_deref() != Some(runner_id.as_str()) {
            self.relay.reader = None;
            self.relay.runner_id = Some(runner_id.clone());
        }
        self.relay.grace = None;
        if self
            .relay
            .reader
            .as_ref()
            .is_some_and(|r| r.generation >= generation)
        {
            return;
        }
        if let Some(conn) = self.runners.get(&runner_id) {
            self.open_relay(conn).await;
        }
    }

    /// The host reported the exit of `runner_id`'s process: the turn running on it is over and failed.
    async fn runner_exited(&mut self, runner_id: &str, report: &str) {
        if self
            .relay
            .runner_id
            .as_deref()
            .is_some_and(|r| r != runner_id)
            || !self.mid_turn()
        {
            return;
        }
        self.relay.grace = None;
        self.relay.orphaned = false;
        self.relay.fence = false;
        if std::mem::take(&mut self.relay.stopping) {
            if let Err(e) = self.set_status(SessionStatus::Idle, None, None).await {
                warn!(session_id = %self.id, "cannot settle a stopped session: {e}");
            }
            return;
        }
        warn!(session_id = %self.id, runner_id, report, "the runner exited mid-turn; the turn failed");
        if let Err(e) = self.fail_turn("runner_crashed", report).await {
            warn!(session_id = %self.id, "cannot record the runner's exit: {e}");
        }
    }

    async fn interrupt(
        &mut self,
        stop: bool,
        response_id: Option<String>,
    ) -> Result<u64, ActorError> {
        let event = ServerEvent::Interrupted {
            sequence_number: None,
            data: omnigent_proto::events::Interrupted {
                requested_at: crate::now_secs_f64(),
                response_id: response_id.or_else(|| self.relay.response_id.clone()),
            },
        };
        let seq = self.take_seq().await?;
        self.emit(seq, event.event_type(), &to_json(&event));
        self.relay.fence = true;
        self.relay.stopping |= stop;
        Ok(seq)
    }

    /// Persist the buffered response-scoped text as an assistant message with `status`.
    async fn flush_text(&mut self, status: &str) -> Result<(), ActorError> {
        if self.relay.text.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut self.relay.text);
        self.append_assistant(omnigent_proto::ids::new_id(), text, status)
            .await
    }

    /// The turn ends without completing: persist every text it streamed that no item holds yet (buffered
    /// deltas, messages whose item never came) as `incomplete` messages. Answers whether there was any.
    async fn flush_partial(&mut self) -> Result<bool, ActorError> {
        let mut any = !self.relay.text.is_empty();
        self.flush_text("incomplete").await?;
        for (message_id, text) in std::mem::take(&mut self.relay.messages) {
            if text.is_empty() {
                continue;
            }
            any = true;
            let id = omnigent_proto::ids::canonical_id(&message_id)
                .unwrap_or_else(omnigent_proto::ids::new_id);
            if self.store.item_exists(&id).await? {
                continue;
            }
            self.append_assistant(id, text, "incomplete").await?;
        }
        Ok(any)
    }

    async fn append_assistant(
        &mut self,
        id: String,
        text: String,
        status: &str,
    ) -> Result<(), ActorError> {
        let mut data = serde_json::Map::new();
        data.insert("role".into(), Value::from("assistant"));
        data.insert(
            "content".into(),
            serde_json::json!([{"type": "output_text", "text": text}]),
        );
        if let Some(model) = &self.relay.model {
            data.insert("model".into(), Value::from(model.clone()));
        }
        self.append_item(NewItem {
            id,
            kind: "message".into(),
            status: status.into(),
            response_id: self.relay.response_id.clone(),
            created_at_ms: crate::now_ms(),
            created_by: None,
            data,
        })
        .await?;
        Ok(())
    }

    /// One runner event: fence, persist what is durable (reference §2.4), publish.
    async fn relay_event(&mut self, event: Value) -> Result<(), ActorError> {
        let Some(kind) = event.get("type").and_then(Value::as_str) else {
            return Ok(());
        };
        let kind = kind.to_owned();
        if self.relay.fence {
            if relay::is_terminal(&kind) {
                self.relay.fence = false;
            } else if kind.starts_with("response.") {
                return Ok(());
            }
        }
        match kind.as_str() {
            "session.status" => {
                let Some(status) = event["status"].as_str().and_then(SessionStatus::parse) else {
                    return Ok(());
                };
                match status {
                    SessionStatus::Running => {
                        self.relay.text.clear();
                        self.relay.messages.clear();
                        self.relay.fence = false;
                        self.relay.stopping = false;
                        self.relay.grace = None;
                        self.relay.orphaned = false;
                    }
                    SessionStatus::Idle => self.relay.stopping = false,
                    _ => {}
                }
                let response_id = event["response_id"].as_str().map(str::to_owned);
                let error = event.get("error").filter(|e| !e.is_null()).cloned();
                self.set_status(status, response_id, error).await?;
            }
            "response.created" | "response.queued" | "response.in_progress" => {
                if let Some(id) = event["response"]["id"].as_str() {
                    self.relay.response_id = Some(id.to_owned());
                }
                if let Some(model) = event["response"]["model"].as_str() {
                    self.relay.model = Some(model.to_owned());
                }
                self.publish(event).await?;
            }
            "response.output_text.delta" => {
                let Some(delta) = event["delta"].as_str() else {
                    self.publish(event).await?;
                    return Ok(());
                };
                match event["message_id"].as_str() {
                    None => self.relay.text.push_str(delta),
                    Some(message_id) => {
                        // A runner's snapshot (sent to a new subscriber) is the message's whole text so far:
                        // it replaces what we have, and our subscribers already saw it or get the item.
                        let snapshot = event["snapshot"] == true;
                        self.relay.message_text(message_id, delta, snapshot);
                        if snapshot {
                            return Ok(());
                        }
                    }
                }
                self.publish(event).await?;
            }
            "response.output_item.done" => self.relay_item(event).await?,
            "response.error" => {
                let mut data = serde_json::Map::new();
                for key in ["source", "tool_name", "error"] {
                    if let Some(v) = event.get(key).filter(|v| !v.is_null()) {
                        data.insert(key.into(), v.clone());
                    }
                }
                self.publish(event).await?;
                self.append_item(NewItem {
                    id: omnigent_proto::ids::new_id(),
                    kind: "error".into(),
                    status: "completed".into(),
                    response_id: self.relay.response_id.clone(),
                    created_at_ms: crate::now_ms(),
                    created_by: None,
                    data,
                })
                .await?;
            }
            k if relay::is_terminal(k) => {
                if self.relay.response_id.is_none() {
                    // A turn picked up after a server restart: its start was relayed by the previous server.
                    self.relay.response_id = event["response"]["id"].as_str().map(str::to_owned);
                }
                if k == "response.completed" {
                    self.flush_text("completed").await?;
                    // A completed message comes as its item; deltas whose item never came are not kept.
                    self.relay.messages.clear();
                } else {
                    // Cut short (an interrupt, a failure): what came is kept, marked as such.
                    self.flush_partial().await?;
                }
                self.publish(event).await?;
            }
            _ => {
                self.publish(event).await?;
            }
        }
        Ok(())
    }

    /// `response.output_item.done`: persist the item (its stored form is what subscribers get).
    async fn relay_item(&mut self, event: Value) -> Result<(), ActorError> {
        let item = &event["item"];
        let kind = item["type"].as_str().unwrap_or("");
        if self.relay.response_id.is_none() {
            // A turn picked up after a server restart: its items name the response.
            self.relay.response_id = item["response_id"].as_str().map(str::to_owned);
        }
        if let Some(raw_id) = item["id"].as_str() {
            if kind == "message" {
                self.relay.messages.retain(|(id, _)| id != raw_id);
            }
            // A runner re-sends its turn's items to every new subscriber (it cannot know what a server that
            // went away had stored): one stored already is neither stored nor shown again.
            if let Some(id) = omnigent_proto::ids::canonical_id(raw_id)
                && item["status"].as_str().is_none_or(|s| s != "in_progress")
                && self.store.item_exists(&id).await?
            {
                debug!(session_id = %self.id, item_id = %id, "runner item already stored; skipped");
                return Ok(());
            }
        }
        let call_id = item["call_id"].as_str().map(str::to_owned);
        let own_response = item["response_id"].as_str().map(str::to_owned);
        let response_id = match kind {
            "function_call" => {
                if item["status"].as_str().is_some_and(|s| s != "completed") {
                    // Not final yet: show it, persist it when it completes.
                    self.publish(event).await?;
                    return Ok(());
                }
                self.flush_text("completed").await?;
                let response_id = own_response.or_else(|| self.relay.response_id.clone());
                if let (Some(call), Some(resp)) = (&call_id, &response_id) {
                    if self.relay.calls.len() >= MAX_TRACKED_CALLS {
                        self.relay.calls.clear();
                    }
                    self.relay.calls.insert(call.clone(), resp.clone());
                }
                response_id
            }
            "function_call_output" => call_id
                .as_ref()
                .and_then(|c| self.relay.calls.get(c).cloned())
                .or(own_response)
                .or_else(|| self.relay.response_id.clone()),
            _ => own_response.or_else(|| self.relay.response_id.clone()),
        };
        let model = (kind == "message")
            .then(|| self.relay.model.clone())
            .flatten();
        match relay::runner_item(item, response_id, model) {
            Some(new) => match self.append_item(new).await {
                Ok(_) => {}
                Err(ActorError::Store(e)) => {
                    warn!(session_id = %self.id, "cannot persist a runner item (relayed as is): {e}");
                    self.publish(event).await?;
                }
                Err(e) => return Err(e),
            },
            None => {
                self.publish(event).await?;
            }
        }
        Ok(())
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

    /// Encode one event under `seq` and hand it to the feed (and so to every subscriber).
    fn emit(&mut self, seq: u64, event_type: &str, json: &str) {
        self.feed
            .push(seq, Bytes::from(sse_frame(event_type, seq, json)));
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

    /// Store `item` under the next sequence number.
    async fn store_item(&mut self, item: &NewItem) -> Result<(ItemRow, u64), ActorError> {
        let seq = self.take_seq().await?;
        let row = self
            .store
            .append_item(&self.id, item, seq)
            .await?
            .ok_or(ActorError::NotFound)?;
        Ok((row, seq))
    }

    async fn append_item(&mut self, item: NewItem) -> Result<(ItemRow, u64), ActorError> {
        let (row, seq) = self.store_item(&item).await?;
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

    fn subscribe(&mut self, after: Option<u64>) -> Subscription {
        let head = self.next_seq - 1;
        let ready_seq = after.filter(|n| *n < head).unwrap_or(head);
        let heartbeat = ServerEvent::heartbeat(Some(crate::now_secs_f64()));
        let ready = sse_frame(heartbeat.event_type(), ready_seq, &to_json(&heartbeat));
        Subscription {
            ready_seq,
            ready: Bytes::from(ready),
            feed: self.feed.clone(),
            wake: self.feed.watch(),
        }
    }

    /// Tell every subscriber the stream is over (they drain the feed, then write `[DONE]`).
    fn end_streams(&mut self) {
        self.feed.close();
    }
}

/// Most `call_id → response_id` pairs a relay remembers.
const MAX_TRACKED_CALLS: usize = 10_000;

/// Sleep until `at`; forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `response.output_item.done` for a stored item, as JSON text.
pub(crate) fn item_done_json(row: &ItemRow) -> String {
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
                runner_grace: Duration::from_secs(30),
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
                runner_grace: Duration::from_secs(30),
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
        let crate::feed::Read::Behind { floor } = sub.feed.read(0, usize::MAX) else {
            panic!("the first events were evicted");
        };
        let crate::feed::Read::Frames { chunk, last } = sub.feed.read(floor - 1, usize::MAX) else {
            panic!("the newest events are kept");
        };
        assert_eq!(last, 50);
        let replayed = String::from_utf8_lossy(&chunk)
            .matches("event: response.output_text.delta")
            .count();
        assert!((1..=6).contains(&replayed), "{replayed}");
        store.close().await;
    }
}
