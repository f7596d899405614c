//! Spawning and stopping supervised children (DESIGN §6): each child leads its own process group, gets
//! `PR_SET_PDEATHSIG` on Linux (so it is told to stop if the daemon dies), starts in a known cwd with stdin
//! from /dev/null, and is stopped by SIGTERM to its group, a grace period, then SIGKILL. Exits are collected
//! by tokio's SIGCHLD-driven reaper (`Child::wait`), never by polling, so no zombies are left.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::reaper;

/// Grace period between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to (or overriding) the daemon's environment.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// Start from an empty environment (only `env` is set) instead of the daemon's.
    pub env_clear: bool,
}

/// Variables meant for the daemon alone, never handed to a child: a child that saw `NOTIFY_SOCKET` could
/// tell systemd it is ready on the daemon's behalf.
pub const DAEMON_ONLY_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    omnigent_proto::control::NOTIFY_ENV,
    omnigent_proto::control::STARTED_BY_ENV,
];

/// Spawn `spec` in its own process group with stdout and stderr piped and stdin from /dev/null. The pid is
/// registered as ours (see [`reaper`]) before anyone can see it exit.
pub fn spawn(spec: &ChildSpec) -> io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    if spec.env_clear {
        cmd.env_clear();
    }
    for name in DAEMON_ONLY_ENV {
        cmd.env_remove(name);
    }
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    set_parent_death_signal(&mut cmd);
    reaper::spawn_registered(|| cmd.spawn())
}

/// Wait for a child spawned by [`spawn`] and forget its pid.
pub async fn wait(child: &mut Child) -> io::Result<ExitStatus> {
    let pid = child.id();
    let status = child.wait().await;
    if let Some(pid) = pid {
        reaper::forget(pid);
    }
    status
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only calls `prctl` and `getppid`, both
    // async-signal-safe; it allocates nothing and touches no lock. If the parent already died between fork
    // and prctl, getppid() differs and we fail the spawn instead of leaving an orphan.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other(
                    "the daemon exited while starting this child",
                ));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}

/// Stop a child we spawned: SIGTERM to its process group, wait up to `grace`, then SIGKILL the group, and
/// reap it. `grace` zero means SIGKILL at once.
pub async fn stop(child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
    let Some(pid) = child.id() else {
        // Already reaped: wait() returns the cached status.
        return child.wait().await;
    };
    let status = stop_group(child, pid, grace).await;
    reaper::forget(pid);
    status
}

async fn stop_group(child: &mut Child, pid: u32, grace: Duration) -> io::Result<ExitStatus> {
    let group = Pid::from_raw(pid as i32);
    if !grace.is_zero() {
        let _ = killpg(group, Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            // The leader is gone; make sure nothing it left in its group survives.
            let _ = killpg(group, Signal::SIGKILL);
            return status;
        }
        tracing::warn!(
            pid,
            "child did not stop within {grace:?} of SIGTERM; sending SIGKILL"
        );
    }
    let _ = killpg(group, Signal::SIGKILL);
    child.wait().await
}

/// Split an exit status into (code, signal).
pub fn describe_exit(status: &ExitStatus) -> (Option<i32>, Option<i32>) {
    (status.code(), status.signal())
}

/// "exit code 3" / "killed by signal 9".
pub fn exit_text(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "unknown exit".to_owned(),
    }
}

/// Whether a process with `pid` exists (signal 0). Used only for processes that are not our children.
pub fn pid_alive(pid: u32) -> bool {
    match nix::sys::signal::kill(Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// The command line of `pid`, where the OS tells (Linux `/proc`).
pub fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(" "))
    }
}

/// SIGTERM a process that is not our child, wait (bounded) for it to be gone, then SIGKILL.
/// It is not our child, so there is no exit notification to wait for: we check every 10 ms.
pub async fn terminate_foreign_pid(pid: u32, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let _ = kill(
        target,
        if grace.is_zero() {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        },
    );
    let deadline = tokio::time::Instant::now() + grace.max(Duration::from_millis(100));
    while pid_alive(pid) && !is_zombie(pid) {
        if tokio::time::Instant::now() >= deadline {
            let _ = kill(target, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` is a zombie (exited, not yet reaped by its parent), where the OS tells (Linux `/proc`).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ChildSpec {
        ChildSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            cwd: "/".into(),
            env_clear: false,
        }
    }

    #[tokio::test]
    async fn stop_kills_the_whole_group_after_the_grace_period() {
        // The child ignores SIGTERM and has a grandchild in its group; both must be gone after stop().
        let mut child = spawn(&sh("trap '' TERM; sleep 1000 & echo $!; wait")).unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
            .await
            .unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        assert!(pid_alive(grandchild));
        let status = stop(&mut child, Duration::from_millis(100)).await.unwrap();
        assert_eq!(status.signal(), Some(9));
        // The grandchild was SIGKILLed with the group; it is reparented and reaped by init, so wait for that.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pid_alive(grandchild)
            && std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .is_ok_and(|s| !s.contains(") Z"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {grandchild} survived"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn sigterm_is_enough_for_a_well_behaved_child() {
        let mut child = spawn(&sh("exec sleep 1000")).unwrap();
        let status = stop(&mut child, STOP_GRACE).await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(
            exit_text(status.code(), status.signal()),
            "killed by signal 15"
        );
    }
}
