//! The session's runner, as its actor sees it: the relay (which runner, its reader, its readiness), the
//! reader's events and the tunnels' news, and applying what the relay's lifecycle
//! ([`crate::relay::lifecycle`]) and the translation of runner events ([`crate::relay::translate`]) answer.

use omnigent_proto::api::SessionStatus;
use omnigent_proto::events::kind;
use omnigent_proto::runner_api::{SessionCreate, SessionFacts};
use omnigent_tunnel::RunnerConnection;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::core::Actor;
use super::turn::{Waiting, not_ready};
use super::{ActorError, Msg, TunnelEvent};
use crate::relay::lifecycle::{Effect, Input, Tunnel, View};
use crate::relay::translate::{self, Step};
use crate::relay::{self, FromReader, OpenSpec, ReaderEvent};
use crate::store::SessionRow;

/// The relay of a session (reference §3.4–3.5): which runner it reads from and how far it got.
#[derive(Default)]
pub(super) struct Relay {
    /// The runner the relay reads from.
    pub(super) runner_id: Option<String>,
    /// Bumped for every reader, so messages of a replaced reader are ignored.
    epoch: u64,
    /// The current reader task (aborted when dropped).
    reader: Option<Reader>,
    /// Turn inputs waiting for the reader to be ready, oldest first.
    pub(super) waiting: Vec<Waiting>,
    /// Tasks started for the turn (forwards, relaunches, interrupts) whose outcome has not come back.
    pub(super) in_flight: usize,
}

impl Relay {
    /// Whether the relay keeps the actor alive.
    pub(super) fn busy(&self) -> bool {
        self.reader.is_some() || !self.waiting.is_empty() || self.in_flight > 0
    }

    /// When the oldest waiting input gives up.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.deadline).min()
    }
}

struct Reader {
    generation: u64,
    /// Subscribed and the session initialised.
    ready: bool,
    /// What came on the stream before it was ready (the runner's record of its turn, or what it kept while
    /// no relay was subscribed) says a turn is under way (`response.in_progress`): the runner has the turn,
    /// and its end will come on this stream, whatever its status answer says.
    turn_under_way: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the relay to a runner stands for a turn input.
pub(super) enum Readiness {
    Ready,
    Opening,
    Failed(String),
}

impl Actor {
    pub(super) fn view(&self) -> View {
        let conn = self
            .relay
            .runner_id
            .as_deref()
            .and_then(|r| self.runners.get(r));
        View {
            mid_turn: matches!(self.status, SessionStatus::Running | SessionStatus::Waiting),
            online: self
                .relay
                .runner_id
                .as_deref()
                .is_some_and(|r| self.runners.is_online(r)),
            open: conn.is_some_and(|c| !c.is_closed()),
            reading: self.relay.reader.is_some(),
        }
    }

    /// One lifecycle transition, its effects applied (failures logged).
    pub(super) async fn transition(&mut self, input: Input<'_>) {
        let waited = self.life.grace.is_some();
        let effects = self.life.on(input, Instant::now(), self.view());
        if !waited && self.life.grace.is_some() {
            info!(session_id = %self.id, grace = ?self.limits.runner_grace, "runner lost mid-turn; waiting for it to come back");
        }
        if let Err(e) = self.apply(effects).await {
            warn!(session_id = %self.id, "cannot record what happened to the session's runner: {e}");
        }
    }

    /// The relay to `runner_id`: the open one, or a new reader (its init built from `row` when given).
    pub(super) async fn ensure_relay(
        &mut self,
        runner_id: &str,
        row: Option<&SessionRow>,
    ) -> Readiness {
        if self.relay.runner_id.as_deref() != Some(runner_id) {
            self.drop_reader();
            self.life.on(Input::Rebound, Instant::now(), self.view());
            self.relay.runner_id = Some(runner_id.to_owned());
        }
        let Some(conn) = self.runners.get(runner_id) else {
            return Readiness::Failed(format!("runner `{runner_id}` is not connected"));
        };
        if let Some(reader) = &self.relay.reader
            && reader.generation == conn.generation()
            && !reader.task.is_finished()
        {
            return if reader.ready {
                Readiness::Ready
            } else {
                Readiness::Opening
            };
        }
        self.open_relay(conn, row).await
    }

    /// Stop the reader; inputs waiting for it (on another runner now) are refused.
    pub(super) fn drop_reader(&mut self) {
        self.relay.reader = None;
        for w in std::mem::take(&mut self.relay.waiting) {
            drop(w.reply.send(Err(not_ready(
                &w.input.kind,
                &self.id,
                "the session's relay stopped",
            ))));
        }
    }

    /// Start a reader on `conn` (replacing any other).
    async fn open_relay(&mut self, conn: RunnerConnection, row: Option<&SessionRow>) -> Readiness {
        self.relay.reader = None;
        self.relay.epoch += 1;
        let read;
        let row = match row {
            Some(row) => row,
            None => {
                read = match self.store.get_session(&self.id).await {
                    Ok(Some(row)) => row,
                    Ok(None) => return Readiness::Failed("Session not found".into()),
                    Err(e) => return Readiness::Failed(e.to_string()),
                };
                &read
            }
        };
        let host_supervised = row.host_id.is_some();
        self.life.on(
            Input::Opened { host_supervised },
            Instant::now(),
            self.view(),
        );
        let harness = row.harness();
        let init = SessionCreate::new(SessionFacts {
            session_id: &self.id,
            agent_id: &row.agent_id,
            harness,
            sub_agent_name: row.sub_agent_name.as_deref(),
            workspace: row.workspace.as_deref(),
            labels: &row.labels,
            created_at: row.created_at_ms / 1000,
            updated_at: row.updated_at_ms / 1000,
            server_version: omnigent_proto::BUILD_VERSION,
        });
        let generation = conn.generation();
        let spec = OpenSpec {
            session_id: self.id.clone(),
            epoch: self.relay.epoch,
            conn,
            init,
        };
        let task = tokio::spawn(relay::run_reader::<Msg>(spec, self.weak_self.clone()));
        self.relay.reader = Some(Reader {
            generation,
            ready: false,
            turn_under_way: false,
            task,
        });
        Readiness::Opening
    }

    /// Open a reader on the runner's current tunnel, if it has one.
    async fn reopen(&mut self) {
        let conn = self
            .relay
            .runner_id
            .as_deref()
            .and_then(|r| self.runners.get(r));
        if let Some(conn) = conn {
            self.open_relay(conn, None).await;
        }
    }

    pub(super) async fn reader_event(&mut self, from: FromReader) {
        if from.epoch != self.relay.epoch {
            return;
        }
        match from.event {
            ReaderEvent::Events(events) => {
                if let Some(reader) = self.relay.reader.as_mut().filter(|r| !r.ready) {
                    reader.turn_under_way |= events
                        .iter()
                        .any(|e| e["type"] == kind::RESPONSE_IN_PROGRESS);
                }
                for event in events {
                    if let Err(e) = self.relay_event(event).await {
                        warn!(session_id = %self.id, "relaying a runner event failed: {e}");
                    }
                }
            }
            ReaderEvent::Ready { runner_status } => {
                let mut turn_under_way = false;
                if let Some(reader) = &mut self.relay.reader {
                    reader.ready = true;
                    turn_under_way = reader.turn_under_way;
                }
                // The status answer is a request of its own and may overtake the turn's last events on the
                // stream: a runner whose stream said the turn runs is not idle until those events say so.
                let runner_idle = runner_status.as_deref() == Some("idle") && !turn_under_way;
                let view = self.view();
                let effects = self
                    .life
                    .on(Input::Ready { runner_idle }, Instant::now(), view);
                if view.mid_turn && runner_idle && self.life.orphaned {
                    info!(session_id = %self.id, "the runner came back without the running turn; waiting for its exit report");
                }
                if let Err(e) = self.apply(effects).await {
                    warn!(session_id = %self.id, "cannot settle after the runner came back: {e}");
                }
                for w in std::mem::take(&mut self.relay.waiting) {
                    self.forward(w.input, &w.runner_id, &w.agent, w.reply).await;
                }
            }
            ReaderEvent::Ended { why } => {
                self.relay.reader = None;
                debug!(session_id = %self.id, generation = from.generation, why, "relay ended");
                for w in std::mem::take(&mut self.relay.waiting) {
                    drop(w.reply.send(Err(not_ready(&w.input.kind, &self.id, &why))));
                }
                let Some(runner_id) = self.relay.runner_id.clone() else {
                    return;
                };
                let tunnel = match self.runners.get(&runner_id) {
                    Some(c) if c.generation() != from.generation && !c.is_closed() => Tunnel::Newer,
                    Some(c) if !c.is_closed() => Tunnel::Same,
                    _ => Tunnel::Gone,
                };
                self.transition(Input::Ended { tunnel }).await;
            }
        }
    }

    pub(super) async fn tunnel_event(&mut self, event: TunnelEvent) {
        match event {
            TunnelEvent::RunnerConnected {
                runner_id,
                generation,
            } => {
                if self.relay.runner_id.as_deref() != Some(runner_id.as_str()) {
                    self.drop_reader();
                    self.relay.runner_id = Some(runner_id.clone());
                }
                self.transition(Input::Connected).await;
                if self
                    .relay
                    .reader
                    .as_ref()
                    .is_some_and(|r| r.generation >= generation)
                {
                    return;
                }
                if let Some(conn) = self.runners.get(&runner_id) {
                    self.open_relay(conn, None).await;
                }
            }
            TunnelEvent::RunnerExited { runner_id, report } => {
                let same_runner = self
                    .relay
                    .runner_id
                    .as_deref()
                    .is_none_or(|r| r == runner_id);
                let input = Input::Exited {
                    same_runner,
                    report: &report,
                };
                self.transition(input).await;
            }
            TunnelEvent::RecoverTurn => self.transition(Input::Recover).await,
        }
    }

    /// A deadline passed: answers whether anything was due (else the actor may be idle).
    pub(super) async fn timer(&mut self, now: Instant) -> bool {
        if self.life.due(now) {
            self.transition(Input::Timer).await;
            return true;
        }
        if self.relay.deadline().is_some_and(|t| t <= now) {
            let (late, waiting) = std::mem::take(&mut self.relay.waiting)
                .into_iter()
                .partition(|w| w.deadline <= now);
            self.relay.waiting = waiting;
            for w in late {
                let why = format!("runner `{}` did not get ready in time", w.runner_id);
                drop(w.reply.send(Err(not_ready(&w.input.kind, &self.id, &why))));
            }
            return true;
        }
        false
    }

    /// Apply lifecycle effects, in order; the first failure stops the rest.
    pub(super) async fn apply(&mut self, effects: Vec<Effect>) -> Result<(), ActorError> {
        for effect in effects {
            match effect {
                Effect::SettleIdle => {
                    self.set_status(SessionStatus::Idle, None, None).await?;
                }
                Effect::FailTurn { code, message } => {
                    warn!(session_id = %self.id, code, message, "the runner is gone mid-turn; the turn failed");
                    self.fail_turn(code, &message).await?;
                }
                Effect::SettleLostTurn => {
                    info!(session_id = %self.id, "the runner came back without the running turn; settling to idle");
                    if self.flush_partial().await? {
                        // What was streamed of the reply is kept as incomplete; say why.
                        self.append_error(
                            "turn_lost",
                            "The runner restarted during the turn and does not know of it: the reply is \
                             incomplete. Send the message again to retry.",
                        )
                        .await?;
                    }
                    self.set_status(SessionStatus::Idle, None, None).await?;
                }
                Effect::Open => self.reopen().await,
            }
        }
        Ok(())
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
    async fn append_error(
        &mut self,
        code: &str,
        message: &str,
    ) -> Result<serde_json::Value, ActorError> {
        let (item, error) = translate::error_item(
            code,
            message,
            self.turn.response_id.clone(),
            crate::clock::now_ms(),
        );
        self.append_item(item).await?;
        Ok(error)
    }

    /// Store what the turn streamed that no item holds yet as incomplete; answers whether there was any.
    async fn flush_partial(&mut self) -> Result<bool, ActorError> {
        let steps = self.turn.flush_partial(crate::clock::now_ms());
        let any = !steps.is_empty();
        self.steps(steps).await?;
        Ok(any)
    }

    /// One runner event: fence, persist what is durable (reference §2.4), publish.
    async fn relay_event(&mut self, event: serde_json::Value) -> Result<(), ActorError> {
        let Some(kind) = event.get("type").and_then(serde_json::Value::as_str) else {
            return Ok(());
        };
        if !self.life.admit(kind, translate::is_terminal(kind)) {
            return Ok(());
        }
        let already_stored = match translate::stored_lookup(&event) {
            Some(id) => {
                let stored = self.store.item_exists(&id).await?;
                if stored {
                    debug!(session_id = %self.id, item_id = %id, "runner item already stored; skipped");
                }
                stored
            }
            None => false,
        };
        let steps = self
            .turn
            .translate(event, already_stored, crate::clock::now_ms());
        self.steps(steps).await
    }

    /// Apply translation steps, in order; the first failure stops the rest.
    async fn steps(&mut self, steps: Vec<Step>) -> Result<(), ActorError> {
        for step in steps {
            match step {
                Step::Publish(event) => {
                    self.publish(event).await?;
                }
                Step::SetStatus {
                    status,
                    response_id,
                    error,
                } => {
                    // A question still open keeps the session waiting, whatever else the runner does.
                    let status = if status == SessionStatus::Running && self.approvals.any() {
                        SessionStatus::Waiting
                    } else {
                        status
                    };
                    // These two transitions have no effects.
                    let input = match status {
                        SessionStatus::Running => Some(Input::TurnStarted),
                        SessionStatus::Idle => Some(Input::TurnIdle),
                        _ => None,
                    };
                    if let Some(input) = input {
                        self.life.on(input, Instant::now(), self.view());
                    }
                    self.set_status(status, response_id, error).await?;
                }
                Step::Store(item) => {
                    // An item that could not be stored is not shown either: subscribers see only what a
                    // reload shows (the store logged the failure and `/health` reports it).
                    self.append_item(item).await?;
                }
                Step::StoreText { item, text } => {
                    // The buffer is emptied only once stored: a failed write keeps it for the next flush.
                    if let Err(e) = self.append_item(item).await {
                        self.turn.restore_text(text);
                        return Err(e);
                    }
                }
                Step::Ask { request, event } => self.ask(request, event).await?,
                Step::Resolved { resolved, event } => {
                    self.resolved_by_runner(resolved, event).await?;
                }
                Step::StoreUnlessStored(item) => {
                    if !self.store.item_exists(&item.id).await? {
                        self.append_item(item).await?;
                    }
                }
            }
        }
        Ok(())
    }
}
