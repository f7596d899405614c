//! The control socket, bound while holding the single-instance lock (and the guard, on Linux).

use std::path::{Path, PathBuf};

use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use omnigent_proto::paths::Paths;

use crate::DaemonError;
use crate::control::serve::ControlLimits;
use crate::runtime::{self, DaemonGuard, DaemonLock, FileId};

/// The control socket, bound while holding the single-instance lock (and the guard, on Linux).
pub struct ControlListener {
    pub(crate) listener: interprocess::local_socket::tokio::Listener,
    pub(crate) socket: PathBuf,
    pub(crate) link: Option<PathBuf>,
    pub(crate) lock: Option<DaemonLock>,
    pub(crate) lock_id: Option<FileId>,
    pub(crate) guard: Option<DaemonGuard>,
    pub(crate) limits: ControlLimits,
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
