//! omnigent-daemon: the per-user host daemon (DESIGN §2, §5.1, §6).
//!
//! The modules by role: [`control`] (the control socket, its API and the CLI's client), [`supervise`] (the
//! supervised children: local server, runners; processes, reaper, restart rules, the daemon's tasks),
//! [`hosting`] (targets and their host tunnels), [`config`] (`config.toml` and its task, log files, ports),
//! [`runtime`] (runtime dir, lock, keeper, and the CLI's "start or reuse" / "stop" in [`runtime::launch`]).
//!
//! - [`ControlListener::bind`]: the runtime dir (0700, ours), the single-instance `flock` and the control
//!   socket (0600), all before "ready".
//! - [`run`], the composition root: serve the control API, supervise the local server, run the config task
//!   (watch `config.toml`, edit its `[[targets]]`), keep one host tunnel and one runner supervisor per target
//!   ([`hosting::targets`], [`supervise::runners`]: the local server, config `targets`, targets added over
//!   the API), reap orphaned descendants ([`supervise::reaper`]), until `shutdown`; every task it spawns is
//!   drained before it returns.
//!
//! This crate never prints; it logs through `tracing` (the subscriber is installed by `ctl`).

pub mod config;
pub mod control;
pub mod hosting;
pub mod runtime;
pub mod service;
pub mod supervise;

// Short paths for what other crates use most: the host tunnel (the server's tests dial it), and the CLI's
// side (`client`, `launch`) with the log files it prints.
pub use config::logfile;
pub use control::client;
pub use hosting::host_tunnel;
pub use runtime::launch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use omnigent_proto::control::{ShutdownReply, StopRequest};
use omnigent_proto::paths::Paths;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::Config;
use crate::config::task::{ConfigEditRequest, ConfigTask, ConfigView, follow_config_targets};
pub use crate::control::listener::ControlListener;
pub use crate::control::serve::ControlLimits;
use crate::control::{api, serve};
use crate::hosting::targets;
use crate::runtime::{FileId, LockError, RuntimeDirError, keeper};
use crate::supervise::child::{ChildLog, now_ms};
use crate::supervise::local_server::{self, ServerCmd, ServerContext};
use crate::supervise::tasks::Tasks;
use crate::supervise::{backoff, process, reaper};

/// How long the daemon waits, once its children are stopped, for its remaining tasks to end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

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

/// Load `config.toml`, generating the host identity on first use.
pub fn load_config(paths: &Paths) -> Result<Config, config::ConfigError> {
    let config = config::ensure_identity(&paths.config_file())?;
    config.server_port()?;
    Ok(config)
}

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
    let started_at_ms = now_ms();
    let tasks = Tasks::new();
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

    let server = local_server::spawn_supervisor(ServerContext {
        exe: config.exe.clone(),
        paths: paths.clone(),
        log: ChildLog::new(server_log),
        log_path,
        policy: config.policy,
        port: port_rx,
        bind: config.config.server_bind(),
        autostart: config.config.server_autostart(),
        revision: revision_tx.clone(),
        tasks: tasks.clone(),
    });

    // Cancelled once the children are stopped: every task that waits for the daemon to stop watches it.
    let stop_all = tasks.stopping();
    // Orphaned grandchildren (a tool's leftovers) are re-parented to us and reaped here (reference host §4.5).
    if let Err(e) = reaper::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned tool processes go to init");
    }
    if let Err(e) = reaper::spawn_reaper(&tasks) {
        tracing::warn!(error = %e, "cannot listen for SIGCHLD; orphaned descendants are not reaped");
    }
    let (config_tx, config_rx) = watch::channel(ConfigView {
        config: config.config.clone(),
        error: None,
        loads: 1,
    });
    let probes = crate::supervise::cli_probe::CliProbes::start(&tasks).await;
    let targets = targets::spawn_targets(targets::TargetsContext {
        exe: config.exe.clone(),
        paths: paths.clone(),
        policy: config.policy,
        host_id: config.config.host_id().to_owned(),
        host_name: config.config.host_name().to_owned(),
        config: config_rx.clone(),
        timings: config.tunnel_timings.clone(),
        revision: revision_tx.clone(),
        tasks: tasks.clone(),
        probes: probes.clone(),
    });
    tasks.spawn(follow_local_server(
        server.status.clone(),
        targets.clone(),
        stop_all.clone(),
    ));

    let config_path = paths.config_file();
    let (watcher, changes) = config::watch(&config_path).map_err(|source| DaemonError::Watch {
        path: config_path.clone(),
        source,
    })?;
    tasks.spawn(follow_config_targets(
        config_rx.clone(),
        targets.clone(),
        stop_all.clone(),
    ));
    let (edits_tx, edits) = mpsc::channel::<ConfigEditRequest>(8);
    tasks.spawn(
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
    let keeper = tasks.spawn(
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
        probes,
        limits,
        started_at_ms,
        started,
        started_by: config.started_by.clone(),
    });
    let app = api::router(state);
    let connections = TaskTracker::new();
    let accept = tasks.spawn(serve::accept_loop(
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
    drop(targets);
    // The supervisors, tunnels, pumps and followers end now that their children and handles are gone.
    tasks.drain(DRAIN_TIMEOUT).await;
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
