//! The `pi` harness: one `pi --mode rpc` per session (Pi's RPC mode: JSON commands on stdin, responses and
//! agent events on stdout, one per line), owned by one task (the session's [`PiHandle`]).
//!
//! - The process starts at the session's first turn, in its workspace, with Pi's own configuration (provider,
//!   model, keys: `~/.pi/agent` or `PI_CODING_AGENT_DIR`; `--model` when `OMNIGENT_MODEL` is set). A
//!   `get_state` right after the start is the handshake and gives the session file Pi saves the conversation
//!   to.
//! - Each turn is a `prompt` command; its events become ours: `message_update` text deltas (thinking deltas
//!   as reasoning), `tool_execution_start` → `function_call`, `tool_execution_end` → `function_call_output`,
//!   assistant `message_end` → usage (and its text when it was not streamed), an assistant message that
//!   stopped with an error → the turn's error; `agent_end` ends the turn.
//! - An interrupt sends `abort`; a Pi that does not end its turn within [`INTERRUPT_TIMEOUT`] is killed.
//! - When the process died, the next turn starts a new one with `--session <file>`, so Pi reloads the
//!   conversation and goes on.
//! - Approvals: Pi has no permission system; its extensions ask (a permission gate's `ctx.ui.confirm` in a
//!   `tool_call` hook). A yes/no dialog is asked of the session's clients through [`Turn::approvals`] as an
//!   approval of the tool call Pi just started, and answered with their decision ([`dialog`]); a spec whose
//!   permission mode skips approvals confirms it at once. Other dialogs (a free choice, text input) are
//!   cancelled: no client can answer them.
//!
//! The binary is `OMNIGENT_PI_PATH`, else `pi` on `PATH`.

use omnigent_proto::elicitation::Action;
use omnigent_proto::events::kind;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::agent::{self, AgentProcess, INTERRUPT_TIMEOUT, Recorder, STARTUP_TIMEOUT};
use super::{EventSink, HarnessError, HarnessKind, Turn, TurnOutcome};

/// The session's Pi agent: a handle on the task that owns its `pi --mode rpc`. Cheap to clone; the process is
/// killed once every handle is gone.
pub type PiHandle = agent::AgentHandle<PiAgent>;

/// A turn on the session's agent (`turn.pi`); without one (a bare turn), on a fresh agent for this turn.
pub async fn run_turn(
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    agent::run_turn(turn.pi.as_ref(), turn, sink, cancel).await
}

impl agent::CliAgent for PiAgent {
    const NAME: &'static str = "pi";

    async fn turn(
        &mut self,
        turn: &Turn,
        sink: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<TurnOutcome, HarnessError> {
        if self.process.as_mut().is_some_and(AgentProcess::has_exited) {
            info!("pi has exited since the last turn; starting a new one");
            self.process = None;
        }
        let mut process = match self.process.take() {
            Some(process) => process,
            None => self.start(turn, cancel).await?,
        };
        self.next_id += 1;
        let id = format!("prompt-{}", self.next_id);
        match run_pi_turn(&mut process, &id, turn, sink, cancel).await {
            Ok(ended) => {
                self.process = Some(process);
                ended
            }
            // It stopped talking or ignored the abort: dropped (killed); the next turn reloads the session.
            Err(broken) => Err(broken),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(AgentProcess::pid)
    }
}

/// One session's `pi --mode rpc` and its session file (the state of its [`PiHandle`]'s task).
#[derive(Default)]
pub struct PiAgent {
    process: Option<AgentProcess>,
    /// The file Pi saves this session's conversation to: a new process reloads it.
    session_file: Option<String>,
    next_id: u64,
}

impl PiAgent {
    async fn start(
        &mut self,
        turn: &Turn,
        cancel: &CancellationToken,
    ) -> Result<AgentProcess, HarnessError> {
        let program = agent::locate(HarnessKind::Pi, turn)?;
        agent::check_credentials(HarnessKind::Pi, turn, false)?;
        let mut args = vec!["--mode", "rpc"];
        if let Some(file) = &self.session_file {
            args.extend(["--session", file]);
        }
        if let Some(model) = &turn.config.model {
            args.extend(["--model", model]);
        }
        // The spec's instructions go after Pi's own system prompt (Pi has no MCP client).
        if let Some(instructions) = &turn.config.instructions {
            args.extend(["--append-system-prompt", instructions]);
        }
        let mut process = AgentProcess::spawn("pi --mode rpc", &program, &args, turn)?;
        if let Some(file) = &self.session_file {
            info!(
                session_file = file,
                "pi restarted on this session's conversation"
            );
        }
        process
            .send(&json!({"id": "state", "type": "get_state"}))
            .await?;
        let state = async {
            loop {
                let message = process.next().await?;
                if message.get("type").and_then(Value::as_str) == Some("response")
                    && message.get("id").and_then(Value::as_str) == Some("state")
                {
                    return Ok::<_, HarnessError>(message);
                }
            }
        };
        let state = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(HarnessError::Interrupted),
            state = tokio::time::timeout(STARTUP_TIMEOUT, state) => state.map_err(|_| {
                HarnessError::Exec(format!(
                    "pi did not answer get_state within {} s",
                    STARTUP_TIMEOUT.as_secs()
                ))
            })??,
        };
        if let Some(file) = state.pointer("/data/sessionFile").and_then(Value::as_str) {
            self.session_file = Some(file.to_owned());
        }
        Ok(process)
    }
}

/// One turn on `process`. The outer error: the process is no longer usable; the inner result: how the turn
/// ended, as Pi reported it.
async fn run_pi_turn(
    process: &mut AgentProcess,
    id: &str,
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<Result<TurnOutcome, HarnessError>, HarnessError> {
    process
        .send(&json!({"id": id, "type": "prompt", "message": agent::prompt(turn)}))
        .await?;
    let mut mapper = Mapper::new(turn, sink);
    let mut aborted = false;
    let deadline = tokio::time::sleep(std::time::Duration::MAX);
    tokio::pin!(deadline);
    // Dialogs being asked of the session's clients, each its own task answering with Pi's response; dropping
    // the set at the turn's end withdraws what is still open.
    let mut asking: JoinSet<Value> = JoinSet::new();
    let skip = turn
        .config
        .permission_mode
        .as_deref()
        .is_some_and(super::skips_approvals);
    loop {
        let message = tokio::select! {
            biased;
            Some(answered) = asking.join_next(), if !asking.is_empty() => {
                if let Ok(reply) = answered {
                    process.send(&reply).await?;
                }
                continue;
            }
            _ = cancel.cancelled(), if !aborted => {
                aborted = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + INTERRUPT_TIMEOUT);
                process.send(&json!({"type": "abort"})).await?;
                continue;
            }
            _ = &mut deadline => {
                warn!("pi did not end the aborted turn in {INTERRUPT_TIMEOUT:?}; killing it");
                return Err(HarnessError::Exec("pi ignored abort".into()));
            }
            message = process.next() => message?,
        };
        let kind = message.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "response" if message.get("id").and_then(Value::as_str) == Some(id) => {
                if message.get("success").and_then(Value::as_bool) != Some(true) {
                    let error = message.get("error").and_then(Value::as_str).unwrap_or("");
                    return Ok(Err(HarnessError::Exec(format!(
                        "pi refused the prompt: {error}"
                    ))));
                }
            }
            "extension_ui_request" if dialog::is_dialog(&message) => {
                match dialog::Dialog::of(&message, mapper.last_call.as_ref()) {
                    Some(dialog) if skip => process.send(&dialog.reply(Action::Accept)).await?,
                    Some(dialog) => {
                        let (approvals, sink, cancel) =
                            (turn.approvals.clone(), sink.clone(), cancel.clone());
                        asking.spawn(async move {
                            let answer = approvals
                                .ask(&sink, dialog.params(), dialog.call_id(), &cancel)
                                .await;
                            dialog.reply(answer.action)
                        });
                    }
                    None => {
                        warn!(
                            "a pi extension asked a question no client can answer (not yes/no); cancelled"
                        );
                        if let Some(id) = message.get("id") {
                            process.send(&dialog::cancel(id)).await?;
                        }
                    }
                }
            }
            _ => {
                if let Some(end) = mapper.event(&message) {
                    return Ok(if aborted {
                        Err(HarnessError::Interrupted)
                    } else {
                        end
                    });
                }
            }
        }
    }
}

/// Turns Pi's RPC events into events and history.
struct Mapper<'a> {
    recorder: Recorder<'a>,
    /// The tool call Pi started last: what an extension's dialog (from its `tool_call` hook) is about.
    last_call: Option<dialog::StartedCall>,
    /// The current assistant message streamed text deltas.
    streamed: bool,
    /// The error of the last assistant message that stopped with one, or of a final failed retry.
    error: Option<String>,
    aborted: bool,
}

impl<'a> Mapper<'a> {
    fn new(turn: &'a Turn, sink: &'a EventSink) -> Self {
        Mapper {
            recorder: Recorder::new(turn, sink),
            last_call: None,
            streamed: false,
            error: None,
            aborted: false,
        }
    }

    /// Handle one event; at `agent_end`, how the turn ended.
    fn event(&mut self, event: &Value) -> Option<Result<TurnOutcome, HarnessError>> {
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" if is_assistant(event) => {
                self.streamed = false;
                self.recorder.new_message();
            }
            "message_update" => {
                let delta = event.get("assistantMessageEvent").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        self.streamed = true;
                        self.recorder.text(&text(delta, "delta"));
                    }
                    Some("thinking_delta") => self.recorder.emit(json!({
                        "type": kind::RESPONSE_REASONING_TEXT_DELTA,
                        "delta": text(delta, "delta"),
                    })),
                    _ => {}
                }
            }
            "message_end" if is_assistant(event) => {
                let message = event.get("message").unwrap_or(&Value::Null);
                if !self.streamed {
                    let content = message.get("content").and_then(Value::as_array);
                    for block in content.into_iter().flatten() {
                        if block.get("type").and_then(Value::as_str) == Some("text") {
                            self.recorder.text(&text(block, "text"));
                        }
                    }
                }
                if let Some(usage) = message.get("usage") {
                    let get = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
                    self.recorder.add_usage(get("input"), get("output"));
                }
                match message.get("stopReason").and_then(Value::as_str) {
                    Some("error") => {
                        let error = text(message, "errorMessage");
                        self.error = Some(if error.is_empty() {
                            "the model request failed".to_owned()
                        } else {
                            error
                        });
                    }
                    Some("aborted") => self.aborted = true,
                    _ => self.error = None,
                }
            }
            "tool_execution_start" => {
                let args = event.get("args").cloned().unwrap_or_else(|| json!({}));
                let call = dialog::StartedCall {
                    call_id: text(event, "toolCallId"),
                    tool_name: text(event, "toolName"),
                    arguments: args.to_string(),
                };
                self.recorder
                    .call(&call.call_id, &call.tool_name, &call.arguments);
                self.last_call = Some(call);
            }
            "tool_execution_end" => {
                let mut output = tool_text(event.get("result").unwrap_or(&Value::Null));
                if event.get("isError").and_then(Value::as_bool) == Some(true) {
                    output.insert_str(0, "[error] ");
                }
                self.recorder.output(&text(event, "toolCallId"), &output);
            }
            "auto_retry_end" if event.get("success").and_then(Value::as_bool) == Some(false) => {
                self.error = Some(text(event, "finalError"));
            }
            "agent_end" => {
                return Some(if self.aborted {
                    Err(HarnessError::Interrupted)
                } else if let Some(error) = self.error.take() {
                    Err(HarnessError::Exec(format!("pi turn failed: {error}")))
                } else {
                    Ok(self.recorder.finish())
                });
            }
            _ => {}
        }
        None
    }
}

fn is_assistant(event: &Value) -> bool {
    event.pointer("/message/role").and_then(Value::as_str) == Some("assistant")
}

/// The text of a tool result (`{"content": [{"type": "text", "text": …}]}`).
fn tool_text(result: &Value) -> String {
    match result.get("content") {
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None if result.is_null() => String::new(),
        None => result.to_string(),
    }
}

mod dialog;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
