//! The local server as one supervised child: one task owns it and is driven by [`ServerCmd`] messages;
//! everyone else reads [`ServerStatus`] snapshots from a watch channel.
//!
//! Start: probe the configured port. Our own healthy server (`/v1/info` says `omnigent-rs`) is adopted;
//! a foreign listener is named (pid, command) and the server is started on a free port instead; a free port
//! is used as is. The child is `<exe> server run --bind 127.0.0.1 --port N`; it is up when it prints its
//! ready line ([`ServerReady`]). Unexpected exits are restarted with the backoff of DESIGN §6 until the crash
//! loop rule trips. Runners are supervised the same way: both are a [`child`](super::child) (spawn, log, exit,
//! restarts).

use std::path::PathBuf;
use std::time::Duration;

use omnigent_proto::control::{ChildState, ServerReady, ServerRecord, ServerStatus};
use omnigent_proto::paths::Paths;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::backoff::{AfterExit, RestartPolicy};
use super::child::{ChildLog, Exit, Restarts, Running, now_ms};
use super::process::{self, ChildSpec, STOP_GRACE, is_zombie, terminate_foreign_pid};
use super::tasks::Tasks;
use crate::config::logfile::tail_lines;

/// The line the server log gets when the daemon stopped the server (followed by how it exited); tests wait on it.
pub const SERVER_STOPPED: &str = "--- daemon: stopped the server";

/// How long a starting server may take to print its ready line (first boots run migrations).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest ready line we read.
const MAX_READY_LINE: u64 = 64 * 1024;
/// Log lines shown with a failing server.
const TAIL_LINES: usize = 20;

/// Messages to the server task.
#[derive(Debug)]
pub enum ServerCmd {
    /// Make sure it runs (also clears a crash loop); the reply comes once it is running, adopted, crash-looping
    /// or stopped.
    Start(oneshot::Sender<ServerStatus>),
    /// Stop it; the reply comes once the process is gone.
    Stop {
        force: bool,
        reply: oneshot::Sender<ServerStatus>,
    },
}

/// What the server task needs.
#[derive(Clone)]
pub struct ServerContext {
    pub exe: PathBuf,
    pub paths: Paths,
    pub log: ChildLog,
    pub log_path: PathBuf,
    pub policy: RestartPolicy,
    /// The configured port, re-read at every start (config edits apply to the next start).
    pub port: watch::Receiver<u16>,
    /// `--bind` of the server (`127.0.0.1`, or `0.0.0.0` for `omnigent start --lan`).
    pub bind: String,
    pub autostart: bool,
    /// Bumped on every published change (see `STATUS_PATH`'s `after`).
    pub revision: watch::Sender<u64>,
    /// Where its tasks (the supervisor, the log pumps) run.
    pub tasks: Tasks,
}

/// Handle held by the API: send commands, read snapshots.
#[derive(Clone)]
pub struct ServerHandle {
    pub cmds: mpsc::Sender<ServerCmd>,
    pub status: watch::Receiver<ServerStatus>,
}

/// Start the server task. It ends when every [`ServerHandle`] is dropped, stopping its child first.
pub fn spawn_supervisor(ctx: ServerContext) -> ServerHandle {
    let (cmd_tx, cmds) = mpsc::channel(16);
    let initial = ServerStatus {
        state: ChildState::Stopped,
        url: None,
        pid: None,
        port: None,
        healthy: None,
        database: None,
        session_count: None,
        storage: None,
        restarts: 0,
        last_exits: Vec::new(),
        log_tail: Vec::new(),
        foreign: None,
        lan_bind: (!crate::config::is_loopback_bind(&ctx.bind)).then(|| ctx.bind.clone()),
        bind: Some(ctx.bind.clone()),
        last_error: None,
        log_file: ctx.log_path.display().to_string(),
    };
    let (status_tx, status) = watch::channel(initial.clone());
    let tasks = ctx.tasks.clone();
    let task = Task {
        restarts: Restarts::new(ctx.policy),
        ctx,
        cmds,
        status: status_tx,
        view: initial,
        waiters: Vec::new(),
    };
    tasks.spawn(task.run());
    ServerHandle {
        cmds: cmd_tx,
        status,
    }
}

struct Task {
    ctx: ServerContext,
    cmds: mpsc::Receiver<ServerCmd>,
    status: watch::Sender<ServerStatus>,
    view: ServerStatus,
    restarts: Restarts,
    waiters: Vec<oneshot::Sender<ServerStatus>>,
}

struct Adopted {
    pid: Option<u32>,
    port: u16,
}

enum Phase {
    Idle,
    Start,
    Backoff(Duration),
    Running(Box<Running>),
    Adopted(Adopted),
    Exit,
}

enum Probe {
    Free,
    Ours(ServerInfo),
    Foreign,
}

/// What `/v1/info` of our own server tells.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub pid: Option<u32>,
    pub database: Option<String>,
    pub session_count: Option<u64>,
    /// Whether its durable writes succeed (a failing disk is reported in `status`; the server is left
    /// running: a restart would not free the disk).
    pub storage: Option<omnigent_proto::api::StorageHealth>,
}

impl Task {
    async fn run(mut self) {
        reap_orphan(&self.ctx.paths).await;
        let mut phase = if self.ctx.autostart {
            Phase::Start
        } else {
            Phase::Idle
        };
        loop {
            phase = match phase {
                Phase::Idle => self.idle().await,
                Phase::Start => self.start().await,
                Phase::Backoff(delay) => self.backoff(delay).await,
                Phase::Running(running) => self.running(*running).await,
                Phase::Adopted(adopted) => self.adopted(adopted).await,
                Phase::Exit => break,
            };
        }
        remove_record(&self.ctx.paths);
    }

    fn publish(&mut self) {
        self.view.last_exits = self.restarts.exits();
        self.view.restarts = self.restarts.count;
        let view = self.view.clone();
        self.status.send_replace(view);
        self.ctx.revision.send_modify(|r| *r += 1);
        if !matches!(
            self.view.state,
            ChildState::Starting | ChildState::Backoff | ChildState::Stopping
        ) {
            for w in self.waiters.drain(..) {
                let _ = w.send(self.view.clone());
            }
        }
    }

    fn set_state(&mut self, state: ChildState) {
        self.view.state = state;
        if !matches!(
            state,
            ChildState::Running | ChildState::Adopted | ChildState::Stopping
        ) {
            self.view.pid = None;
            self.view.url = None;
            self.view.port = None;
            self.view.database = None;
        }
        self.publish();
    }

    async fn idle(&mut self) -> Phase {
        match self.cmds.recv().await {
            None => Phase::Exit,
            Some(ServerCmd::Start(reply)) => {
                self.waiters.push(reply);
                self.restarts.reset();
                Phase::Start
            }
            Some(ServerCmd::Stop { reply, .. }) => {
                let _ = reply.send(self.view.clone());
                Phase::Idle
            }
        }
    }

    async fn backoff(&mut self, delay: Duration) -> Phase {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        tokio::select! {
            () = &mut sleep => Phase::Start,
            cmd = self.cmds.recv() => match cmd {
                None => Phase::Exit,
                Some(ServerCmd::Start(reply)) => {
                    self.waiters.push(reply);
                    Phase::Start
                }
                Some(ServerCmd::Stop { reply, .. }) => {
                    self.set_state(ChildState::Stopped);
                    let _ = reply.send(self.view.clone());
                    Phase::Idle
                }
            },
        }
    }

    async fn start(&mut self) -> Phase {
        self.view.last_error = None;
        self.set_state(ChildState::Starting);
        let port = *self.ctx.port.borrow();
        let spawn_port = match probe_port(port).await {
            Probe::Free => {
                self.view.foreign = None;
                port
            }
            Probe::Ours(info) => return self.adopt(port, info),
            Probe::Foreign => {
                let owner = crate::config::ports::listener_owner(port);
                tracing::warn!(
                    port,
                    pid = owner.pid,
                    command = owner.command.as_deref().unwrap_or("?"),
                    "a program that is not an omnigent-rs server listens on the server port; using a free port"
                );
                self.view.foreign = Some(owner);
                0
            }
        };
        let spec = ChildSpec {
            program: self.ctx.exe.clone(),
            args: vec![
                "server".into(),
                "run".into(),
                "--bind".into(),
                self.ctx.bind.clone().into(),
                "--port".into(),
                spawn_port.to_string().into(),
            ],
            // The log file is not a terminal: no colour codes in server.log.
            env: vec![("NO_COLOR".into(), "1".into())],
            cwd: "/".into(),
            env_clear: false,
        };
        let (mut running, stdout) =
            match Running::spawn(&spec, "server", &self.ctx.log, &self.ctx.tasks, true) {
                Ok(spawned) => spawned,
                Err(e) => {
                    let why = format!("cannot run {} server run: {e}", self.ctx.exe.display());
                    return self.after_exit(None, None, Duration::ZERO, Some(why));
                }
            };
        self.ctx.log.line(&format!(
            "--- daemon: started server pid {:?} on port {spawn_port}",
            running.pid
        ));
        let Some(stdout) = stdout else {
            return self
                .fail_running_child(running, "the server's stdout was not piped".into())
                .await;
        };
        let mut reader = BufReader::new(stdout);
        enum Outcome {
            Line(std::io::Result<String>),
            Exited(Exit),
            Timeout,
            Stop(bool, Option<oneshot::Sender<ServerStatus>>),
        }
        let outcome = {
            let ready = read_ready_line(&mut reader);
            let deadline = tokio::time::sleep(READY_TIMEOUT);
            tokio::pin!(ready, deadline);
            loop {
                tokio::select! {
                    line = &mut ready => break Outcome::Line(line),
                    exit = running.wait() => break Outcome::Exited(exit),
                    () = &mut deadline => break Outcome::Timeout,
                    cmd = self.cmds.recv() => match cmd {
                        Some(ServerCmd::Start(reply)) => self.waiters.push(reply),
                        Some(ServerCmd::Stop { force, reply }) => break Outcome::Stop(force, Some(reply)),
                        None => break Outcome::Stop(false, None),
                    },
                }
            }
        };
        match outcome {
            Outcome::Line(Ok(line)) => match serde_json::from_str::<ServerReady>(line.trim()) {
                Ok(ready) if ready.ready => {
                    self.ctx.log.pump(&self.ctx.tasks, reader);
                    self.on_ready(running, ready)
                }
                _ => {
                    let why = format!(
                        "the server printed {:?} instead of its ready line",
                        truncate(&line, 200)
                    );
                    self.fail_running_child(running, why).await
                }
            },
            Outcome::Line(Err(e)) => {
                self.fail_running_child(
                    running,
                    format!("cannot read the server's ready line: {e}"),
                )
                .await
            }
            Outcome::Exited(exit) => {
                // `wait` let the log pumps catch the last words before the tail is read.
                let why = format!("the server exited before it was ready ({})", exit.text());
                self.after_exit(exit.code, exit.signal, exit.uptime, Some(why))
            }
            Outcome::Timeout => {
                let why = format!(
                    "the server did not become ready within {}s",
                    READY_TIMEOUT.as_secs()
                );
                self.fail_running_child(running, why).await
            }
            Outcome::Stop(force, reply) => {
                self.stop_child(running, force).await;
                if let Some(reply) = reply {
                    let _ = reply.send(self.view.clone());
                    Phase::Idle
                } else {
                    Phase::Exit
                }
            }
        }
    }

    fn on_ready(&mut self, running: Running, ready: ServerReady) -> Phase {
        let port = port_of(&ready.url);
        self.view.pid = ready.pid.or(running.pid);
        self.view.url = Some(ready.url.clone());
        self.view.port = port;
        self.view.database = ready.database.clone();
        self.view.last_error = None;
        self.view.log_tail.clear();
        write_record(
            &self.ctx.paths,
            &ServerRecord {
                url: ready.url,
                port: port.unwrap_or(0),
                pid: self.view.pid,
                database: ready.database,
                adopted: false,
                daemon_pid: std::process::id(),
                started_at_ms: now_ms(),
            },
        );
        self.set_state(ChildState::Running);
        tracing::info!(
            pid = self.view.pid,
            url = self.view.url.as_deref(),
            "local server is up"
        );
        Phase::Running(Box::new(running))
    }

    fn adopt(&mut self, port: u16, info: ServerInfo) -> Phase {
        let url = format!("http://127.0.0.1:{port}");
        tracing::info!(
            port,
            pid = info.pid,
            "adopting the omnigent-rs server already answering on the port"
        );
        self.view.pid = info.pid;
        self.view.url = Some(url.clone());
        self.view.port = Some(port);
        self.view.database = info.database.clone();
        self.view.foreign = None;
        write_record(
            &self.ctx.paths,
            &ServerRecord {
                url,
                port,
                pid: info.pid,
                database: info.database,
                adopted: true,
                daemon_pid: std::process::id(),
                started_at_ms: now_ms(),
            },
        );
        self.set_state(ChildState::Adopted);
        Phase::Adopted(Adopted {
            pid: info.pid,
            port,
        })
    }

    async fn fail_running_child(&mut self, running: Running, why: String) -> Phase {
        tracing::warn!("{why}");
        let exit = running.stop(STOP_GRACE).await;
        self.after_exit(exit.code, exit.signal, exit.uptime, Some(why))
    }

    /// Record an unexpected exit and decide between a backoff and a crash loop.
    fn after_exit(
        &mut self,
        code: Option<i32>,
        signal: Option<i32>,
        uptime: Duration,
        why: Option<String>,
    ) -> Phase {
        self.restarts.record(code, signal, uptime);
        let why = why
            .unwrap_or_else(|| format!("the server exited ({})", process::exit_text(code, signal)));
        tracing::warn!(uptime_ms = uptime.as_millis() as u64, "{why}");
        self.ctx.log.line(&format!("--- daemon: {why}"));
        self.view.last_error = Some(why);
        self.view.log_tail = tail_lines(&self.ctx.log_path, TAIL_LINES);
        remove_record(&self.ctx.paths);
        match self.restarts.decide(uptime) {
            AfterExit::RestartAfter(delay) => {
                self.set_state(ChildState::Backoff);
                Phase::Backoff(delay)
            }
            AfterExit::CrashLoop => {
                tracing::error!(
                    "the local server is crash-looping; not restarting it until `omnigent server start`"
                );
                self.set_state(ChildState::Crashloop);
                Phase::Idle
            }
        }
    }

    async fn running(&mut self, mut running: Running) -> Phase {
        tokio::select! {
            exit = running.wait() => self.after_exit(exit.code, exit.signal, exit.uptime, None),
            cmd = self.cmds.recv() => match cmd {
                Some(ServerCmd::Start(reply)) => {
                    let _ = reply.send(self.view.clone());
                    Phase::Running(Box::new(running))
                }
                Some(ServerCmd::Stop { force, reply }) => {
                    self.stop_child(running, force).await;
                    let _ = reply.send(self.view.clone());
                    Phase::Idle
                }
                None => {
                    self.stop_child(running, false).await;
                    Phase::Exit
                }
            },
        }
    }

    async fn stop_child(&mut self, running: Running, force: bool) {
        self.set_state_keep(ChildState::Stopping);
        let exit = running
            .stop(if force { Duration::ZERO } else { STOP_GRACE })
            .await;
        if exit.status.is_some() {
            self.ctx
                .log
                .line(&format!("{SERVER_STOPPED} ({})", exit.text()));
        }
        remove_record(&self.ctx.paths);
        self.view.foreign = None;
        self.set_state(ChildState::Stopped);
    }

    fn set_state_keep(&mut self, state: ChildState) {
        self.view.state = state;
        self.publish();
    }

    async fn adopted(&mut self, adopted: Adopted) -> Phase {
        let mut check = tokio::time::interval_at(
            Instant::now() + Duration::from_secs(5),
            Duration::from_secs(5),
        );
        loop {
            tokio::select! {
                _ = check.tick() => {
                    if probe_info(adopted.port, Duration::from_secs(2)).await.is_none() {
                        tracing::warn!(port = adopted.port, "the adopted server stopped answering; starting our own");
                        remove_record(&self.ctx.paths);
                        return Phase::Start;
                    }
                }
                cmd = self.cmds.recv() => match cmd {
                    Some(ServerCmd::Start(reply)) => { let _ = reply.send(self.view.clone()); }
                    Some(ServerCmd::Stop { force, reply }) => {
                        self.set_state_keep(ChildState::Stopping);
                        if let Some(pid) = adopted.pid {
                            terminate_foreign_pid(pid, if force { Duration::ZERO } else { STOP_GRACE }).await;
                        }
                        remove_record(&self.ctx.paths);
                        self.set_state(ChildState::Stopped);
                        let _ = reply.send(self.view.clone());
                        return Phase::Idle;
                    }
                    None => return Phase::Exit,
                },
            }
        }
    }
}

async fn read_ready_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<String> {
    let mut line = String::new();
    let n = reader.take(MAX_READY_LINE).read_line(&mut line).await?;
    if n == 0 {
        // EOF: the child closed stdout, usually because it is exiting; let `wait` report the exit.
        std::future::pending::<()>().await;
    }
    Ok(line)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    authority.rsplit(':').next()?.parse().ok()
}

async fn probe_port(port: u16) -> Probe {
    if port == 0 {
        return Probe::Free;
    }
    match tokio::time::timeout(
        Duration::from_secs(1),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Probe::Free,
        Ok(Err(_)) | Err(_) => return Probe::Foreign,
        Ok(Ok(_)) => {}
    }
    match probe_info(port, Duration::from_secs(2)).await {
        Some(info) => Probe::Ours(info),
        None => Probe::Foreign,
    }
}

/// `GET /v1/info` on 127.0.0.1:`port`; `Some` only when it is an omnigent-rs server.
pub async fn probe_info(port: u16, timeout: Duration) -> Option<ServerInfo> {
    let get = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut conn = crate::control::http::Connection::open(stream, 1024 * 1024)
            .await
            .ok()?;
        let (status, body) = conn
            .send(
                http::Method::GET,
                &format!("127.0.0.1:{port}"),
                "/v1/info",
                &[],
                None,
            )
            .await
            .ok()?;
        if !status.is_success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        if v.get("implementation").and_then(|i| i.as_str()) != Some("omnigent-rs") {
            return None;
        }
        Some(ServerInfo {
            pid: v.get("pid").and_then(|p| p.as_u64()).map(|p| p as u32),
            database: v
                .get("database")
                .and_then(|d| d.as_str())
                .map(str::to_owned),
            session_count: v.get("session_count").and_then(|c| c.as_u64()),
            storage: v
                .get("storage")
                .and_then(|s| serde_json::from_value(s.clone()).ok()),
        })
    };
    tokio::time::timeout(timeout, get).await.ok().flatten()
}

pub fn read_record(paths: &Paths) -> Option<ServerRecord> {
    let text = std::fs::read(paths.server_json()).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_record(paths: &Paths, record: &ServerRecord) {
    let path = paths.server_json();
    let tmp = path.with_extension("json.tmp");
    let result = serde_json::to_vec_pretty(record)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot write server.json");
    }
}

fn remove_record(paths: &Paths) {
    let _ = std::fs::remove_file(paths.server_json());
}

/// The pid of a server started by a daemon that is gone (its `server.json` is left behind), if that process
/// still runs. A recycled pid is never mistaken for it: the command line must be our server's.
pub fn leftover_server_pid(paths: &Paths) -> Option<u32> {
    let record = read_record(paths)?;
    if record.adopted
        || record.daemon_pid == std::process::id()
        || (process::pid_alive(record.daemon_pid) && !is_zombie(record.daemon_pid))
    {
        return None;
    }
    let pid = record.pid?;
    let cmd = process::command_line(pid)?;
    (process::pid_alive(pid) && !is_zombie(pid) && cmd.contains("server run --bind")).then_some(pid)
}

/// How long a left-over server gets after our SIGTERM. It was already told to stop by PR_SET_PDEATHSIG and
/// its contract is to stop within 1 s of SIGTERM; one that hangs (e.g. on a broken stderr pipe) is killed.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// A server left by a daemon that died (SIGKILL) is told to stop by PR_SET_PDEATHSIG; make sure it is gone
/// before we start another, so there is never a second server. Adopted servers are left alone.
async fn reap_orphan(paths: &Paths) {
    if read_record(paths).is_some_and(|r| r.daemon_pid == std::process::id()) {
        return;
    }
    if let Some(pid) = leftover_server_pid(paths) {
        tracing::info!(
            pid,
            "waiting for the server left by the previous daemon to stop"
        );
        terminate_foreign_pid(pid, ORPHAN_GRACE).await;
    }
    remove_record(paths);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn context(
        home: &std::path::Path,
        exe: &str,
        autostart: bool,
    ) -> (ServerContext, watch::Receiver<u64>) {
        let paths = Paths::under(home);
        let log_path = paths.logs_dir().join("server.log");
        let log = ChildLog::new(
            crate::config::logfile::RotatingFile::open(&log_path, 1024 * 1024, 2).unwrap(),
        );
        let (revision, rev_rx) = watch::channel(0);
        let ctx = ServerContext {
            exe: exe.into(),
            paths,
            log,
            log_path,
            policy: RestartPolicy::default(),
            // Port 0: no probe, so nothing here waits on real I/O and paused time is safe.
            port: watch::channel(0).1,
            bind: crate::config::DEFAULT_SERVER_BIND.to_owned(),
            autostart,
            revision,
            tasks: Tasks::new(),
        };
        (ctx, rev_rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_keeps_failing_is_retried_with_backoff_then_declared_a_crashloop() {
        let home = tempfile::tempdir().unwrap();
        let (ctx, _rev) = context(home.path(), "/nonexistent/omnigent", true);
        let handle = spawn_supervisor(ctx);
        let mut status = handle.status.clone();
        let t0 = Instant::now();
        let st = status
            .wait_for(|s| s.state == ChildState::Crashloop)
            .await
            .unwrap()
            .clone();
        let elapsed = t0.elapsed();
        // Four backoff delays between five failed starts: 200 + 300 + 450 + 675 ms, each ±20 %.
        assert!(
            elapsed >= Duration::from_millis(1300) && elapsed <= Duration::from_millis(1950),
            "{elapsed:?}"
        );
        assert_eq!(st.restarts, 4);
        assert_eq!(st.last_exits.len(), 5);
        assert!(
            st.last_error
                .as_deref()
                .unwrap()
                .contains("cannot run /nonexistent/omnigent")
        );
        assert!(
            st.log_tail.iter().any(|l| l.contains("cannot run")),
            "{:?}",
            st.log_tail
        );

        // No restart happens by itself after a crash loop, however long we wait.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(handle.status.borrow().state, ChildState::Crashloop);
        assert_eq!(handle.status.borrow().last_exits.len(), 5);

        // An explicit start clears the loop and tries again (five more failures, reported to the caller).
        let (tx, rx) = oneshot::channel();
        handle.cmds.send(ServerCmd::Start(tx)).await.unwrap();
        let st = rx.await.unwrap();
        assert_eq!(st.state, ChildState::Crashloop);
        assert_eq!(st.last_exits.len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_the_backoff_cancels_the_restart() {
        let home = tempfile::tempdir().unwrap();
        let (ctx, _rev) = context(home.path(), "/nonexistent/omnigent", true);
        let handle = spawn_supervisor(ctx);
        let mut status = handle.status.clone();
        status
            .wait_for(|s| s.state == ChildState::Backoff)
            .await
            .unwrap();
        let (tx, rx) = oneshot::channel();
        handle
            .cmds
            .send(ServerCmd::Stop {
                force: false,
                reply: tx,
            })
            .await
            .unwrap();
        assert_eq!(rx.await.unwrap().state, ChildState::Stopped);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(handle.status.borrow().state, ChildState::Stopped);
        assert_eq!(handle.status.borrow().last_exits.len(), 1);
    }

    #[test]
    fn port_is_read_from_the_ready_url() {
        assert_eq!(port_of("http://127.0.0.1:6767"), Some(6767));
        assert_eq!(port_of("http://127.0.0.1:41000/"), Some(41000));
        assert_eq!(port_of("nonsense"), None);
    }

    #[tokio::test]
    async fn a_plain_tcp_listener_is_foreign_and_a_closed_port_is_free() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // Accept and answer garbage so the probe gets a reply that is not ours.
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = tokio::io::AsyncWriteExt::write_all(
                    &mut s,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
                )
                .await;
            }
        });
        assert!(matches!(probe_port(port).await, Probe::Foreign));
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free_port = free.local_addr().unwrap().port();
        drop(free);
        assert!(matches!(probe_port(free_port).await, Probe::Free));
    }
}
