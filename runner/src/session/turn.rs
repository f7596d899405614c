//! One turn of a session: its framing events (`session.status`, `response.*`) around the harness's own.

use omnigent_proto::events::kind;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::INTERRUPT_GRACE;
use crate::harness::{self, EventSink, HarnessError, HarnessKind, HistoryEntry, Turn};

/// Run one turn and emit its framing events around the harness's own; returns what it added to the history.
pub(super) async fn run_turn(
    kind: HarnessKind,
    turn: Turn,
    model: String,
    agent_error: Option<String>,
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
    let harness_turn = async {
        // The session's agent could not be loaded: no harness runs, the turn says why.
        match agent_error {
            Some(reason) => Err(HarnessError::Agent(reason)),
            None => harness::run_turn(kind, &turn, &sink, &cancel).await,
        }
    };
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
    // A harness whose child the interrupt killed may report that death as its own error: once the turn is
    // cancelled, any error is the interrupt's.
    let result = match result {
        Err(_) if cancel.is_cancelled() => Err(HarnessError::Interrupted),
        other => other,
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
        HarnessError::Agent(message) => ("agent_unavailable", message.clone()),
        HarnessError::Interrupted => ("interrupted", err.to_string()),
    }
}

pub(crate) fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
