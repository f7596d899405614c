//! The `omnigent` command under test with its own (temp) `OMNIGENT_HOME` and none of the caller's settings,
//! a guard on a child process that kills and reaps it on drop, collecting its stderr lines, and ways to find
//! a process's children and wait (by signal, not by sleeping) for one to be gone.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::WAIT;

/// `exe` (the binary under test: `env!("CARGO_BIN_EXE_omnigent")`) with `home` as its `OMNIGENT_HOME`, none of
/// the caller's server, database or token settings, and info logs.
pub fn omnigent(exe: impl AsRef<OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env("OMNIGENT_HOME", home)
        .env_remove("OMNIGENT_DATABASE_URL")
        .env_remove("OMNIGENT_SERVER")
        .env_remove("OMNIGENT_RUNNER_TOKEN")
        .env("RUST_LOG", "info,sqlx=warn")
        .env("OMNIGENT_LOG", "info");
    cmd
}

/// A child process whose stderr lines are collected; killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Spawn `cmd` with stdout and stderr piped; its stdout for the caller to read.
    pub fn spawn(mut cmd: Command) -> (Proc, ChildStdout) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the process under test");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (
            Proc {
                child,
                lines,
                seen: Vec::new(),
            },
            stdout,
        )
    }

    /// Spawn `cmd` (a server that prints one JSON ready line with its `url` on stdout, as `omnigent server
    /// run` does) and wait for that line: the process and the URL it reports.
    pub async fn spawn_reporting_url(cmd: Command) -> (Proc, String) {
        let (proc, stdout) = Proc::spawn(cmd);
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            line
        });
        let line = tokio::time::timeout(WAIT, line)
            .await
            .expect("a ready line in time")
            .unwrap();
        let ready: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        let url = ready["url"]
            .as_str()
            .expect("a url in the ready line")
            .to_owned();
        (proc, url)
    }

    /// Wait for a stderr line containing every one of `needles` (pass constants the logging crate exports,
    /// not copied log text); the line.
    pub async fn wait_log(&mut self, needles: &[&str]) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if needles.iter().all(|n| line.contains(n)) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no log line with {needles:?}; the process logged:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    /// SIGKILL the process, reap it, and return everything it wrote to stderr.
    pub async fn kill_and_read_log(&mut self) -> Vec<String> {
        self.kill();
        let mut all = std::mem::take(&mut self.seen);
        // The reader thread ends at the pipe's EOF, which the kill brings.
        while let Ok(Some(line)) = tokio::time::timeout(WAIT, self.lines.recv()).await {
            all.push(line);
        }
        all
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A handle on a process that tells when it has exited (a pidfd; readable once the process is gone).
pub struct ProcessWatch(Option<tokio::io::unix::AsyncFd<OwnedFd>>);

/// Watch `pid`. Open it while the process is alive (it cannot be reused then).
#[allow(unsafe_code)]
pub fn watch(pid: i32) -> ProcessWatch {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1; no memory is shared.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(nix::libc::ESRCH),
            "pidfd_open({pid}): {err}"
        );
        return ProcessWatch(None); // already gone
    }
    // SAFETY: `fd` is a descriptor the call above just opened, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: an OwnedFd keeps its descriptor open and returns the same one until dropped, which the AsyncFd
    // that owns it outlives in no way.
    let watched = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    ProcessWatch(Some(watched.map_err(|e| e.into_parts().1).unwrap()))
}

impl ProcessWatch {
    pub fn is_alive(&self) -> bool {
        self.0.is_some()
    }

    /// Wait until the process has exited; fails the test after 10 s.
    pub async fn gone(self) {
        if let Some(fd) = self.0 {
            let ready = tokio::time::timeout(Duration::from_secs(10), fd.readable()).await;
            assert!(
                ready.is_ok(),
                "the process is still running 10 s after it should have been killed"
            );
        }
    }
}

/// The pids of `pid`'s child processes (every thread's, from `/proc`), in no particular order.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}
