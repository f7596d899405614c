//! "Start or reuse" (DESIGN §2): connect to the running daemon, or spawn `omnigent daemon run` and wait for
//! its readiness line (bounded), under a start lock so concurrent commands end with exactly one daemon.
//! A daemon speaking another control protocol is stopped (SIGTERM, its lock released) and replaced.
//!
//! "Stop" ([`stop_daemon`]): ask the daemon to shut down, wait for its lock, kill it when asked to force
//! (or when it is stopped or hung), and stop a server a killed daemon left behind. The CLI only prints.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use omnigent_proto::control::{self as ctl, HelloReply};
use omnigent_proto::paths::Paths;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::config::logfile::tail_lines;
use crate::control::client::{ClientError, ControlClient};
use crate::runtime::{self, LockError, RuntimeDirError, StartLock};
use crate::supervise::process;

/// How long a spawned daemon may take to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Daemon log lines shown when a start fails.
const TAIL: usize = 15;

/// How the connection came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connected {
    /// A daemon was already running.
    Reused,
    /// We started one.
    Started,
    /// An incompatible daemon was running; we stopped it and started one.
    Replaced { old: HelloReply },
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot take the start lock: {0}")]
    Lock(#[from] LockError),
    #[error("cannot run {exe} daemon run: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon failed to start: {why}{}", tail_text(log, tail))]
    Failed {
        why: String,
        log: PathBuf,
        tail: Vec<String>,
    },
    #[error(
        "the incompatible daemon (pid {pid}, omnigent {version}) did not exit after SIGTERM and SIGKILL; \
         stop it by hand and retry"
    )]
    OldDaemonStuck { pid: u32, version: String },
}

impl LaunchError {
    /// True when the cause is the environment (directory permissions), not a transient failure.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            LaunchError::RuntimeDir(_) | LaunchError::Client(ClientError::RuntimeDir(_))
        )
    }
}

fn tail_text(log: &std::path::Path, tail: &[String]) -> String {
    if tail.is_empty() {
        format!("\n(nothing in {})", log.display())
    } else {
        format!(
            "\nlast lines of {}:\n  {}",
            log.display(),
            tail.join("\n  ")
        )
    }
}

/// Connect to the daemon, starting one if none runs. `progress` receives human progress messages.
pub async fn ensure_daemon(
    paths: &Paths,
    exe: &std::path::Path,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(ControlClient, Connected), LaunchError> {
    ensure_daemon_with(paths, exe, progress, &[]).await
}

/// [`ensure_daemon`], starting a new daemon with `env` added to its environment (`omnigent start --lan`
/// passes [`crate::config::SERVER_BIND_ENV`]). A daemon already running is reused as it is.
pub async fn ensure_daemon_with(
    paths: &Paths,
    exe: &std::path::Path,
    progress: &(dyn Fn(&str) + Send + Sync),
    env: &[(&str, &str)],
) -> Result<(ControlClient, Connected), LaunchError> {
    runtime::ensure_private_dir(&paths.runtime_dir)?;
    let mut replaced = None;
    if let Some(client) = try_connect(paths, &mut replaced).await? {
        return Ok((client, Connected::Reused));
    }
    let _start = StartLock::acquire(paths, READY_TIMEOUT).await?;
    // Someone may have started it while we waited for the lock.
    if let Some(client) = try_connect(paths, &mut replaced).await? {
        return Ok((
            client,
            replaced.map_or(Connected::Reused, |old| Connected::Replaced { old }),
        ));
    }
    progress("starting the omnigent daemon…");
    spawn_and_wait(paths, exe, env).await?;
    let client = ControlClient::connect(paths).await?;
    Ok((
        client,
        replaced.map_or(Connected::Started, |old| Connected::Replaced { old }),
    ))
}

/// Connect; `None` when no daemon runs. An incompatible daemon is stopped (recorded in `replaced`) and
/// reported as not running.
async fn try_connect(
    paths: &Paths,
    replaced: &mut Option<HelloReply>,
) -> Result<Option<ControlClient>, LaunchError> {
    match ControlClient::connect(paths).await {
        Ok(client) => Ok(Some(client)),
        Err(ClientError::NotRunning { .. }) => Ok(None),
        Err(ClientError::ProtocolMismatch { daemon, .. }) => {
            stop_pid_and_wait(paths, daemon.pid).await.map_err(|()| {
                LaunchError::OldDaemonStuck {
                    pid: daemon.pid,
                    version: daemon.build_version.clone(),
                }
            })?;
            *replaced = Some(daemon);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// After the daemon lock is released: wait (at most 1 s) until process `pid` is gone or a zombie. The kernel
/// releases the lock while the process is exiting; this closes that last window. Not our child, so there is
/// no exit notification to wait for: we check every millisecond.
pub async fn wait_pid_gone(pid: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while process::pid_alive(pid) && !process::is_zombie(pid) {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// SIGTERM a daemon by pid and wait until its lock is released (it stops its children first); SIGKILL if it
/// takes more than 10 s.
pub async fn stop_pid_and_wait(paths: &Paths, pid: u32) -> Result<(), ()> {
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    if runtime::wait_lock_released(paths, Duration::from_secs(10)).await {
        wait_pid_gone(pid).await;
        return Ok(());
    }
    let _ = kill(target, Signal::SIGKILL);
    if runtime::wait_lock_released(paths, Duration::from_secs(5)).await {
        Ok(())
    } else {
        Err(())
    }
}

/// Why [`stop_daemon`] did not stop everything.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The runtime dir is unusable (an environment problem).
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
    /// Waiting for an in-progress start failed.
    #[error(transparent)]
    StartLock(#[from] LockError),
    /// The daemon did not answer the shutdown request (without `force`).
    #[error("{0}; retry with `omnigent stop --force`")]
    NoReply(ClientError),
    #[error("the daemon (pid {0}) did not exit within 10s; retry with `omnigent stop --force`")]
    DidNotExit(u32),
    /// An incompatible daemon survived SIGTERM and SIGKILL.
    #[error("the daemon pid {0} did not exit")]
    Stuck(u32),
    #[error(
        "a daemon holds {lock} (pid {pid}) but does not answer on its socket; retry with `omnigent stop --force`",
        lock = lock.display(),
        pid = pid.map_or("unknown".to_owned(), |p| p.to_string())
    )]
    Unresponsive { lock: PathBuf, pid: Option<u32> },
    #[error(transparent)]
    Client(ClientError),
}

/// Stop the daemon and everything it runs; returns what was stopped ("daemon pid N", "server pid N", …).
/// Waits for an in-progress start (the start lock) first, so a stop racing a start always wins. `note` gets
/// what people should know on the way (a daemon that did not answer and is killed).
pub async fn stop_daemon(
    paths: &Paths,
    force: bool,
    note: &dyn Fn(&str),
) -> Result<Vec<String>, StopError> {
    // A daemon whose runtime dir a tmp cleaner removed still runs (it holds its guard): stop it too.
    if !paths.runtime_dir.exists() && runtime::guard_holder(paths).is_none() {
        return Ok(vec![]);
    }
    runtime::ensure_private_dir(&paths.runtime_dir)?;
    let _start = StartLock::acquire(paths, READY_TIMEOUT).await?;
    let mut stopped = Vec::new();
    match ControlClient::connect(paths).await {
        Ok(mut client) => {
            let pid = client.daemon.pid;
            match client.shutdown(force).await {
                Ok(reply) => stopped.extend(reply.stopped),
                Err(e) if force => note(&format!(
                    "the daemon did not answer the shutdown ({e}); killing it"
                )),
                Err(e) => return Err(StopError::NoReply(e)),
            }
            drop(client);
            if !runtime::wait_lock_released(paths, Duration::from_secs(if force { 2 } else { 10 }))
                .await
            {
                if !force {
                    return Err(StopError::DidNotExit(pid));
                }
                kill_daemon(paths, pid).await;
            }
            wait_pid_gone(pid).await;
            stopped.push(format!("daemon pid {pid}"));
        }
        Err(ClientError::ProtocolMismatch { daemon, .. }) => {
            stop_pid_and_wait(paths, daemon.pid)
                .await
                .map_err(|()| StopError::Stuck(daemon.pid))?;
            stopped.push(format!(
                "daemon pid {} (omnigent {})",
                daemon.pid, daemon.build_version
            ));
        }
        Err(ClientError::Stopped { pid }) if force => {
            // SIGKILL works on a stopped process; its children get their parent-death signal.
            kill_daemon(paths, pid).await;
            wait_pid_gone(pid).await;
            stopped.push(format!("daemon pid {pid} (stopped; killed)"));
        }
        Err(ClientError::NotRunning { .. }) => {
            if runtime::lock_is_held(paths) {
                // A daemon that holds the lock but does not answer: hung, or still binding.
                let pid = runtime::read_lock_pid(&paths.daemon_lock());
                if let (true, Some(pid)) = (force, pid) {
                    kill_daemon(paths, pid).await;
                    stopped.push(format!("daemon pid {pid} (killed)"));
                } else {
                    return Err(StopError::Unresponsive {
                        lock: paths.daemon_lock(),
                        pid,
                    });
                }
            }
        }
        Err(e) => return Err(StopError::Client(e)),
    }
    // A server left behind by a daemon that was killed: stop it too.
    if let Some(pid) = crate::supervise::local_server::leftover_server_pid(paths) {
        let grace = if force {
            Duration::ZERO
        } else {
            process::STOP_GRACE
        };
        process::terminate_foreign_pid(pid, grace).await;
        stopped.push(format!("left-over server pid {pid}"));
        let _ = std::fs::remove_file(paths.server_json());
    }
    Ok(stopped)
}

/// SIGKILL the daemon `pid` and wait (at most 5 s) for its lock to be released.
async fn kill_daemon(paths: &Paths, pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    runtime::wait_lock_released(paths, Duration::from_secs(5)).await;
}

async fn spawn_and_wait(
    paths: &Paths,
    exe: &std::path::Path,
    env: &[(&str, &str)],
) -> Result<(), LaunchError> {
    let log = paths.logs_dir().join("daemon.log");
    let mut child = tokio::process::Command::new(exe)
        .args(["daemon", "run"])
        .envs(env.iter().copied())
        .env(ctl::NOTIFY_ENV, ctl::NOTIFY_STDOUT)
        .env(ctl::STARTED_BY_ENV, "cli")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .current_dir("/")
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
    let pid = child.id();
    let failed = |why: String| LaunchError::Failed {
        why,
        log: log.clone(),
        tail: tail_lines(&log, TAIL),
    };
    let Some(stdout) = child.stdout.take() else {
        return Err(failed("the daemon's stdout was not piped".into()));
    };
    let mut line = String::new();
    let mut reader = BufReader::new(stdout).take(64 * 1024);
    let outcome = tokio::time::timeout(READY_TIMEOUT, reader.read_line(&mut line)).await;
    let line = line.trim();
    match outcome {
        Ok(Ok(_)) if line == ctl::NOTIFY_READY => Ok(()),
        Ok(Ok(_)) if line.starts_with(ctl::NOTIFY_FAILED_PREFIX) => {
            let _ = child.wait().await;
            Err(failed(line[ctl::NOTIFY_FAILED_PREFIX.len()..].to_owned()))
        }
        Ok(Ok(0)) | Ok(Err(_)) => {
            let status = child.wait().await;
            let how = match status {
                Ok(s) => {
                    process::exit_text(s.code(), std::os::unix::process::ExitStatusExt::signal(&s))
                }
                Err(e) => e.to_string(),
            };
            Err(failed(format!("it exited before it was ready ({how})")))
        }
        Ok(Ok(_)) => {
            kill_spawned(&mut child, pid).await;
            Err(failed(format!("it said {line:?} instead of ready")))
        }
        Err(_) => {
            kill_spawned(&mut child, pid).await;
            Err(failed(format!(
                "it did not report ready within {}s; it was stopped",
                READY_TIMEOUT.as_secs()
            )))
        }
    }
}

/// Leave nothing running after a failed start: SIGKILL the daemon (its server child gets PDEATHSIG).
async fn kill_spawned(child: &mut tokio::process::Child, pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let _ = child.wait().await;
}
