//! Keeps the daemon's runtime files in place for its whole life (issue 9, hole 4).
//!
//! A tmp cleaner may delete the runtime dir, the control socket or the lock file under a running daemon.
//! The keeper compares what is at each path with the inode the daemon holds, by a cheap periodic check
//! ([`CHECK_INTERVAL`]: two `lstat`s) and on demand (before every status answer, and whenever a client rings
//! the guard socket because it found no control socket). A periodic check rather than `notify`: a watch on a
//! directory dies with it (and with any of its parents), so recovering from "the whole dir is gone" needs
//! the check anyway, and two `lstat`s a second cost nothing; clients never wait for the period, they ring.
//!
//! When something is gone it is re-created in order: the dir (0700), then the lock on a fresh file at the
//! same path, then the socket (only the lock holder may unlink and rebind it). If another process already
//! holds the new lock, this daemon stands down: it stops its children and exits, leaving that one alone.

use std::path::PathBuf;
use std::time::Duration;

use interprocess::local_socket::tokio::Listener;
use omnigent_proto::paths::Paths;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::runtime::{self, DaemonGuard, DaemonLock, FileId, LockError};

/// How often the runtime files are checked when nobody asks.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A request to check now; answered `Ok` once every file is in place.
pub(crate) type CheckRequest = oneshot::Sender<Result<(), String>>;

/// Why the files could not be put back.
enum Problem {
    /// Another daemon holds the lock at our path: this one must go.
    StandDown(String),
    /// Something is in the way (a file where the dir should be, no space…); retried at the next check.
    Failed(String),
}

pub(crate) struct Keeper {
    pub paths: Paths,
    /// The lock we hold, unless the process holds it until it exits (then `leak_locks`).
    pub lock: Option<DaemonLock>,
    pub lock_id: Option<FileId>,
    /// Locks taken here are kept until the process exits, like the first one (see `ControlListener`).
    pub leak_locks: bool,
    pub socket: PathBuf,
    pub socket_id: Option<FileId>,
    pub link: Option<PathBuf>,
    /// A freshly bound control socket goes to the accept loop.
    pub listeners: mpsc::Sender<Listener>,
    /// The last `server.json` seen (its inode and mtime, and its bytes), put back if a cleaner removes it
    /// with the rest: `omnigent stop` needs it to find a server a killed daemon left behind.
    pub record: Option<(RecordKey, Vec<u8>)>,
}

/// What tells one version of `server.json` from another.
pub(crate) type RecordKey = (FileId, Option<std::time::SystemTime>);

fn record_key(path: &std::path::Path) -> Option<RecordKey> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    Some((FileId::of_path(path)?, meta.modified().ok()))
}

impl Keeper {
    /// Check (and re-create) until `stop`; `stand_down` is cancelled when another daemon owns the lock.
    /// Returns the inode of the control socket it last bound (the daemon removes the socket at exit only
    /// if that is still what is at its path).
    pub(crate) async fn run(
        mut self,
        guard: Option<DaemonGuard>,
        mut asks: mpsc::Receiver<CheckRequest>,
        stand_down: CancellationToken,
        stop: CancellationToken,
    ) -> Option<FileId> {
        let guard = guard.and_then(|g| {
            let _ = g.listener.set_nonblocking(true);
            match tokio::net::UnixListener::from_std(g.listener) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot serve the daemon guard socket");
                    None
                }
            }
        });
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_failure: Option<String> = None;
        let me = nix::unistd::geteuid().as_raw();
        loop {
            let (reply, ring) = tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => (None, None),
                Some(reply) = asks.recv() => (Some(reply), None),
                Ok((stream, _)) = async { match &guard {
                    Some(g) => g.accept().await,
                    None => std::future::pending().await,
                } } => {
                    if stream.peer_cred().map(|c| c.uid()).ok() != Some(me) {
                        continue;
                    }
                    (None, Some(stream))
                }
            };
            let outcome = self.check();
            let answer = match &outcome {
                Ok(()) => {
                    last_failure = None;
                    Ok(())
                }
                Err(Problem::Failed(why)) => {
                    if last_failure.as_deref() != Some(why) {
                        tracing::warn!("{why}; retrying every {}s", CHECK_INTERVAL.as_secs());
                        last_failure = Some(why.clone());
                    }
                    Err(why.clone())
                }
                Err(Problem::StandDown(why)) => {
                    tracing::error!(
                        "{why}: this daemon stands down (stops its children and exits)"
                    );
                    Err(format!("{why}; this daemon is standing down"))
                }
            };
            if let Some(stream) = ring {
                // One short line into an empty socket buffer: never blocks.
                let line = match &answer {
                    Ok(()) => "ok\n".to_owned(),
                    Err(why) => format!("failed: {}\n", why.replace('\n', "; ")),
                };
                let _ = stream.try_write(line.as_bytes());
            }
            if let Some(reply) = reply {
                let _ = reply.send(answer);
            }
            if matches!(outcome, Err(Problem::StandDown(_))) {
                stand_down.cancel();
                break;
            }
        }
        if self.leak_locks
            && let Some(lock) = self.lock.take()
        {
            std::mem::forget(lock);
        }
        self.socket_id
    }

    /// Put back whatever is missing: dir, lock, socket (and its natural-path link), in that order.
    fn check(&mut self) -> Result<(), Problem> {
        let lock_path = self.paths.daemon_lock();
        let lock_ok = self.lock_id.is_some() && FileId::of_path(&lock_path) == self.lock_id;
        let socket_ok = self.socket_id.is_some() && FileId::of_path(&self.socket) == self.socket_id;
        let link_ok = self
            .link
            .as_ref()
            .is_none_or(|l| std::fs::read_link(l).is_ok_and(|t| t == self.socket));
        let record_path = self.paths.server_json();
        if lock_ok && socket_ok && link_ok {
            // Nothing was cleaned up: follow what the server supervisor writes (or removed).
            match record_key(&record_path) {
                None => self.record = None,
                Some(key) if self.record.as_ref().is_some_and(|(k, _)| *k == key) => {}
                Some(key) => {
                    self.record = std::fs::read(&record_path).ok().map(|bytes| (key, bytes));
                }
            }
            return Ok(());
        }
        runtime::ensure_private_dir(&self.paths.runtime_dir)
            .map_err(|e| Problem::Failed(format!("cannot re-create the runtime dir: {e}")))?;
        if !lock_ok {
            match DaemonLock::acquire(&self.paths) {
                Ok(lock) => {
                    tracing::warn!(path = %lock_path.display(), "the daemon lock file was removed; re-took the lock on a new one");
                    self.lock_id = lock.file_id();
                    let old = self.lock.replace(lock);
                    if self.leak_locks {
                        // The process holds its locks until it exits (the first one was never ours to drop).
                        std::mem::forget(old);
                        if let Some(new) = self.lock.take() {
                            std::mem::forget(new);
                        }
                    }
                }
                // Only a daemon writes its pid into the lock; a client probing it (a shared lock for an
                // instant) does not, and must not make us go.
                Err(LockError::Held { pid: Some(pid), .. })
                    if pid != std::process::id() && crate::supervise::process::pid_alive(pid) =>
                {
                    return Err(Problem::StandDown(format!(
                        "the daemon lock file {} was replaced and another daemon (pid {pid}) holds the new one",
                        lock_path.display()
                    )));
                }
                Err(LockError::Held { .. }) => {
                    return Err(Problem::Failed(format!(
                        "the new daemon lock file {} is held by a process that is not a daemon",
                        lock_path.display()
                    )));
                }
                Err(e) => {
                    return Err(Problem::Failed(format!(
                        "cannot re-take the daemon lock: {e}"
                    )));
                }
            }
        }
        if !socket_ok {
            let listener =
                crate::control::listener::bind_socket(&self.socket, self.link.as_deref()).map_err(
                    |e| Problem::Failed(format!("cannot re-create the control socket: {e}")),
                )?;
            self.socket_id = FileId::of_path(&self.socket);
            tracing::warn!(path = %self.socket.display(), "the control socket was removed; bound a new one");
            if self.listeners.try_send(listener).is_err() {
                return Err(Problem::Failed(
                    "the control socket's accept loop is gone".into(),
                ));
            }
        } else if !link_ok && let Some(link) = &self.link {
            let _ = std::fs::remove_file(link);
            let _ = std::os::unix::fs::symlink(&self.socket, link);
        }
        if !record_path.exists()
            && let Some((_, bytes)) = &self.record
        {
            let tmp = record_path.with_extension("json.tmp");
            match std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &record_path)) {
                Ok(()) => {
                    tracing::warn!(path = %record_path.display(), "server.json was removed; wrote it back");
                    self.record = record_key(&record_path).map(|k| (k, bytes.clone()));
                }
                Err(e) => {
                    tracing::warn!(path = %record_path.display(), error = %e, "cannot write server.json back")
                }
            }
        }
        Ok(())
    }
}
