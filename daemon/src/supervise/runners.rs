//! Runner supervision for one target (DESIGN §6; reference host §4): one task owns every runner launched
//! through that target's host tunnel and is driven by [`Cmd`] messages; [`Runners`] is the handle, and
//! implements [`HostActions`] so the tunnel's launch/stop/status frames become messages to the task.
//!
//! A runner is `<exe> runner --server <target> --workspace <ws> [--harness <h>]` with the binding token in
//! `OMNIGENT_RUNNER_TOKEN` (not on the command line, where `ps` shows it), cwd = the workspace, an environment
//! built from [`RUNNER_ENV`] alone, its own process group, PR_SET_PDEATHSIG, and stdout/stderr in
//! `logs/runners/<id>.log` (rotated): a [`child`](super::child), like the local server. Each child is waited
//! on by a small watcher task that reports the exit back to the supervisor task (and does the
//! SIGTERM/grace/SIGKILL when asked to stop it).
//!
//! On an exit: code 0 is an idle runner's clean exit (silent, forgotten). Anything else is reported as
//! `host.runner_exited` with the exit code and log tail, then relaunched with the same token (so the same
//! runner id) after the backoff of DESIGN §6, until 5 short runs within 120 s make it a crash loop (kept for
//! `omnigent status` with its last exits). Exit 78 (a refusal no retry fixes) is not relaunched.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use omnigent_proto::control::{ChildState, RunnerStatus as RunnerView};
use omnigent_proto::harness::{self, Harness};

use super::cli_probe::CliProbes;
use omnigent_proto::host_frames::LaunchErrorCode;
use omnigent_proto::ids::runner_id_for_token;
use omnigent_proto::paths::Paths;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::backoff::{AfterExit, RestartPolicy};
use super::child::{ChildLog, Exit, Restarts, Running};
use super::process::{self, ChildSpec, STOP_GRACE};
use super::tasks::Tasks;
use crate::config::logfile::tail_lines;
use crate::hosting::host_tunnel::{
    ExitReporter, FATAL_EXIT_CODE, HostActions, LaunchError, LaunchRequest, RunnerStatus,
};

/// Variables handed to runners from the daemon's environment (reference host §2, "daemon → runner"), by
/// exact name. Everything else is dropped: the daemon's secrets for other systems never reach a tool.
pub const RUNNER_ENV: &[&str] = &[
    // Process essentials.
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "TZ",
    "LANG",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    // TLS trust.
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    // Tools.
    "SSH_AUTH_SOCK",
    "KUBECONFIG",
    "GIT_TOKEN",
    "GIT_USERNAME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    // Ours.
    "OMNIGENT_HOME",
    "OMNIGENT_MODEL",
    "OMNIGENT_EXEC_COMMAND",
    "OMNIGENT_RUNNER_ENV_PASSTHROUGH",
    "RUST_LOG",
    // Harness credentials (each also accepted with an `OMNIGENT_` prefix, see [`RUNNER_ENV_PREFIXES`]). Every
    // variable of the harness table (`omnigent_proto::harness::env_vars`) passes too, see [`env_allowed`].
    "AWS_BEARER_TOKEN_BEDROCK",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CODEX_ACCESS_TOKEN",
    "GEMINI_API_KEY",
];

/// Variables handed to runners by prefix (`LC_*`, provider credentials and settings, telemetry).
pub const RUNNER_ENV_PREFIXES: &[&str] = &[
    "LC_",
    "OPENAI_",
    "ANTHROPIC_",
    "OMNIGENT_OPENAI_",
    "OMNIGENT_ANTHROPIC_",
    "OTEL_",
    "OMNIGENT_OTEL_",
];

/// Never handed to runners even when a prefix matches: the server's database belongs to the server.
const RUNNER_ENV_DENIED: &[&str] = &["OMNIGENT_DATABASE_URI"];

/// Log lines in an exit report (reference host §4.3: ≤ 15 lines).
const TAIL_LINES: usize = 15;

/// Whether `name` passes the allowlist (`extra` is config `env_passthrough` plus `OMNIGENT_RUNNER_ENV_PASSTHROUGH`).
pub fn env_allowed(name: &str, extra: &[String]) -> bool {
    if RUNNER_ENV_DENIED.contains(&name) {
        return false;
    }
    RUNNER_ENV.contains(&name)
        || RUNNER_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
        || harness::env_vars().any(|v| v == name)
        || extra.iter().any(|e| e == name)
}

/// The runner environment built from `vars` (the daemon's own, in production).
pub fn runner_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    passthrough: &[String],
) -> Vec<(OsString, OsString)> {
    let vars: Vec<(OsString, OsString)> = vars.into_iter().collect();
    let mut extra: Vec<String> = passthrough.to_vec();
    if let Some((_, list)) = vars
        .iter()
        .find(|(k, _)| k == "OMNIGENT_RUNNER_ENV_PASSTHROUGH")
    {
        extra.extend(
            list.to_string_lossy()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        );
    }
    vars.into_iter()
        .filter(|(k, _)| k.to_str().is_some_and(|k| env_allowed(k, &extra)))
        .collect()
}

/// What one target's supervisor needs.
#[derive(Clone)]
pub struct RunnerContext {
    /// The `omnigent` executable.
    pub exe: PathBuf,
    pub paths: Paths,
    /// The server the runners dial (the target's URL).
    pub server_url: String,
    pub policy: RestartPolicy,
    /// The config in force (its `env_passthrough` is read at each spawn, so edits apply to the next runner).
    pub config: watch::Receiver<crate::config::ConfigView>,
    /// Where exits are reported (`host.runner_exited`).
    pub exits: ExitReporter,
    /// Bumped on every change (status long-polls wait on it).
    pub revision: watch::Sender<u64>,
    /// Where the supervisor, its watchers, timers and log pumps run.
    pub tasks: Tasks,
    /// The probe of the agent CLIs, for `configured_harnesses`.
    pub probes: CliProbes,
}

enum Cmd {
    Launch(LaunchRequest, oneshot::Sender<Result<String, LaunchError>>),
    Stop(String, Duration, oneshot::Sender<Result<(), String>>),
    Status(String, oneshot::Sender<RunnerStatus>),
    StopAll(Duration, oneshot::Sender<u32>),
    Exited {
        id: String,
        generation: u64,
        exit: Exit,
    },
    Relaunch {
        id: String,
        generation: u64,
    },
}

/// The handle of one target's runner supervisor. Cheap to clone.
#[derive(Clone)]
pub struct Runners {
    cmds: mpsc::Sender<Cmd>,
    views: watch::Receiver<Vec<RunnerView>>,
    probes: CliProbes,
}

impl Runners {
    /// Snapshots of every runner, for status.
    pub fn views(&self) -> Vec<RunnerView> {
        self.views.borrow().clone()
    }

    /// A receiver that changes with every published snapshot.
    pub fn watch(&self) -> watch::Receiver<Vec<RunnerView>> {
        self.views.clone()
    }

    /// Stop every runner (SIGTERM to each group, `grace`, SIGKILL); returns how many were stopped.
    pub async fn stop_all(&self, grace: Duration) -> u32 {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::StopAll(grace, tx)).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Stop one runner with an explicit grace.
    pub async fn stop(&self, runner_id: String, grace: Duration) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Stop(runner_id, grace, tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn gone() -> String {
    "the daemon is shutting down".to_owned()
}

impl HostActions for Runners {
    async fn launch_runner(&self, request: LaunchRequest) -> Result<String, LaunchError> {
        let (tx, rx) = oneshot::channel();
        let shutting_down = || LaunchError {
            code: None,
            message: "the host daemon is shutting down; retry once it is back".to_owned(),
        };
        self.cmds
            .send(Cmd::Launch(request, tx))
            .await
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }

    async fn stop_runner(&self, runner_id: String) -> Result<(), String> {
        self.stop(runner_id, STOP_GRACE).await
    }

    async fn runner_status(&self, runner_id: String) -> RunnerStatus {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Status(runner_id, tx)).await.is_err() {
            return RunnerStatus::Unknown;
        }
        rx.await.unwrap_or(RunnerStatus::Unknown)
    }

    fn live_runners(&self) -> Vec<String> {
        self.views
            .borrow()
            .iter()
            .filter(|r| matches!(r.state, ChildState::Running | ChildState::Starting))
            .map(|r| r.id.clone())
            .collect()
    }

    fn configured_harnesses(&self) -> Map<String, Value> {
        // The runners get these variables from this environment (they pass [`env_allowed`]); the CLI harnesses'
        // binaries are the probe's.
        harness::configured_harnesses(|name| std::env::var(name).ok(), |h| self.probes.get(h))
    }
}

/// Start the supervisor task for one target.
pub fn spawn_runners(ctx: RunnerContext) -> Runners {
    let (cmd_tx, cmds) = mpsc::channel(64);
    let (views_tx, views) = watch::channel(Vec::new());
    let tasks = ctx.tasks.clone();
    let ctx_probes = ctx.probes.clone();
    let task = Task {
        self_tx: cmd_tx.downgrade(),
        ctx,
        cmds,
        views: views_tx,
        runners: BTreeMap::new(),
        generation: 0,
        stop_all: Vec::new(),
    };
    tasks.spawn(task.run());
    Runners {
        probes: ctx_probes,
        cmds: cmd_tx,
        views,
    }
}

struct Entry {
    id: String,
    token: String,
    workspace: PathBuf,
    harness: Option<String>,
    session_id: Option<String>,
    state: ChildState,
    pid: Option<u32>,
    /// Tells which watcher or backoff timer a message comes from; bumped at every spawn.
    generation: u64,
    /// Asks the watcher to stop the child with this grace.
    stop: Option<oneshot::Sender<Duration>>,
    restarts: Restarts,
    last_error: Option<String>,
    log_tail: Vec<String>,
    log_path: PathBuf,
    /// Stopped on purpose: the exit is silent and the entry is removed; these wait for it.
    stop_waiters: Vec<oneshot::Sender<Result<(), String>>>,
}

struct Task {
    ctx: RunnerContext,
    /// For watchers and timers to report back; weak, so the task still ends when every handle is dropped.
    self_tx: mpsc::WeakSender<Cmd>,
    cmds: mpsc::Receiver<Cmd>,
    views: watch::Sender<Vec<RunnerView>>,
    runners: BTreeMap<String, Entry>,
    generation: u64,
    stop_all: Vec<(oneshot::Sender<u32>, u32)>,
}

impl Task {
    async fn run(mut self) {
        // Watchers and timers hold senders too: the loop ends once the handles, the watchers and the timers
        // are all gone. The daemon stops runners explicitly ([`Runners::stop_all`]); a daemon that dies
        // without doing so takes them along through PR_SET_PDEATHSIG.
        while let Some(cmd) = self.cmds.recv().await {
            self.handle(cmd);
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Launch(request, reply) => {
                let _ = reply.send(self.launch(request));
            }
            Cmd::Stop(id, grace, reply) => self.stop(&id, grace, reply),
            Cmd::Status(id, reply) => {
                let status = match self.runners.get(&id).map(|e| e.state) {
                    Some(ChildState::Running | ChildState::Starting | ChildState::Backoff) => {
                        RunnerStatus::Alive
                    }
                    Some(_) => RunnerStatus::Dead,
                    None => RunnerStatus::Unknown,
                };
                let _ = reply.send(status);
            }
            Cmd::StopAll(grace, reply) => self.stop_all_runners(grace, reply),
            Cmd::Exited {
                id,
                generation,
                exit,
            } => self.exited(&id, generation, exit),
            Cmd::Relaunch { id, generation } => {
                let Some(entry) = self.runners.get(&id) else {
                    return;
                };
                if entry.generation != generation || entry.state != ChildState::Backoff {
                    return;
                }
                if let Err(e) = self.spawn(&id) {
                    self.record_exit(&id, None, None, Duration::ZERO, Some(e.message));
                }
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        let views = self
            .runners
            .values()
            .map(|e| RunnerView {
                id: e.id.clone(),
                pid: e.pid,
                state: e.state,
                target: self.ctx.server_url.clone(),
                session_id: e.session_id.clone(),
                harness: e.harness.clone(),
                workspace: e.workspace.display().to_string(),
                restarts: e.restarts.count,
                last_exits: e.restarts.exits(),
                last_error: e.last_error.clone(),
                log_tail: e.log_tail.clone(),
                log_file: e.log_path.display().to_string(),
            })
            .collect::<Vec<_>>();
        let changed = self.views.send_if_modified(|v| {
            if *v == views {
                false
            } else {
                *v = views;
                true
            }
        });
        if changed {
            self.ctx.revision.send_modify(|r| *r += 1);
        }
    }

    fn launch(&mut self, request: LaunchRequest) -> Result<String, LaunchError> {
        let token = request.binding_token.trim().to_owned();
        if token.is_empty() {
            return Err(LaunchError {
                code: None,
                message: "host.launch_runner carried an empty binding_token".to_owned(),
            });
        }
        // Known names (ours and Python omnigent's) launch even without credentials: the runner reports those
        // as a turn error (reference wire notes). The runner resolves the name through the same table.
        if let Some(h) = &request.harness
            && let Err(unknown) = Harness::parse(h)
        {
            return Err(LaunchError {
                code: Some(LaunchErrorCode::HarnessNotConfigured),
                message: format!("{unknown}; pick one of them for this host"),
            });
        }
        let workspace = expand_home(&request.workspace);
        if !workspace.is_dir() {
            return Err(LaunchError {
                code: Some(LaunchErrorCode::WorkspaceMissing),
                message: format!(
                    "workspace {} is not a directory on this host; create it or pick another",
                    workspace.display()
                ),
            });
        }
        let id = runner_id_for_token(&token);
        if let Some(entry) = self.runners.get_mut(&id) {
            match entry.state {
                ChildState::Running | ChildState::Starting | ChildState::Backoff => {
                    return Ok(id);
                }
                ChildState::Stopping => {
                    return Err(LaunchError {
                        code: None,
                        message: format!("runner {id} is being stopped; retry in a moment"),
                    });
                }
                _ => {
                    // Dead or crash-looping: an explicit launch starts afresh.
                    entry.restarts.reset();
                    entry.workspace = workspace;
                    entry.harness = request.harness.clone();
                    entry.session_id = request.session_id.clone().or(entry.session_id.take());
                }
            }
        } else {
            let log_path = self
                .ctx
                .paths
                .logs_dir()
                .join("runners")
                .join(format!("{id}.log"));
            self.runners.insert(
                id.clone(),
                Entry {
                    id: id.clone(),
                    token,
                    workspace,
                    harness: request.harness.clone(),
                    session_id: request.session_id.clone(),
                    state: ChildState::Starting,
                    pid: None,
                    generation: 0,
                    stop: None,
                    restarts: Restarts::new(self.ctx.policy),
                    last_error: None,
                    log_tail: Vec::new(),
                    log_path,
                    stop_waiters: Vec::new(),
                },
            );
        }
        match self.spawn(&id) {
            Ok(()) => Ok(id),
            Err(e) => {
                self.runners.remove(&id);
                Err(e)
            }
        }
    }

    /// Spawn the runner of entry `id` (which must exist) and its watcher.
    fn spawn(&mut self, id: &str) -> Result<(), LaunchError> {
        self.generation += 1;
        let generation = self.generation;
        let Some(entry) = self.runners.get_mut(id) else {
            return Err(LaunchError {
                code: None,
                message: format!("unknown runner {id}"),
            });
        };
        let fail = |what: String| LaunchError {
            code: None,
            message: format!("failed to spawn runner: {what}"),
        };
        let log = ChildLog::open(&entry.log_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", entry.log_path.display())))?;
        let passthrough = self.ctx.config.borrow().config.env_passthrough.clone();
        let mut env = runner_env(std::env::vars_os(), &passthrough);
        env.push(("OMNIGENT_RUNNER_TOKEN".into(), entry.token.clone().into()));
        env.push(("NO_COLOR".into(), "1".into()));
        let mut args: Vec<OsString> = vec![
            "runner".into(),
            "--server".into(),
            self.ctx.server_url.clone().into(),
            "--workspace".into(),
            entry.workspace.clone().into(),
        ];
        if let Some(h) = &entry.harness {
            args.push("--harness".into());
            args.push(h.into());
        }
        let spec = ChildSpec {
            program: self.ctx.exe.clone(),
            args,
            env,
            cwd: entry.workspace.clone(),
            env_clear: true,
        };
        let (child, _) = Running::spawn(&spec, "runner", &log, &self.ctx.tasks, false)
            .map_err(|e| fail(format!("{}: {e}", self.ctx.exe.display())))?;
        let pid = child.pid;
        log.line(&format!(
            "--- daemon: started runner pid {} (session {}, harness {}, workspace {})",
            pid.map_or("?".to_owned(), |p| p.to_string()),
            entry.session_id.as_deref().unwrap_or("-"),
            entry.harness.as_deref().unwrap_or("default"),
            entry.workspace.display()
        ));
        let (stop_tx, stop_rx) = oneshot::channel();
        entry.generation = generation;
        entry.pid = pid;
        entry.state = ChildState::Running;
        entry.stop = Some(stop_tx);
        tracing::info!(runner_id = %id, pid, session_id = ?entry.session_id, "runner started");
        if let Some(tx) = self.self_tx.upgrade() {
            self.ctx.tasks.spawn(watch_child(
                child,
                stop_rx,
                id.to_owned(),
                generation,
                tx,
                log,
            ));
        }
        Ok(())
    }

    fn stop(&mut self, id: &str, grace: Duration, reply: oneshot::Sender<Result<(), String>>) {
        let Some(entry) = self.runners.get_mut(id) else {
            let _ = reply.send(Err(format!("unknown runner: {id}")));
            return;
        };
        match entry.stop.take() {
            Some(stop) => {
                entry.state = ChildState::Stopping;
                entry.stop_waiters.push(reply);
                let _ = stop.send(grace);
            }
            None if entry.state == ChildState::Stopping => entry.stop_waiters.push(reply),
            None => {
                // Not running (backoff, crash loop, dead): nothing to signal.
                self.runners.remove(id);
                let _ = reply.send(Ok(()));
                self.check_stop_all();
            }
        }
    }

    fn stop_all_runners(&mut self, grace: Duration, reply: oneshot::Sender<u32>) {
        let ids: Vec<String> = self.runners.keys().cloned().collect();
        let mut stopped = 0;
        for id in ids {
            if self.runners.get(&id).is_some_and(|e| e.pid.is_some()) {
                stopped += 1;
            }
            let (tx, _rx) = oneshot::channel();
            self.stop(&id, grace, tx);
        }
        self.stop_all.push((reply, stopped));
        self.check_stop_all();
    }

    fn check_stop_all(&mut self) {
        if self
            .runners
            .values()
            .any(|e| e.state == ChildState::Stopping)
        {
            return;
        }
        for (reply, n) in self.stop_all.drain(..) {
            let _ = reply.send(n);
        }
    }

    fn exited(&mut self, id: &str, generation: u64, exit: Exit) {
        let Some(entry) = self.runners.get_mut(id) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        let Exit {
            code,
            signal,
            uptime,
            ..
        } = exit;
        entry.pid = None;
        entry.stop = None;
        if entry.state == ChildState::Stopping {
            let waiters = std::mem::take(&mut entry.stop_waiters);
            self.runners.remove(id);
            tracing::info!(runner_id = %id, "runner stopped");
            for w in waiters {
                let _ = w.send(Ok(()));
            }
            self.check_stop_all();
            return;
        }
        if code == Some(0) {
            // An idle runner exiting by itself: silent (reference host §4.2).
            tracing::info!(runner_id = %id, "runner exited cleanly");
            self.runners.remove(id);
            return;
        }
        self.record_exit(id, code, signal, uptime, None);
    }

    /// Report an unexpected exit (or a failed relaunch) and decide: backoff, crash loop, or give up (78).
    fn record_exit(
        &mut self,
        id: &str,
        code: Option<i32>,
        signal: Option<i32>,
        uptime: Duration,
        why: Option<String>,
    ) {
        let Some(entry) = self.runners.get_mut(id) else {
            return;
        };
        entry.restarts.record(code, signal, uptime);
        let tail = tail_lines(&entry.log_path, TAIL_LINES);
        let mut error = why.unwrap_or_else(|| {
            let how = match (code, signal) {
                (Some(c), _) => format!("runner process exited with code {c}"),
                (None, Some(sig)) => format!("runner process was killed by signal {sig}"),
                (None, None) => "runner process exited".to_owned(),
            };
            format!("{how} (log on host: {})", entry.log_path.display())
        });
        if !tail.is_empty() {
            error.push_str("\n--- runner log tail ---\n");
            error.push_str(&tail.join("\n"));
        }
        tracing::warn!(runner_id = %id, uptime_ms = uptime.as_millis() as u64, "{}", process::exit_text(code, signal));
        entry.last_error = Some(error.clone());
        entry.log_tail = tail;
        self.ctx.exits.runner_exited(id, Some(error));
        if code == Some(FATAL_EXIT_CODE) {
            entry.state = ChildState::Stopped;
            return;
        }
        match entry.restarts.decide(uptime) {
            AfterExit::RestartAfter(delay) => {
                entry.state = ChildState::Backoff;
                let generation = entry.generation;
                let id = id.to_owned();
                if let Some(tx) = self.self_tx.upgrade() {
                    // Dropped when the daemon stops: a pending relaunch must not hold the task up.
                    self.ctx.tasks.spawn_until_stopped(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Cmd::Relaunch { id, generation }).await;
                    });
                }
            }
            AfterExit::CrashLoop => {
                tracing::error!(runner_id = %id, "runner is crash-looping; not relaunching it until the server launches it again");
                entry.state = ChildState::Crashloop;
            }
        }
    }
}

/// Own one child until it exits or the supervisor asks to stop it; report the exit either way.
async fn watch_child(
    mut child: Running,
    stop: oneshot::Receiver<Duration>,
    id: String,
    generation: u64,
    tx: mpsc::Sender<Cmd>,
    log: ChildLog,
) {
    let exit = tokio::select! {
        // The runner is gone; whatever it left in its group goes too (`wait` sees to it).
        exit = child.wait() => exit,
        grace = stop => child.stop(grace.unwrap_or(STOP_GRACE)).await,
    };
    if exit.status.is_some() {
        log.line(&format!("--- daemon: runner {}", exit.text()));
    }
    let _ = tx
        .send(Cmd::Exited {
            id,
            generation,
            exit,
        })
        .await;
}

/// `~` and `~/x` to the home directory.
fn expand_home(workspace: &str) -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    if workspace == "~" {
        return home().unwrap_or_else(|| PathBuf::from(workspace));
    }
    if let Some(rest) = workspace.strip_prefix("~/")
        && let Some(h) = home()
    {
        return h.join(rest);
    }
    Path::new(workspace).to_path_buf()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn the_runner_environment_is_an_allowlist() {
        let env = runner_env(
            os(&[
                ("PATH", "/bin"),
                ("HOME", "/h"),
                ("LC_ALL", "C"),
                ("OPENAI_API_KEY", "k"),
                ("ANTHROPIC_BASE_URL", "u"),
                ("OMNIGENT_HOME", "/o"),
                ("OMNIGENT_DATABASE_URI", "postgres://secret"),
                ("AWS_SECRET_ACCESS_KEY", "nope"),
                ("NOTIFY_SOCKET", "/run/x"),
                ("MY_TOKEN", "from config"),
                ("OMNIGENT_RUNNER_ENV_PASSTHROUGH", "EXTRA_ONE, EXTRA_TWO"),
                ("EXTRA_TWO", "2"),
                ("UNLISTED", "x"),
            ]),
            &["MY_TOKEN".to_owned()],
        );
        let names: Vec<String> = env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for kept in [
            "PATH",
            "HOME",
            "LC_ALL",
            "OPENAI_API_KEY",
            "ANTHROPIC_BASE_URL",
            "OMNIGENT_HOME",
            "MY_TOKEN",
            "EXTRA_TWO",
        ] {
            assert!(
                names.contains(&kept.to_owned()),
                "{kept} missing: {names:?}"
            );
        }
        for dropped in [
            "OMNIGENT_DATABASE_URI",
            "AWS_SECRET_ACCESS_KEY",
            "NOTIFY_SOCKET",
            "UNLISTED",
        ] {
            assert!(!names.contains(&dropped.to_owned()), "{dropped} leaked");
        }
    }

    #[test]
    fn every_variable_of_the_harness_table_reaches_the_runner() {
        for var in harness::env_vars() {
            assert!(
                env_allowed(var, &[]),
                "{var} is read by the runner but dropped"
            );
            let env = runner_env(os(&[(var, "v")]), &[]);
            assert_eq!(env.len(), 1, "{var}");
        }
    }

    #[test]
    fn tilde_workspaces_expand_to_home() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(home) = home {
            assert_eq!(expand_home("~/w"), home.join("w"));
        }
        assert_eq!(expand_home("/abs"), PathBuf::from("/abs"));
    }
}
