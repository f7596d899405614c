//! A session's approvals (issue 15 item 6; reference §1.2, §2.3): the questions its agent asked
//! (`response.elicitation_request`, relayed from the runner) that nobody has answered yet, and the one
//! command that answers one, from any client: the first answer wins.
//!
//! The actor owns the pending questions; [`PendingIndex`] mirrors them (written only by actors) so the
//! snapshot, the list and the updates socket read them without an actor round trip. They are transient, like
//! the events they came as: a turn that ends, or a runner gone for good, drops them (each told as
//! `response.elicitation_resolved {reason: "unanswered"}`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use omnigent_proto::api::SessionStatus;
use omnigent_proto::elicitation::{ElicitationRequest, Resolution, Resolved};
use serde_json::Value;
use tracing::{debug, warn};

use super::core::Actor;
use super::{ActorError, Outcome, Reply};
use crate::relay::{self, RelayError};
use crate::updates::Change;

/// Answered ids a session remembers, so a late second answer is told `already_resolved`, not "unknown".
const ANSWERED_KEPT: usize = 256;

/// Why a question is dropped unanswered (0.19.1's reason).
const UNANSWERED: &str = "unanswered";

/// One pending question: the request and the event as the runner sent it (relayed field for field).
type Question = (ElicitationRequest, Value);

/// The pending questions of every live session, as their actors last wrote them: session id → the request
/// events, oldest first.
#[derive(Debug, Clone, Default)]
pub struct PendingIndex {
    map: Arc<Mutex<HashMap<String, Vec<Question>>>>,
}

impl PendingIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Question>>> {
        // Single inserts and removes: a panic cannot leave the map half-updated.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, session_id: &str, pending: &[Question]) {
        let mut map = self.lock();
        if pending.is_empty() {
            map.remove(session_id);
        } else {
            map.insert(session_id.to_owned(), pending.to_vec());
        }
    }

    /// The request events of `session_id`, oldest first (the snapshot's `pending_elicitations`).
    pub fn events(&self, session_id: &str) -> Vec<Value> {
        self.lock()
            .get(session_id)
            .map(|p| p.iter().map(|(_, e)| e.clone()).collect())
            .unwrap_or_default()
    }

    /// How many questions `session_id` waits on (`pending_elicitations_count`).
    pub fn count(&self, session_id: &str) -> u32 {
        self.lock()
            .get(session_id)
            .map_or(0, |p| u32::try_from(p.len()).unwrap_or(u32::MAX))
    }

    /// The pending request `elicitation_id` of `session_id`.
    pub fn get(&self, session_id: &str, elicitation_id: &str) -> Option<ElicitationRequest> {
        self.lock()
            .get(session_id)?
            .iter()
            .find(|(r, _)| r.elicitation_id == elicitation_id)
            .map(|(r, _)| r.clone())
    }
}

/// What one actor knows of its session's questions.
#[derive(Default)]
pub(super) struct Approvals {
    /// Unanswered, oldest first.
    pending: Vec<Question>,
    /// Ids answered here lately, oldest first.
    answered: VecDeque<String>,
}

impl Approvals {
    pub(super) fn any(&self) -> bool {
        !self.pending.is_empty()
    }

    fn position(&self, elicitation_id: &str) -> Option<usize> {
        self.pending
            .iter()
            .position(|(r, _)| r.elicitation_id == elicitation_id)
    }

    fn remember(&mut self, elicitation_id: String) {
        if self.answered.len() >= ANSWERED_KEPT {
            self.answered.pop_front();
        }
        self.answered.push_back(elicitation_id);
    }
}

impl Actor {
    /// Write the pending questions to the index and tell the updates sockets (the count changed).
    fn mirror_pending(&self) {
        self.pending_index.set(&self.id, &self.approvals.pending);
        self.store.updates().send(Change::Changed(self.id.clone()));
    }

    /// The agent asks (relayed `response.elicitation_request`): keep it, publish it, and the session waits.
    pub(super) async fn ask(
        &mut self,
        request: ElicitationRequest,
        event: Value,
    ) -> Result<(), ActorError> {
        let id = &request.elicitation_id;
        if self.approvals.position(id).is_some() || self.approvals.answered.contains(id) {
            // A runner re-sending what it published while no relay listened: shown once.
            debug!(session_id = %self.id, elicitation_id = %id, "question already known; not shown again");
            return Ok(());
        }
        self.approvals.pending.push((request, event.clone()));
        self.mirror_pending();
        self.publish(event).await?;
        if self.status != SessionStatus::Waiting {
            let response_id = self.turn.response_id.clone();
            self.set_status(SessionStatus::Waiting, response_id, None)
                .await?;
        }
        Ok(())
    }

    /// The runner says a question is settled (relayed `response.elicitation_resolved`): published unless an
    /// answer given here already was.
    pub(super) async fn resolved_by_runner(
        &mut self,
        resolved: Resolved,
        event: Value,
    ) -> Result<(), ActorError> {
        match self.approvals.position(&resolved.elicitation_id) {
            Some(at) => {
                self.approvals.pending.remove(at);
                self.approvals.remember(resolved.elicitation_id);
                self.mirror_pending();
            }
            None if self.approvals.answered.contains(&resolved.elicitation_id) => return Ok(()),
            None => {}
        }
        self.publish(event).await.map(drop)
    }

    /// An answer from a client (`…/elicitations/{eid}/resolve` or an `approval` event): the first one wins,
    /// is told to every stream at once and forwarded to the runner from a task; a later one is
    /// [`ActorError::AlreadyResolved`], an id never asked [`ActorError::UnknownElicitation`].
    pub(super) async fn resolve(&mut self, resolution: Resolution, reply: Reply<()>) {
        let id = resolution.elicitation_id.clone();
        let Some(at) = self.approvals.position(&id) else {
            let err = if self.approvals.answered.contains(&id) {
                ActorError::AlreadyResolved(id)
            } else {
                ActorError::UnknownElicitation(id)
            };
            return drop(reply.send(Err(err)));
        };
        self.approvals.pending.remove(at);
        self.approvals.remember(id.clone());
        self.mirror_pending();
        let resolved = Resolved {
            elicitation_id: id.clone(),
            action: Some(resolution.answer.action),
            reason: None,
        };
        if let Err(e) = self.publish(resolved.event()).await {
            return drop(reply.send(Err(e)));
        }
        drop(reply.send(Ok(())));
        if !self.approvals.any() && self.status == SessionStatus::Waiting {
            let response_id = self.turn.response_id.clone();
            if let Err(e) = self
                .set_status(SessionStatus::Running, response_id, None)
                .await
            {
                warn!(session_id = %self.id, "cannot record that the session runs again: {e}");
            }
        }
        let conn = self
            .relay
            .runner_id
            .as_deref()
            .and_then(|r| self.runners.get(r));
        let Some(conn) = conn else {
            warn!(session_id = %self.id, elicitation_id = %id, "no runner is connected to take the answer");
            return;
        };
        let (session_id, body) = (self.id.clone(), resolution.runner_event());
        self.spawn_outcome(async move {
            let result = relay::forward_approval(&conn, &session_id, &body).await;
            Outcome::ApprovalForwarded {
                elicitation_id: id,
                result,
            }
        });
    }

    /// What came of forwarding an answer. A runner that stopped waiting for it (409, 404) is no error: the
    /// answer already won here.
    pub(super) fn approval_forwarded(&self, elicitation_id: &str, result: Result<(), RelayError>) {
        match result {
            Ok(()) => {}
            Err(RelayError::Status {
                status: 404 | 409,
                body,
            }) => {
                debug!(session_id = %self.id, elicitation_id, "the runner was not waiting for the answer: {body}");
            }
            Err(e) => {
                warn!(session_id = %self.id, elicitation_id, "the answer did not reach the runner: {e}");
            }
        }
    }

    /// The turn ended (or its runner is gone for good): every open question expires, told to the streams.
    pub(super) async fn drop_pending(&mut self) -> Result<(), ActorError> {
        if !self.approvals.any() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.approvals.pending);
        self.mirror_pending();
        for (request, _) in pending {
            let resolved = Resolved {
                elicitation_id: request.elicitation_id.clone(),
                action: None,
                reason: Some(UNANSWERED.to_owned()),
            };
            self.approvals.remember(request.elicitation_id);
            self.publish(resolved.event()).await?;
        }
        Ok(())
    }

    /// The actor ends: its questions leave the index with it.
    pub(super) fn forget_pending(&self) {
        self.pending_index.set(&self.id, &[]);
    }
}
