//! The runtime dir (0700, ours), the single-instance lock and where the control socket lives.
//!
//! One daemon per user is guaranteed by a kernel `flock` on `daemon.lock`, held for the daemon's whole life.
//! The pid written into the lock file is information for people, never evidence: a recycled pid after a
//! reboot cannot block a start, because the kernel drops the lock when its holder dies.
//!
//! A tmp cleaner may remove the runtime dir (or just the socket or the lock file) under a running daemon.
//! Two things keep that from ever giving two daemons:
//! - the daemon checks every [`CHECK_INTERVAL`] (and before every status answer, and whenever a client rings
//!   it) that the lock file and the socket at their paths are still the inodes it holds, and re-creates them
//!   (`crate::runtime::keeper`);
//! - on Linux a second guard that no file operation can remove: an abstract-namespace socket named after the
//!   runtime dir ([`DaemonGuard`]), bound for the daemon's life. A client that finds no socket asks it
//!   (its holder's pid comes from `SO_PEERCRED`, so even a frozen daemon is found), and a second daemon
//!   refuses to start while it is bound.

pub mod keeper;
pub mod launch;

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use omnigent_proto::paths::Paths;

/// Longest socket path we bind directly; `sun_path` is 104 bytes on macOS, 108 on Linux.
const MAX_SOCKET_PATH: usize = 100;

/// The runtime dir (or the short socket dir) cannot be used safely.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    #[error(
        "cannot create the runtime dir {path}: {source}; check that its parent is writable or set OMNIGENT_HOME"
    )]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot inspect the runtime dir {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the runtime dir {path} belongs to uid {owner}, not to you (uid {me}); the control socket must live in a \
         directory only you own: remove it or set OMNIGENT_HOME to another directory"
    )]
    WrongOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "the runtime dir {path} has mode {mode:04o}, so other users could reach the control socket; \
         run `chmod 700 {path}` and retry"
    )]
    WrongMode { path: PathBuf, mode: u32 },
    #[error("{path} is not a directory; remove it or set OMNIGENT_HOME to another directory")]
    NotADir { path: PathBuf },
}

/// Create `dir` with mode 0700 if missing (parents with the default mode), then check it is a directory
/// owned by us with no group/other access. Never silently chmods a directory someone else prepared.
pub fn ensure_private_dir(dir: &Path) -> Result<(), RuntimeDirError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|source| RuntimeDirError::Create {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            match DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Another process created it between our check and our create: inspect what is there.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(RuntimeDirError::Create {
                        path: dir.to_path_buf(),
                        source,
                    });
                }
            }
            // The umask may have cleared bits, never added any; make the mode exact for a dir we created.
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        Err(source) => {
            return Err(RuntimeDirError::Inspect {
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    check_private_dir(dir)
}

/// Check that `dir` is a directory owned by us with mode 0700 (no group/other bits).
pub fn check_private_dir(dir: &Path) -> Result<(), RuntimeDirError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|source| RuntimeDirError::Inspect {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(RuntimeDirError::NotADir {
            path: dir.to_path_buf(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(RuntimeDirError::WrongOwner {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(RuntimeDirError::WrongMode {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Where the control socket is bound and connected. Normally `<runtime>/daemon.sock`; when that path is
/// too long for `sun_path` (a deep `OMNIGENT_HOME`), a short path in `/tmp/omnigent-<uid>/` derived from the
/// runtime dir, so the daemon and every CLI compute the same one.
pub fn control_socket_path(paths: &Paths) -> PathBuf {
    let natural = paths.daemon_socket();
    if natural.as_os_str().len() <= MAX_SOCKET_PATH {
        return natural;
    }
    short_socket_dir().join(format!(
        "{:016x}.sock",
        fnv1a(paths.runtime_dir.as_os_str().as_encoded_bytes())
    ))
}

/// `/tmp/omnigent-<uid>`: the private dir holding short socket paths.
pub fn short_socket_dir() -> PathBuf {
    std::env::temp_dir().join(format!("omnigent-{}", nix::unistd::geteuid().as_raw()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The single-instance lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another omnigent daemon is running (it holds {path}{})", pid_hint(*.pid))]
    Held { path: PathBuf, pid: Option<u32> },
    #[error("cannot open the daemon lock {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: Errno },
}

fn pid_hint(pid: Option<u32>) -> String {
    pid.map(|p| format!(", pid {p}")).unwrap_or_default()
}

/// Device and inode of a file: what tells "the file we hold" from "a new file at the same path".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The file at `path` (not following a last symlink); `None` when there is none.
    pub fn of_path(path: &Path) -> Option<FileId> {
        std::fs::symlink_metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    fn of_file(file: &File) -> Option<FileId> {
        file.metadata().ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// The held `flock` on `daemon.lock`; released by the kernel when dropped or when the process dies.
#[derive(Debug)]
pub struct DaemonLock {
    _lock: Flock<File>,
    path: PathBuf,
    id: Option<FileId>,
}

impl DaemonLock {
    /// Take the lock without waiting, then record our pid in it (for people; never trusted).
    pub fn acquire(paths: &Paths) -> Result<Self, LockError> {
        let path = paths.daemon_lock();
        let file = open_lock_file(&path)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    pid: read_lock_pid(&path),
                    path,
                });
            }
            Err((_, source)) => return Err(LockError::Lock { path, source }),
        };
        let pid = std::process::id();
        let write = lock
            .set_len(0)
            .and_then(|()| lock.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(&mut *lock, "{pid}"));
        if let Err(e) = write {
            tracing::warn!(path = %path.display(), error = %e, "cannot record our pid in the lock file");
        }
        let id = FileId::of_file(&lock);
        Ok(DaemonLock {
            _lock: lock,
            path,
            id,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked file's device and inode (compared with what is at [`Self::path`] now).
    pub fn file_id(&self) -> Option<FileId> {
        self.id
    }
}

fn open_lock_file(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// The pid recorded in the lock file, if any (information only).
pub fn read_lock_pid(path: &Path) -> Option<u32> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// The state letter of process `pid` from `/proc/PID/stat` (`R`, `S`, `T` stopped, `Z` zombie, …); `None`
/// when there is no such process or no procfs.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ": the state follows the last one.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// True when process `pid` is stopped by a signal (SIGSTOP, SIGTSTP) or a tracer.
pub fn is_stopped(pid: u32) -> bool {
    matches!(process_state(pid), Some('T' | 't'))
}

/// The abstract socket name of the guard for this runtime dir (one per user and runtime dir).
fn guard_name(paths: &Paths) -> String {
    format!(
        "omnigent-daemon-{}-{:016x}",
        nix::unistd::geteuid().as_raw(),
        fnv1a(paths.runtime_dir.as_os_str().as_encoded_bytes())
    )
}

/// The daemon's second single-instance guard: an abstract-namespace Unix socket (Linux), which a tmp
/// cleaner cannot delete and the kernel releases when the daemon dies. The daemon accepts on it: each
/// connection of our uid is a "check your runtime files now" request, answered with one line (`ok`, or
/// `failed: why`) once they are in place.
#[derive(Debug)]
pub struct DaemonGuard {
    pub listener: std::os::unix::net::UnixListener,
}

impl DaemonGuard {
    /// Bind the guard. [`LockError::Held`] when a process of ours holds it (another daemon for this runtime
    /// dir, alive even if its files are gone); `Ok(None)` where it cannot work (not Linux) or when another
    /// user squats the name (then the `flock` alone guards; logged).
    pub fn bind(paths: &Paths) -> Result<Option<DaemonGuard>, LockError> {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = guard_name(paths);
            let addr = match std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot name the daemon guard socket; relying on the lock file alone");
                    return Ok(None);
                }
            };
            match std::os::unix::net::UnixListener::bind_addr(&addr) {
                Ok(listener) => Ok(Some(DaemonGuard { listener })),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match guard_holder(paths) {
                    Some((pid, _)) => Err(LockError::Held {
                        path: PathBuf::from(format!("@{name}")),
                        pid: Some(pid),
                    }),
                    None => {
                        tracing::warn!(name = %name, "the daemon guard socket is held by another user; relying on the lock file alone");
                        Ok(None)
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot bind the daemon guard socket; relying on the lock file alone");
                    Ok(None)
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = paths;
            Ok(None)
        }
    }
}

/// The process of our uid holding the daemon guard for this runtime dir, and a connection to it (the
/// daemon answers it with one line once its runtime files are in place). `None` when no daemon of ours
/// holds it. The pid comes from the kernel (`SO_PEERCRED`), so it is right even when the daemon's files are
/// gone or it is frozen.
pub fn guard_holder(paths: &Paths) -> Option<(u32, std::os::unix::net::UnixStream)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(guard_name(paths).as_bytes())
            .ok()?;
        let stream = std::os::unix::net::UnixStream::connect_addr(&addr).ok()?;
        let cred =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .ok()?;
        if cred.uid() != nix::unistd::geteuid().as_raw() || cred.pid() <= 0 {
            return None;
        }
        Some((cred.pid() as u32, stream))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = paths;
        None
    }
}

/// True when some process holds the daemon lock right now.
pub fn lock_is_held(paths: &Paths) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .write(true)
        .open(paths.daemon_lock())
    else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, errno)) => errno == Errno::EWOULDBLOCK,
    }
}

/// Block (in a blocking thread) until nobody holds the daemon lock: the daemon process is gone. Returns
/// false if it is still held after `timeout`.
pub async fn wait_lock_released(paths: &Paths, timeout: std::time::Duration) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .write(true)
        .open(paths.daemon_lock())
    else {
        return true;
    };
    let wait = tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockShared).is_ok());
    matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(true)))
}

/// A CLI-side lock serialising "is a daemon there? no: spawn one", so concurrent commands spawn one daemon.
/// Held by the CLI only while it starts a daemon; the kernel drops it if the CLI dies.
#[derive(Debug)]
pub struct StartLock {
    _lock: Flock<File>,
}

impl StartLock {
    /// Wait (at most `timeout`) for the start lock.
    pub async fn acquire(paths: &Paths, timeout: std::time::Duration) -> Result<Self, LockError> {
        let path = paths.runtime_dir.join("start.lock");
        let file = open_lock_file(&path)?;
        let p = path.clone();
        let wait = tokio::task::spawn_blocking(move || {
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, source)| LockError::Lock { path: p, source })
        });
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(Ok(lock))) => Ok(StartLock { _lock: lock }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(join)) => Err(LockError::Open {
                path,
                source: std::io::Error::other(join),
            }),
            Err(_) => Err(LockError::Held { path, pid: None }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths::under(home.path());
        ensure_private_dir(&paths.runtime_dir).unwrap();
        let first = DaemonLock::acquire(&paths).unwrap();
        assert!(lock_is_held(&paths));
        match DaemonLock::acquire(&paths) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert!(!lock_is_held(&paths));
        DaemonLock::acquire(&paths).unwrap();
    }

    #[test]
    fn private_dir_rejects_group_access_and_is_created_0700() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("a/b/run");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = ensure_private_dir(&dir).unwrap_err();
        assert!(
            matches!(err, RuntimeDirError::WrongMode { mode: 0o755, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 700"));
    }

    #[test]
    fn long_runtime_dirs_get_a_short_stable_socket_path() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let paths = Paths::under(&long);
        let a = control_socket_path(&paths);
        assert!(a.as_os_str().len() <= MAX_SOCKET_PATH, "{}", a.display());
        assert_eq!(a, control_socket_path(&paths));
        assert_ne!(a, control_socket_path(&Paths::under(&long.join("y"))));
        let short = Paths::under(Path::new("/tmp/h"));
        assert_eq!(control_socket_path(&short), short.daemon_socket());
    }
}
