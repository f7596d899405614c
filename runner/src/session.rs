//! One task per session owns its state: history, queued input, the running turn and the stream subscribers.
//! Everything else talks to it through [`SessionHandle`] messages.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use omnigent_proto::events::kind;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::HarnessEnv;
use crate::harness::{self, EventSink, HarnessError, HarnessKind, HistoryEntry, Turn};

/// Events buffered per stream subscriber; a subscriber that falls this far behind is dropped (its stream
/// ends and the server reconnects), like the Python omnigent's 1024-event queues.
const SUBSCRIBER_BUFFER: usize = 1024;

/// Most events kept while a session has no stream subscriber (the tunnel blipped, the server restarted), for
/// the next subscriber; past this or [`BACKLOG_MAX_BYTES`] the oldest are dropped.
const BACKLOG_MAX_EVENTS: usize = 10_000;
/// Most JSON bytes kept while a session has no stream subscriber.
const BACKLOG_MAX_BYTES: usize = 8 * 1024 * 1024;

/// How long an interrupted harness may take to stop by itself before it is dropped.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Logged when a session's last stream subscriber goes; what it publishes from then on waits in its backlog.
pub const NO_SUBSCRIBER_LEFT: &str = "no stream subscriber left; keeping events for the next one";
/// Logged when a stream subscriber takes the backlog kept while none was connected.
pub const BACKLOG_TAKEN: &str =
    "a stream subscriber takes the events kept while none was connected";
/// Logged (with the session's span and the turn number) when a turn has ended.
pub const TURN_ENDED: &str = "turn ended";

/// What a session starts with unless its init says otherwise.
#[derive(Debug, Clone)]
pub(crate) struct SessionDefaults {
    pub workspace: PathBuf,
    pub harness: HarnessKind,
    pub env: HarnessEnv,
}

/// Settings from `POST /v1/sessions`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionInit {
    pub agent_id: Option<String>,
    pub workspace: Option<PathBuf>,
    pub harness: Option<HarnessKind>,
}

/// One posted message: its text and the agent name the server labels it with (`model` in 0.19.1's body),
/// which becomes the `model` of the turn's response objects.
#[derive(Debug, Clone, Default)]
pub(crate) struct TurnInput {
    pub text: String,
    pub agent_name: Option<String>,
}

/// How a posted message was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepted {
    Started,
    Queued,
}

enum Command {
    /// A new subscriber; `record`: whether it asked for the turn's record first.
    Subscribe {
        record: bool,
        reply: oneshot::Sender<Subscription>,
    },
    /// A [`Subscription`] was dropped (its stream ended or its tunnel went away).
    Unsubscribe(u64),
    Init(SessionInit),
    Message {
        input: TurnInput,
        reply: oneshot::Sender<Accepted>,
    },
    Interrupt(oneshot::Sender<bool>),
    Snapshot(oneshot::Sender<Value>),
    TurnFinished {
        turn: u64,
        new_history: Vec<HistoryEntry>,
    },
    /// Publish an event as a turn would.
    #[cfg(test)]
    Emit(Value),
}

/// A stream subscriber's view of a session: what was kept while no subscriber was connected, then the live
/// events. Dropping it tells the session at once, so what comes next is kept for the next subscriber.
pub(crate) struct Subscription {
    /// Events published while the session had no subscriber, oldest first: they come before `events`.
    pub backlog: Vec<Value>,
    /// The live events. They end (after what is buffered) once the session dropped this subscriber as too
    /// slow.
    pub events: mpsc::Receiver<Value>,
    id: u64,
    session: mpsc::UnboundedSender<Command>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.session.send(Command::Unsubscribe(self.id));
    }
}

/// The sessions this runner serves, by id. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Sessions {
    map: Arc<Mutex<HashMap<String, SessionHandle>>>,
    defaults: Arc<SessionDefaults>,
}

impl Sessions {
    pub fn new(defaults: SessionDefaults) -> Self {
        Sessions {
            map: Arc::new(Mutex::new(HashMap::new())),
            defaults: Arc::new(defaults),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, SessionHandle>> {
        // Each critical section is one lookup or insert, so a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session `id`, started with the defaults when this runner has never seen it.
    pub fn get_or_create(&self, id: &str) -> SessionHandle {
        let mut map = self.lock();
        if let Some(handle) = map.get(id)
            && !handle.tx.is_closed()
        {
            return handle.clone();
        }
        let handle = spawn_session(id.to_owned(), &self.defaults);
        map.insert(id.to_owned(), handle.clone());
        handle
    }
}

/// A handle on one session's task.
#[derive(Clone)]
pub(crate) struct SessionHandle {
    tx: mpsc::UnboundedSender<Command>,
}

/// The session task is gone (it only ends when every handle is dropped, so this is a bug if it shows).
#[derive(Debug, thiserror::Error)]
#[error("session task is not running")]
pub(crate) struct SessionGone;

impl SessionHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SessionGone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| SessionGone)?;
        rx.await.map_err(|_| SessionGone)
    }

    /// A new subscriber of the session's events: the turn's record when it asks for it (`record`), those kept
    /// while the session had none, then the live ones.
    pub async fn subscribe(&self, record: bool) -> Result<Subscription, SessionGone> {
        self.ask(|reply| Command::Subscribe { record, reply }).await
    }

    /// Publish `event` as a turn of this session would.
    #[cfg(test)]
    pub fn emit(&self, event: Value) {
        let _ = self.tx.send(Command::Emit(event));
    }

    pub fn init(&self, init: SessionInit) -> Result<(), SessionGone> {
        self.tx.send(Command::Init(init)).map_err(|_| SessionGone)
    }

    /// Start a turn with `text`, or queue it for the next turn when one is running.
    pub async fn message(&self, input: TurnInput) -> Result<Accepted, SessionGone> {
        self.ask(|reply| Command::Message { input, reply }).await
    }

    /// Cancel the running turn; `false` when none was running.
    pub async fn interrupt(&self) -> Result<bool, SessionGone> {
        self.ask(Command::Interrupt).await
    }

    /// The session object of `GET /v1/sessions/{id}`.
    pub async fn snapshot(&self) -> Result<Value, SessionGone> {
        self.ask(Command::Snapshot).await
    }
}

fn spawn_session(id: String, defaults: &SessionDefaults) -> SessionHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (emit_tx, emit_rx) = mpsc::unbounded_channel();
    let state = Session::new(id.clone(), defaults, emit_tx, tx.clone());
    tokio::spawn(
        state
            .run(rx, emit_rx)
            .instrument(info_span!("session", session_id = %id)),
    );
    SessionHandle { tx }
}

struct RunningTurn {
    turn: u64,
    cancel: CancellationToken,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Value>,
}

/// Events published while a session has no live subscriber, for the next one: at most `max_events` of them
/// and `max_bytes` of JSON, the oldest dropped first (the newest is always kept, even one that alone is larger).
struct Backlog {
    /// What the next subscriber gets before the kept events: the durable record of the turn as it stood
    /// when the first of them was kept (see [`TurnRecord::resync`]).
    resync: Option<Vec<Value>>,
    events: VecDeque<(Value, usize)>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// How many were dropped since the last [`Backlog::take`].
    dropped: u64,
}

impl Backlog {
    fn new(max_events: usize, max_bytes: usize) -> Self {
        Backlog {
            resync: None,
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
            dropped: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.resync.is_none() && self.events.is_empty()
    }

    fn push(&mut self, event: Value) {
        // Consecutive deltas of one message merge: a long reply kept while no subscriber is connected costs
        // one event, not one per word, so the bounds drop what matters last.
        if let Some((last, size)) = self.events.back_mut()
            && let Some(merged) = merge_deltas(last, &event)
        {
            self.bytes += merged;
            *size += merged;
        } else {
            self.push_new(event);
        }
        self.trim();
    }

    fn push_new(&mut self, event: Value) {
        let size = json_len(&event);
        self.bytes += size;
        self.events.push_back((event, size));
    }

    fn trim(&mut self) {
        while self.events.len() > 1
            && (self.events.len() > self.max_events || self.bytes > self.max_bytes)
        {
            if let Some((_, size)) = self.events.pop_front() {
                self.bytes -= size;
                self.dropped += 1;
            }
        }
    }

    /// The resync captured with the first event kept (if any), everything kept, oldest first, and how many
    /// were dropped to stay within the bounds; empties it.
    fn take(&mut self) -> (Option<Vec<Value>>, Vec<Value>, u64) {
        self.bytes = 0;
        let events = self.events.drain(..).map(|(event, _)| event).collect();
        (
            self.resync.take(),
            events,
            std::mem::take(&mut self.dropped),
        )
    }
}

/// Append `next`'s delta to `last` when both are plain text deltas of the same message (nothing but `type`,
/// `delta`, `message_id` and `index`); answers the bytes added.
fn merge_deltas(last: &mut Value, next: &Value) -> Option<usize> {
    let plain = |e: &Value| {
        e.as_object().is_some_and(|o| {
            o.get("type").and_then(Value::as_str) == Some("response.output_text.delta")
                && o.get("delta").is_some_and(Value::is_string)
                && o.keys()
                    .all(|k| matches!(k.as_str(), "type" | "delta" | "message_id" | "index"))
        })
    };
    if !plain(last) || !plain(next) || last.get("message_id") != next.get("message_id") {
        return None;
    }
    let add = next["delta"].as_str()?;
    let Some(Value::String(text)) = last.get_mut("delta") else {
        return None;
    };
    text.push_str(add);
    let added = json_len(&next["delta"]).saturating_sub(2);
    if let Some(index) = next.get("index") {
        last["index"] = index.clone();
    }
    Some(added)
}

/// The durable part of a session's current (or last) turn, as its events went out: the items it completed
/// (`response.output_item.done`, the assistant messages included) and the message being streamed. Every new
/// stream subscriber gets it first ([`TurnRecord::resync`]), so a server that restarted, or missed events in
/// flight when its tunnel went, stores the whole reply: items carry their ids and a server skips those it
/// has. Reset when the next turn starts.
#[derive(Default)]
struct TurnRecord {
    /// The turn's `response.in_progress`, until its response ended.
    running: Option<Value>,
    response_id: Option<String>,
    model: Option<String>,
    /// `response.output_item.done` events of the turn, in order.
    items: Vec<Value>,
    /// The assistant message whose deltas are going out.
    open: Option<OpenMessage>,
}

struct OpenMessage {
    id: String,
    text: String,
    /// `index` of the last delta sent.
    index: u64,
}

/// What publishing one event does to the [`TurnRecord`], worked out before the event is handed on.
enum Recorded {
    Nothing,
    Turn {
        started: Value,
        response_id: Option<String>,
        model: Option<String>,
    },
    Ended,
    Text(String),
    Item(Value),
}

impl TurnRecord {
    /// The events to publish for `event`: response-scoped text deltas become deltas of one assistant message
    /// (`message_id`, `index`), and that message is completed as a `response.output_item.done` (its whole
    /// text, the runner's word for what the reply is) before the next item or the end of the response.
    fn outgoing(&mut self, mut event: Value) -> Vec<Value> {
        let kind = event["type"].as_str().unwrap_or("");
        match kind {
            "response.output_text.delta" if event.get("message_id").is_none_or(Value::is_null) => {
                let open = self.open.get_or_insert_with(|| OpenMessage {
                    id: harness::new_item_id(),
                    text: String::new(),
                    index: 0,
                });
                let index = if open.text.is_empty() {
                    0
                } else {
                    open.index + 1
                };
                event["message_id"] = Value::from(open.id.clone());
                event["index"] = Value::from(index);
                vec![event]
            }
            "response.output_item.done" => {
                let mut out: Vec<Value> = self.close(&event).into_iter().collect();
                out.push(event);
                out
            }
            k if is_terminal(k) => {
                let mut out: Vec<Value> = self.close(&event).into_iter().collect();
                out.push(event);
                out
            }
            _ => vec![event],
        }
    }

    /// The open message as a completed item, if it has text: `completed` unless the response ended otherwise.
    fn close(&self, before: &Value) -> Option<Value> {
        let open = self.open.as_ref().filter(|o| !o.text.is_empty())?;
        let status = match before["type"].as_str() {
            Some("response.failed" | "response.incomplete" | "response.cancelled") => "incomplete",
            _ => "completed",
        };
        let mut item = json!({
            "id": open.id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "response_id": self.response_id,
            "content": [{"type": "output_text", "text": open.text}],
        });
        if let Some(model) = &self.model {
            item["model"] = Value::from(model.clone());
        }
        Some(json!({"type": "response.output_item.done", "item": item}))
    }

    /// What `event` (one of [`TurnRecord::outgoing`]'s) changes in the record.
    fn effect(event: &Value) -> Recorded {
        match event["type"].as_str().unwrap_or("") {
            "response.in_progress" => Recorded::Turn {
                started: event.clone(),
                response_id: event["response"]["id"].as_str().map(str::to_owned),
                model: event["response"]["model"].as_str().map(str::to_owned),
            },
            "response.output_text.delta" => match event["delta"].as_str() {
                Some(delta) => Recorded::Text(delta.to_owned()),
                None => Recorded::Nothing,
            },
            "response.output_item.done"
                if event["item"]["status"]
                    .as_str()
                    .is_none_or(|s| s != "in_progress") =>
            {
                Recorded::Item(event.clone())
            }
            k if is_terminal(k) => Recorded::Ended,
            _ => Recorded::Nothing,
        }
    }

    fn apply(&mut self, recorded: Recorded) {
        match recorded {
            Recorded::Nothing => {}
            Recorded::Ended => self.running = None,
            Recorded::Turn {
                started,
                response_id,
                model,
            } => {
                *self = TurnRecord {
                    running: Some(started),
                    response_id,
                    model,
                    ..TurnRecord::default()
                };
            }
            Recorded::Text(delta) => {
                if let Some(open) = &mut self.open {
                    if !open.text.is_empty() {
                        open.index += 1;
                    }
                    open.text.push_str(&delta);
                }
            }
            Recorded::Item(event) => {
                if self
                    .open
                    .as_ref()
                    .is_some_and(|o| event["item"]["id"].as_str() == Some(o.id.as_str()))
                {
                    self.open = None;
                }
                self.items.push(event);
            }
        }
    }

    /// The turn so far, for a new subscriber: while it runs, its `session.status running` and
    /// `response.in_progress`; its completed items; then the open message's text so far as
    /// one delta marked `snapshot` (with the `index` of its last delta), which a server takes as the whole
    /// text streamed so far rather than as more of it.
    fn resync(&self) -> Vec<Value> {
        let mut events = Vec::new();
        if let Some(started) = &self.running {
            // A server that missed the turn's start (it died with it in flight) learns it is under way.
            events.push(json!({"type": "session.status", "status": "running"}));
            events.push(started.clone());
        }
        events.extend(self.items.iter().cloned());
        if let Some(open) = self.open.as_ref().filter(|o| !o.text.is_empty()) {
            events.push(json!({
                "type": "response.output_text.delta",
                "delta": open.text,
                "message_id": open.id,
                "index": open.index,
                "snapshot": true,
            }));
        }
        events
    }
}

/// Whether `kind` ends a response.
fn is_terminal(kind: &str) -> bool {
    matches!(
        kind,
        "response.completed" | "response.failed" | "response.incomplete" | "response.cancelled"
    )
}

/// The length of `value` as compact JSON, without building the string.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

struct Session {
    id: String,
    agent_id: Option<String>,
    workspace: PathBuf,
    harness: HarnessKind,
    env: HarnessEnv,
    created_at: u64,
    history: Vec<HistoryEntry>,
    queue: VecDeque<TurnInput>,
    running: Option<RunningTurn>,
    turns: u64,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
    /// What was published while no subscriber was live.
    backlog: Backlog,
    /// The durable part of the current (or last) turn, re-sent to every new subscriber.
    record: TurnRecord,
    /// Where turns send their events; the task fans them out in order.
    emit_tx: mpsc::UnboundedSender<Value>,
    /// Where turns report their end (the session's own command channel).
    done_tx: mpsc::UnboundedSender<Command>,
}

impl Session {
    /// A fresh session with `defaults`; `emit_tx` carries its turns' events to it, `done_tx` its own commands.
    fn new(
        id: String,
        defaults: &SessionDefaults,
        emit_tx: mpsc::UnboundedSender<Value>,
        done_tx: mpsc::UnboundedSender<Command>,
    ) -> Session {
        Session {
            id,
            agent_id: None,
            workspace: defaults.workspace.clone(),
            harness: defaults.harness,
            env: defaults.env.clone(),
            created_at: epoch_secs(),
            history: Vec::new(),
            queue: VecDeque::new(),
            running: None,
            turns: 0,
            subscribers: Vec::new(),
            next_subscriber: 0,
            backlog: Backlog::new(BACKLOG_MAX_EVENTS, BACKLOG_MAX_BYTES),
            record: TurnRecord::default(),
            emit_tx,
            done_tx,
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<Value>,
    ) {
        loop {
            tokio::select! {
                // Events first, so a turn's last events go out before its end is handled.
                biased;
                Some(event) = events.recv() => self.publish(event),
                command = commands.recv() => match command {
                    Some(command) => {
                        if matches!(command, Command::TurnFinished { .. }) {
                            // The turn sent all its events before its end: publish them before handling it.
                            while let Ok(event) = events.try_recv() {
                                self.publish(event);
                            }
                        }
                        self.handle(command);
                    }
                    None => break,
                },
            }
        }
        if let Some(turn) = self.running.take() {
            turn.cancel.cancel();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Subscribe { record, reply } => {
                let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
                let id = self.next_subscriber;
                self.next_subscriber += 1;
                // Nothing kept since the last subscriber: the record of the turn still goes first.
                if record && self.backlog.resync.is_none() {
                    self.backlog.resync = Some(self.record.resync());
                }
                let kept = self.backlog.events.len();
                let (resync, events, dropped) = self.backlog.take();
                // A subscriber that did not ask for the record (a Python server) gets the kept events alone;
                // the resync stays aside, for the next subscriber should this one be gone already.
                let (backlog, unsent) = match (record, resync) {
                    (true, Some(mut resync)) => {
                        resync.extend(events);
                        (resync, None)
                    }
                    (_, resync) => (events, resync.filter(|_| !record)),
                };
                let subscription = Subscription {
                    backlog,
                    events: rx,
                    id,
                    session: self.done_tx.clone(),
                };
                match reply.send(subscription) {
                    Ok(()) => {
                        self.subscribers.push(Subscriber { id, tx });
                        if dropped > 0 {
                            warn!(
                                dropped,
                                kept,
                                "{dropped} events were dropped, oldest first, while no stream subscriber was \
                                 connected (at most {BACKLOG_MAX_EVENTS} events or {} MiB are kept)",
                                BACKLOG_MAX_BYTES / (1024 * 1024)
                            );
                        }
                        if kept > 0 {
                            info!(events = kept, "{BACKLOG_TAKEN}");
                        }
                    }
                    // The asker is gone: keep the events for the next one (nothing was kept since the take).
                    Err(mut lost) => {
                        let lost = std::mem::take(&mut lost.backlog);
                        self.backlog.resync = match unsent {
                            Some(mut resync) => {
                                resync.extend(lost);
                                Some(resync)
                            }
                            None if lost.is_empty() => None,
                            None => Some(lost),
                        };
                        self.backlog.dropped += dropped;
                    }
                }
            }
            Command::Unsubscribe(id) => {
                let before = self.subscribers.len();
                self.subscribers.retain(|s| s.id != id);
                if before > 0 && self.subscribers.is_empty() {
                    info!("{NO_SUBSCRIBER_LEFT}");
                }
            }
            Command::Init(init) => {
                if let Some(agent_id) = init.agent_id {
                    self.agent_id = Some(agent_id);
                }
                if let Some(workspace) = init.workspace {
                    self.workspace = workspace;
                }
                if let Some(harness) = init.harness {
                    self.harness = harness;
                }
                info!(workspace = %self.workspace.display(), harness = self.harness.name(), "session initialised");
            }
            Command::Message { input, reply } => {
                if self.running.is_some() {
                    debug!("turn running; message queued for the next turn");
                    self.queue.push_back(input);
                    let _ = reply.send(Accepted::Queued);
                } else {
                    self.start_turn(input);
                    let _ = reply.send(Accepted::Started);
                }
            }
            Command::Interrupt(reply) => {
                let was_running = match &self.running {
                    Some(turn) => {
                        turn.cancel.cancel();
                        true
                    }
                    None => false,
                };
                let _ = reply.send(was_running);
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::TurnFinished { turn, new_history } => {
                if self.running.as_ref().is_some_and(|r| r.turn == turn) {
                    self.running = None;
                }
                info!(turn, "{TURN_ENDED}");
                self.history.extend(new_history);
                if let Some(next) = self.queue.pop_front() {
                    self.start_turn(next);
                }
            }
            #[cfg(test)]
            Command::Emit(event) => self.publish(event),
        }
    }

    /// Send `event` (as [`TurnRecord::outgoing`] shapes it) to every live subscriber; with none, keep it for
    /// the next one. A subscriber that is gone or too slow is dropped.
    fn publish(&mut self, event: Value) {
        for event in self.record.outgoing(event) {
            let recorded = TurnRecord::effect(&event);
            self.fan_out(event);
            self.record.apply(recorded);
        }
    }

    /// Keep `event` for the next subscriber; the first one kept brings the record of the turn as it stood
    /// before it, which the next subscriber gets first.
    fn keep(&mut self, event: Value) {
        if self.backlog.is_empty() {
            self.backlog.resync = Some(self.record.resync());
        }
        self.backlog.push(event);
    }

    /// Send one outgoing event to every live subscriber, or keep it.
    fn fan_out(&mut self, event: Value) {
        if self.subscribers.is_empty() {
            self.keep(event);
            return;
        }
        self.subscribers
            .retain(|subscriber| match subscriber.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!("stream subscriber fell {SUBSCRIBER_BUFFER} events behind; dropping it");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        if self.subscribers.is_empty() {
            // Nobody took it: the next subscriber gets it after what the dropped ones already had.
            info!("{NO_SUBSCRIBER_LEFT}");
            self.keep(event);
        }
    }

    fn snapshot(&self) -> Value {
        json!({
            "id": self.id,
            "agent_id": self.agent_id,
            "status": if self.running.is_some() { "running" } else { "idle" },
            "created_at": self.created_at,
            "title": null,
            "labels": {},
            "runner_id": null,
            "reasoning_effort": null,
            "items": [],
            "permission_level": null,
            "harness": self.harness.name(),
            "workspace": self.workspace.display().to_string(),
        })
    }

    fn start_turn(&mut self, input: TurnInput) {
        self.turns += 1;
        let turn_no = self.turns;
        self.history.push(HistoryEntry::User { text: input.text });
        let config = self.env.config_for(self.harness);
        let model = input
            .agent_name
            .filter(|name| !name.is_empty())
            .or_else(|| config.model.clone())
            .unwrap_or_else(|| self.harness.name().to_owned());
        let turn = Turn {
            session_id: self.id.clone(),
            response_id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
            workspace: self.workspace.clone(),
            history: self.history.clone(),
            config,
        };
        let cancel = CancellationToken::new();
        self.running = Some(RunningTurn {
            turn: turn_no,
            cancel: cancel.clone(),
        });
        let emit = self.emit_tx.clone();
        let done = self.done_tx.clone();
        let kind = self.harness;
        tokio::spawn(
            async move {
                let new_history = run_turn(kind, turn, model, emit, cancel).await;
                let _ = done.send(Command::TurnFinished {
                    turn: turn_no,
                    new_history,
                });
            }
            .in_current_span(),
        );
    }
}

/// Run one turn and emit its framing events around the harness's own; returns what it added to the history.
async fn run_turn(
    kind: HarnessKind,
    turn: Turn,
    model: String,
    emit: mpsc::UnboundedSender<Value>,
    cancel: CancellationToken,
) -> Vec<HistoryEntry> {
    let created_at = epoch_secs();
    let response = |status: &str| {
        json!({
            "id": turn.response_id,
            "object": "response",
            "status": status,
            "model": model,
            "created_at": created_at,
            "output": [],
        })
    };
    let send = |event: Value| {
        let _ = emit.send(event);
    };
    send(json!({"type": kind::SESSION_STATUS, "status": "running"}));
    send(json!({"type": kind::RESPONSE_IN_PROGRESS, "response": response("in_progress")}));
    let sink = EventSink::new(emit.clone());
    let harness_turn = harness::run_turn(kind, &turn, &sink, &cancel);
    tokio::pin!(harness_turn);
    let result = tokio::select! {
        result = &mut harness_turn => result,
        // The harness gets a grace period to stop its own way (signal its child, say); past it, it is dropped.
        _ = cancel.cancelled() => match tokio::time::timeout(INTERRUPT_GRACE, &mut harness_turn).await {
            Ok(result) => result,
            Err(_) => {
                warn!("harness ignored the interrupt for {INTERRUPT_GRACE:?}; dropping it");
                Err(HarnessError::Interrupted)
            }
        },
    };
    let new_history = match result {
        Ok(outcome) => {
            let mut done = response("completed");
            done["completed_at"] = json!(epoch_secs());
            if let Some(usage) = outcome.usage {
                done["usage"] = usage;
            }
            send(json!({"type": kind::RESPONSE_COMPLETED, "response": done}));
            outcome.new_history
        }
        Err(HarnessError::Interrupted) => {
            let mut incomplete = response("incomplete");
            incomplete["incomplete_details"] = json!({"reason": "user_interrupt"});
            send(json!({"type": kind::RESPONSE_INCOMPLETE, "response": incomplete}));
            Vec::new()
        }
        Err(err) => {
            let (code, message) = error_code_and_message(&err);
            warn!(%code, %message, "turn failed");
            let error = json!({"code": code, "message": message});
            send(json!({"type": kind::RESPONSE_ERROR, "source": "llm", "error": error}));
            let mut failed = response("failed");
            failed["error"] = error;
            send(json!({"type": kind::RESPONSE_FAILED, "response": failed}));
            Vec::new()
        }
    };
    send(json!({"type": kind::SESSION_STATUS, "status": "idle"}));
    new_history
}

fn error_code_and_message(err: &HarnessError) -> (&'static str, String) {
    match err {
        HarnessError::Vendor {
            status, message, ..
        } => {
            let code = match status {
                401 | 403 => "authentication_error",
                429 => "rate_limit_exceeded",
                400..=499 => "invalid_request_error",
                _ => "server_error",
            };
            (code, message.clone())
        }
        HarnessError::Stream { .. } => ("stream_error", err.to_string()),
        HarnessError::NotConfigured(message) => ("harness_not_configured", message.clone()),
        HarnessError::Exec(message) => ("execution_error", message.clone()),
        HarnessError::Interrupted => ("interrupted", err.to_string()),
    }
}

pub(crate) fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A session driven by hand (no task), and the receiver of the commands it sends itself.
    fn session() -> (Session, mpsc::UnboundedReceiver<Command>) {
        let (done_tx, commands) = mpsc::unbounded_channel();
        let (emit_tx, _) = mpsc::unbounded_channel();
        let defaults = SessionDefaults {
            workspace: ".".into(),
            harness: HarnessKind::Echo,
            env: HarnessEnv::default(),
        };
        let session = Session::new("conv_test".into(), &defaults, emit_tx, done_tx);
        (session, commands)
    }

    /// A subscriber that asks for the turn's record, as our server does.
    fn subscribe(session: &mut Session) -> Subscription {
        subscribe_asking(session, true)
    }

    fn subscribe_asking(session: &mut Session, record: bool) -> Subscription {
        let (reply, mut answer) = oneshot::channel();
        session.handle(Command::Subscribe { record, reply });
        answer.try_recv().unwrap()
    }

    fn event(n: usize) -> Value {
        json!({"type": "session.test", "delta": n.to_string()})
    }

    fn numbers(events: &[Value]) -> Vec<usize> {
        events
            .iter()
            .map(|e| e["delta"].as_str().unwrap().parse().unwrap())
            .collect()
    }

    fn received(subscription: &mut Subscription) -> Vec<Value> {
        let mut events = Vec::new();
        while let Ok(event) = subscription.events.try_recv() {
            events.push(event);
        }
        events
    }

    fn delta(text: &str) -> Value {
        json!({"type": "response.output_text.delta", "delta": text})
    }

    fn in_progress() -> Value {
        json!({"type": "response.in_progress", "response": {"id": "resp_1", "model": "m"}})
    }

    #[test]
    fn a_turns_text_goes_out_as_one_message_completed_with_its_whole_text_before_each_item_and_the_end()
     {
        let (mut session, _commands) = session();
        let mut sub = subscribe(&mut session);
        session.publish(in_progress());
        session.publish(delta("Let me "));
        session.publish(delta("look."));
        session.publish(json!({"type": "response.output_item.done", "item": {"id": "c".repeat(32),
            "type": "function_call", "status": "completed", "call_id": "c1", "name": "shell", "arguments": "{}"}}));
        session.publish(delta("Done."));
        session.publish(json!({"type": "response.completed", "response": {"id": "resp_1"}}));
        let out = received(&mut sub);
        let kinds: Vec<&str> = out.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.in_progress",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_item.done",
                "response.output_item.done",
                "response.output_text.delta",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let first = &out[3]["item"];
        assert_eq!(first["type"], "message");
        assert_eq!(first["role"], "assistant");
        assert_eq!(first["status"], "completed");
        assert_eq!(first["response_id"], "resp_1");
        assert_eq!(first["model"], "m");
        assert_eq!(first["content"][0]["text"], "Let me look.");
        assert_eq!(out[1]["message_id"], first["id"]);
        assert_eq!((&out[1]["index"], &out[2]["index"]), (&json!(0), &json!(1)));
        let second = &out[6]["item"];
        assert_eq!(second["content"][0]["text"], "Done.");
        assert_eq!(out[5]["message_id"], second["id"]);
        assert_ne!(first["id"], second["id"]);
    }

    #[test]
    fn a_new_subscriber_gets_the_turn_so_far_then_what_was_kept_with_deltas_merged() {
        let (mut session, mut commands) = session();
        let first = subscribe(&mut session);
        session.publish(in_progress());
        session.publish(delta("one "));
        session.publish(json!({"type": "response.output_item.done", "item": {"id": "c".repeat(32),
            "type": "function_call", "status": "completed", "call_id": "c1", "name": "shell", "arguments": "{}"}}));
        session.publish(delta("two "));
        // The subscriber goes (the server died with these in flight): the next one must still get all of it.
        drop(first);
        session.handle(commands.try_recv().unwrap());
        session.publish(delta("three "));
        session.publish(delta("four"));
        let next = subscribe(&mut session);
        let kinds: Vec<&str> = next
            .backlog
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "session.status",
                "response.in_progress",
                "response.output_item.done",
                "response.output_item.done",
                "response.output_text.delta",
                "response.output_text.delta",
            ]
        );
        // The turn is under way, ...
        assert_eq!(next.backlog[0]["status"], "running");
        assert_eq!(next.backlog[1]["response"]["id"], "resp_1");
        // ... what it completed, ...
        let b = &next.backlog[2..];
        assert_eq!(b[0]["item"]["content"][0]["text"], "one ");
        assert_eq!(b[1]["item"]["call_id"], "c1");
        // ... the open message as it stood when the subscriber went, marked as the whole text so far, ...
        assert_eq!(b[2]["delta"], "two ");
        assert_eq!(b[2]["snapshot"], true);
        // ... and what came after, merged into one delta of the same message.
        assert_eq!(b[3]["delta"], "three four");
        assert_eq!(b[3]["message_id"], b[2]["message_id"]);
        assert_eq!(b[3]["index"], 2);
        assert!(b[3].get("snapshot").is_none());

        // Every later subscriber gets the record again (a server skips the items it has).
        session.publish(json!({"type": "response.completed", "response": {"id": "resp_1"}}));
        drop(next);
        session.handle(commands.try_recv().unwrap());
        let last = subscribe(&mut session);
        let texts: Vec<&str> = last
            .backlog
            .iter()
            .filter(|e| e["item"]["type"] == "message")
            .map(|e| e["item"]["content"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["one ", "two three four"]);
        assert!(
            last.backlog.iter().all(|e| e["type"] != "session.status"),
            "ended"
        );
        // A new turn starts a new record.
        session.publish(in_progress());
        drop(last);
        session.handle(commands.try_recv().unwrap());
        let fresh = subscribe(&mut session);
        assert_eq!(fresh.backlog.len(), 2, "{:?}", fresh.backlog);
    }

    #[test]
    fn only_a_subscriber_that_asks_gets_the_turns_record() {
        let (mut session, mut commands) = session();
        let first = subscribe(&mut session);
        session.publish(in_progress());
        session.publish(delta("one "));
        session.publish(json!({"type": "response.output_item.done", "item": {"id": "c".repeat(32),
            "type": "function_call", "status": "completed", "call_id": "c1", "name": "shell", "arguments": "{}"}}));
        session.publish(delta("two "));
        drop(first);
        session.handle(commands.try_recv().unwrap());

        // Nothing kept: a peer that did not ask (a Python server) gets nothing re-sent.
        let plain = subscribe_asking(&mut session, false);
        assert!(plain.backlog.is_empty(), "{:?}", plain.backlog);
        drop(plain);
        session.handle(commands.try_recv().unwrap());

        // Something kept: it gets just that, no items it had and no snapshot delta.
        session.publish(delta("three "));
        let plain = subscribe_asking(&mut session, false);
        assert_eq!(plain.backlog.len(), 1, "{:?}", plain.backlog);
        assert_eq!(plain.backlog[0]["delta"], "three ");
        assert!(plain.backlog[0].get("snapshot").is_none());
        drop(plain);
        session.handle(commands.try_recv().unwrap());

        // One that asks gets the record: the turn under way, its items, the open message's whole text.
        let asked = subscribe_asking(&mut session, true);
        let kinds: Vec<&str> = asked
            .backlog
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "session.status",
                "response.in_progress",
                "response.output_item.done",
                "response.output_item.done",
                "response.output_text.delta",
            ]
        );
        assert_eq!(asked.backlog[4]["delta"], "two three ");
        assert_eq!(asked.backlog[4]["snapshot"], true);
    }

    #[test]
    fn an_interrupted_or_failed_response_completes_its_message_as_incomplete() {
        let (mut session, _commands) = session();
        let mut sub = subscribe(&mut session);
        session.publish(in_progress());
        session.publish(delta("partial"));
        session.publish(json!({"type": "response.incomplete", "response": {"id": "resp_1"}}));
        let out = received(&mut sub);
        assert_eq!(out[2]["item"]["status"], "incomplete");
        assert_eq!(out[2]["item"]["content"][0]["text"], "partial");
        assert_eq!(out[3]["type"], "response.incomplete");
    }

    #[test]
    fn events_published_with_no_subscriber_go_to_the_next_one_first_in_order() {
        let (mut session, _commands) = session();
        for n in 0..5 {
            session.publish(event(n));
        }
        let mut first = subscribe(&mut session);
        assert_eq!(numbers(&first.backlog), [0, 1, 2, 3, 4]);
        assert!(received(&mut first).is_empty());
        session.publish(event(5));
        assert_eq!(numbers(&received(&mut first)), [5]);
        // Handed over once: a second subscriber starts with the live events only.
        let mut second = subscribe(&mut session);
        assert!(second.backlog.is_empty());
        session.publish(event(6));
        assert_eq!(numbers(&received(&mut first)), [6]);
        assert_eq!(numbers(&received(&mut second)), [6]);
    }

    #[test]
    fn a_subscriber_that_went_away_or_fell_behind_counts_as_gone() {
        let (mut session, mut commands) = session();
        // Dropped: its stream ended, it says so at once.
        drop(subscribe(&mut session));
        session.handle(commands.try_recv().unwrap());
        assert!(session.subscribers.is_empty());
        session.publish(event(0));

        // Closed but not yet told: the next event finds it gone.
        let gone = subscribe(&mut session);
        assert_eq!(numbers(&gone.backlog), [0]);
        drop(gone);
        session.publish(event(1));
        // Its late word changes nothing.
        session.handle(commands.try_recv().unwrap());
        assert!(session.subscribers.is_empty());

        // Too slow: dropped when its buffer is full, and what it could not take waits for the next one.
        let mut slow = subscribe(&mut session);
        assert_eq!(numbers(&slow.backlog), [1]);
        for n in 2..2 + SUBSCRIBER_BUFFER {
            session.publish(event(n));
        }
        assert_eq!(session.subscribers.len(), 1);
        session.publish(event(2 + SUBSCRIBER_BUFFER));
        assert!(session.subscribers.is_empty());
        session.publish(event(3 + SUBSCRIBER_BUFFER));
        let next = subscribe(&mut session);
        assert_eq!(
            numbers(&next.backlog),
            [2 + SUBSCRIBER_BUFFER, 3 + SUBSCRIBER_BUFFER]
        );
        // The slow one still reads what it had, then its stream ends: nothing missing, nothing twice.
        let had = received(&mut slow);
        assert_eq!(
            numbers(&had),
            (2..2 + SUBSCRIBER_BUFFER).collect::<Vec<_>>()
        );
        assert!(slow.events.try_recv().is_err());
        assert!(slow.events.is_closed());
    }

    #[test]
    fn the_backlog_drops_the_oldest_past_its_event_bound() {
        let (mut session, _commands) = session();
        for n in 0..BACKLOG_MAX_EVENTS + 7 {
            session.publish(event(n));
        }
        assert_eq!(session.backlog.dropped, 7);
        let subscription = subscribe(&mut session);
        assert_eq!(subscription.backlog.len(), BACKLOG_MAX_EVENTS);
        assert_eq!(
            numbers(&subscription.backlog),
            (7..BACKLOG_MAX_EVENTS + 7).collect::<Vec<_>>()
        );
        assert_eq!(session.backlog.dropped, 0, "counted once, when handed over");
        assert_eq!(session.backlog.bytes, 0);
    }

    #[test]
    fn the_backlog_drops_the_oldest_past_its_byte_bound_but_keeps_the_newest() {
        let big = |n: usize| json!({"type": "x", "n": n, "pad": "a".repeat(1000)});
        let size = json_len(&big(0));
        assert_eq!(size, big(0).to_string().len());
        let mut backlog = Backlog::new(100, 3 * size);
        for n in 0..5 {
            backlog.push(big(n));
        }
        assert_eq!(backlog.bytes, 3 * size);
        let (_, kept, dropped) = backlog.take();
        let kept: Vec<u64> = kept.iter().map(|e| e["n"].as_u64().unwrap()).collect();
        assert_eq!((kept, dropped), (vec![2, 3, 4], 2));

        let mut backlog = Backlog::new(100, size / 2);
        backlog.push(big(0));
        backlog.push(big(1));
        let (_, kept, dropped) = backlog.take();
        assert_eq!((kept, dropped), (vec![big(1)], 1));
    }

    #[test]
    fn the_byte_bound_holds_with_the_real_bounds() {
        let (mut session, _commands) = session();
        let pad = "b".repeat(64 * 1024);
        for n in 0..200 {
            session.publish(json!({"type": "x", "n": n, "pad": pad}));
        }
        assert!(session.backlog.bytes <= BACKLOG_MAX_BYTES);
        let subscription = subscribe(&mut session);
        let first = subscription.backlog[0]["n"].as_u64().unwrap();
        let kept = subscription.backlog.len() as u64;
        assert!(kept < 200 && first == 200 - kept, "{first} {kept}");
    }
}
