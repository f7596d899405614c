//! What the long-lived agent CLI harnesses (`codex`, `pi`) share: the session's handle on the one task that
//! owns its agent ([`AgentHandle`] over a [`CliAgent`]), finding the binary, one child process speaking JSON
//! lines over stdio (its own process group, killed with it), and the recorder that turns what the agent did
//! into events and history.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::exec::{MAX_LINE_BYTES, read_line_capped, tail_lines};
use super::{EventSink, HarnessError, HarnessKind, HistoryEntry, Turn, TurnOutcome};

/// How long an agent gets to start and answer its handshake.
pub(super) const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an interrupted agent gets to end its turn before the process is killed (the next turn starts a
/// new one and resumes the conversation).
pub(super) const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(3);

/// One agent CLI's state in its session task (the process it keeps, the conversation to resume): what the task
/// does with each turn.
pub trait CliAgent: Default + Send + 'static {
    /// The agent, for messages (`codex`, `pi`).
    const NAME: &'static str;

    /// Run one turn on the agent's process (started or restarted as needed).
    fn turn(
        &mut self,
        turn: &Turn,
        sink: &EventSink,
        cancel: &CancellationToken,
    ) -> impl std::future::Future<Output = Result<TurnOutcome, HarnessError>> + Send;

    /// The pid of its running process, if one runs.
    fn pid(&self) -> Option<u32>;
}

/// A session's agent: a handle on the task that owns a [`CliAgent`]. Cheap to clone; its process is killed once
/// every handle is gone.
pub struct AgentHandle<A> {
    tx: mpsc::UnboundedSender<Job>,
    agent: std::marker::PhantomData<fn() -> A>,
}

impl<A> Clone for AgentHandle<A> {
    fn clone(&self) -> Self {
        AgentHandle {
            tx: self.tx.clone(),
            agent: std::marker::PhantomData,
        }
    }
}

impl<A: CliAgent> std::fmt::Debug for AgentHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentHandle({})", A::NAME)
    }
}

/// What a session asks of its agent's task.
enum Job {
    Turn {
        turn: Box<Turn>,
        sink: EventSink,
        cancel: CancellationToken,
        reply: oneshot::Sender<Result<TurnOutcome, HarnessError>>,
    },
    Pid(oneshot::Sender<Option<u32>>),
}

impl<A: CliAgent> AgentHandle<A> {
    /// Start the task (the process itself starts at the first turn). Needs a Tokio runtime.
    pub fn spawn() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_agent::<A>(rx));
        AgentHandle {
            tx,
            agent: std::marker::PhantomData,
        }
    }

    /// Run one turn on this session's agent.
    pub async fn run_turn(
        &self,
        turn: &Turn,
        sink: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<TurnOutcome, HarnessError> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Turn {
            turn: Box::new(turn.clone()),
            sink: sink.clone(),
            cancel: cancel.clone(),
            reply,
        };
        self.tx.send(job).map_err(|_| gone::<A>())?;
        rx.await.map_err(|_| gone::<A>())?
    }

    /// The pid of the agent's running process, if one runs.
    pub async fn pid(&self) -> Option<u32> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job::Pid(reply)).ok()?;
        rx.await.ok().flatten()
    }
}

/// A turn on the session's agent `handle`; without one (a bare turn), on a fresh agent for this turn, which
/// forgets the conversation after it.
pub(super) async fn run_turn<A: CliAgent>(
    handle: Option<&AgentHandle<A>>,
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    match handle {
        Some(handle) => handle.run_turn(turn, sink, cancel).await,
        None => AgentHandle::<A>::spawn().run_turn(turn, sink, cancel).await,
    }
}

fn gone<A: CliAgent>() -> HarnessError {
    HarnessError::Exec(format!(
        "the {} agent task is gone (the session is closing)",
        A::NAME
    ))
}

/// The task owning one session's agent; when every handle is gone the session is over and dropping the agent
/// kills its process.
async fn run_agent<A: CliAgent>(mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut agent = A::default();
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Turn {
                turn,
                sink,
                cancel,
                reply,
            } => {
                let result = agent.turn(&turn, &sink, &cancel).await;
                let _ = reply.send(result);
            }
            Job::Pid(reply) => {
                let _ = reply.send(agent.pid());
            }
        }
    }
}

/// One agent CLI process speaking JSON lines on stdin/stdout. Dropping it kills its whole process group.
pub(super) struct AgentProcess {
    /// What it is, for messages (`codex app-server`).
    pub what: &'static str,
    child: Child,
    group: Option<Pid>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: Vec<u8>,
    oversized: bool,
    stderr: Option<JoinHandle<VecDeque<String>>>,
}

impl AgentProcess {
    /// Start `program args` in `turn`'s workspace with the turn's extra environment.
    pub fn spawn(
        what: &'static str,
        program: &Path,
        args: &[&str],
        turn: &Turn,
    ) -> Result<AgentProcess, HarnessError> {
        let mut child = super::child::owned_by_runner(
            tokio::process::Command::new(program)
                .args(args)
                .envs(turn.config.agent_env.iter().map(|(k, v)| (k, v)))
                .current_dir(&turn.workspace)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .spawn()
        .map_err(|e| {
            HarnessError::Exec(format!(
                "cannot start {what} ({}) in {}: {e}",
                program.display(),
                turn.workspace.display()
            ))
        })?;
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let stderr = child.stderr.take().map(|e| tokio::spawn(tail_lines(e)));
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(HarnessError::Exec(format!(
                "{what}: stdio was not captured"
            )));
        };
        Ok(AgentProcess {
            what,
            child,
            group,
            stdin,
            stdout: BufReader::new(stdout),
            line: Vec::new(),
            oversized: false,
            stderr,
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process has exited already.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Write one JSON line.
    pub async fn send(&mut self, message: &Value) -> Result<(), HarnessError> {
        let mut line = message.to_string();
        line.push('\n');
        let written = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        }
        .await;
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(self.died(&format!("cannot write to it: {e}")).await),
        }
    }

    /// The next JSON object on stdout (lines that are not one are skipped). Cancel-safe: a partial line stays
    /// buffered. At end of output or on a read error: the error saying how the process ended.
    pub async fn next(&mut self) -> Result<Value, HarnessError> {
        loop {
            match read_line_capped(&mut self.stdout, &mut self.line, &mut self.oversized).await {
                Ok(true) => {
                    let line = std::mem::take(&mut self.line);
                    if std::mem::take(&mut self.oversized) {
                        return Err(HarnessError::Exec(format!(
                            "{} sent a line over {} MiB; stopping it",
                            self.what,
                            MAX_LINE_BYTES >> 20
                        )));
                    }
                    if let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(&line) {
                        return Ok(value);
                    }
                }
                Ok(false) => return Err(self.died("its output ended").await),
                Err(e) => return Err(self.died(&format!("cannot read its output: {e}")).await),
            }
        }
    }

    /// The error for a process that stopped talking: how it exited and its last stderr lines.
    async fn died(&mut self, why: &str) -> HarnessError {
        let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        let how = match status {
            Ok(Ok(status)) => describe(status),
            _ => "is still running".to_owned(),
        };
        let tail = match self.stderr.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => VecDeque::new(),
        };
        let tail = Vec::from(tail).join("\n");
        let tail = if tail.trim().is_empty() {
            "(no stderr output)".to_owned()
        } else {
            tail
        };
        HarnessError::Exec(format!(
            "{} stopped ({why}; it {how}); its last stderr lines:\n{tail}",
            self.what
        ))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "was killed by a signal".to_owned(),
    }
}

/// A variable as the agent sees it: the turn's extra environment, else the runner's.
pub(super) fn agent_var(turn: &Turn) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| {
        turn.config
            .agent_env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    }
}

/// The binary of the agent CLI of harness `kind` ([`AgentCli::locate`], as the daemon's probe: its
/// `OMNIGENT_*_PATH` variable, else `PATH`, else the usual install locations), or the error naming the install.
pub(super) fn locate(kind: HarnessKind, turn: &Turn) -> Result<PathBuf, HarnessError> {
    let Some(cli) = kind.spec().cli else {
        return Err(HarnessError::NotConfigured(format!(
            "{} is not an agent CLI harness",
            kind.name()
        )));
    };
    cli.locate(&agent_var(turn)).ok_or_else(|| {
        HarnessError::NotConfigured(format!(
            "the {} harness cannot run: `{}` is not installed on this host (not at {}, on PATH or in {}): \
             install it with `{}`, or set {} to its path",
            kind.name(),
            cli.program,
            agent_var(turn)(cli.path_var).unwrap_or_else(|| format!("${}", cli.path_var)),
            cli.install_paths.join(", "),
            cli.install_hint,
            cli.path_var
        ))
    })
}

/// Whether the agent CLI of harness `kind` has credentials: one of the row's variables, or one of its login
/// files; `also`: a harness's own extra check.
pub(super) fn check_credentials(
    kind: HarnessKind,
    turn: &Turn,
    also: bool,
) -> Result<(), HarnessError> {
    let get = agent_var(turn);
    let logged_in = kind.spec().cli.is_some_and(|cli| cli.logged_in(&get));
    if also || logged_in || kind.credential(&get).is_some() {
        return Ok(());
    }
    let hint = kind.spec().cli.map_or("", |cli| cli.login_hint);
    Err(HarnessError::NotConfigured(format!(
        "the {} harness has no credentials on this host: {hint}",
        kind.name()
    )))
}

/// The prompt of a turn: its last user entry.
pub(super) fn prompt(turn: &Turn) -> &str {
    match turn.history.last() {
        Some(HistoryEntry::User { text }) => text,
        _ => "",
    }
}

/// Records what an agent did in one turn: emits the events and collects the history and usage.
pub(super) struct Recorder<'a> {
    turn: &'a Turn,
    sink: &'a EventSink,
    new_history: Vec<HistoryEntry>,
    /// Assistant text since the last tool call.
    text: String,
    input_tokens: u64,
    output_tokens: u64,
    has_usage: bool,
}

impl<'a> Recorder<'a> {
    pub fn new(turn: &'a Turn, sink: &'a EventSink) -> Self {
        Recorder {
            turn,
            sink,
            new_history: Vec::new(),
            text: String::new(),
            input_tokens: 0,
            output_tokens: 0,
            has_usage: false,
        }
    }

    /// Streamed assistant text.
    pub fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.sink.text_delta(text);
        self.text.push_str(text);
    }

    /// A separator before a new assistant message when text of an earlier one is pending.
    pub fn new_message(&mut self) {
        if !self.text.is_empty() && !self.text.ends_with('\n') {
            self.text("\n\n");
        }
    }

    fn flush_text(&mut self) {
        if !self.text.is_empty() {
            self.new_history.push(HistoryEntry::Assistant {
                text: std::mem::take(&mut self.text),
            });
        }
    }

    pub fn call(&mut self, call_id: &str, name: &str, arguments: &str) {
        self.flush_text();
        self.sink
            .function_call(&self.turn.response_id, call_id, name, arguments);
        self.new_history.push(HistoryEntry::ToolCall {
            call_id: call_id.to_owned(),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        });
    }

    pub fn output(&mut self, call_id: &str, output: &str) {
        self.sink
            .function_call_output(&self.turn.response_id, call_id, output);
        self.new_history.push(HistoryEntry::ToolResult {
            call_id: call_id.to_owned(),
            output: output.to_owned(),
        });
    }

    /// Add one model request's token counts.
    pub fn add_usage(&mut self, input: u64, output: u64) {
        self.input_tokens += input;
        self.output_tokens += output;
        self.has_usage = true;
    }

    /// Any event (reasoning deltas…).
    pub fn emit(&self, event: Value) {
        self.sink.emit(event);
    }

    /// What the turn added; the recorder is empty afterwards.
    pub fn finish(&mut self) -> TurnOutcome {
        self.flush_text();
        TurnOutcome {
            new_history: std::mem::take(&mut self.new_history),
            usage: self.has_usage.then(
                || json!({"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}),
            ),
        }
    }
}
