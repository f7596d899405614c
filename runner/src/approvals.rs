//! A session's approvals (issue 15 item 6): an agent CLI asks before it uses a tool, every client of the session
//! sees the question, and the first answer wins. The shapes are `omnigent_proto::elicitation`'s.
//!
//! [`Approvals`] is the session's handle (it keeps one for its life and gives a clone to every turn on
//! [`crate::harness::Turn::approvals`]). A harness calls [`Approvals::ask`]: it registers a fresh elicitation id,
//! publishes `session.status waiting` and `response.elicitation_request` on the turn's sink, and waits. The
//! server forwards the first answer (`POST /v1/sessions/{id}/events {"type":"approval",…}`), which
//! [`Approvals::resolve`] hands over; `ask` then publishes `response.elicitation_resolved` and, once nothing else
//! is pending, `session.status running`. The turn's cancel (an interrupt) answers `cancel` with reason
//! `unanswered`, and so does dropping the `ask` future (the agent withdrew its question): an interrupt never
//! hangs on a question nobody answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use omnigent_proto::elicitation::{
    Action, Answer, ElicitationParams, ElicitationRequest, Resolution, Resolved,
};
use omnigent_proto::events::kind;
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::harness::EventSink;

/// `reason` of a question nobody answered before its asker stopped waiting.
pub const UNANSWERED: &str = "unanswered";

/// Logged (with the elicitation id) when an agent's question goes out.
pub const APPROVAL_REQUESTED: &str = "approval requested";

/// A session's pending questions, by elicitation id. Cheap to clone; every clone is the same session's.
#[derive(Clone, Default)]
pub struct Approvals {
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("pending", &self.lock().len())
            .finish()
    }
}

/// The id is not waiting for an answer (answered already, withdrawn, or never asked here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "elicitation {0} is not pending on this runner: it was answered already, or its turn stopped waiting"
)]
pub struct NotPending(pub String);

impl Approvals {
    pub fn new() -> Self {
        Approvals::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<Answer>>> {
        // Each critical section is one insert or remove, so a poisoned map is still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many questions wait for an answer.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// The ids of the questions that wait for an answer.
    pub fn pending_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Hand `resolution` to the `ask` waiting for its id. The first answer wins: a later one (or one for an id
    /// nobody waits for) is [`NotPending`].
    pub fn resolve(&self, resolution: Resolution) -> Result<(), NotPending> {
        let mut pending = self.lock();
        let Some(waiting) = pending.remove(&resolution.elicitation_id) else {
            return Err(NotPending(resolution.elicitation_id));
        };
        // Sent under the lock: an asker that stops waiting takes the lock first, so it either finds its entry
        // (and answers itself) or finds this answer in its channel.
        waiting
            .send(resolution.answer)
            .map_err(|_| NotPending(resolution.elicitation_id))
    }

    /// Ask the session's clients `params` (about the tool call `call_id`, if known) and wait for the first
    /// answer; on `cancel`, or when this future is dropped, the question is resolved as `cancel` /
    /// [`UNANSWERED`]. The events go out on `sink`.
    pub async fn ask(
        &self,
        sink: &EventSink,
        params: ElicitationParams,
        call_id: Option<String>,
        cancel: &CancellationToken,
    ) -> Answer {
        let mut request = ElicitationRequest::new(params);
        request.call_id = call_id;
        let id = request.elicitation_id.clone();
        let (tx, mut rx) = oneshot::channel();
        self.lock().insert(id.clone(), tx);
        tracing::info!(elicitation_id = %id, tool = ?request.params.tool_name, "{APPROVAL_REQUESTED}");
        sink.emit(json!({"type": kind::SESSION_STATUS, "status": "waiting"}));
        sink.emit(request.event());
        let mut asked = Asked {
            approvals: self,
            sink,
            id,
            done: false,
        };
        let answered = tokio::select! {
            answer = &mut rx => answer.ok(),
            () = cancel.cancelled() => None,
        };
        // Stopped waiting: withdraw the question, unless an answer won the race for it.
        let (answer, reason) = match answered {
            Some(answer) => (answer, None),
            None if asked.withdraw() => (Answer::new(Action::Cancel), Some(UNANSWERED)),
            None => match rx.try_recv() {
                Ok(answer) => (answer, None),
                Err(_) => (Answer::new(Action::Cancel), Some(UNANSWERED)),
            },
        };
        asked.finish(Some(answer.action), reason);
        answer
    }
}

/// A question that went out; dropped before [`Asked::finish`], it withdraws itself as unanswered.
struct Asked<'a> {
    approvals: &'a Approvals,
    sink: &'a EventSink,
    id: String,
    done: bool,
}

impl Asked<'_> {
    /// Remove the question from the pending ones; `false` when an answer took it first.
    fn withdraw(&mut self) -> bool {
        self.approvals.lock().remove(&self.id).is_some()
    }

    /// Tell everyone the question is settled, and the session runs again once nothing else waits.
    fn finish(&mut self, action: Option<Action>, reason: Option<&str>) {
        self.done = true;
        let resolved = Resolved {
            elicitation_id: self.id.clone(),
            action,
            reason: reason.map(str::to_owned),
        };
        self.sink.emit(resolved.event());
        if self.approvals.pending() == 0 {
            self.sink
                .emit(json!({"type": kind::SESSION_STATUS, "status": "running"}));
        }
    }
}

impl Drop for Asked<'_> {
    fn drop(&mut self) {
        if !self.done && self.withdraw() {
            self.finish(Some(Action::Cancel), Some(UNANSWERED));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;
    use tokio::sync::mpsc;

    fn params() -> ElicitationParams {
        ElicitationParams::tool_approval("test", "Bash", "Allow Bash: `ls`?".into(), "ls")
    }

    fn sink() -> (EventSink, mpsc::UnboundedReceiver<Value>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink::new(tx), rx)
    }

    async fn requested(rx: &mut mpsc::UnboundedReceiver<Value>) -> String {
        assert_eq!(rx.recv().await.unwrap()["status"], "waiting");
        let request = rx.recv().await.unwrap();
        assert_eq!(request["type"], kind::RESPONSE_ELICITATION_REQUEST);
        assert_eq!(request["call_id"], "toolu_1");
        request["elicitation_id"].as_str().unwrap().to_owned()
    }

    /// The id of the question `asking` asks (it must not be answered before).
    async fn asked(
        rx: &mut mpsc::UnboundedReceiver<Value>,
        asking: &mut std::pin::Pin<&mut impl std::future::Future<Output = Answer>>,
    ) -> String {
        tokio::select! {
            id = requested(rx) => id,
            _ = asking => panic!("answered before anyone answered"),
        }
    }

    fn resolution(id: &str, action: Action) -> Resolution {
        Resolution {
            elicitation_id: id.to_owned(),
            answer: Answer::new(action),
        }
    }

    #[tokio::test]
    async fn the_first_answer_wins_and_everyone_is_told() {
        let approvals = Approvals::new();
        let (sink, mut rx) = sink();
        let cancel = CancellationToken::new();
        let asking = approvals.ask(&sink, params(), Some("toolu_1".into()), &cancel);
        tokio::pin!(asking);
        let id = asked(&mut rx, &mut asking).await;
        assert_eq!(approvals.pending_ids(), std::slice::from_ref(&id));
        approvals.resolve(resolution(&id, Action::Accept)).unwrap();
        assert_eq!(
            approvals.resolve(resolution(&id, Action::Decline)),
            Err(NotPending(id.clone()))
        );
        assert_eq!(asking.await.action, Action::Accept);
        let resolved = rx.recv().await.unwrap();
        assert_eq!(
            resolved,
            json!({"type": kind::RESPONSE_ELICITATION_RESOLVED, "elicitation_id": id, "action": "accept"})
        );
        assert_eq!(rx.recv().await.unwrap()["status"], "running");
        assert_eq!(approvals.pending(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_turn_resolves_its_question_as_unanswered() {
        let approvals = Approvals::new();
        let (sink, mut rx) = sink();
        let cancel = CancellationToken::new();
        let asking = approvals.ask(&sink, params(), Some("toolu_1".into()), &cancel);
        tokio::pin!(asking);
        let id = asked(&mut rx, &mut asking).await;
        cancel.cancel();
        assert_eq!(asking.await.action, Action::Cancel);
        assert_eq!(
            rx.recv().await.unwrap(),
            json!({"type": kind::RESPONSE_ELICITATION_RESOLVED, "elicitation_id": id, "action": "cancel",
                "reason": UNANSWERED})
        );
        assert!(approvals.resolve(resolution(&id, Action::Accept)).is_err());
    }

    #[tokio::test]
    async fn a_withdrawn_question_is_resolved_as_unanswered() {
        let approvals = Approvals::new();
        let (sink, mut rx) = sink();
        let cancel = CancellationToken::new();
        {
            let asking = approvals.ask(&sink, params(), Some("toolu_1".into()), &cancel);
            tokio::pin!(asking);
            asked(&mut rx, &mut asking).await;
        }
        let resolved = rx.recv().await.unwrap();
        assert_eq!(resolved["action"], "cancel");
        assert_eq!(resolved["reason"], UNANSWERED);
        assert_eq!(rx.recv().await.unwrap()["status"], "running");
        assert_eq!(approvals.pending(), 0);
    }
}
