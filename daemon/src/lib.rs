//! omnigent-daemon: the per-user host daemon (DESIGN §2, §5.1, §6).
//!
//! - [`ControlListener::bind`]: the runtime dir (0700, ours), the single-instance `flock` and the control
//!   socket (0600), all before "ready".
//! - [`run`]: serve the control API, supervise the local server, watch `config.toml` (and edit its
//!   `[[targets]]` when a client asks to keep or drop a target), keep one host tunnel and one runner
//!   supervisor per target ([`targets`], [`runners`]: the local server, config `targets`, targets added over
//!   the API), reap orphaned descendants ([`process::reaper`]), until `shutdown`.
//! - [`client`] / [`launch`]: the CLI side: connect + hello, and "start or reuse".
//!
//! This crate never prints; it logs through `tracing` (the subscriber is installed by `ctl`).

pub mod backoff;
pub mod client;
pub mod config;
pub mod host_tunnel;
pub mod keeper;
pub mod launch;
pub mod logfile;
pub mod ports;
pub mod process;
pub mod runners;
pub mod runtime;
pub mod serve;
pub mod server;
pub mod service;
pub mod targets;

mod api;
mod http;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use omnigent_proto::control::{ShutdownReply, StopRequest};
use omnigent_proto::paths::Paths;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::Config;
use crate::runtime::{DaemonGuard, DaemonLock, FileId, LockError, RuntimeDirError};
pub use crate::serve::ControlLimits;
use crate::server::{ServerCmd, ServerContext};

/// Applies a `log_level` from config.toml to the daemon's log filter.
pub type SetLogLevel = Arc<dyn Fn(&str) + Send + Sync>;

/// Everything [`run`] needs besides the listener.
#[derive(Clone)]
pub struct DaemonConfig {
    /// The `omnigent` executable children are spawned from (`std::env::current_exe()` in production).
    pub exe: PathBuf,
    pub paths: Paths,
    /// The config as loaded at boot (see [`load_config`]).
    pub config: Config,
    /// `cli`, `foreground`, `systemd` or `manual` (shown in status).
    pub started_by: String,
    pub policy: backoff::RestartPolicy,
    /// Called with `log_level` whenever a config (re)load sets it, so the log filter follows the file.
    pub on_log_level: Option<SetLogLevel>,
    /// Host tunnel timings (DESIGN §6 by default; tests shrink them).
    pub tunnel_timings: host_tunnel::HostTunnelTimings,
}

/// The daemon could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot bind the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// The control socket, bound while holding the single-instance lock (and the guard, on Linux).
pub struct ControlListener {
    listener: interprocess::local_socket::tokio::Listener,
    socket: PathBuf,
    link: Option<PathBuf>,
    lock: Option<DaemonLock>,
    lock_id: Option<FileId>,
    guard: Option<DaemonGuard>,
    limits: ControlLimits,
}

impl ControlListener {
    /// Prepare the runtime dir, take the guard and the daemon lock (failing with [`LockError::Held`] if
    /// another daemon has either), remove a stale socket (only the lock holder may) and bind a fresh one
    /// with mode 0600.
    pub fn bind(paths: &Paths) -> Result<Self, DaemonError> {
        runtime::ensure_private_dir(&paths.runtime_dir)?;
        // The guard first: a daemon whose files were deleted still holds it, and a second one must not
        // even take the (new) lock file, or the first would find it taken and stand down.
        let guard = DaemonGuard::bind(paths)?;
        let lock = DaemonLock::acquire(paths)?;
        let socket = runtime::control_socket_path(paths);
        let natural = paths.daemon_socket();
        let link = (socket != natural).then_some(natural);
        let listener = bind_socket(&socket, link.as_deref())?;
        Ok(ControlListener {
            listener,
            socket,
            link,
            lock_id: lock.file_id(),
            lock: Some(lock),
            guard,
            limits: ControlLimits::default(),
        })
    }

    /// Take the single-instance lock out, so the caller can hold it past [`run`]'s return (a daemon process
    /// keeps it until it exits: a client that sees the lock free knows the process is gone). A lock the
    /// daemon re-takes after its lock file was deleted is then kept until the process exits too.
    pub fn take_lock(&mut self) -> Option<DaemonLock> {
        self.lock.take()
    }

    /// The control socket's timeouts and connection cap ([`ControlLimits::default`] unless set).
    pub fn set_limits(&mut self, limits: ControlLimits) {
        self.limits = limits;
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

/// Remove a stale socket at `socket` (the caller holds the lock: only the lock holder may) and bind a fresh
/// one with mode 0600; with `link`, the natural path becomes a symlink to it.
pub(crate) fn bind_socket(
    socket: &Path,
    link: Option<&Path>,
) -> Result<interprocess::local_socket::tokio::Listener, DaemonError> {
    if link.is_some() {
        runtime::ensure_private_dir(&runtime::short_socket_dir())?;
    }
    let bind_err = |source| DaemonError::Bind {
        path: socket.to_path_buf(),
        source,
    };
    match std::fs::remove_file(socket) {
        Ok(()) => tracing::info!(path = %socket.display(), "removed a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let name = socket.to_fs_name::<GenericFilePath>().map_err(bind_err)?;
    // Never unlinked on drop: a replaced listener's path already belongs to its successor, and `run`
    // removes the last one itself.
    let listener = ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .reclaim_name(false)
        .create_tokio()
        .map_err(bind_err)?;
    if let Some(link) = link {
        // For people and curl: the natural path points at the short one.
        let _ = std::fs::remove_file(link);
        let _ = std::os::unix::fs::symlink(socket, link);
    }
    Ok(listener)
}

/// Load `config.toml`, generating the host identity on first use.
pub fn load_config(paths: &Paths) -> Result<Config, config::ConfigError> {
    let config = config::ensure_identity(&paths.config_file())?;
    config.server_port()?;
    Ok(config)
}

/// The config in force, the last reload error, and how many loads succeeded.
#[derive(Debug, Clone)]
pub struct ConfigView {
    pub config: Config,
    pub error: Option<String>,
    pub loads: u64,
}

impl ConfigView {
    fn targets(&self) -> targets::ConfigTargets {
        targets::ConfigTargets {
            loads: self.loads,
            urls: self.config.targets.iter().map(|t| t.url.clone()).collect(),
        }
    }
}

/// An edit of config.toml asked for over the control API. The config task makes it, so edits and reloads
/// never interleave and the config in force includes the edit when the reply comes.
pub(crate) enum ConfigEdit {
    AddTarget(String),
    RemoveTarget(String),
}

/// What an edit did: whether the file changed, and the config targets in force after it.
pub(crate) struct EditOutcome {
    pub changed: bool,
    pub targets: targets::ConfigTargets,
}

pub(crate) type ConfigEditRequest = (
    ConfigEdit,
    oneshot::Sender<Result<EditOutcome, config::ConfigError>>,
);

/// Serve the control API on `listener`, supervise the local server and host every target until `shutdown`
/// resolves or a client asks for a shutdown; then stop children in order (runners and tunnels, then the
/// server) and return.
pub async fn run(
    config: DaemonConfig,
    listener: ControlListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let paths = config.paths.clone();
    let started = tokio::time::Instant::now();
    let started_at_ms = server::now_ms();
    let (revision_tx, revision_rx) = watch::channel(0u64);

    let log_path = paths.logs_dir().join("server.log");
    let server_log =
        logfile::RotatingFile::open(&log_path, logfile::DEFAULT_MAX_BYTES, logfile::DEFAULT_KEEP)
            .map_err(|source| DaemonError::Log {
            path: log_path.clone(),
            source,
        })?;
    let initial_port = config.config.server_port()?;
    let (port_tx, port_rx) = watch::channel(initial_port);
    if let (Some(level), Some(apply)) = (&config.config.log_level, &config.on_log_level) {
        apply(level);
    }

    let server = server::spawn_supervisor(ServerContext {
        exe: config.exe.clone(),
        paths: paths.clone(),
        log: Arc::new(Mutex::new(server_log)),
        log_path,
        policy: config.policy,
        port: port_rx,
        autostart: config.config.server_autostart(),
        revision: revision_tx.clone(),
    });

    let stop_all = CancellationToken::new();
    // Orphaned grandchildren (a tool's leftovers) are re-parented to us and reaped here (reference host §4.5).
    if let Err(e) = process::reaper::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned tool processes go to init");
    }
    if let Err(e) = process::reaper::spawn_reaper(stop_all.clone()) {
        tracing::warn!(error = %e, "cannot listen for SIGCHLD; orphaned descendants are not reaped");
    }
    let (config_tx, config_rx) = watch::channel(ConfigView {
        config: config.config.clone(),
        error: None,
        loads: 1,
    });
    let targets = targets::spawn_targets(targets::TargetsContext {
        exe: config.exe.clone(),
        paths: paths.clone(),
        policy: config.policy,
        host_id: config.config.host_id().to_owned(),
        host_name: config.config.host_name().to_owned(),
        config: config_rx.clone(),
        timings: config.tunnel_timings.clone(),
        revision: revision_tx.clone(),
    });
    tokio::spawn(follow_local_server(
        server.status.clone(),
        targets.clone(),
        stop_all.clone(),
    ));

    let config_path = paths.config_file();
    let (watcher, changes) = config::watch(&config_path).map_err(|source| DaemonError::Watch {
        path: config_path.clone(),
        source,
    })?;
    tokio::spawn(follow_config_targets(
        config_rx.clone(),
        targets.clone(),
        stop_all.clone(),
    ));
    let (edits_tx, edits) = mpsc::channel::<ConfigEditRequest>(8);
    tokio::spawn(
        ConfigTask {
            path: config_path,
            view: config_tx,
            port: port_tx,
            revision: revision_tx.clone(),
            on_log_level: config.on_log_level.clone(),
        }
        .run(changes, edits, stop_all.clone()),
    );

    let (shutdown_tx, mut shutdown_rx) =
        mpsc::channel::<(StopRequest, oneshot::Sender<ShutdownReply>)>(4);
    let ControlListener {
        listener: control,
        socket,
        link,
        lock,
        lock_id,
        guard,
        limits,
    } = listener;
    let (listeners_tx, listeners_rx) = mpsc::channel(2);
    let (checks_tx, checks_rx) = mpsc::channel::<keeper::CheckRequest>(16);
    let stand_down = CancellationToken::new();
    let keeper = tokio::spawn(
        keeper::Keeper {
            paths: paths.clone(),
            leak_locks: lock.is_none(),
            lock,
            lock_id,
            socket_id: FileId::of_path(&socket),
            socket: socket.clone(),
            link: link.clone(),
            listeners: listeners_tx,
            record: None,
        }
        .run(guard, checks_rx, stand_down.clone(), stop_all.clone()),
    );
    let state = Arc::new(api::ApiState {
        server: server.clone(),
        targets: targets.clone(),
        revision: revision_rx,
        config: config_rx,
        config_edits: edits_tx,
        shutdown: shutdown_tx,
        paths: paths.clone(),
        socket: socket.display().to_string(),
        checks: checks_tx,
        limits,
        started_at_ms,
        started,
        started_by: config.started_by.clone(),
    });
    let app = api::router(state);
    let connections = TaskTracker::new();
    let accept = tokio::spawn(serve::accept_loop(
        control,
        listeners_rx,
        app,
        limits,
        connections.clone(),
        stop_all.clone(),
    ));
    tracing::info!(pid = std::process::id(), socket = %socket.display(), "daemon ready");

    let (request, reply) = tokio::select! {
        () = shutdown => (StopRequest::default(), None),
        Some((req, reply)) = shutdown_rx.recv() => (req, Some(reply)),
        () = stand_down.cancelled() => (StopRequest::default(), None),
    };
    tracing::info!(
        force = request.force,
        "daemon shutting down: stopping children"
    );
    // Runners and host tunnels first, then the server.
    let mut stopped = Vec::new();
    let grace = if request.force {
        Duration::ZERO
    } else {
        process::STOP_GRACE
    };
    let runners = targets.stop_all(grace).await;
    if runners > 0 {
        stopped.push(format!("{runners} runner(s)"));
    }
    let (tx, rx) = oneshot::channel();
    let pid_before = server.status.borrow().pid;
    if server
        .cmds
        .send(ServerCmd::Stop {
            force: request.force,
            reply: tx,
        })
        .await
        .is_ok()
        && let Ok(status) = rx.await
    {
        if let Some(pid) = pid_before {
            stopped.push(format!("server pid {pid}"));
        }
        tracing::info!(state = ?status.state, "server stopped");
    }
    if let Some(reply) = reply {
        let _ = reply.send(ShutdownReply {
            stopped,
            daemon_pid: std::process::id(),
        });
    }
    // Answer in-flight calls (the shutdown reply above), close idle connections, stop accepting.
    stop_all.cancel();
    let _ = accept.await;
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), connections.wait()).await;
    drop(server);
    drop(watcher);
    let socket_id = keeper.await.ok().flatten();
    // A daemon standing down leaves the runtime files to the one that owns them now; otherwise only the
    // socket we bound is removed (not one someone else put at the path).
    if !stand_down.is_cancelled() {
        if socket_id.is_some() && FileId::of_path(&socket) == socket_id {
            let _ = std::fs::remove_file(&socket);
        }
        if let Some(link) = &link {
            let _ = std::fs::remove_file(link);
        }
        let _ = std::fs::remove_file(paths.server_json());
    }
    tracing::info!("daemon stopped");
    Ok(())
}

/// Keep the local server a target while the daemon runs one: added once it is up, moved when it comes back
/// on another port, removed when it is stopped or crash-looping (a restart in progress keeps the target, whose
/// tunnel reconnects by itself).
async fn follow_local_server(
    mut status: watch::Receiver<omnigent_proto::control::ServerStatus>,
    targets: targets::Targets,
    stop: CancellationToken,
) {
    use omnigent_proto::control::ChildState;
    let mut current: Option<String> = None;
    loop {
        let next = {
            let s = status.borrow_and_update();
            match s.state {
                ChildState::Running | ChildState::Adopted => s.url.clone().or(current.clone()),
                ChildState::Stopped | ChildState::Crashloop => None,
                _ => current.clone(),
            }
        };
        if next != current {
            current = next.clone();
            if targets
                .cmds
                .send(targets::TargetCmd::SetLocal(next))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

/// Apply config.toml `targets` (at boot and on every reload).
async fn follow_config_targets(
    mut config: watch::Receiver<ConfigView>,
    targets: targets::Targets,
    stop: CancellationToken,
) {
    let mut current: Option<Vec<String>> = None;
    loop {
        let next = config.borrow_and_update().targets();
        if current.as_ref() != Some(&next.urls) {
            current = Some(next.urls.clone());
            if targets
                .cmds
                .send(targets::TargetCmd::SetConfig(next))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = config.changed() => if changed.is_err() { return },
        }
    }
}

/// Owns the config in force: reloads the file when it changes and makes the edits clients ask for, one at
/// a time.
struct ConfigTask {
    path: PathBuf,
    view: watch::Sender<ConfigView>,
    port: watch::Sender<u16>,
    revision: watch::Sender<u64>,
    on_log_level: Option<SetLogLevel>,
}

impl ConfigTask {
    async fn run(
        self,
        mut changes: mpsc::Receiver<()>,
        mut edits: mpsc::Receiver<ConfigEditRequest>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => {
                    if change.is_none() {
                        return;
                    }
                    tokio::time::sleep(config::RELOAD_SETTLE).await;
                    // Drain what arrived while settling: one reload reads the newest content.
                    while changes.try_recv().is_ok() {}
                    self.reload();
                }
                Some((edit, reply)) = edits.recv() => {
                    let _ = reply.send(self.edit(edit));
                }
            }
        }
    }

    fn reload(&self) {
        match config::load(&self.path) {
            Ok(new) => {
                if let Err(e) = self.install(new) {
                    self.failed(e);
                }
            }
            Err(e) => self.failed(e),
        }
    }

    fn edit(&self, edit: ConfigEdit) -> Result<EditOutcome, config::ConfigError> {
        let edited = match &edit {
            ConfigEdit::AddTarget(url) => config::add_target(&self.path, url),
            ConfigEdit::RemoveTarget(url) => config::remove_target(&self.path, url),
        }?;
        if edited.changed {
            match &edit {
                ConfigEdit::AddTarget(url) => {
                    tracing::info!(path = %self.path.display(), server = %url, "kept a host target in config")
                }
                ConfigEdit::RemoveTarget(url) => {
                    tracing::info!(path = %self.path.display(), server = %url, "removed a host target from config")
                }
            }
        }
        // The file as it is now is the config in force (the reload its write triggers finds nothing new).
        self.install(edited.config)?;
        Ok(EditOutcome {
            changed: edited.changed,
            targets: self.view.borrow().targets(),
        })
    }

    /// Make `new` the config in force, unless it equals it.
    fn install(&self, mut new: Config) -> Result<(), config::ConfigError> {
        let new_port = new.server_port()?;
        let current = self.view.borrow().clone();
        // The host identity never changes under a running daemon: an edit that drops it keeps the one in
        // force (it is generated once, at boot).
        new.host.host_id = new.host.host_id.or(current.config.host.host_id.clone());
        new.host.name = new.host.name.or(current.config.host.name.clone());
        if current.config == new && current.error.is_none() {
            return Ok(());
        }
        tracing::info!(path = %self.path.display(), "config reloaded");
        if new.log_level != current.config.log_level
            && let (Some(level), Some(apply)) = (&new.log_level, &self.on_log_level)
        {
            apply(level);
        }
        self.port
            .send_if_modified(|p| std::mem::replace(p, new_port) != new_port);
        self.view.send_replace(ConfigView {
            config: new,
            error: None,
            loads: current.loads + 1,
        });
        self.revision.send_modify(|r| *r += 1);
        Ok(())
    }

    fn failed(&self, e: config::ConfigError) {
        tracing::warn!("config reload failed: {e}");
        let message = e.to_string();
        if self.view.borrow().error.as_deref() == Some(message.as_str()) {
            return;
        }
        self.view.send_modify(|v| v.error = Some(message));
        self.revision.send_modify(|r| *r += 1);
    }
}
