//! A session's turn, owned by its actor: turn inputs and interrupts, each one command, persisted on the
//! actor's loop and forwarded from a tracked task whose outcome comes back as a message ([`Outcome`]).

use omnigent_proto::api::SessionStatus;
use omnigent_proto::events::{Interrupted, ServerEvent};
use omnigent_proto::runner_api::{Field, TurnEvent};
use tokio::time::Instant;
use tracing::warn;

use super::core::Actor;
use super::runner::Readiness;
use super::{ActorError, Msg, Outcome, Relaunched, Reply, TurnInput};
use crate::relay;
use crate::relay::lifecycle::Input;
use crate::store::SessionRow;

/// A turn input waiting for the relay to be ready.
pub(super) struct Waiting {
    pub(super) input: TurnInput,
    pub(super) runner_id: String,
    pub(super) agent: TurnAgent,
    pub(super) deadline: Instant,
    pub(super) reply: Reply<Option<String>>,
}

/// What a forwarded input tells the runner of the session's agent.
pub(super) struct TurnAgent {
    id: String,
    name: Option<String>,
    revision: Option<String>,
}

impl TurnAgent {
    pub(super) fn of(row: &SessionRow) -> TurnAgent {
        TurnAgent {
            id: row.agent_id.clone(),
            name: row.agent_name().map(str::to_owned),
            revision: row.agent_revision(),
        }
    }
}

/// 503 for an input whose session has no reachable runner: start one.
fn no_runner(kind: &str, id: &str, why: &str) -> ActorError {
    ActorError::RunnerUnavailable(format!(
        "cannot deliver `{kind}` to session {id}: {why}. Start the session's runner (or create the session \
         with a host_id so the host launches one), then retry"
    ))
}

/// 503 for an input whose runner is there but could not be reached: retry.
pub(super) fn not_ready(kind: &str, id: &str, why: &str) -> ActorError {
    ActorError::RunnerUnavailable(format!(
        "cannot deliver `{kind}` to session {id}: {why}; retry when the runner is back"
    ))
}

impl Actor {
    /// Run `task` on the actor's tracker and hand its outcome back as a message.
    pub(super) fn spawn_outcome<F>(&mut self, task: F)
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
                Outcome::Relaunched(Box::new(Relaunched {
                    input,
                    row,
                    result,
                    reply,
                }))
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
            Readiness::Ready => {
                self.forward(input, &runner_id, &TurnAgent::of(&row), reply)
                    .await
            }
            Readiness::Opening => self.relay.waiting.push(Waiting {
                input,
                runner_id,
                agent: TurnAgent::of(&row),
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
    pub(super) async fn forward(
        &mut self,
        input: TurnInput,
        runner_id: &str,
        agent: &TurnAgent,
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
        let mut body = TurnEvent::input(
            &input.kind,
            &input.data,
            &agent.id,
            agent.name.as_deref(),
            item_id.as_deref(),
        );
        body.agent_revision = Field::sent(agent.revision.clone());
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
                requested_at: crate::clock::now_secs_f64(),
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
            Outcome::Relaunched(relaunched) => {
                let Relaunched {
                    input,
                    row,
                    result,
                    reply,
                } = *relaunched;
                match result {
                    Ok(Some((row, _))) => self.deliver_to(row, input, reply).await,
                    // No launch could be sent: say why with what the session had.
                    Ok(None) => self.deliver_to(row, input, reply).await,
                    Err(e) => drop(reply.send(Err(e.into()))),
                }
            }
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
            Outcome::ApprovalForwarded {
                elicitation_id,
                result,
            } => self.approval_forwarded(&elicitation_id, result),
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
}
