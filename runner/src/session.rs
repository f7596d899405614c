//! One task per session owns its state: history, queued input, the running turn and the stream subscribers.
//! Everything else talks to it through [`SessionHandle`] messages.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use omnigent_proto::elicitation::Resolution;

use crate::HarnessEnv;
use crate::agent::{AgentFetcher, AgentLoad};
use crate::approvals::{Approvals, NotPending};
use crate::harness::codex::CodexHandle;
use crate::harness::exec::ExecMemory;
use crate::harness::mcp::{McpServers, Toolbox};
use crate::harness::openai::WireApi;
use crate::harness::pi::PiHandle;
use crate::harness::{HarnessKind, HistoryEntry, Turn};

mod backlog;
mod record;
#[cfg(test)]
mod tests;
mod turn;

use backlog::Backlog;
use record::TurnRecord;
pub(crate) use turn::epoch_secs;
use turn::run_turn;

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
    /// The default harness's name as given (`openai-agents`…), for its defaults; `None`: its own name.
    pub harness_name: Option<String>,
    pub env: HarnessEnv,
    /// Fetches the agents of sessions initialised with an `agent_id`; `None`: every session is built-in.
    pub agents: Option<AgentFetcher>,
}

/// Settings from `POST /v1/sessions`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionInit {
    pub agent_id: Option<String>,
    pub workspace: Option<PathBuf>,
    /// The harness the init names, as written (ours or an omnigent alias) and parsed.
    pub harness: Option<(String, HarnessKind)>,
    /// The agent fetched for this init; `None` leaves the session's as it was.
    pub agent: Option<AgentLoad>,
    /// The session's MCP servers (the loaded agent spec's `tools`), replacing any it had; they start with its
    /// next turn. `None` leaves the session's as they were.
    pub mcp_servers: Option<McpServers>,
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
    /// An answer to one of the session's questions (the server's `approval` event).
    Resolve {
        resolution: Resolution,
        reply: oneshot::Sender<Result<(), NotPending>>,
    },
    Snapshot(oneshot::Sender<Value>),
    TurnFinished {
        turn: u64,
        new_history: Vec<HistoryEntry>,
    },
    /// Publish an event as a turn would.
    #[cfg(test)]
    Emit(Value),
    /// The session's approvals, to ask as a turn would.
    #[cfg(test)]
    Approvals(oneshot::Sender<Approvals>),
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
    /// What fetches session agents, if this runner has a server to fetch from.
    pub fn agents(&self) -> Option<&AgentFetcher> {
        self.defaults.agents.as_ref()
    }

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

    /// The session's approvals, to ask as a turn would.
    #[cfg(test)]
    pub async fn approvals(&self) -> Result<Approvals, SessionGone> {
        self.ask(Command::Approvals).await
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

    /// Answer one of the session's questions; the first answer wins, a later one is [`NotPending`].
    pub async fn resolve(
        &self,
        resolution: Resolution,
    ) -> Result<Result<(), NotPending>, SessionGone> {
        self.ask(|reply| Command::Resolve { resolution, reply })
            .await
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

struct Session {
    id: String,
    agent_id: Option<String>,
    workspace: PathBuf,
    harness: HarnessKind,
    /// The harness name as the init or the spec wrote it (`openai-agents`…), for its defaults.
    harness_name: Option<String>,
    /// Whether the init named the harness (it then wins over the spec's).
    harness_from_init: bool,
    /// The runner's default harness and its name, for when a session's agent goes back to built-in.
    default_harness: (HarnessKind, Option<String>),
    agent: AgentLoad,
    env: HarnessEnv,
    created_at: u64,
    history: Vec<HistoryEntry>,
    /// The session's MCP servers, owned by their own task; dropped (servers stopped) with the session.
    mcp: Option<Toolbox>,
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
    /// The session's Codex agent, started at its first `codex` turn; dropped with the session.
    codex: Option<CodexHandle>,
    /// The session's Pi agent, started at its first `pi` turn; dropped with the session.
    pi: Option<PiHandle>,
    /// The agent CLI session the next `exec` turn resumes.
    exec: ExecMemory,
    /// `claude-sdk`: the session's Claude Code agent, started at its first turn; its process dies with it.
    claude_code: Option<crate::harness::claude_code::ClaudeCode>,
    /// The questions its agents ask (every turn gets a clone); answered through [`Command::Resolve`].
    approvals: Approvals,
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
            harness_name: defaults.harness_name.clone(),
            harness_from_init: false,
            default_harness: (defaults.harness, defaults.harness_name.clone()),
            agent: AgentLoad::BuiltIn,
            env: defaults.env.clone(),
            created_at: epoch_secs(),
            history: Vec::new(),
            mcp: None,
            queue: VecDeque::new(),
            running: None,
            turns: 0,
            subscribers: Vec::new(),
            next_subscriber: 0,
            backlog: Backlog::new(BACKLOG_MAX_EVENTS, BACKLOG_MAX_BYTES),
            record: TurnRecord::default(),
            emit_tx,
            done_tx,
            codex: None,
            pi: None,
            exec: ExecMemory::default(),
            claude_code: None,
            approvals: Approvals::new(),
        }
    }

    /// The session's Claude Code agent when its harness is `claude-sdk` (started on first use).
    fn claude_code(&mut self) -> Option<crate::harness::claude_code::ClaudeCode> {
        use crate::harness::claude_code::{ClaudeCode, Options};
        if self.harness != HarnessKind::ClaudeCode {
            return None;
        }
        let agent = match &self.agent {
            AgentLoad::Loaded(loaded) => Some(loaded),
            AgentLoad::BuiltIn | AgentLoad::Failed(_) => None,
        };
        // The loaded spec's instructions and MCP servers go to the CLI itself (its own MCP client).
        let options = || Options {
            append_system_prompt: agent.and_then(|a| a.instructions.clone()),
            mcp_servers: agent
                .filter(|a| !a.mcp_servers.is_empty())
                .map(|a| crate::harness::claude_code::mcp_config(&a.mcp_servers)),
            state_dir: agent.map(|a| a.dir.clone()),
            ..Options::from_env()
        };
        Some(
            self.claude_code
                .get_or_insert_with(|| ClaudeCode::spawn(options()))
                .clone(),
        )
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
                if let Some((name, harness)) = init.harness {
                    self.harness = harness;
                    self.harness_name = Some(name);
                    self.harness_from_init = true;
                }
                if let Some(agent) = init.agent {
                    if !self.harness_from_init {
                        (self.harness, self.harness_name) = match &agent {
                            AgentLoad::Loaded(loaded) => {
                                (loaded.harness, Some(loaded.harness_name.clone()))
                            }
                            AgentLoad::BuiltIn | AgentLoad::Failed(_) => {
                                self.default_harness.clone()
                            }
                        };
                    }
                    self.agent = agent;
                }
                if let Some(servers) = init.mcp_servers {
                    // The old toolbox (if any) stops once its last turn has let go of it.
                    self.mcp = (!servers.is_empty()).then(|| Toolbox::spawn(servers));
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
            Command::Resolve { resolution, reply } => {
                let _ = reply.send(self.approvals.resolve(resolution));
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
            #[cfg(test)]
            Command::Approvals(reply) => {
                let _ = reply.send(self.approvals.clone());
            }
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
            "status": match (self.record.waiting(), &self.running) {
                (true, _) => "waiting",
                (false, Some(_)) => "running",
                (false, None) => "idle",
            },
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

    /// The settings of the next turn: the runner's environment for the session's harness, what the agent spec
    /// sets over it, and the OpenAI API to speak (`OMNIGENT_OPENAI_WIRE_API`, else the spec's `wire_api`, else
    /// the harness name's default).
    fn turn_config(&self) -> crate::harness::HarnessConfig {
        let mut config = self.env.config_for(self.harness);
        let mut spec_wire = None;
        if let AgentLoad::Loaded(agent) = &self.agent {
            agent.apply(&mut config);
            spec_wire = agent.wire_api;
        }
        let name = self.harness_name.as_deref().unwrap_or(self.harness.name());
        config.wire_api = Some(
            self.env
                .openai_wire_api
                .or(spec_wire)
                .unwrap_or_else(|| WireApi::default_for(name)),
        );
        config
    }

    fn start_turn(&mut self, input: TurnInput) {
        self.turns += 1;
        let turn_no = self.turns;
        self.history.push(HistoryEntry::User { text: input.text });
        let config = self.turn_config();
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
            mcp: self.mcp.clone(),
            codex: (self.harness == HarnessKind::Codex)
                .then(|| self.codex.get_or_insert_with(CodexHandle::spawn).clone()),
            pi: (self.harness == HarnessKind::Pi)
                .then(|| self.pi.get_or_insert_with(PiHandle::spawn).clone()),
            exec: (self.harness == HarnessKind::Exec).then(|| self.exec.clone()),
            claude_code: self.claude_code(),
            approvals: self.approvals.clone(),
        };
        let cancel = CancellationToken::new();
        self.running = Some(RunningTurn {
            turn: turn_no,
            cancel: cancel.clone(),
        });
        let emit = self.emit_tx.clone();
        let done = self.done_tx.clone();
        let kind = self.harness;
        let agent_error = match &self.agent {
            AgentLoad::Failed(reason) => Some(reason.clone()),
            AgentLoad::BuiltIn | AgentLoad::Loaded(_) => None,
        };
        tokio::spawn(
            async move {
                let new_history = run_turn(kind, turn, model, agent_error, emit, cancel).await;
                let _ = done.send(Command::TurnFinished {
                    turn: turn_no,
                    new_history,
                });
            }
            .in_current_span(),
        );
    }
}
