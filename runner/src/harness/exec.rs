//! The `exec` harness: runs an agent CLI per turn (`HarnessConfig::exec_command`, the prompt appended as the
//! last argument) in the workspace, in its own process group with stdin closed, and maps its stdout JSON
//! lines to events:
//! - Claude Code `--output-format stream-json`: `assistant` messages (text, `tool_use`), `user` messages
//!   (`tool_result`), `stream_event` partial text (with `--include-partial-messages`), `result`;
//! - Codex `exec --json`: `item.completed` with `agent_message`, `command_execution`, `file_change`,
//!   `mcp_tool_call`, `web_search`, `reasoning`; `turn.completed`, `turn.failed`, `error`;
//! - any other line that is not a JSON object: plain text.
//!
//! On interrupt the group gets SIGTERM, then SIGKILL after the grace period. A non-zero exit fails the turn
//! with the last lines of stderr.
//!
//! The conversation is kept across turns ([`ExecMemory`], the session's):
//! - a CLI that names its own session resumes it at the next turn: Claude Code (`session_id` of its
//!   `system`/`result` lines) gets `--resume <id>` before the prompt; Codex (`thread_id` of `thread.started`)
//!   gets `resume <id>` before the prompt (`codex exec [options] resume <id> <prompt>`);
//! - any other command gets the conversation so far in its prompt: a plain-text transcript of the earlier
//!   user and assistant messages and tool calls, then the new message (see [`prompt_with_history`]).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use omnigent_proto::events::kind;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, BufReader};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::{EventSink, HarnessError, HistoryEntry, Turn, TurnOutcome};

/// The agent CLI session an `exec` session resumes at its next turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Claude Code's `session_id`: `--resume <id>`.
    Claude(String),
    /// Codex's `thread_id`: `resume <id>`.
    Codex(String),
}

/// What an `exec` session remembers across turns: the agent CLI session to resume. The session creates it
/// and gives it to each turn; the running turn writes it as soon as the CLI names its session, the next turn
/// reads it. A session's turns never overlap, and the lock is only taken for the copy.
#[derive(Debug, Clone, Default)]
pub struct ExecMemory(Arc<Mutex<Option<Resume>>>);

impl ExecMemory {
    pub fn get(&self) -> Option<Resume> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, resume: Resume) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(resume);
    }
}

/// The prompt of a CLI that cannot resume its own session: the new message alone on the first turn, else
/// the conversation so far as a transcript, then the new message.
pub fn prompt_with_history(history: &[HistoryEntry]) -> String {
    let Some((HistoryEntry::User { text: last }, earlier)) = history.split_last() else {
        return String::new();
    };
    if earlier.is_empty() {
        return last.clone();
    }
    let mut prompt = String::from("This conversation continues; here is what was said so far.\n\n");
    for entry in earlier {
        match entry {
            HistoryEntry::User { text } => prompt.push_str(&format!("User: {text}\n\n")),
            HistoryEntry::Assistant { text } => {
                prompt.push_str(&format!("Assistant: {}\n\n", text.trim_end()))
            }
            HistoryEntry::ToolCall {
                name, arguments, ..
            } => prompt.push_str(&format!("Assistant called tool {name}: {arguments}\n\n")),
            HistoryEntry::ToolResult { output, .. } => {
                prompt.push_str(&format!("Tool result: {}\n\n", output.trim_end()))
            }
        }
    }
    prompt.push_str(&format!("The user's new message:\n{last}"));
    prompt
}

/// Default for `HarnessConfig::kill_grace`.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// Longest line [`read_line_capped`] keeps, for every CLI the runner reads (a longer one is skipped with a
/// notice here and in `claude_code`, and fails the turn of a JSON-RPC agent in `agent`).
pub(super) const MAX_LINE_BYTES: usize = 8 << 20;
/// Stderr lines kept for the error message, and the longest kept line.
const STDERR_LINES: usize = 20;
const MAX_STDERR_LINE: usize = 2048;

pub async fn run_turn(
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    let argv = turn
        .config
        .exec_command
        .as_deref()
        .filter(|argv| !argv.is_empty())
        .ok_or_else(|| {
            HarnessError::NotConfigured(
                "the exec harness has no command: set OMNIGENT_EXEC_COMMAND (e.g. \
                 \"claude -p --output-format stream-json --verbose\" or \"codex exec --json\")"
                    .into(),
            )
        })?;
    let last = match turn.history.last() {
        Some(HistoryEntry::User { text }) => text.as_str(),
        _ => "",
    };
    let (resume_args, prompt) = match turn.exec.as_ref().and_then(ExecMemory::get) {
        Some(Resume::Claude(id)) => (vec!["--resume".to_owned(), id], last.to_owned()),
        Some(Resume::Codex(id)) => (vec!["resume".to_owned(), id], last.to_owned()),
        None => (Vec::new(), prompt_with_history(&turn.history)),
    };
    let grace = turn.config.kill_grace.unwrap_or(DEFAULT_KILL_GRACE);
    let mut child = super::child::owned_by_runner(
        tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .args(&resume_args)
            .arg(&prompt)
            .current_dir(&turn.workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .spawn()
    .map_err(|e| {
        HarnessError::Exec(format!(
            "cannot start {:?} in {}: {e}; check OMNIGENT_EXEC_COMMAND",
            argv[0],
            turn.workspace.display()
        ))
    })?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let stderr_tail = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(tail_lines(stderr)));
    let Some(stdout) = child.stdout.take() else {
        return Err(HarnessError::Exec(
            "the command's stdout was not captured".into(),
        ));
    };
    let mut stdout = BufReader::new(stdout);
    let mut mapper = Mapper::new(turn, sink);
    let mut line = Vec::new();
    let mut oversized = false;
    let mut exit = None;
    // Once the command has exited, its output gets `grace` to drain (a background job may hold it open).
    let drain_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain_deadline);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                terminate(group, &mut child, grace).await;
                return Err(HarnessError::Interrupted);
            }
            status = child.wait(), if exit.is_none() => {
                exit = Some(status);
                drain_deadline.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            _ = &mut drain_deadline => break,
            read = read_line_capped(&mut stdout, &mut line, &mut oversized) => match read {
                Ok(true) => {
                    if oversized {
                        sink.text_delta(&format!("[a line over {} MiB was skipped]\n", MAX_LINE_BYTES >> 20));
                    } else {
                        mapper.line(&String::from_utf8_lossy(&line));
                    }
                    line.clear();
                    oversized = false;
                }
                Ok(false) => break,
                Err(e) => {
                    terminate(group, &mut child, grace).await;
                    return Err(HarnessError::Exec(format!("cannot read the command's output: {e}")));
                }
            },
        }
    }
    let status = match exit {
        Some(status) => status,
        None => tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                terminate(group, &mut child, grace).await;
                return Err(HarnessError::Interrupted);
            }
            status = child.wait() => status,
        },
    };
    // Leftovers of the agent (background jobs) do not outlive its turn.
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let status =
        status.map_err(|e| HarnessError::Exec(format!("cannot wait for {:?}: {e}", argv[0])))?;
    let stderr = match stderr_tail {
        Some(task) => tokio::time::timeout(grace, task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => VecDeque::new(),
    };
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exited with code {code}"),
            None => "was killed by a signal".to_owned(),
        };
        let tail = Vec::from(stderr).join("\n");
        let tail = if tail.trim().is_empty() {
            "(no stderr output)".to_owned()
        } else {
            tail
        };
        return Err(HarnessError::Exec(format!(
            "{:?} {how}; its last stderr lines:\n{tail}",
            argv[0]
        )));
    }
    mapper.finish()
}

/// SIGTERM the group, give the leader `grace` to exit, then SIGKILL whatever is left of the group.
async fn terminate(group: Option<Pid>, child: &mut Child, grace: Duration) {
    let Some(group) = group else {
        let _ = child.kill().await;
        return;
    };
    let _ = killpg(group, Signal::SIGTERM);
    let _ = tokio::time::timeout(grace, child.wait()).await;
    let _ = killpg(group, Signal::SIGKILL);
    let _ = tokio::time::timeout(grace, child.wait()).await;
}

/// Read one line (without its newline) into `line`, keeping at most [`MAX_LINE_BYTES`] and setting
/// `oversized` when more came. `Ok(false)` at end of output. Cancel-safe: a partial line stays in `line`.
pub(super) async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    oversized: &mut bool,
) -> std::io::Result<bool> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!line.is_empty() || *oversized);
        }
        let (take, found) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (at, true),
            None => (available.len(), false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&available[..take.min(room)]);
        if take > room {
            *oversized = true;
        }
        reader.consume(if found { take + 1 } else { take });
        if found {
            return Ok(true);
        }
    }
}

pub(super) async fn tail_lines(stderr: tokio::process::ChildStderr) -> VecDeque<String> {
    let mut reader = BufReader::new(stderr);
    let mut tail = VecDeque::new();
    let mut line = Vec::new();
    let mut oversized = false;
    while let Ok(true) = read_line_capped(&mut reader, &mut line, &mut oversized).await {
        let mut text: String = String::from_utf8_lossy(&line)
            .chars()
            .take(MAX_STDERR_LINE)
            .collect();
        if oversized || text.len() < line.len() {
            text.push('…');
        }
        if tail.len() == STDERR_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
        line.clear();
        oversized = false;
    }
    tail
}

/// Turns output lines into events and history.
struct Mapper<'a> {
    turn: &'a Turn,
    sink: &'a EventSink,
    new_history: Vec<HistoryEntry>,
    /// Assistant text since the last tool call.
    text: String,
    /// Claude Code already streamed this message's text as partial `stream_event`s.
    streamed_partial_text: bool,
    usage: Option<Value>,
    /// A failure the agent reported (`result` with `is_error`, Codex `turn.failed` / `error`).
    failure: Option<String>,
}

impl<'a> Mapper<'a> {
    fn new(turn: &'a Turn, sink: &'a EventSink) -> Self {
        Mapper {
            turn,
            sink,
            new_history: Vec::new(),
            text: String::new(),
            streamed_partial_text: false,
            usage: None,
            failure: None,
        }
    }

    fn finish(mut self) -> Result<TurnOutcome, HarnessError> {
        if let Some(failure) = self.failure {
            return Err(HarnessError::Exec(format!(
                "the agent reported a failure: {failure}"
            )));
        }
        self.flush_text();
        Ok(TurnOutcome {
            new_history: self.new_history,
            usage: self.usage,
        })
    }

    fn text(&mut self, text: &str, emit: bool) {
        if text.is_empty() {
            return;
        }
        if emit {
            self.sink.text_delta(text);
        }
        self.text.push_str(text);
    }

    fn flush_text(&mut self) {
        if !self.text.is_empty() {
            self.new_history.push(HistoryEntry::Assistant {
                text: std::mem::take(&mut self.text),
            });
        }
    }

    fn call(&mut self, call_id: &str, name: &str, arguments: &str) {
        self.flush_text();
        self.sink
            .function_call(&self.turn.response_id, call_id, name, arguments);
        self.new_history.push(HistoryEntry::ToolCall {
            call_id: call_id.to_owned(),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        });
    }

    fn output(&mut self, call_id: &str, output: &str) {
        self.sink
            .function_call_output(&self.turn.response_id, call_id, output);
        self.new_history.push(HistoryEntry::ToolResult {
            call_id: call_id.to_owned(),
            output: output.to_owned(),
        });
    }

    fn line(&mut self, line: &str) {
        let parsed = serde_json::from_str::<Value>(line.trim())
            .ok()
            .filter(Value::is_object);
        let Some(value) = parsed else {
            let mut text = line.to_owned();
            text.push('\n');
            self.text(&text, true);
            return;
        };
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            // Claude Code stream-json.
            "assistant" => self.claude_assistant(&value),
            "user" => self.claude_user(&value),
            "stream_event" => self.claude_partial(&value),
            "result" => {
                self.remember(&value, "session_id", Resume::Claude);
                if let Some(u) = value.get("usage").filter(|u| u.is_object()) {
                    self.set_usage(u);
                }
                if value.get("is_error").and_then(Value::as_bool) == Some(true) {
                    let message = value
                        .get("result")
                        .and_then(Value::as_str)
                        .or_else(|| value.get("subtype").and_then(Value::as_str))
                        .unwrap_or("unknown error");
                    self.failure = Some(message.to_owned());
                }
            }
            // Codex exec --json.
            "item.completed" => {
                if let Some(item) = value.get("item") {
                    self.codex_item(item);
                }
            }
            "turn.completed" => {
                if let Some(u) = value.get("usage").filter(|u| u.is_object()) {
                    self.set_usage(u);
                }
            }
            "turn.failed" => {
                let message = value.pointer("/error/message").and_then(Value::as_str);
                self.failure = Some(message.unwrap_or("the turn failed").to_owned());
            }
            "error" => {
                let message = value
                    .get("message")
                    .or_else(|| value.pointer("/error/message"))
                    .and_then(Value::as_str);
                self.failure = Some(message.unwrap_or("unknown error").to_owned());
            }
            "system" => self.remember(&value, "session_id", Resume::Claude),
            "thread.started" => self.remember(&value, "thread_id", Resume::Codex),
            _ => {} // item.started…: nothing to show
        }
    }

    /// The CLI named its session: the next turn resumes it.
    fn remember(&self, value: &Value, key: &str, resume: fn(String) -> Resume) {
        if let (Some(memory), Some(id)) = (&self.turn.exec, value.get(key).and_then(Value::as_str))
            && !id.is_empty()
        {
            memory.set(resume(id.to_owned()));
        }
    }

    fn set_usage(&mut self, u: &Value) {
        let get = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        self.usage = Some(
            json!({"input_tokens": get("input_tokens"), "output_tokens": get("output_tokens")}),
        );
    }

    fn claude_assistant(&mut self, value: &Value) {
        let emit = !self.streamed_partial_text;
        self.streamed_partial_text = false;
        let Some(blocks) = value.pointer("/message/content").and_then(Value::as_array) else {
            return;
        };
        for block in blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    if let Some(text) = block.get("text").and_then(Value::as_str) {
                        self.text(text, emit);
                    }
                }
                Some("tool_use") => {
                    let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                    let name = block.get("name").and_then(Value::as_str).unwrap_or("tool");
                    let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                    self.call(id, name, &input.to_string());
                }
                _ => {}
            }
        }
    }

    fn claude_user(&mut self, value: &Value) {
        let Some(blocks) = value.pointer("/message/content").and_then(Value::as_array) else {
            return;
        };
        for block in blocks {
            if block.get("type").and_then(Value::as_str) != Some("tool_result") {
                continue;
            }
            let id = block
                .get("tool_use_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            let output = match block.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Some(other) if !other.is_null() => other.to_string(),
                _ => String::new(),
            };
            self.output(id, &output);
        }
    }

    /// `--include-partial-messages`: the Messages API stream events, wrapped.
    fn claude_partial(&mut self, value: &Value) {
        let Some(event) = value.get("event") else {
            return;
        };
        if event.get("type").and_then(Value::as_str) != Some("content_block_delta") {
            return;
        }
        if event.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta")
            && let Some(text) = event.pointer("/delta/text").and_then(Value::as_str)
        {
            // Streamed here; the complete `assistant` message that follows only records it.
            self.sink.text_delta(text);
            self.streamed_partial_text = true;
        }
    }

    fn codex_item(&mut self, item: &Value) {
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(super::new_item_id);
        let field = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("");
        match field("type") {
            "agent_message" => {
                let mut text = field("text").to_owned();
                if !self.text.is_empty() && !self.text.ends_with('\n') {
                    text.insert(0, '\n');
                }
                self.text(&text, true);
            }
            "reasoning" => {
                self.sink.emit(
                    json!({"type": kind::RESPONSE_REASONING_TEXT_DELTA, "delta": field("text")}),
                );
            }
            "command_execution" => {
                self.call(
                    &id,
                    "shell",
                    &json!({"command": field("command")}).to_string(),
                );
                let mut output = field("aggregated_output").to_owned();
                if let Some(code) = item.get("exit_code").and_then(Value::as_i64) {
                    if !output.is_empty() && !output.ends_with('\n') {
                        output.push('\n');
                    }
                    output.push_str(&format!("[exit code {code}]"));
                }
                self.output(&id, &output);
            }
            "file_change" => {
                let changes = item.get("changes").cloned().unwrap_or_else(|| json!([]));
                self.call(&id, "apply_patch", &json!({"changes": changes}).to_string());
                let status = field("status");
                self.output(
                    &id,
                    if status.is_empty() {
                        "completed"
                    } else {
                        status
                    },
                );
            }
            "mcp_tool_call" => {
                let name = format!("{}.{}", field("server"), field("tool"));
                let arguments = item.get("arguments").cloned().unwrap_or_else(|| json!({}));
                self.call(&id, &name, &arguments.to_string());
                let output = item
                    .get("result")
                    .or_else(|| item.get("error"))
                    .filter(|v| !v.is_null())
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .unwrap_or_default();
                self.output(&id, &output);
            }
            "web_search" => {
                self.call(
                    &id,
                    "web_search",
                    &json!({"query": field("query")}).to_string(),
                );
                self.output(&id, "");
            }
            _ => {} // todo_list, error items…: lenient
        }
    }
}
