//! The `codex` harness: one `codex app-server` per session, spoken to over stdio JSON-RPC (one JSON object per
//! line; the protocol of openai/codex `codex-rs/app-server-protocol`, v2 methods), owned by one task (the
//! session's [`CodexHandle`]).
//!
//! - The process starts at the session's first turn, in its workspace: `initialize`, `initialized`, then
//!   `thread/start` with `cwd` = the workspace, the model (`OMNIGENT_MODEL`, else Codex's own config),
//!   `approvalPolicy` from the spec's permission mode (default `on-request`; `never` when it skips approvals)
//!   and `sandbox: "workspace-write"` (commands may write in the workspace only; Codex's own sandbox, with its
//!   bundled bubblewrap on Linux).
//! - Approvals: the app-server's requests `item/commandExecution/requestApproval`,
//!   `item/fileChange/requestApproval` (and the older `execCommandApproval` / `applyPatchApproval`) are asked
//!   of the session's clients through [`Turn::approvals`] ([`approval`]) and answered with the decision the
//!   protocol wants (`accept` / `decline` / `cancel`; `approved` / `denied` / `abort`); a
//!   `serverRequest/resolved` for one still open withdraws it.
//! - Each turn is a `turn/start` with the user's text. Its notifications become events: `item/agentMessage/delta`
//!   → text deltas; `item/started`/`item/completed` of command executions, file changes, MCP tool calls and web
//!   searches → `function_call` items (at start) and `function_call_output` items (at completion, with the
//!   output and exit code); `thread/tokenUsage/updated` → usage; `turn/completed` ends the turn (completed,
//!   interrupted or failed with its error).
//! - An interrupt sends `turn/interrupt`; an agent that does not end its turn within [`INTERRUPT_TIMEOUT`] is
//!   killed.
//! - The thread id is kept: when the process died (killed, crashed, interrupted too slowly), the next turn starts
//!   a new one and `thread/resume`s the thread, which Codex reloads from its rollout files in `CODEX_HOME`, so
//!   the conversation goes on.
//!
//! The binary is `OMNIGENT_CODEX_PATH`, else `codex` on `PATH`. Credentials are Codex's own: `OPENAI_API_KEY`,
//! a `codex login` (`$CODEX_HOME/auth.json`, `CODEX_HOME` defaulting to `~/.codex`), or a custom
//! `model_provider` in `$CODEX_HOME/config.toml` (which names its own key variable).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use omnigent_proto::elicitation::Action;
use omnigent_proto::events::kind;
use serde_json::{Value, json};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::agent::{self, AgentProcess, INTERRUPT_TIMEOUT, Recorder, STARTUP_TIMEOUT};
use super::{EventSink, HarnessError, HarnessKind, Turn, TurnOutcome};

mod approval;

/// The approval policy of the session's thread: the spec's `permission_mode` when it is one of Codex's
/// (`untrusted`, `on-request`, `on-failure`, `never`), `never` when it [`super::skips_approvals`], else
/// `on-request` (Codex's own "ask for approval": commands run in the workspace sandbox, and the agent asks
/// before it leaves it).
fn approval_policy(turn: &Turn) -> &str {
    match turn.config.permission_mode.as_deref().map(str::trim) {
        Some(mode @ ("untrusted" | "on-request" | "on-failure" | "never")) => mode,
        Some(mode) if super::skips_approvals(mode) => "never",
        _ => "on-request",
    }
}

/// Whether the session's approvals are skipped (any request that still comes is accepted).
fn skips_approvals(turn: &Turn) -> bool {
    approval_policy(turn) == "never"
}

/// The agent spec's MCP servers as Codex's `mcp_servers` config (`{name: {command, args, env} | {url,
/// http_headers}}`); entries that are not MCP servers are left out.
fn mcp_servers(
    servers: &[(String, omnigent_proto::agent::spec::Tool)],
) -> serde_json::Map<String, Value> {
    use omnigent_proto::agent::spec::McpTransport;
    let mut out = serde_json::Map::new();
    for (name, tool) in servers {
        let entry = match tool.mcp() {
            Some(McpTransport::Stdio { command, args, env }) => {
                json!({"command": command, "args": args, "env": env})
            }
            Some(McpTransport::Http { url, headers }) => {
                json!({"url": url, "http_headers": headers})
            }
            None => continue,
        };
        out.insert(name.clone(), entry);
    }
    out
}

/// How to give it credentials, for error messages.
const LOGIN_HINT: &str = "set OPENAI_API_KEY or run `codex login`";

/// The session's Codex agent: a handle on the task that owns its `codex app-server`. Cheap to clone; the
/// process is killed once every handle is gone.
pub type CodexHandle = agent::AgentHandle<CodexAgent>;

/// A turn on the session's agent (`turn.codex`); without one (a bare turn), on a fresh agent for this turn.
pub async fn run_turn(
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    agent::run_turn(turn.codex.as_ref(), turn, sink, cancel).await
}

/// Whether Codex's own config.toml (`$CODEX_HOME`, else `~/.codex`) selects a custom `model_provider`, which
/// names its own key variable (Codex reports that one missing itself).
fn has_custom_provider(get: &impl Fn(&str) -> Option<String>) -> bool {
    let home = match get("CODEX_HOME").filter(|v| !v.trim().is_empty()) {
        Some(home) => PathBuf::from(home),
        None => match get("HOME") {
            Some(home) => PathBuf::from(home).join(".codex"),
            None => return false,
        },
    };
    std::fs::read_to_string(home.join("config.toml")).is_ok_and(|config| {
        config.lines().any(|line| {
            line.trim_start()
                .strip_prefix("model_provider")
                .is_some_and(|rest| {
                    rest.trim_start().starts_with('=') && !rest.contains("\"openai\"")
                })
        })
    })
}

/// One session's `codex app-server` and its thread (the state of its [`CodexHandle`]'s task).
#[derive(Default)]
pub struct CodexAgent {
    server: Option<Server>,
    /// The Codex thread of this session, once started: resumed by a new process.
    thread_id: Option<String>,
}

impl agent::CliAgent for CodexAgent {
    const NAME: &'static str = "codex";

    async fn turn(
        &mut self,
        turn: &Turn,
        sink: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<TurnOutcome, HarnessError> {
        if self.server.as_mut().is_some_and(|s| s.process.has_exited()) {
            info!("codex app-server has exited since the last turn; starting a new one");
            self.server = None;
        }
        let (server, thread_id) = match (self.server.take(), self.thread_id.clone()) {
            (Some(server), Some(thread_id)) => (server, thread_id),
            _ => self.start(turn, cancel).await?,
        };
        let mut server = server;
        self.thread_id = Some(thread_id.clone());
        match run_codex_turn(&mut server, &thread_id, turn, sink, cancel).await {
            Ok(ended) => {
                self.server = Some(server);
                ended
            }
            // The process stopped talking or ignored an interrupt: it is dropped (killed); the next turn
            // starts a new one that resumes the thread.
            Err(broken) => Err(broken),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(|s| s.process.pid())
    }
}

struct Server {
    process: AgentProcess,
    next_id: u64,
}

/// One message from the app-server.
enum Incoming {
    Response {
        id: Value,
        result: Result<Value, String>,
    },
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
}

fn classify(mut message: Value) -> Incoming {
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let id = message.get_mut("id").map(Value::take);
    match (method, id) {
        (Some(method), Some(id)) => Incoming::Request {
            id,
            method,
            params: message
                .get_mut("params")
                .map(Value::take)
                .unwrap_or(Value::Null),
        },
        (Some(method), None) => Incoming::Notification {
            method,
            params: message
                .get_mut("params")
                .map(Value::take)
                .unwrap_or(Value::Null),
        },
        (None, id) => {
            let result = match message.get_mut("error").map(Value::take) {
                Some(error) => Err(error
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| error.to_string())),
                None => Ok(message
                    .get_mut("result")
                    .map(Value::take)
                    .unwrap_or(Value::Null)),
            };
            Incoming::Response {
                id: id.unwrap_or(Value::Null),
                result,
            }
        }
    }
}

impl Server {
    /// Send a request; returns its id.
    async fn request(&mut self, method: &str, params: Value) -> Result<Value, HarnessError> {
        self.next_id += 1;
        let id = json!(self.next_id);
        self.process
            .send(&json!({"id": id, "method": method, "params": params}))
            .await?;
        Ok(id)
    }

    /// Answer a request of the app-server outside a turn's approvals: approvals are declined (nobody can be
    /// asked here), anything else is not supported.
    async fn answer(&mut self, id: Value, method: &str) -> Result<(), HarnessError> {
        let reply = match method {
            "item/commandExecution/requestApproval" | "item/fileChange/requestApproval" => {
                json!({"id": id, "result": {"decision": "decline"}})
            }
            "execCommandApproval" | "applyPatchApproval" => {
                json!({"id": id, "result": {"decision": "denied"}})
            }
            _ => {
                json!({"id": id, "error": {"code": -32601, "message": format!("omnigent does not support {method}")}})
            }
        };
        warn!(
            method,
            "codex asked something nobody can answer here; declined"
        );
        self.process.send(&reply).await
    }

    /// A request and its result, outside a turn (the handshake): notifications meanwhile are ignored.
    async fn call(
        &mut self,
        method: &str,
        params: Value,
        cancel: &CancellationToken,
    ) -> Result<Value, HarnessError> {
        let id = self.request(method, params).await?;
        let wait = async {
            loop {
                match classify(self.process.next().await?) {
                    Incoming::Response { id: got, result } if got == id => {
                        return result.map_err(|message| {
                            HarnessError::Exec(format!(
                                "codex app-server refused {method}: {message}"
                            ))
                        });
                    }
                    Incoming::Request { id, method, .. } => self.answer(id, &method).await?,
                    _ => {}
                }
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(HarnessError::Interrupted),
            result = tokio::time::timeout(STARTUP_TIMEOUT, wait) => result.unwrap_or_else(|_| {
                Err(HarnessError::Exec(format!(
                    "codex app-server did not answer {method} within {} s",
                    STARTUP_TIMEOUT.as_secs()
                )))
            }),
        }
    }
}

impl CodexAgent {
    /// A new app-server, initialised, with the session's thread started or resumed.
    async fn start(
        &mut self,
        turn: &Turn,
        cancel: &CancellationToken,
    ) -> Result<(Server, String), HarnessError> {
        let program = agent::locate(HarnessKind::Codex, turn)?;
        let custom = has_custom_provider(&agent::agent_var(turn));
        agent::check_credentials(HarnessKind::Codex, turn, custom)?;
        let process = AgentProcess::spawn("codex app-server", &program, &["app-server"], turn)?;
        let mut server = Server {
            process,
            next_id: 0,
        };
        let client = json!({
            "clientInfo": {"name": "omnigent", "title": "omnigent", "version": env!("CARGO_PKG_VERSION")},
            "capabilities": null,
        });
        server.call("initialize", client, cancel).await?;
        server
            .process
            .send(&json!({"method": "initialized"}))
            .await?;
        let mut settings = json!({
            "cwd": turn.workspace.display().to_string(),
            "approvalPolicy": approval_policy(turn),
            "sandbox": "workspace-write",
        });
        if let Some(model) = &turn.config.model {
            settings["model"] = json!(model);
        }
        // The spec's instructions go after Codex's own prompt; its MCP servers into Codex's config.
        if let Some(instructions) = &turn.config.instructions {
            settings["developerInstructions"] = json!(instructions);
        }
        let servers = mcp_servers(&turn.config.agent_mcp_servers);
        if !servers.is_empty() {
            settings["config"] = json!({"mcp_servers": servers});
        }
        let thread_id = match self.thread_id.clone() {
            Some(thread_id) => {
                settings["threadId"] = json!(thread_id);
                settings["excludeTurns"] = json!(true);
                match server.call("thread/resume", settings, cancel).await {
                    Ok(_) => {
                        info!(thread_id, "codex thread resumed in a new app-server");
                        thread_id
                    }
                    Err(HarnessError::Exec(message)) => {
                        // Its rollout is gone: the next turn starts afresh rather than failing forever.
                        self.thread_id = None;
                        return Err(HarnessError::Exec(format!(
                            "cannot resume this session's Codex thread {thread_id} ({message}); the next \
                             turn starts a new thread"
                        )));
                    }
                    Err(other) => return Err(other),
                }
            }
            None => {
                let started = server.call("thread/start", settings, cancel).await?;
                let Some(thread_id) = started.pointer("/thread/id").and_then(Value::as_str) else {
                    return Err(HarnessError::Exec(format!(
                        "codex app-server answered thread/start without a thread id: {started}"
                    )));
                };
                debug!(thread_id, "codex thread started");
                thread_id.to_owned()
            }
        };
        Ok((server, thread_id))
    }
}

/// One turn on `server`. The outer error: the process is no longer usable; the inner result: how the turn
/// ended, as Codex reported it.
async fn run_codex_turn(
    server: &mut Server,
    thread_id: &str,
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<Result<TurnOutcome, HarnessError>, HarnessError> {
    let params = json!({
        "threadId": thread_id,
        "input": [{"type": "text", "text": agent::prompt(turn), "text_elements": []}],
    });
    let start_id = server.request("turn/start", params).await?;
    let mut mapper = Mapper::new(turn, sink);
    let mut turn_id: Option<String> = None;
    let mut interrupt_asked = false;
    let mut interrupt_sent = false;
    let deadline = tokio::time::sleep(std::time::Duration::MAX);
    tokio::pin!(deadline);
    // Approval requests being asked of the session's clients, each its own task, by JSON-RPC id; dropping the
    // set at the turn's end withdraws what is still open.
    let mut asking: JoinSet<Value> = JoinSet::new();
    let mut open: HashMap<String, AbortHandle> = HashMap::new();
    let skip = skips_approvals(turn);
    loop {
        let message = tokio::select! {
            biased;
            Some(answered) = asking.join_next(), if !asking.is_empty() => {
                if let Ok(reply) = answered {
                    open.remove(&reply["id"].to_string());
                    server.process.send(&reply).await?;
                }
                continue;
            }
            _ = cancel.cancelled(), if !interrupt_asked => {
                interrupt_asked = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + INTERRUPT_TIMEOUT);
                if let Some(turn_id) = &turn_id {
                    server.request("turn/interrupt", json!({"threadId": thread_id, "turnId": turn_id})).await?;
                    interrupt_sent = true;
                }
                continue;
            }
            _ = &mut deadline => {
                warn!("codex did not end the interrupted turn in {INTERRUPT_TIMEOUT:?}; killing it");
                return Err(HarnessError::Exec("codex app-server ignored turn/interrupt".into()));
            }
            message = server.process.next() => message?,
        };
        match classify(message) {
            Incoming::Response { id, result } if id == start_id => match result {
                Ok(started) => {
                    turn_id = started
                        .pointer("/turn/id")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    if interrupt_asked
                        && !interrupt_sent
                        && let Some(turn_id) = &turn_id
                    {
                        server
                            .request(
                                "turn/interrupt",
                                json!({"threadId": thread_id, "turnId": turn_id}),
                            )
                            .await?;
                        interrupt_sent = true;
                    }
                }
                Err(message) => {
                    return Ok(Err(HarnessError::Exec(format!(
                        "codex app-server refused turn/start: {message}"
                    ))));
                }
            },
            Incoming::Response { .. } => {} // turn/interrupt's answer
            Incoming::Request { id, method, params } => {
                match approval::Question::of(&method, &params, &mapper.arguments) {
                    Some(question) if skip => {
                        server
                            .process
                            .send(&question.reply(&id, Action::Accept))
                            .await?
                    }
                    Some(question) => {
                        let (approvals, sink, cancel) =
                            (turn.approvals.clone(), sink.clone(), cancel.clone());
                        let key = id.to_string();
                        let task = asking.spawn(async move {
                            let answer = approvals
                                .ask(
                                    &sink,
                                    question.params(),
                                    Some(question.item_id.clone()),
                                    &cancel,
                                )
                                .await;
                            question.reply(&id, answer.action)
                        });
                        open.insert(key, task);
                    }
                    None => server.answer(id, &method).await?,
                }
            }
            // Codex settled a request itself (the turn was interrupted, say): a question still open is withdrawn.
            Incoming::Notification { method, params } if method == "serverRequest/resolved" => {
                if let Some(task) = params
                    .get("requestId")
                    .and_then(|id| open.remove(&id.to_string()))
                {
                    task.abort();
                }
            }
            Incoming::Notification { method, params } => {
                let theirs = params.get("turnId").and_then(Value::as_str);
                if let (Some(ours), Some(theirs)) = (&turn_id, theirs)
                    && ours != theirs
                {
                    continue; // a late notification of an earlier turn
                }
                if let Some(end) = mapper.notification(&method, &params) {
                    return Ok(end);
                }
            }
        }
    }
}

/// Turns app-server notifications into events and history.
struct Mapper<'a> {
    recorder: Recorder<'a>,
    /// Agent messages whose text came as deltas.
    streamed: HashSet<String>,
    /// Tool items whose `function_call` was emitted at their start.
    called: HashSet<String>,
    /// Their arguments, by item id: what an approval request about one of them previews.
    arguments: HashMap<String, String>,
    /// The last error the agent reported that it will not retry.
    error: Option<String>,
}

impl<'a> Mapper<'a> {
    fn new(turn: &'a Turn, sink: &'a EventSink) -> Self {
        Mapper {
            recorder: Recorder::new(turn, sink),
            streamed: HashSet::new(),
            called: HashSet::new(),
            arguments: HashMap::new(),
            error: None,
        }
    }

    /// Handle one notification; at the turn's end, how it ended.
    fn notification(
        &mut self,
        method: &str,
        params: &Value,
    ) -> Option<Result<TurnOutcome, HarnessError>> {
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        match method {
            "item/agentMessage/delta" => {
                let item = text(params, "itemId");
                if self.streamed.insert(item) {
                    self.recorder.new_message();
                }
                self.recorder.text(&text(params, "delta"));
            }
            "item/reasoning/summaryTextDelta" | "item/reasoning/textDelta" => {
                self.recorder.emit(json!({
                    "type": kind::RESPONSE_REASONING_TEXT_DELTA,
                    "delta": text(params, "delta"),
                }));
            }
            "item/started" => {
                if let Some(item) = params.get("item")
                    && let Some((id, name, arguments)) = tool_call(item)
                {
                    self.called.insert(id.clone());
                    self.recorder.call(&id, name, &arguments);
                    self.arguments.insert(id, arguments);
                }
            }
            "item/completed" => {
                if let Some(item) = params.get("item") {
                    self.item_completed(item);
                }
            }
            "thread/tokenUsage/updated" => {
                if let Some(last) = params.pointer("/tokenUsage/last") {
                    let get = |k: &str| last.get(k).and_then(Value::as_u64).unwrap_or(0);
                    self.recorder
                        .add_usage(get("inputTokens"), get("outputTokens"));
                }
            }
            "error" if params.get("willRetry").and_then(Value::as_bool) != Some(true) => {
                self.error = params
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            "turn/completed" => {
                let turn = params.get("turn").unwrap_or(&Value::Null);
                return Some(self.end(turn));
            }
            _ => {}
        }
        None
    }

    fn item_completed(&mut self, item: &Value) {
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(super::new_item_id);
        match item.get("type").and_then(Value::as_str).unwrap_or("") {
            "agentMessage" => {
                if !self.streamed.contains(&id) {
                    self.recorder.new_message();
                    self.recorder
                        .text(item.get("text").and_then(Value::as_str).unwrap_or(""));
                }
            }
            _ => {
                if let Some((id, name, arguments)) = tool_call(item) {
                    if !self.called.contains(&id) {
                        self.recorder.call(&id, name, &arguments);
                    }
                    self.recorder.output(&id, &tool_output(item));
                }
            }
        }
    }

    fn end(&mut self, turn: &Value) -> Result<TurnOutcome, HarnessError> {
        match turn.get("status").and_then(Value::as_str) {
            Some("completed") => Ok(self.recorder.finish()),
            Some("interrupted") => Err(HarnessError::Interrupted),
            status => {
                let message = turn
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or(self.error.take())
                    .unwrap_or_else(|| format!("the turn ended as {status:?}"));
                let hint = if message.contains("401") || message.to_lowercase().contains("auth") {
                    format!(" ({LOGIN_HINT})")
                } else {
                    String::new()
                };
                Err(HarnessError::Exec(format!(
                    "codex turn failed: {message}{hint}"
                )))
            }
        }
    }
}

/// A tool item as a function call: its id, name and JSON arguments.
fn tool_call(item: &Value) -> Option<(String, &'static str, String)> {
    let id = item.get("id").and_then(Value::as_str)?.to_owned();
    let field = |k: &str| item.get(k).cloned().unwrap_or(Value::Null);
    let (name, arguments) = match item.get("type").and_then(Value::as_str)? {
        "commandExecution" => ("shell", json!({"command": field("command")})),
        "fileChange" => ("apply_patch", json!({"changes": field("changes")})),
        "mcpToolCall" => (
            "mcp",
            json!({"server": field("server"), "tool": field("tool"), "arguments": field("arguments")}),
        ),
        "dynamicToolCall" => (
            "dynamic_tool",
            json!({"tool": field("tool"), "arguments": field("arguments")}),
        ),
        "webSearch" => ("web_search", json!({"query": field("query")})),
        _ => return None,
    };
    Some((id, name, arguments.to_string()))
}

/// A completed tool item's output, as the model would read it.
fn tool_output(item: &Value) -> String {
    let text = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("");
    match text("type") {
        "commandExecution" => {
            let mut output = text("aggregatedOutput").to_owned();
            if let Some(code) = item.get("exitCode").and_then(Value::as_i64) {
                if !output.is_empty() && !output.ends_with('\n') {
                    output.push('\n');
                }
                output.push_str(&format!("[exit code {code}]"));
            } else if text("status") != "completed" {
                output.push_str(&format!("[{}]", text("status")));
            }
            output
        }
        "fileChange" => {
            let changes = item.get("changes").and_then(Value::as_array);
            let paths: Vec<&str> = changes
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("path").and_then(Value::as_str))
                .collect();
            format!("{}: {}", text("status"), paths.join(", "))
        }
        "mcpToolCall" => match (item.get("result"), item.get("error")) {
            (_, Some(error)) if !error.is_null() => error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| error.to_string()),
            (Some(result), _) if !result.is_null() => result
                .get("content")
                .and_then(Value::as_array)
                .map(|parts| {
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_else(|| result.to_string()),
            _ => String::new(),
        },
        "dynamicToolCall" => item
            .get("contentItems")
            .map(Value::to_string)
            .unwrap_or_default(),
        _ => text("status").to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
