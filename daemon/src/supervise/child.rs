//! One supervised child, the shape behind both the local server ([`super::local_server`]) and the runners
//! ([`super::runners`]):
//!
//! - [`ChildLog`]: the child's rotated log file, fed by its output pumps and the daemon's own
//!   `--- daemon: …` lines;
//! - [`Running`]: a child spawned in its own process group ([`process::spawn`]), its output pumped into the
//!   log, waited on ([`Running::wait`]: what it left in its group is killed too) or stopped
//!   ([`Running::stop`]: SIGTERM, grace, SIGKILL), either way giving an [`Exit`];
//! - [`Restarts`]: the exits it had (for status), the restarts, and the backoff / crash-loop rule
//!   ([`CrashTracker`]) deciding what follows an unexpected exit.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use omnigent_proto::control::ChildExit;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStdout};
use tokio::time::Instant;

use super::backoff::{AfterExit, CrashTracker, RestartPolicy};
use super::process::{self, ChildSpec};
use super::tasks::Tasks;
use crate::config::logfile::{self, RotatingFile};

/// Exits remembered per child for status.
pub const KEEP_EXITS: usize = 10;

/// A child's log file. Cheap to clone; every write is one short synchronous append under the lock.
#[derive(Clone)]
pub struct ChildLog(Arc<Mutex<RotatingFile>>);

impl ChildLog {
    /// Open (creating it) a log rotated at the default size and count.
    pub fn open(path: &Path) -> io::Result<Self> {
        RotatingFile::open(path, logfile::DEFAULT_MAX_BYTES, logfile::DEFAULT_KEEP).map(Self::new)
    }

    pub fn new(file: RotatingFile) -> Self {
        ChildLog(Arc::new(Mutex::new(file)))
    }

    /// Append one line (the daemon's own notes: `--- daemon: …`).
    pub fn line(&self, line: &str) {
        self.write(format!("{line}\n").as_bytes());
    }

    fn write(&self, bytes: &[u8]) {
        // The lock is held only for this synchronous write, never across an await.
        if let Ok(mut f) = self.0.lock() {
            let _ = io::Write::write_all(&mut *f, bytes);
        }
    }

    /// Copy `reader` into the log until EOF, in a task of `tasks` (the child's last words are kept: the
    /// daemon stops its children before it drains its tasks).
    pub fn pump<R: AsyncRead + Unpin + Send + 'static>(&self, tasks: &Tasks, mut reader: R) {
        let log = self.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => log.write(&buf[..n]),
                }
            }
        });
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// `None` when the status could not be collected.
    pub status: Option<ExitStatus>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub uptime: Duration,
}

impl Exit {
    fn new(status: io::Result<ExitStatus>, started: Instant, what: &str) -> Exit {
        let status = match status {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot collect the {what}'s exit status");
                None
            }
        };
        let (code, signal) = status
            .as_ref()
            .map(process::describe_exit)
            .unwrap_or((None, None));
        Exit {
            status,
            code,
            signal,
            uptime: started.elapsed(),
        }
    }

    /// "exit code 3" / "killed by signal 9".
    pub fn text(&self) -> String {
        process::exit_text(self.code, self.signal)
    }
}

/// A supervised child that is running.
pub struct Running {
    child: Child,
    pub pid: Option<u32>,
    pub started: Instant,
    /// Named in warnings ("the server", "the runner").
    what: &'static str,
}

impl Running {
    /// Spawn `spec` in its own process group with its stderr pumped into `log`, and its stdout too unless
    /// `keep_stdout` (then it is returned, e.g. to read a ready line first).
    pub fn spawn(
        spec: &ChildSpec,
        what: &'static str,
        log: &ChildLog,
        tasks: &Tasks,
        keep_stdout: bool,
    ) -> io::Result<(Running, Option<ChildStdout>)> {
        let mut child = process::spawn(spec)?;
        let started = Instant::now();
        let pid = child.id();
        let stdout = child.stdout.take();
        if let Some(err) = child.stderr.take() {
            log.pump(tasks, err);
        }
        let stdout = match stdout {
            Some(out) if !keep_stdout => {
                log.pump(tasks, out);
                None
            }
            out => out,
        };
        Ok((
            Running {
                child,
                pid,
                started,
                what,
            },
            stdout,
        ))
    }

    /// Wait until the child exits by itself; whatever it left in its group is killed. Cancel-safe: the
    /// status is kept by the child handle, so a later call returns it.
    pub async fn wait(&mut self) -> Exit {
        let status = process::wait(&mut self.child).await;
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Let the log pumps write the last words before anyone reads the tail.
        tokio::task::yield_now().await;
        Exit::new(status, self.started, self.what)
    }

    /// Stop it: SIGTERM to its group, `grace`, SIGKILL (zero: SIGKILL at once).
    pub async fn stop(mut self, grace: Duration) -> Exit {
        let status = process::stop(&mut self.child, grace).await;
        tokio::task::yield_now().await;
        Exit::new(status, self.started, self.what)
    }
}

/// The exits and restarts of one supervised child, and the rule for what follows an unexpected exit.
pub struct Restarts {
    tracker: CrashTracker,
    exits: VecDeque<ChildExit>,
    /// Restarts so far (shown in status).
    pub count: u32,
}

impl Restarts {
    pub fn new(policy: RestartPolicy) -> Self {
        Restarts {
            tracker: CrashTracker::new(policy),
            exits: VecDeque::new(),
            count: 0,
        }
    }

    /// Forget past short runs: an explicit start clears a crash loop.
    pub fn reset(&mut self) {
        self.tracker.reset();
    }

    /// The last [`KEEP_EXITS`] exits, oldest first.
    pub fn exits(&self) -> Vec<ChildExit> {
        self.exits.iter().cloned().collect()
    }

    /// Remember an exit for status.
    pub fn record(&mut self, code: Option<i32>, signal: Option<i32>, uptime: Duration) {
        self.exits.push_back(ChildExit {
            code,
            signal,
            uptime_ms: uptime.as_millis() as u64,
            at_ms: now_ms(),
        });
        while self.exits.len() > KEEP_EXITS {
            self.exits.pop_front();
        }
    }

    /// Decide what follows an unexpected exit after `uptime`: a restart after a backoff (counted) or a crash
    /// loop.
    pub fn decide(&mut self, uptime: Duration) -> AfterExit {
        let after = self
            .tracker
            .on_exit(Instant::now(), uptime, rand::random_range(-1.0..=1.0));
        if matches!(after, AfterExit::RestartAfter(_)) {
            self.count += 1;
        }
        after
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_exits_are_kept_and_only_restarts_are_counted() {
        let mut r = Restarts::new(RestartPolicy::default());
        for code in 0..(KEEP_EXITS as i32 + 3) {
            r.record(Some(code), None, Duration::from_millis(10));
        }
        let exits = r.exits();
        assert_eq!(exits.len(), KEEP_EXITS);
        assert_eq!(exits[0].code, Some(3));
        let mut restarts = 0;
        while let AfterExit::RestartAfter(_) = r.decide(Duration::from_millis(10)) {
            restarts += 1;
        }
        assert_eq!(r.count, restarts);
        assert!(restarts > 0);
    }

    #[tokio::test]
    async fn a_child_output_goes_to_its_log_and_its_exit_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("child.log");
        let log = ChildLog::open(&path).unwrap();
        let tasks = Tasks::new();
        let spec = ChildSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo out; echo err >&2; exit 3".into()],
            env: Vec::new(),
            cwd: "/".into(),
            env_clear: false,
        };
        let (mut running, stdout) = Running::spawn(&spec, "child", &log, &tasks, false).unwrap();
        assert!(stdout.is_none());
        let exit = running.wait().await;
        assert_eq!(exit.code, Some(3));
        assert_eq!(exit.text(), "exit code 3");
        assert!(tasks.drain(Duration::from_secs(5)).await);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
    }
}
