//! Orphan reaping (reference host §4.5, failure #1782): the daemon is a child subreaper on Linux, so a tool's
//! grandchild that outlives its parent is re-parented to the daemon instead of init, and must be reaped here
//! or it stays a zombie.
//!
//! tokio reaps the children we spawned (`Child::wait`, SIGCHLD-driven). A reaper that called `waitpid(-1)`
//! would steal their exit statuses, so this one reaps only zombies that are *not* ours: every pid spawned
//! through [`spawn_registered`] is recorded (under the same lock the sweep takes, so a child can never be
//! seen before it is recorded) until its status was collected ([`forget`]). On every SIGCHLD the sweep lists
//! our zombie children in `/proc` and `waitpid`s each unrecorded one. Code that runs a short-lived
//! `std::process::Command` and waits for it takes a [`pause`] guard for that time.

use std::collections::BTreeSet;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::supervise::tasks::Tasks;
use tokio::process::Child;
use tokio::sync::broadcast;

/// Pids of children spawned by us whose exit status is collected by their owner, not by the sweep.
static OURS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
/// Open [`pause`] guards.
static PAUSED: AtomicUsize = AtomicUsize::new(0);

fn ours() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    // A poisoned set is still a valid set (inserts and removes cannot leave it half-done).
    OURS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `spawn` and record the child's pid before the sweep can look at it.
pub(crate) fn spawn_registered(spawn: impl FnOnce() -> io::Result<Child>) -> io::Result<Child> {
    let mut set = ours();
    let child = spawn()?;
    if let Some(pid) = child.id() {
        set.insert(pid);
    }
    Ok(child)
}

/// The owner collected this pid's exit status: the pid may now be reused by anyone.
pub(crate) fn forget(pid: u32) {
    ours().remove(&pid);
}

/// Keeps the sweep away while a `std::process::Command` of ours runs (its status is collected by std).
pub struct PauseGuard(());

impl Drop for PauseGuard {
    fn drop(&mut self) {
        PAUSED.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn pause() -> PauseGuard {
    PAUSED.fetch_add(1, Ordering::SeqCst);
    PauseGuard(())
}

/// Make this process a child subreaper (Linux): orphaned descendants are re-parented to it.
#[cfg(target_os = "linux")]
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
pub fn become_subreaper() -> io::Result<()> {
    Ok(())
}

/// Every pid any sweep of this process reaped.
static REAPED: std::sync::OnceLock<broadcast::Sender<u32>> = std::sync::OnceLock::new();

fn reaped_channel() -> &'static broadcast::Sender<u32> {
    REAPED.get_or_init(|| broadcast::channel(256).0)
}

/// Announcements of every pid reaped from now on (tests wait on it).
pub fn subscribe() -> broadcast::Receiver<u32> {
    reaped_channel().subscribe()
}

/// Start the SIGCHLD-driven sweep in `tasks`; it runs until they stop. The returned sender announces every
/// pid it reaped (as does [`subscribe`]).
pub fn spawn_reaper(tasks: &Tasks) -> io::Result<broadcast::Sender<u32>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigchld = signal(SignalKind::child())?;
    let tx = reaped_channel().clone();
    let reaped = tx.clone();
    tasks.spawn_until_stopped(async move {
        sweep(&reaped);
        while sigchld.recv().await.is_some() {
            sweep(&reaped);
        }
    });
    Ok(tx)
}

/// Reap every zombie child of ours that nobody else will wait for.
fn sweep(reaped: &broadcast::Sender<u32>) {
    if PAUSED.load(Ordering::SeqCst) > 0 {
        return;
    }
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((state, ppid)) = stat_of(pid) else {
            continue;
        };
        if ppid != me || state != 'Z' {
            continue;
        }
        // Held across the check and the wait, so a concurrent spawn cannot record this pid in between.
        let set = ours();
        if set.contains(&pid) {
            continue;
        }
        use nix::sys::wait::{WaitPidFlag, waitpid};
        if waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(WaitPidFlag::WNOHANG),
        )
        .is_ok()
        {
            drop(set);
            tracing::debug!(pid, "reaped an orphaned descendant");
            let _ = reaped.send(pid);
        }
    }
}

/// (state, ppid) from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let mut rest = text.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}
