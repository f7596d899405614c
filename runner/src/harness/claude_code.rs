//! `claude-sdk`: Claude Code through its own CLI, one long-lived process per session.
//!
//! The process (`claude -p --input-format stream-json --output-format stream-json --verbose
//! --include-partial-messages --permission-mode … [--model …] [--append-system-prompt …] [--mcp-config …]`,
//! cwd = the session's workspace, its own process group) is owned by ONE task, the agent ([`ClaudeCode`] is
//! its cloneable handle; the runner session keeps one and gives it to each turn in [`Turn::claude_code`]).
//! Each turn writes one `{"type":"user",…}` line to its stdin and reads its stdout lines until `result`
//! ([`lines`] maps them to events). Between turns the process waits for the next line, so its context stays.
//!
//! - The process dies with the agent: when the last handle is dropped the task kills its process group.
//! - If it died between turns (or mid-turn), the next turn starts `claude … --resume <session_id>` with the id
//!   of its `system`/`init` line, so the conversation is kept.
//! - Interrupt: a `control_request` `interrupt` line; if the turn has not ended after the grace, SIGINT to the
//!   group, then SIGKILL after another grace. The agent stays usable: the next turn resumes.
//! - Approvals: the CLI runs with `--permission-prompt-tool stdio` (what the Claude Agent SDK passes for its
//!   `can_use_tool` callback; no MCP server of ours is needed), so each permission prompt comes on stdout as a
//!   `control_request` `can_use_tool` ([`lines::Control`]). The turn asks the session's clients through
//!   [`Turn::approvals`] and writes the SDK's `control_response` (`allow` with the input as asked, or `deny`
//!   with who denied it); a `control_cancel_request` (the CLI was interrupted) withdraws the question.
//! - Permission mode: the spec's (`HarnessConfig::permission_mode`), else `OMNIGENT_CLAUDE_PERMISSION_MODE`,
//!   else `acceptEdits` (file edits run without asking, Bash and the rest ask). A mode that skips approvals
//!   (`bypassPermissions`, `skip`) never asks: the agent allows every prompt itself, which also works as root,
//!   where Claude Code refuses `--permission-mode bypassPermissions` (it then runs in `acceptEdits`).
//! - Binary: the harness table's row ([`AgentCli::locate`]: `OMNIGENT_CLAUDE_PATH`, else `PATH`, else the
//!   usual install locations); a missing binary or missing credentials fail the turn naming the install or
//!   login command.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use omnigent_proto::harness::{AgentCli, Harness};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::exec::{MAX_LINE_BYTES, read_line_capped, tail_lines};
use super::{EventSink, HarnessConfig, HarnessError, HistoryEntry, Turn, TurnOutcome};

pub mod lines;

/// The permission mode when none is configured.
pub const DEFAULT_PERMISSION_MODE: &str = "acceptEdits";
/// The variable that sets the permission mode (`default`, `acceptEdits`, `bypassPermissions`, `plan`).
pub const PERMISSION_MODE_VAR: &str = "OMNIGENT_CLAUDE_PERMISSION_MODE";
/// Default time between the interrupt request and SIGINT (and between SIGINT and SIGKILL).
pub const DEFAULT_INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// The longest part of a non-JSON stdout line that is logged.
const MAX_LOGGED_LINE: usize = 1024;
/// How long an exited CLI may take to be reaped and its stderr drained.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// How an agent starts its CLI. The session builds it once ([`Options::from_env`]); the agent-spec loader
/// may fill `append_system_prompt` and `mcp_servers`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--permission-mode`; `None`: [`DEFAULT_PERMISSION_MODE`].
    pub permission_mode: Option<String>,
    /// `--append-system-prompt`: the spec's instructions.
    pub append_system_prompt: Option<String>,
    /// The spec's MCP servers, `{"name": {"command": …} | {"type": "http", "url": …}}`: written to a JSON file
    /// (`{"mcpServers": …}`) in `state_dir`, passed as `--mcp-config`.
    pub mcp_servers: Option<Value>,
    /// Where the agent writes its files (the MCP config). `None`: the system temp dir.
    pub state_dir: Option<PathBuf>,
    /// Variables set for the CLI over the runner's own (and read first when locating it and its login).
    pub env: Vec<(String, String)>,
    /// `None`: [`DEFAULT_INTERRUPT_GRACE`].
    pub interrupt_grace: Option<Duration>,
}

impl Options {
    /// The options from the runner's environment.
    pub fn from_env() -> Options {
        Options {
            permission_mode: std::env::var(PERMISSION_MODE_VAR)
                .ok()
                .filter(|v| !v.trim().is_empty()),
            ..Options::default()
        }
    }

    /// A variable as the CLI will see it: `env` first, then the runner's.
    fn var(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    }
}

/// The agent spec's MCP servers in Claude Code's `--mcp-config` form (`{name: {command, args, env} |
/// {type: "http", url, headers}}`); entries that are not MCP servers are left out.
pub fn mcp_config(servers: &[(String, omnigent_proto::agent::spec::Tool)]) -> Value {
    use omnigent_proto::agent::spec::McpTransport;
    let mut out = serde_json::Map::new();
    for (name, tool) in servers {
        let entry = match tool.mcp() {
            Some(McpTransport::Stdio { command, args, env }) => {
                serde_json::json!({"command": command, "args": args, "env": env})
            }
            Some(McpTransport::Http { url, headers }) => {
                serde_json::json!({"type": "http", "url": url, "headers": headers})
            }
            None => continue,
        };
        out.insert(name.clone(), entry);
    }
    Value::Object(out)
}

/// A handle on one session's Claude Code agent (the task that owns the process). Cheap to clone; the process
/// is killed when the last handle is dropped.
#[derive(Clone)]
pub struct ClaudeCode {
    tx: mpsc::UnboundedSender<Request>,
}

impl fmt::Debug for ClaudeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClaudeCode")
    }
}

/// What the agent tells about itself (tests, status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentInfo {
    /// The live process's pid.
    pub pid: Option<u32>,
    /// How many processes it started so far.
    pub spawns: u64,
    /// The Claude session id (from `system`/`init`), used for `--resume`.
    pub claude_session: Option<String>,
}

enum Request {
    Turn(Box<TurnRequest>),
    Interrupt,
    /// A control-protocol line for the CLI's stdin (a turn's answer to a permission prompt).
    Write(Value),
    Info(oneshot::Sender<AgentInfo>),
}

struct TurnRequest {
    prompt: String,
    workspace: PathBuf,
    config: HarnessConfig,
    lines: mpsc::UnboundedSender<Line>,
}

/// What a turn gets from the agent.
enum Line {
    Json(Value),
    /// The turn cannot go on: the CLI could not start or exited.
    Failed(HarnessError),
}

impl ClaudeCode {
    /// Start an agent task (no process yet: the first turn starts it). Needs a Tokio runtime.
    pub fn spawn(options: Options) -> ClaudeCode {
        let (tx, rx) = mpsc::unbounded_channel();
        let agent = Agent {
            options,
            proc: None,
            claude_session: None,
            current: None,
            queued: VecDeque::new(),
            interrupt_at: None,
            kill_at: None,
            spawns: 0,
            mcp_file: None,
            skip_approvals: false,
        };
        tokio::spawn(agent.run(rx));
        ClaudeCode { tx }
    }

    /// The agent's pid, spawn count and Claude session.
    pub async fn info(&self) -> AgentInfo {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Info(tx)).is_err() {
            return AgentInfo::default();
        }
        rx.await.unwrap_or_default()
    }
}

/// Run one turn on the session's agent (`turn.claude_code`; a turn without one gets an agent of its own,
/// which forgets the conversation when the turn ends).
pub async fn run_turn(
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    let agent = match &turn.claude_code {
        Some(agent) => agent.clone(),
        None => ClaudeCode::spawn(Options::from_env()),
    };
    let prompt = match turn.history.last() {
        Some(HistoryEntry::User { text }) => text.clone(),
        _ => String::new(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gone = || HarnessError::Exec("the Claude Code agent task is gone".to_owned());
    agent
        .tx
        .send(Request::Turn(Box::new(TurnRequest {
            prompt,
            workspace: turn.workspace.clone(),
            config: turn.config.clone(),
            lines: tx,
        })))
        .map_err(|_| gone())?;
    let mut lines = lines::Lines::new(&turn.response_id, sink);
    let mut interrupted = false;
    // The permission prompts being asked, each its own task (the CLI may ask several at once); dropping the set
    // at the turn's end withdraws what is still open.
    let mut asking: JoinSet<Value> = JoinSet::new();
    let mut open: HashMap<String, AbortHandle> = HashMap::new();
    let ended = loop {
        tokio::select! {
            () = cancel.cancelled(), if !interrupted => {
                interrupted = true;
                let _ = agent.tx.send(Request::Interrupt);
            }
            Some(answered) = asking.join_next(), if !asking.is_empty() => {
                if let Ok(response) = answered {
                    if let Some(id) = response.pointer("/response/request_id").and_then(Value::as_str) {
                        open.remove(id);
                    }
                    let _ = agent.tx.send(Request::Write(response));
                }
            }
            line = rx.recv() => match line {
                Some(Line::Json(value)) => match lines::Control::parse(&value) {
                    Some(lines::Control::Permission(request)) => {
                        let (approvals, sink, cancel) =
                            (turn.approvals.clone(), sink.clone(), cancel.clone());
                        let id = request.request_id.clone();
                        let handle = asking.spawn(async move {
                            let answer = approvals
                                .ask(&sink, request.params(), request.tool_use_id.clone(), &cancel)
                                .await;
                            request.respond(&answer)
                        });
                        open.insert(id, handle);
                    }
                    // The CLI withdrew it (it was interrupted): the question is settled as unanswered.
                    Some(lines::Control::Cancel { request_id }) => {
                        if let Some(task) = open.remove(&request_id) {
                            task.abort();
                        }
                    }
                    Some(lines::Control::Other { .. }) => {}
                    None => {
                        if let Some(ended) = lines.line(&value) {
                            break ended;
                        }
                    }
                },
                Some(Line::Failed(_)) if interrupted => return Err(HarnessError::Interrupted),
                Some(Line::Failed(err)) => return Err(err),
                None => return Err(gone()),
            },
        }
    };
    if interrupted {
        return Err(HarnessError::Interrupted);
    }
    match ended {
        lines::Ended::Done => Ok(TurnOutcome {
            new_history: lines.new_history,
            usage: lines.usage,
        }),
        lines::Ended::Failed(message) => Err(HarnessError::Exec(format!(
            "Claude Code failed the turn: {message}"
        ))),
    }
}

/// The CLI row of the harness table.
fn cli() -> AgentCli {
    Harness::ClaudeCode.spec().cli.unwrap_or(AgentCli {
        path_var: "OMNIGENT_CLAUDE_PATH",
        program: "claude",
        install_paths: &[],
        version_args: &["--version"],
        login_files: &[],
        env: &[],
        install_hint: "npm install -g @anthropic-ai/claude-code",
        login_hint: "run `claude login` or set ANTHROPIC_API_KEY",
    })
}

/// A running CLI.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    /// Parsed stdout lines; closed at end of output.
    out: mpsc::Receiver<Value>,
    /// The last lines of stderr, once it ends.
    stderr: tokio::task::JoinHandle<VecDeque<String>>,
    group: Option<Pid>,
    pid: Option<u32>,
}

impl Proc {
    /// Write `message` as one line to its stdin.
    async fn send(&mut self, message: &Value) -> std::io::Result<()> {
        let mut line = message.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await
    }

    fn signal(&self, signal: Signal) {
        if let Some(group) = self.group {
            let _ = killpg(group, signal);
        }
    }

    /// Wait for the exit and the stderr tail; an error message for a CLI that ended.
    async fn ended(mut self) -> String {
        self.signal(Signal::SIGKILL);
        let status = tokio::time::timeout(REAP_WAIT, self.child.wait()).await;
        let tail = tokio::time::timeout(REAP_WAIT, &mut self.stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let status = match status {
            Ok(Ok(s)) => s.to_string(),
            _ => "an unknown status".to_owned(),
        };
        let mut message = format!("Claude Code exited with {status}");
        if !tail.is_empty() {
            message.push_str(": ");
            message.push_str(&Vec::from(tail).join("\n"));
        }
        message
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole group: the CLI and the tools it started.
        self.signal(Signal::SIGKILL);
    }
}

struct Agent {
    options: Options,
    proc: Option<Proc>,
    claude_session: Option<String>,
    /// The turn being served.
    current: Option<mpsc::UnboundedSender<Line>>,
    /// Turns asked for while one was being served.
    queued: VecDeque<Box<TurnRequest>>,
    interrupt_at: Option<Instant>,
    kill_at: Option<Instant>,
    spawns: u64,
    mcp_file: Option<PathBuf>,
    /// The live process's permission mode skips approvals: the agent allows every tool itself.
    skip_approvals: bool,
}

impl Agent {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        loop {
            let deadline = self.interrupt_at.or(self.kill_at);
            tokio::select! {
                request = requests.recv() => match request {
                    Some(Request::Turn(turn)) => {
                        if self.current.is_some() {
                            self.queued.push_back(turn);
                        } else {
                            self.start(turn).await;
                        }
                    }
                    Some(Request::Interrupt) => self.interrupt().await,
                    Some(Request::Write(line)) => self.write(&line).await,
                    Some(Request::Info(reply)) => {
                        let _ = reply.send(AgentInfo {
                            pid: self.proc.as_ref().and_then(|p| p.pid),
                            spawns: self.spawns,
                            claude_session: self.claude_session.clone(),
                        });
                    }
                    None => break,
                },
                line = recv_line(&mut self.proc) => match line {
                    Some(value) => self.on_line(value).await,
                    None => self.on_exit().await,
                },
                () = sleep_until(deadline) => self.on_deadline(),
            }
        }
        // Every handle is gone: so is the session.
        self.proc = None;
        if let Some(file) = self.mcp_file.take() {
            let _ = std::fs::remove_file(file);
        }
    }

    async fn start(&mut self, turn: Box<TurnRequest>) {
        let message = json!({
            "type": "user",
            "message": {"role": "user", "content": turn.prompt},
            "parent_tool_use_id": null,
            "session_id": self.claude_session.clone().unwrap_or_default(),
        });
        // A CLI that died since the last turn is replaced (resuming its session); so is one whose stdin is
        // closed (it died just now, its end of output not yet read).
        for attempt in 0..2 {
            if let Some(proc) = &mut self.proc
                && matches!(proc.child.try_wait(), Ok(Some(_)))
            {
                let message = self.proc.take().map(Proc::ended);
                if let Some(m) = message {
                    info!("Claude Code had exited between turns: {}", m.await);
                }
            }
            if self.proc.is_none() {
                match self.spawn(&turn.workspace, &turn.config) {
                    Ok(proc) => self.proc = Some(proc),
                    Err(err) => {
                        let _ = turn.lines.send(Line::Failed(err));
                        return;
                    }
                }
            }
            let Some(proc) = &mut self.proc else { return };
            match proc.send(&message).await {
                Ok(()) => {
                    self.current = Some(turn.lines);
                    return;
                }
                Err(e) => {
                    warn!(
                        attempt,
                        "could not write to Claude Code's stdin: {e}; restarting it"
                    );
                    if let Some(proc) = self.proc.take() {
                        info!("{}", proc.ended().await);
                    }
                }
            }
        }
        let _ = turn.lines.send(Line::Failed(HarnessError::Exec(
            "Claude Code exited at once twice in a row (see the runner log)".to_owned(),
        )));
    }

    fn spawn(&mut self, workspace: &Path, config: &HarnessConfig) -> Result<Proc, HarnessError> {
        let cli = cli();
        let get = |name: &str| self.options.var(name);
        let binary = cli.locate(&get).ok_or_else(|| {
            HarnessError::NotConfigured(format!(
                "Claude Code is not installed on this host (no `{}` in {}, PATH or {}): install it with `{}`, \
                 or set {} to its path",
                cli.program,
                cli.path_var,
                cli.install_paths.join(", "),
                cli.install_hint,
                cli.path_var
            ))
        })?;
        let has_credential = config.api_key.is_some()
            || config.auth_token.is_some()
            || [
                "ANTHROPIC_API_KEY",
                "CLAUDE_CODE_OAUTH_TOKEN",
                "ANTHROPIC_AUTH_TOKEN",
            ]
            .iter()
            .any(|v| get(v).is_some_and(|s| !s.trim().is_empty()));
        if !has_credential && !cli.logged_in(&get) {
            return Err(HarnessError::NotConfigured(format!(
                "Claude Code has no credentials on this host: {} (or CLAUDE_CODE_OAUTH_TOKEN) in the \
                 environment of `omnigent host`",
                cli.login_hint
            )));
        }
        let mode = config
            .permission_mode
            .clone()
            .or_else(|| self.options.permission_mode.clone())
            .unwrap_or_else(|| DEFAULT_PERMISSION_MODE.to_owned());
        let skip_approvals = super::skips_approvals(&mode);
        // Claude Code refuses `bypassPermissions` as root: there it runs in the default mode and the agent allows
        // whatever it asks.
        let cli_mode = match skip_approvals {
            true if nix::unistd::geteuid().is_root() => DEFAULT_PERMISSION_MODE,
            true => "bypassPermissions",
            false => mode.as_str(),
        };
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            // Permission prompts come to us as `can_use_tool` control requests (the Agent SDK's route).
            "--permission-prompt-tool",
            "stdio",
            "--permission-mode",
        ])
        .arg(cli_mode);
        if let Some(model) = &config.model {
            cmd.args(["--model", model]);
        }
        if let Some(prompt) = &self.options.append_system_prompt {
            cmd.args(["--append-system-prompt", prompt]);
        }
        if let Some(servers) = self.options.mcp_servers.clone() {
            let file = self.write_mcp_config(&servers)?;
            cmd.arg("--mcp-config").arg(file);
        }
        if let Some(session) = &self.claude_session {
            cmd.args(["--resume", session]);
        }
        cmd.current_dir(workspace)
            .env("DISABLE_AUTOUPDATER", "1")
            .env("DISABLE_TELEMETRY", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
        if let Some(key) = &config.api_key {
            cmd.env("ANTHROPIC_API_KEY", key);
        }
        if let Some(url) = &config.base_url {
            cmd.env("ANTHROPIC_BASE_URL", url);
        }
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = super::child::owned_by_runner(&mut cmd)
            .spawn()
            .map_err(|e| {
                HarnessError::Exec(format!(
                    "could not start Claude Code ({}): {e}",
                    binary.display()
                ))
            })?;
        let pid = child.id();
        let group = pid.and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(HarnessError::Exec(
                "Claude Code started without its pipes".to_owned(),
            ));
        };
        let (out_tx, out) = mpsc::channel(256);
        tokio::spawn(read_stdout(stdout, out_tx));
        let stderr = tokio::spawn(tail_lines(stderr));
        self.spawns += 1;
        self.skip_approvals = skip_approvals;
        info!(
            pid,
            permission_mode = cli_mode,
            skip_approvals,
            resume = self.claude_session.is_some(),
            binary = %binary.display(),
            "started Claude Code"
        );
        Ok(Proc {
            child,
            stdin,
            out,
            stderr,
            group,
            pid,
        })
    }

    fn write_mcp_config(&mut self, servers: &Value) -> Result<PathBuf, HarnessError> {
        let dir = self
            .options
            .state_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("omnigent-claude-code"));
        let file = self
            .mcp_file
            .clone()
            .unwrap_or_else(|| dir.join(format!("mcp-{}.json", uuid::Uuid::new_v4().simple())));
        let body = json!({ "mcpServers": servers }).to_string();
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&file, body))
            .map_err(|e| {
                HarnessError::Exec(format!(
                    "could not write Claude Code's MCP config {}: {e}",
                    file.display()
                ))
            })?;
        self.mcp_file = Some(file.clone());
        Ok(file)
    }

    /// Write one control-protocol line to the CLI.
    async fn write(&mut self, message: &Value) {
        let Some(proc) = &mut self.proc else { return };
        if let Err(e) = proc.send(message).await {
            warn!("could not answer Claude Code's control request: {e}");
        }
    }

    /// A control request the agent answers itself: permission prompts when approvals are skipped or no turn
    /// runs, and the subtypes we never set up. `false`: the turn handles it.
    async fn answer_control(&mut self, control: &lines::Control) -> bool {
        let answer = match control {
            lines::Control::Permission(request) if self.skip_approvals => request.allow(),
            lines::Control::Permission(request)
                if self
                    .current
                    .as_ref()
                    .is_none_or(mpsc::UnboundedSender::is_closed) =>
            {
                request.deny("No omnigent turn is running to ask anyone")
            }
            lines::Control::Permission(_) | lines::Control::Cancel { .. } => return false,
            lines::Control::Other {
                request_id,
                subtype,
            } => {
                warn!(
                    subtype,
                    "Claude Code sent a control request omnigent does not serve"
                );
                lines::control_error(request_id, &format!("omnigent does not serve {subtype}"))
            }
        };
        self.write(&answer).await;
        true
    }

    async fn on_line(&mut self, value: Value) {
        if let Some(control) = lines::Control::parse(&value)
            && self.answer_control(&control).await
        {
            return;
        }
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        if kind == "system"
            && value.get("subtype").and_then(Value::as_str) == Some("init")
            && let Some(id) = value.get("session_id").and_then(Value::as_str)
        {
            self.claude_session = Some(id.to_owned());
        }
        let is_result = kind == "result";
        if let Some(turn) = &self.current {
            let _ = turn.send(Line::Json(value));
        }
        if is_result {
            self.finish_turn().await;
        }
    }

    async fn on_exit(&mut self) {
        let Some(proc) = self.proc.take() else {
            return;
        };
        let message = proc.ended().await;
        if let Some(turn) = self.current.take() {
            warn!("{message}");
            let _ = turn.send(Line::Failed(HarnessError::Exec(message)));
            self.finish_turn().await;
        } else {
            info!("between turns: {message}");
        }
    }

    async fn finish_turn(&mut self) {
        self.current = None;
        self.interrupt_at = None;
        self.kill_at = None;
        while self.current.is_none()
            && let Some(next) = self.queued.pop_front()
        {
            if next.lines.is_closed() {
                continue;
            }
            self.start(next).await;
        }
    }

    async fn interrupt(&mut self) {
        let (Some(proc), Some(_)) = (&mut self.proc, &self.current) else {
            return;
        };
        let request = json!({
            "type": "control_request",
            "request_id": format!("interrupt_{}", uuid::Uuid::new_v4().simple()),
            "request": {"subtype": "interrupt"},
        });
        if let Err(e) = proc.send(&request).await {
            warn!("could not send the interrupt to Claude Code: {e}");
        }
        let grace = self
            .options
            .interrupt_grace
            .unwrap_or(DEFAULT_INTERRUPT_GRACE);
        self.interrupt_at = Some(Instant::now() + grace);
    }

    fn on_deadline(&mut self) {
        let grace = self
            .options
            .interrupt_grace
            .unwrap_or(DEFAULT_INTERRUPT_GRACE);
        if self.interrupt_at.take().is_some() {
            warn!("Claude Code did not end the turn on the interrupt request; sending SIGINT");
            if let Some(proc) = &self.proc {
                proc.signal(Signal::SIGINT);
            }
            self.kill_at = Some(Instant::now() + grace);
        } else if self.kill_at.take().is_some() {
            warn!("Claude Code ignored SIGINT; killing it");
            if let Some(proc) = &self.proc {
                proc.signal(Signal::SIGKILL);
            }
        }
    }
}

async fn recv_line(proc: &mut Option<Proc>) -> Option<Value> {
    match proc {
        Some(p) => p.out.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stdout → parsed JSON objects; other lines are logged and skipped.
async fn read_stdout(stdout: tokio::process::ChildStdout, out: mpsc::Sender<Value>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut oversized = false;
    while let Ok(true) = read_line_capped(&mut reader, &mut line, &mut oversized).await {
        if oversized {
            warn!("skipped a Claude Code output line over {MAX_LINE_BYTES} bytes");
        } else {
            match serde_json::from_slice::<Value>(&line) {
                Ok(value) if value.is_object() => {
                    if out.send(value).await.is_err() {
                        return;
                    }
                }
                _ => {
                    let text = String::from_utf8_lossy(&line);
                    if !text.trim().is_empty() {
                        warn!(
                            "Claude Code printed a line that is not JSON: {}",
                            text.chars().take(MAX_LOGGED_LINE).collect::<String>()
                        );
                    }
                }
            }
        }
        line.clear();
        oversized = false;
    }
}
