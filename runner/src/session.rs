//! One task per session owns its state: history, queued input, the running turn and the stream subscribers.
//! Everything else talks to it through [`SessionHandle`] messages.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::HarnessEnv;
use crate::harness::{self, EventSink, HarnessError, HarnessKind, HistoryEntry, Turn};

/// Events buffered per stream subscriber; a subscriber that falls this far behind is dropped (its stream
/// ends and the server reconnects), like the Python omnigent's 1024-event queues.
const SUBSCRIBER_BUFFER: usize = 1024;

/// How long an interrupted harness may take to stop by itself before it is dropped.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
    Subscribe(oneshot::Sender<mpsc::Receiver<Value>>),
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

    /// A new subscriber of the session's live events.
    pub async fn subscribe(&self) -> Result<mpsc::Receiver<Value>, SessionGone> {
        self.ask(Command::Subscribe).await
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
    let state = Session {
        id: id.clone(),
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
        emit_tx,
        done_tx: tx.clone(),
    };
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
    subscribers: Vec<mpsc::Sender<Value>>,
    /// Where turns send their events; the task fans them out in order.
    emit_tx: mpsc::UnboundedSender<Value>,
    /// Where turns report their end (the session's own command channel).
    done_tx: mpsc::UnboundedSender<Command>,
}

impl Session {
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
                    Some(command) => self.handle(command),
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
            Command::Subscribe(reply) => {
                let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
                self.subscribers.push(tx);
                let _ = reply.send(rx);
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
                self.history.extend(new_history);
                if let Some(next) = self.queue.pop_front() {
                    self.start_turn(next);
                }
            }
        }
    }

    fn publish(&mut self, event: Value) {
        self.subscribers
            .retain(|subscriber| match subscriber.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!("stream subscriber fell {SUBSCRIBER_BUFFER} events behind; dropping it");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
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
    send(json!({"type": "session.status", "status": "running"}));
    send(json!({"type": "response.in_progress", "response": response("in_progress")}));
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
            send(json!({"type": "response.completed", "response": done}));
            outcome.new_history
        }
        Err(HarnessError::Interrupted) => {
            let mut incomplete = response("incomplete");
            incomplete["incomplete_details"] = json!({"reason": "user_interrupt"});
            send(json!({"type": "response.incomplete", "response": incomplete}));
            Vec::new()
        }
        Err(err) => {
            let (code, message) = error_code_and_message(&err);
            warn!(%code, %message, "turn failed");
            let error = json!({"code": code, "message": message});
            send(json!({"type": "response.error", "source": "llm", "error": error}));
            let mut failed = response("failed");
            failed["error"] = error;
            send(json!({"type": "response.failed", "response": failed}));
            Vec::new()
        }
    };
    send(json!({"type": "session.status", "status": "idle"}));
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
