//! A session's turn, owned by its actor: turn inputs and interrupts (each one command, forwarded from a
//! tracked task whose outcome comes back as a message), the relay to the session's runner (reader, readiness,
//! inputs waiting for it), and applying what the relay's lifecycle and the translation of runner events
//! answer.

use omnigent_proto::api::SessionStatus;
use omnigent_proto::events::{Interrupted, ServerEvent};
use omnigent_proto::runner_api::{SessionCreate, SessionFacts, TurnEvent};
use omnigent_tunnel::RunnerConnection;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::core::Actor;
use super::{ActorError, Msg, Outcome, Reply, TunnelEvent, TurnInput};
use crate::relay::lifecycle::{Effect, Input, Tunnel, View};
use crate::relay::translate::{self, Step};
use crate::relay::{self, FromReader, OpenSpec, ReaderEvent};
use crate::store::SessionRow;

/// The relay of a session (reference §3.4–3.5): which runner it reads from and how far it got.
#[derive(Default)]
pub(super) struct Relay {
    /// The runner the relay reads from.
    runner_id: Option<String>,
    /// Bumped for every reader, so messages of a replaced reader are ignored.
    epoch: u64,
    /// The current reader task (aborted when dropped).
    reader: Option<Reader>,
    /// Turn inputs waiting for the reader to be ready, oldest first.
    waiting: Vec<Waiting>,
    /// Tasks started for the turn (forwards, relaunches, interrupts) whose outcome has not come back.
    in_flight: usize,
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
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A turn input waiting for the relay to be ready.
struct Waiting {
    input: TurnInput,
    runner_id: String,
    agent_id: String,
    deadline: Instant,
    reply: Reply<Option<String>>,
}

/// How the relay to a runner stands for a turn input.
enum Readiness {
    Ready,
    Opening,
    Failed(String),
}

/// 503 for an input whose session has no reachable runner: start one.
fn no_runner(kind: &str, id: &str, why: &str) -> ActorError {
    ActorError::RunnerUnavailable(format!(
        "cannot deliver `{kind}` to session {id}: {why}. Start the session's runner (or create the session \
         with a host_id so the host launches one), then retry"
    ))
}

/// 503 for an input whose runner is there but could not be reached: retry.
fn not_ready(kind: &str, id: &str, why: &str) -> ActorError {
    ActorError::RunnerUnavailable(format!(
        "cannot deliver `{kind}` to session {id}: {why}; retry when the runner is back"
    ))
}

impl Actor {
    /// Run `task` on the actor's tracker and hand its outcome back as a message.
    fn spawn_outcome<F>(&mut self, task: F)
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        self.relay.in_flight += 1;
        let me = self.weak_self.clone();
        self.tasks.spawn(async move {
            let outcome = task.await;
            if let Some(tx) = me.upgrade() {
                let _ = tx.send(Msg::Outcome(outcome)).await;
            }
        });
    }

    fn view(&self) -> View {
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
    async fn transition(&mut self, input: Input<'_>) {
        let waited = self.life.grace.is_some();
        let effects = self.life.on(input, Instant::now(), self.view());
        if !waited && self.life.grace.is_some() {
            info!(session_id = %self.id, grace = ?self.limits.runner_grace, "runner lost mid-turn; waiting for it to come back");
        }
        if let Err(e) = self.apply(effects).await {
            warn!(session_id = %self.id, "cannot record what happened to the session's runner: {e}");
        }
    }

    /// The turn input `input` (one read of the session row; the relaunch of a host's runner, the relay's
    /// readiness and the forward happen off the actor's loop).
    pub(super) async fn deliver(&mut self, input: TurnInput, reply: Reply<Option<String>>) {
        let row = match self.store.get_session(&self.id).await {
            Ok(Some(row)) => row,
            Ok(None) => return drop(reply.send(Err(ActorError::NotFound))),
            Err(e) => return drop(reply.send(Err(e.into()))),
        };
        let online = row
            .runner_id
            .as_deref()
            .is_some_and(|r| self.runners.is_online(r));
        // A host-bound session whose runner is offline while its host is online: the host relaunches it.
        if !online
            && row.host_id.is_some()
            && row.workspace.is_some()
            && let Some(hosts) = self.hosts.clone()
        {
            let (store, runners, id) = (self.store.clone(), self.runners.clone(), self.id.clone());
            self.spawn_outcome(async move {
                let result =
                    crate::hosts::relaunch_host_runner(&hosts, &store, &runners, &id).await;
                Outcome::Relaunched {
                    input,
                    row: Box::new(row),
                    result,
                    reply,
                }
            });
            return;
        }
        self.deliver_to(row, input, reply).await;
    }

    /// The input for the session as `row` says: to its runner when it is online, once the relay is ready.
    async fn deliver_to(
        &mut self,
        row: SessionRow,
        input: TurnInput,
        reply: Reply<Option<String>>,
    ) {
        let runner_id = match &row.runner_id {
            Some(r) if self.runners.is_online(r) => r.clone(),
            Some(r) => {
                let why = format!("its runner `{r}` is not connected");
                return drop(reply.send(Err(no_runner(&input.kind, &self.id, &why))));
            }
            None => {
                let why = "no runner is bound to it";
                return drop(reply.send(Err(no_runner(&input.kind, &self.id, why))));
            }
        };
        match self.ensure_relay(&runner_id, Some(&row)).await {
            Readiness::Ready => self.forward(input, &runner_id, &row.agent_id, reply).await,
            Readiness::Opening => self.relay.waiting.push(Waiting {
                input,
                runner_id,
                agent_id: row.agent_id,
                deadline: Instant::now() + relay::READY_TIMEOUT + relay::INIT_TIMEOUT,
                reply,
            }),
            Readiness::Failed(why) => {
                drop(reply.send(Err(not_ready(&input.kind, &self.id, &why))));
            }
        }
    }

    /// Persist the input (I1: before forwarding, so it survives whatever happens to the runner next) and
    /// forward it from a task.
    async fn forward(
        &mut self,
        input: TurnInput,
        runner_id: &str,
        agent_id: &str,
        reply: Reply<Option<String>>,
    ) {
        let Some(conn) = self.runners.get(runner_id) else {
            let why = format!("runner `{runner_id}` disconnected");
            return drop(reply.send(Err(not_ready(&input.kind, &self.id, &why))));
        };
        let item_id = match input.item {
            Some(item) => match self.persist_item(item).await {
                Ok(row) => Some(row.id),
                Err(e) => return drop(reply.send(Err(e))),
            },
            None => None,
        };
        let agent_name = crate::agents::find(agent_id).map(|a| a.name.as_str());
        let body = TurnEvent::input(
            &input.kind,
            &input.data,
            agent_id,
            agent_name,
            item_id.as_deref(),
        );
        let (id, kind) = (self.id.clone(), input.kind);
        self.spawn_outcome(async move {
            let result = relay::forward_input(&conn, &id, &body).await;
            Outcome::Forwarded {
                kind,
                item_id,
                result,
                reply,
            }
        });
    }

    pub(super) async fn interrupt(
        &mut self,
        kind: String,
        response_id: Option<String>,
        reply: Reply<()>,
    ) {
        let stop = kind == "stop_session";
        let row = match self.store.get_session(&self.id).await {
            Ok(Some(row)) => row,
            Ok(None) => return drop(reply.send(Err(ActorError::NotFound))),
            Err(e) => return drop(reply.send(Err(e.into()))),
        };
        let event = ServerEvent::Interrupted {
            sequence_number: None,
            data: Interrupted {
                requested_at: crate::now_secs_f64(),
                response_id: response_id.or_else(|| self.turn.response_id.clone()),
            },
        };
        if let Err(e) = self.publish_event(&event).await {
            return drop(reply.send(Err(e)));
        }
        self.life
            .on(Input::Interrupted { stop }, Instant::now(), self.view());
        let conn = row.runner_id.as_deref().and_then(|r| self.runners.get(r));
        let Some(conn) = conn else {
            let result = self.interrupt_undelivered(stop).await;
            return drop(reply.send(result));
        };
        let id = self.id.clone();
        self.spawn_outcome(async move {
            let delivered = match relay::deliver_interrupt(&conn, &id, &kind).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(session_id = %id, "the interrupt did not reach the runner: {e}");
                    false
                }
            };
            Outcome::InterruptDelivered {
                delivered,
                stop,
                reply,
            }
        });
    }

    async fn interrupt_undelivered(&mut self, stop: bool) -> Result<(), ActorError> {
        let effects = self.life.on(
            Input::InterruptUndelivered { stop },
            Instant::now(),
            self.view(),
        );
        self.apply(effects).await
    }

    pub(super) async fn outcome(&mut self, outcome: Outcome) {
        self.relay.in_flight = self.relay.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Relaunched {
                input,
                row,
                result,
                reply,
            } => match result {
                Ok(Some((row, _))) => self.deliver_to(row, input, reply).await,
                // No launch could be sent: say why with what the session had.
                Ok(None) => self.deliver_to(*row, input, reply).await,
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            Outcome::Forwarded {
                kind,
                item_id,
                result,
                reply,
            } => {
                let Err(e) = result else {
                    return drop(reply.send(Ok(item_id)));
                };
                let message = format!("the runner did not take the `{kind}` event: {e}");
                warn!(session_id = %self.id, runner_id = ?self.relay.runner_id, "{message}");
                let error =
                    serde_json::json!({"code": "runner_rejected_event", "message": message});
                let failed = self
                    .set_status(SessionStatus::Failed, None, Some(error))
                    .await;
                let answer = match failed {
                    Ok(_) => ActorError::RunnerUnavailable(message),
                    Err(e) => e,
                };
                drop(reply.send(Err(answer)));
            }
            Outcome::InterruptDelivered {
                delivered,
                stop,
                reply,
            } => {
                let result = if delivered {
                    Ok(())
                } else {
                    self.interrupt_undelivered(stop).await
                };
                drop(reply.send(result));
            }
        }
    }

    /// The relay to `runner_id`: the open one, or a new reader (its init built from `row` when given).
    async fn ensure_relay(&mut self, runner_id: &str, row: Option<&SessionRow>) -> Readiness {
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
    fn drop_reader(&mut self) {
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
        let harness = crate::agents::find(&row.agent_id).map(|a| a.harness.as_str());
        let init = SessionCreate::new(SessionFacts {
            session_id: &self.id,
            agent_id: &row.agent_id,
            harness,
            sub_agent_name: row.sub_agent_name.as_deref(),
            workspace: row.workspace.as_deref(),
            labels: &row.labels,
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
                for event in events {
                    if let Err(e) = self.relay_event(event).await {
                        warn!(session_id = %self.id, "relaying a runner event failed: {e}");
                    }
                }
            }
            ReaderEvent::Ready { runner_status } => {
                if let Some(reader) = &mut self.relay.reader {
                    reader.ready = true;
                }
                let runner_idle = runner_status.as_deref() == Some("idle");
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
                    self.forward(w.input, &w.runner_id, &w.agent_id, w.reply)
                        .await;
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
    async fn apply(&mut self, effects: Vec<Effect>) -> Result<(), ActorError> {
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
            crate::now_ms(),
        );
        self.append_item(item).await?;
        Ok(error)
    }

    /// Store what the turn streamed that no item holds yet as incomplete; answers whether there was any.
    async fn flush_partial(&mut self) -> Result<bool, ActorError> {
        let steps = self.turn.flush_partial(crate::now_ms());
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
        let steps = self.turn.translate(event, already_stored, crate::now_ms());
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
