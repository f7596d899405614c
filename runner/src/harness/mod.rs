//! Harnesses: what runs one agent turn. The runner's turn loop (see `crate::session`) owns the session state and
//! the turn's framing events (`session.status`, `response.in_progress`, `response.completed`…); a harness only
//! produces the turn's content through an [`EventSink`] and returns how the turn ended.
//!
//! Dispatch is one exhaustive `match` over [`HarnessKind`], no trait objects.

use std::path::PathBuf;
use std::time::Duration;

use omnigent_proto::events::kind;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod agent;
pub mod anthropic;
mod child;
pub mod claude_code;
pub mod codex;
pub mod echo;
pub mod exec;
pub mod mcp;
pub mod openai;
pub mod pi;
pub mod tools;
mod vendor;

/// The harnesses this runner can run: the table in `omnigent_proto::harness` (names, Python omnigent's names as
/// aliases, the variables each reads), which the daemon reads too. The name on the wire is
/// [`HarnessKind::name`]; [`HarnessKind::parse`] takes ours or an alias.
pub use omnigent_proto::harness::Harness as HarnessKind;

/// One entry of a session's conversation, as the harnesses see it. The runner keeps this history per session
/// and appends what each turn produced (user input, assistant text, tool calls and their results).
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryEntry {
    User {
        text: String,
    },
    Assistant {
        text: String,
    },
    ToolCall {
        call_id: String,
        name: String,
        arguments: String,
    },
    ToolResult {
        call_id: String,
        output: String,
    },
}

/// Settings a harness reads, resolved once by the runner from its environment and config.
#[derive(Debug, Clone, Default)]
pub struct HarnessConfig {
    /// Model name (`OMNIGENT_MODEL`, or the harness default).
    pub model: Option<String>,
    /// The vendor's base URL (the table's `base_url` variables: `OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`…).
    pub base_url: Option<String>,
    /// An API key (the table's `ApiKey` credentials: `OPENAI_API_KEY`, `ANTHROPIC_API_KEY`…).
    pub api_key: Option<String>,
    /// A bearer token (the table's `BearerToken` credentials: `ANTHROPIC_AUTH_TOKEN`…), sent as
    /// `Authorization: Bearer` when no API key is set.
    pub auth_token: Option<String>,
    /// For `exec`: the command line to run per turn (`OMNIGENT_EXEC_COMMAND`), the prompt appended as last arg.
    pub exec_command: Option<Vec<String>>,
    /// Vendor streams: how long the harness waits for the next byte (or for response headers) before failing
    /// the turn, so a silent vendor never hangs it. `None`: 300 s.
    pub idle_timeout: Option<Duration>,
    /// The built-in `shell` tool's default time limit (the model may ask for up to 600 s). `None`: 120 s.
    pub tool_timeout: Option<Duration>,
    /// How many model ⇄ tools rounds one turn may take before the harness stops asking. `None`: 50.
    pub max_tool_rounds: Option<u32>,
    /// `exec` on interrupt: time between SIGTERM and SIGKILL to the command's process group. `None`: 2 s.
    pub kill_grace: Option<Duration>,
    /// Extra environment for an agent CLI's process, over the runner's own (tests: a temp `HOME`,
    /// `CODEX_HOME`, a fake vendor's key).
    pub agent_env: Vec<(String, String)>,
    /// The system prompt: the agent spec's `prompt` / `instructions`. `None`: the built-in coding-agent prompt.
    pub instructions: Option<String>,
    /// Which OpenAI API the `openai` harness speaks. `None`: Chat Completions. The runner resolves it:
    /// `OMNIGENT_OPENAI_WIRE_API`, else the spec's `wire_api`, else the harness name's default (Responses for
    /// `openai-agents` and `open-responses`).
    pub wire_api: Option<openai::WireApi>,
    /// The agent spec's `permission_mode` (`executor.config.permission_mode` / `executor.permission_mode`):
    /// whether an agent CLI asks before it uses a tool. For Claude Code its `--permission-mode` (`default`,
    /// `acceptEdits`, `plan`…); for Codex its approval policy (`on-request`, `untrusted`…); a mode that
    /// [`skips_approvals`] never asks anyone. `None`: the harness's own setting.
    pub permission_mode: Option<String>,
    /// The agent spec's MCP servers (`tools` entries of `type: mcp`), by name, for an agent CLI that is its own
    /// MCP client (`codex`); the vendor harnesses use the session's `Turn::mcp` instead.
    pub agent_mcp_servers: Vec<(String, omnigent_proto::agent::spec::Tool)>,
}

/// Whether the permission mode `mode` runs every tool without asking: `bypassPermissions` (Claude Code's),
/// `never` (Codex's) or `skip`.
pub fn skips_approvals(mode: &str) -> bool {
    let mode = mode.trim();
    ["bypassPermissions", "skip", "never"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(mode))
}

/// Everything a harness needs for one turn.
#[derive(Debug, Clone)]
pub struct Turn {
    pub session_id: String,
    /// The id of the `response` this turn produces (`resp_…`); items the harness emits carry it.
    pub response_id: String,
    /// The session's workspace: the cwd of tools and of `exec`; tools are confined to it.
    pub workspace: PathBuf,
    /// Conversation before this turn, oldest first; the last entry is this turn's user input.
    pub history: Vec<HistoryEntry>,
    pub config: HarnessConfig,
    /// The session's MCP servers, when it has any: their tools are offered next to the built-in ones.
    pub mcp: Option<mcp::Toolbox>,
    /// The session's Codex agent (`codex` harness): one long-lived `codex app-server`, kept across turns.
    /// `None`: the turn starts its own, which forgets the conversation after it.
    pub codex: Option<codex::CodexHandle>,
    /// The session's Pi agent (`pi` harness): one long-lived `pi --mode rpc`, kept across turns. `None`: the
    /// turn starts its own.
    pub pi: Option<pi::PiHandle>,
    /// The session's `exec` memory: the agent CLI session the next turn resumes. `None`: every turn gets the
    /// conversation in its prompt.
    pub exec: Option<exec::ExecMemory>,
    /// `claude-sdk`: the session's Claude Code agent (its one long-lived process); `None` for the others.
    pub claude_code: Option<claude_code::ClaudeCode>,
    /// The session's approvals: where an agent CLI asks before it uses a tool, and the first answer from any
    /// client comes back (`crate::approvals`).
    pub approvals: crate::approvals::Approvals,
}

/// How a turn ended, when it was not an error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnOutcome {
    /// What the turn added to the conversation, in order (assistant text, tool calls, tool results).
    pub new_history: Vec<HistoryEntry>,
    /// Token usage if the vendor reported it: `{"input_tokens":…, "output_tokens":…}`.
    pub usage: Option<Value>,
}

/// Why a turn failed. Rendered to the session as `response.error` + `response.failed` with this message.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The vendor answered with an error status (401, 429, 5xx…); `message` is the vendor's own text.
    #[error("{vendor} returned HTTP {status}: {message}")]
    Vendor {
        vendor: &'static str,
        status: u16,
        message: String,
        /// Seconds from a `retry-after` header, when given.
        retry_after: Option<u64>,
    },
    /// The vendor's stream broke off or sent something that is not its protocol.
    #[error("{vendor} stream failed: {message}")]
    Stream {
        vendor: &'static str,
        message: String,
    },
    /// The harness is not set up (no API key, no exec command…). `message` says what to set.
    #[error("{0}")]
    NotConfigured(String),
    /// The exec harness's command failed to start or exited non-zero.
    #[error("{0}")]
    Exec(String),
    /// The session's agent could not be fetched or loaded from the server; `message` says why.
    #[error("{0}")]
    Agent(String),
    /// The turn was cancelled (interrupt); not an error for the user, the runner emits `response.incomplete`.
    #[error("interrupted")]
    Interrupted,
}

/// Where a harness sends the events it produces. Each value is one runner SSE event (a JSON object with a
/// `type`), in the shapes of reference/omnigent-server-v1.md §2.3. Send failures mean the turn has no
/// listener left; harnesses ignore them and finish (the runner discards the events).
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Value>,
}

impl EventSink {
    pub fn new(tx: mpsc::UnboundedSender<Value>) -> Self {
        EventSink { tx }
    }

    /// Any event.
    pub fn emit(&self, event: Value) {
        let _ = self.tx.send(event);
    }

    /// `response.output_text.delta` (response-scoped: the server assembles and persists the text).
    pub fn text_delta(&self, delta: &str) {
        self.emit(serde_json::json!({"type": kind::RESPONSE_OUTPUT_TEXT_DELTA, "delta": delta}));
    }

    /// `response.output_item.done` for a completed `function_call` item.
    pub fn function_call(&self, response_id: &str, call_id: &str, name: &str, arguments: &str) {
        self.emit(serde_json::json!({
            "type": kind::RESPONSE_OUTPUT_ITEM_DONE,
            "item": {
                "id": crate::harness::new_item_id(),
                "type": "function_call",
                "status": "completed",
                "response_id": response_id,
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            }
        }));
    }

    /// `response.output_item.done` for a `function_call_output` item.
    pub fn function_call_output(&self, response_id: &str, call_id: &str, output: &str) {
        self.emit(serde_json::json!({
            "type": kind::RESPONSE_OUTPUT_ITEM_DONE,
            "item": {
                "id": crate::harness::new_item_id(),
                "type": "function_call_output",
                "status": "completed",
                "response_id": response_id,
                "call_id": call_id,
                "output": output,
            }
        }));
    }
}

/// A fresh item id (bare 32 hex).
pub fn new_item_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Run one turn on the harness `kind`. The caller emits the framing events around it.
pub async fn run_turn(
    kind: HarnessKind,
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    match kind {
        HarnessKind::Echo => echo::run_turn(turn, sink, cancel).await,
        HarnessKind::OpenAi => openai::run_turn(turn, sink, cancel).await,
        HarnessKind::Anthropic => anthropic::run_turn(turn, sink, cancel).await,
        HarnessKind::Exec => exec::run_turn(turn, sink, cancel).await,
        HarnessKind::Codex => codex::run_turn(turn, sink, cancel).await,
        HarnessKind::Pi => pi::run_turn(turn, sink, cancel).await,
        HarnessKind::ClaudeCode => claude_code::run_turn(turn, sink, cancel).await,
    }
}
